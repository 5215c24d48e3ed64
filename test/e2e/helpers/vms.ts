/**
 * Helpers of the VM end-to-end tests (vms-*.test.ts): a lab with process-driver VMs on port
 * 48182, the master's `vms` view, counting the real VM processes with pgrep, a background
 * watch that would catch a VM running twice at any moment, the agents' log events, a short
 * timeline printed by every test, and a cleanup that leaves no process of the lab behind.
 */
import { afterAll, beforeAll } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { controlRequest } from '@vigil/agent';
import { labAddress, labVmTag } from '@vigil/cli';
import { Lab, describeLab, labTempDir, logSize, readLog, startHosts, tick, waitFor, waitPortsFree, type LogLine } from './lab.js';

/** Every VM lab of these tests uses this port (never 8182: other suites use it). */
export const VM_LAB_PORT = 48182;

export const PRIORITY_RANK: Record<string, number> = { highest: 0, high: 1, medium: 2, low: 3, lowest: 4, disabled: 5 };

export interface VmRow {
  id: string;
  name: string;
  host: string | null;
  power: 'on' | 'off';
  protected: boolean;
  priority: string;
  restarts: number;
  attempts: number;
  state: 'running' | 'unconfirmed' | 'stopped' | 'restarting' | 'waiting' | 'failed' | 'starting';
  detail: string | null;
}

export interface HostRowView {
  host: string;
  state: string;
  vms: number | null;
  storageHeartbeat: string;
}

// ---- timeline -------------------------------------------------------------------------------------

/** What happened when, relative to the start of a test; printed at its end (pass or fail). */
export class Timeline {
  private readonly t0 = Date.now();
  private readonly entries: { at: number; what: string }[] = [];

  constructor(private readonly title: string) {}

  /** Record an event now (or at `at`, a Date.now() value); returns the time. */
  mark(what: string, at = Date.now()): number {
    this.entries.push({ at, what });
    return at;
  }

  print(): void {
    const lines = [...this.entries]
      .sort((a, b) => a.at - b.at)
      .map((e) => `  ${((e.at - this.t0) / 1000).toFixed(2).padStart(7)} s  ${e.what}`);
    console.log(`-- timeline: ${this.title}\n${lines.join('\n')}`);
  }
}

export function secs(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

// ---- processes --------------------------------------------------------------------------------

function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout: stdout ?? '' });
    });
  });
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Pids of the lab VM processes of `dir`, by VM name (argv[0] is `vigil-lab-vm:<dir>:<name>`). */
export async function vmProcesses(dir: string): Promise<Map<string, number[]>> {
  const prefix = labVmTag(dir, '');
  const r = await run('pgrep', ['-a', '-f', `^${escapeRegex(prefix)}`]);
  const out = new Map<string, number[]>();
  if (r.code !== 0) return out; // 1: no process matched
  for (const line of r.stdout.split('\n')) {
    const m = /^(\d+) (\S+)/.exec(line);
    if (!m || !m[2]!.startsWith(prefix)) continue;
    const name = m[2]!.slice(prefix.length);
    const list = out.get(name) ?? [];
    list.push(Number(m[1]));
    out.set(name, list);
  }
  return out;
}

/** `pgrep -c -f '^<tag> '`: the number of running copies of one VM. */
export async function copies(dir: string, name: string): Promise<number> {
  const r = await run('pgrep', ['-c', '-f', `^${escapeRegex(labVmTag(dir, name))} `]);
  return Number(r.stdout.trim() || '0');
}

/** Copies of each of `names` (0 when not running). */
export async function countCopies(dir: string, names: readonly string[]): Promise<Map<string, number>> {
  const procs = await vmProcesses(dir);
  return new Map(names.map((n) => [n, procs.get(n)?.length ?? 0]));
}

/** The one pid of a VM (throws unless exactly one copy runs). */
export async function vmPid(dir: string, name: string): Promise<number> {
  const pids = (await vmProcesses(dir)).get(name) ?? [];
  if (pids.length !== 1) throw new Error(`${name}: expected exactly one process, found ${pids.length} (${pids.join(', ')})`);
  return pids[0]!;
}

/**
 * Samples the VM processes of a lab in the background (every ~intervalMs) and remembers the
 * highest number of copies ever seen of each VM: a VM that ran twice even briefly is caught.
 */
export class CopyWatch {
  private readonly max = new Map<string, number>();
  private readonly doubles: string[] = [];
  private running = false;
  private loop: Promise<void> | null = null;
  samples = 0;

  constructor(
    private readonly dir: string,
    private readonly intervalMs = 100,
  ) {}

  start(): this {
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        const procs = await vmProcesses(this.dir);
        this.samples += 1;
        for (const [name, pids] of procs) {
          if (pids.length > (this.max.get(name) ?? 0)) this.max.set(name, pids.length);
          if (pids.length > 1) this.doubles.push(`${new Date().toISOString()} ${name} x${pids.length} (pids ${pids.join(', ')})`);
        }
        await tick(this.intervalMs);
      }
    })();
    return this;
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }

  maxCopies(name: string): number {
    return this.max.get(name) ?? 0;
  }

  /** Every sighting of a VM running more than once. */
  doubled(): string[] {
    return [...this.doubles];
  }
}

// ---- agents -----------------------------------------------------------------------------------

/** The master's VM view, asked through the first of `via` that answers (slaves forward). */
export async function vmsVia(lab: Lab, via: readonly string[], timeoutMs = 3000): Promise<{ master: string; vms: VmRow[] } | null> {
  for (const h of via) {
    try {
      return (await controlRequest(lab.paths.socket(h), { cmd: 'vms' }, timeoutMs)) as { master: string; vms: VmRow[] };
    } catch {
      /* election in progress, or that host is down: try the next */
    }
  }
  return null;
}

/** The `hosts` view of one agent (the master's view when asked on the master). */
export async function hostsOf(lab: Lab, host: string): Promise<{ master: string | null; isMaster: boolean; hosts: HostRowView[] }> {
  return (await controlRequest(lab.paths.socket(host), { cmd: 'hosts' }, 3000)) as { master: string | null; isMaster: boolean; hosts: HostRowView[] };
}

/** A `vm` control request (stop, start, ...) through `via`; returns the agent's message. */
export async function vmOp(lab: Lab, via: string, op: string, vm: string, extra: Record<string, unknown> = {}, timeoutMs = 20_000): Promise<string> {
  const r = (await controlRequest(lab.paths.socket(via), { cmd: 'vm', op, vm, ...extra }, timeoutMs)) as { message: string };
  return r.message;
}

/** A `vm` request whose answer is collected later (never rejects): ok, message, ms taken. */
export function vmOpLater(lab: Lab, via: string, op: string, vm: string, timeoutMs = 20_000): Promise<{ ok: boolean; msg: string; after: number }> {
  const t0 = Date.now();
  return vmOp(lab, via, op, vm, {}, timeoutMs).then(
    (msg) => ({ ok: true, msg, after: Date.now() - t0 }),
    (err: Error) => ({ ok: false, msg: err.message, after: Date.now() - t0 }),
  );
}

export function byName(vms: readonly VmRow[]): Map<string, VmRow> {
  return new Map(vms.map((v) => [v.name, v]));
}

/** The agent pid of `host` as recorded in the lab state. */
export async function agentPid(lab: Lab, host: string): Promise<number> {
  const s = await lab.readState();
  const pid = s?.pids[host];
  if (!pid) throw new Error(`no agent pid recorded for ${host}`);
  return pid;
}

/** Log events of `host` named `event`, written after byte `offset` of its log. */
export function logEvents(lab: Lab, host: string, event: string, offset = 0): LogLine[] {
  return readLog(lab.paths.log(host), offset).filter((l) => l.event === event);
}

/** Byte offsets of every host's log now (so that later reads see only new lines). */
export function logOffsets(lab: Lab, hosts: readonly string[]): Record<string, number> {
  return Object.fromEntries(hosts.map((h) => [h, logSize(lab.paths.log(h))]));
}

export function timeOf(line: LogLine): number {
  return Date.parse(String(line.timestamp));
}

/** The first `vm.restarting` line of each VM in `ids` (log order), with its priority and target. */
export function firstRestarts(lines: LogLine[], ids: ReadonlySet<string>): { vm: string; priority: string; target: string; at: number }[] {
  const seen = new Set<string>();
  const out: { vm: string; priority: string; target: string; at: number }[] = [];
  for (const l of lines) {
    const vm = String(l.vm);
    if (!ids.has(vm) || seen.has(vm)) continue;
    seen.add(vm);
    const target = /^restarting \S+ on (\S+):/.exec(String(l.message))?.[1] ?? String(l.host);
    out.push({ vm, priority: String(l.priority), target, at: timeOf(l) });
  }
  return out;
}

/** Priority ranks never go up then down: highest first. Returns the offending pair, or null. */
export function priorityInversion(seq: { vm: string; priority: string }[]): string | null {
  for (let i = 1; i < seq.length; i++) {
    if (PRIORITY_RANK[seq[i]!.priority]! < PRIORITY_RANK[seq[i - 1]!.priority]!) {
      return `${seq[i - 1]!.vm} (${seq[i - 1]!.priority}) was restarted before ${seq[i]!.vm} (${seq[i]!.priority})`;
    }
  }
  return null;
}

// ---- lab lifecycle ----------------------------------------------------------------------------

export interface VmLab {
  lab: Lab;
  dir: string;
  hosts: string[];
  master: string;
  names: string[];
}

/**
 * A fresh lab on port 48182 in a unique temp dir: `hosts` agents (fast profile), converged on
 * one master, with `vms` VMs created and started through the master, all running and protected.
 */
export async function startVmLab(
  name: string,
  opts: { hosts: number; vms: number; capacity?: { memoryMB: number; cpus: number }; memoryMB?: number; priorities?: string[]; timeline?: Timeline },
  onLab: (lab: Lab, dir: string) => void,
): Promise<VmLab> {
  const addresses = Array.from({ length: opts.hosts }, (_, i) => labAddress(i + 1));
  await waitPortsFree(addresses, VM_LAB_PORT);
  const dir = await labTempDir(`vms-${name}`);
  const lab = new Lab(dir);
  onLab(lab, dir);
  const hosts = await lab.create({
    dir,
    hosts: opts.hosts,
    datastores: 2,
    port: VM_LAB_PORT,
    profile: 'fast',
    ...(opts.capacity ? { capacity: opts.capacity } : {}),
  });
  await startHosts(lab, hosts);
  const master = await lab.waitConverged(30_000);
  if (!master) throw new Error(`no master elected\n${await describeLab(lab)}`);
  opts.timeline?.mark(`${hosts.length} agents up, ${master} is master`);
  const logFrom = logOffsets(lab, hosts);
  let names: string[];
  try {
    names = await lab.createVms(opts.vms, { via: master, ...(opts.memoryMB ? { memoryMB: opts.memoryMB } : {}), ...(opts.priorities ? { priorities: opts.priorities } : {}) });
  } catch (err) {
    // Seen under load: "no VM named vm-N" for a VM created a moment before. Show what the
    // master logged about its catalog, then start the VMs that are not running, with retries.
    const msg = (err as Error).message;
    opts.timeline?.mark(`!! Lab.createVms failed: ${msg}`);
    for (const l of readLog(lab.paths.log(master), logFrom[master]).filter((x) => x.level === 'warn' || x.level === 'error')) {
      opts.timeline?.mark(`   ${master} ${String(l.event)}: ${String(l.message).slice(0, 200)}`, timeOf(l));
    }
    names = Array.from({ length: opts.vms }, (_, i) => `vm-${i + 1}`);
    for (const n of names) {
      await waitFor(
        `vm start ${n} to succeed`,
        async () => {
          const r = byName((await vmsVia(lab, [master]))?.vms ?? []).get(n);
          if (r?.state === 'running' && r.protected) return true;
          await vmOp(lab, master, 'start', n);
          return true;
        },
        { timeoutMs: 20_000, intervalMs: 500 },
      );
    }
  }
  await waitFor(
    `all ${names.length} VMs running and protected, one process each`,
    async () => {
      const v = await vmsVia(lab, [master]);
      if (!v) return undefined;
      const m = byName(v.vms);
      const counts = await countCopies(dir, names);
      return names.every((n) => m.get(n)?.state === 'running' && m.get(n)?.protected && counts.get(n) === 1) ? true : undefined;
    },
    {
      timeoutMs: 30_000,
      intervalMs: 200,
      describe: async () => {
        const view = await vmsVia(lab, [master]);
        const counts = await countCopies(dir, names);
        const rows = (view?.vms ?? []).map((r) => `  ${r.name} host=${r.host} state=${r.state} protected=${r.protected} copies=${counts.get(r.name)} ${r.detail ?? ''}`);
        const lists = ['ds1', 'ds2'].map((d) => {
          const f = join(lab.paths.datastore(d), '.vigil-ha', 'lab', 'protectedlist');
          return `  ${f}:\n${existsSync(f) ? readFileSync(f, 'utf8').trimEnd().replace(/^/gm, '    ') : '    (missing)'}`;
        });
        const warnings = readLog(lab.paths.log(master), logFrom[master])
          .filter((l) => l.level === 'warn' || l.level === 'error')
          .map((l) => `  ${String(l.timestamp)} ${String(l.event)}: ${String(l.message).slice(0, 200)}`);
        return `vms (master ${view?.master ?? '?'}):\n${rows.join('\n')}\nprotectedlists on disk:\n${lists.join('\n')}\n${master} warnings:\n${warnings.join('\n')}\n${await describeLab(lab)}`;
      },
    },
  );
  opts.timeline?.mark(`${names.length} VMs created, running and protected`);
  return { lab, dir, hosts, master, names };
}

/** VM daemons (node vmd-main.js <args>) whose state directory is in `dir` (and that serve `host`, if given). */
async function vmdsOf(dir: string, host?: string): Promise<number[]> {
  const r = await run('pgrep', ['-a', '-f', 'vmd-main\\.js']);
  if (r.code !== 0) return [];
  const out: number[] = [];
  for (const line of r.stdout.split('\n')) {
    const parts = line.trim().split(/\s+/);
    const pid = Number(parts[0]);
    const encoded = parts[parts.length - 1];
    if (!pid || !encoded) continue;
    try {
      const args = JSON.parse(Buffer.from(encoded, 'base64url').toString('utf8')) as { stateDir?: string; host?: string };
      if (typeof args.stateDir === 'string' && args.stateDir.startsWith(dir + '/') && (!host || args.host === host)) out.push(pid);
    } catch {
      /* not one of ours */
    }
  }
  return out;
}

/**
 * Stop the lab and delete its directory, then make sure no VM process (and no VM daemon) of
 * this lab is left. Leftovers are killed and reported as an error.
 */
export async function teardownVmLab(lab: Lab | undefined, dir: string | undefined): Promise<void> {
  if (!lab || !dir) return;
  if (existsSync(dir)) await lab.down({ purge: true }).catch(() => {});
  let left: string[] = [];
  try {
    await waitFor(
      `no process of ${dir} left`,
      async () => {
        const procs = await vmProcesses(dir);
        const vmds = await vmdsOf(dir);
        left = [...[...procs].map(([n, p]) => `${n}: ${p.join(',')}`), ...vmds.map((p) => `VM daemon ${p}`)];
        return left.length === 0 ? true : undefined;
      },
      { timeoutMs: 5000, intervalMs: 100 },
    );
  } catch {
    const procs = await vmProcesses(dir);
    for (const pid of [...procs.values()].flat()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const pid of await vmdsOf(dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    throw new Error(`processes of the lab ${dir} were left behind after lab down: ${left.join('; ')}`);
  }
}

/**
 * Wait until every VM of `names` runs (state running) on a host outside `gone`, with exactly one
 * process each; mark in the timeline when each was first seen running again. Returns name ->
 * host and time (ms after `t0`).
 */
export async function waitRunningElsewhere(
  v: VmLab,
  via: () => readonly string[],
  names: readonly string[],
  gone: readonly string[],
  t0: number,
  timeline: Timeline,
  timeoutMs = 40_000,
): Promise<Map<string, { host: string; afterMs: number }>> {
  const back = new Map<string, { host: string; afterMs: number }>();
  await waitFor(
    `${names.join(', ')} running again outside ${gone.join(', ')}, once each`,
    async () => {
      const view = await vmsVia(v.lab, via());
      if (!view) return undefined;
      const m = byName(view.vms);
      for (const n of names) {
        const r = m.get(n);
        if (r?.state === 'running' && r.host && !gone.includes(r.host) && !back.has(n)) {
          back.set(n, { host: r.host, afterMs: Date.now() - t0 });
          timeline.mark(`${n} (${r.priority}) running on ${r.host}`);
        }
      }
      const counts = await countCopies(v.dir, names);
      const ok = names.every((n) => {
        const r = m.get(n);
        return r?.state === 'running' && r.host && !gone.includes(r.host) && counts.get(n) === 1;
      });
      return ok ? back : undefined;
    },
    {
      timeoutMs,
      intervalMs: 100,
      describe: async () => {
        const view = await vmsVia(v.lab, via());
        const counts = await countCopies(v.dir, names);
        const rows = (view?.vms ?? []).filter((r) => names.includes(r.name)).map((r) => `  ${r.name} host=${r.host} state=${r.state} copies=${counts.get(r.name)} ${r.detail ?? ''}`);
        return `vms (master ${view?.master ?? '?'}):\n${rows.join('\n')}\n${await describeLab(v.lab)}`;
      },
    },
  );
  return back;
}

/**
 * Observe for `ms` (polling, not sleeping through it): `check` must hold at every poll. Used to
 * show that something does NOT happen (no restart, no move, no second copy) for a while.
 */
export async function holdFor(what: string, ms: number, check: () => Promise<string | null>, intervalMs = 200): Promise<number> {
  const end = Date.now() + ms;
  let polls = 0;
  for (;;) {
    const problem = await check();
    polls += 1;
    if (problem) throw new Error(`${what}: ${problem} (after ${polls} polls)`);
    if (Date.now() >= end) return polls;
    await tick(intervalMs);
  }
}

/**
 * A power cut of `host` (Lab.kill), checked: Lab.kill SIGKILLs the agent, its VM daemon and its
 * VMs (everything carrying the host's lab marker). A VM daemon of the host still there afterwards
 * would keep VMs running on a host that is supposed to be off: such strays are killed here (their
 * VMs die with them) and returned, so the caller can report them.
 */
export async function powerCut(lab: Lab, dir: string, ...hosts: string[]): Promise<string[]> {
  for (const host of hosts) await lab.kill(host); // one after the other: Lab.kill rewrites lab.json
  const strays: string[] = [];
  // SIGKILL takes a moment to land; a VM daemon still there 100 ms later escaped the cut. Two
  // scans, as one may have been between fork and exec when the agent died.
  for (let scan = 0; scan < 2; scan++) {
    await tick(100);
    for (const host of hosts) for (const pid of await vmdsOf(dir, host)) {
      strays.push(`VM daemon pid ${pid} of ${host} survived lab.kill(${host})`);
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
  }
  return strays;
}

/** A VM lab shared by the tests of one file: set up in beforeAll, torn down in afterAll. */
export interface VmLabFixture {
  /** The lab (available once beforeAll has run). */
  readonly v: VmLab;
  /** Watches for any VM running twice, for the whole file (tests may replace it). */
  watch: CopyWatch | undefined;
}

/**
 * Register beforeAll/afterAll for a VM lab (startVmLab) and, unless `watch: false`, a CopyWatch
 * started with it. Teardown runs even when setup failed half-way.
 */
export function useVmLab(name: string, opts: Omit<Parameters<typeof startVmLab>[1], 'timeline'>, fixture: { watch?: boolean } = {}): VmLabFixture {
  let lab: Lab | undefined;
  let dir: string | undefined;
  let v: VmLab | undefined;
  const fx: VmLabFixture = {
    get v(): VmLab {
      if (!v) throw new Error(`the ${name} lab is not set up (see the beforeAll output)`);
      return v;
    },
    watch: undefined,
  };
  beforeAll(async () => {
    const tl = new Timeline('setup');
    try {
      v = await startVmLab(name, { ...opts, timeline: tl }, (l, d) => {
        lab = l;
        dir = d;
      });
      if (fixture.watch !== false) fx.watch = new CopyWatch(v.dir).start();
    } finally {
      tl.print();
    }
  }, 120_000);
  afterAll(async () => {
    await fx.watch?.stop();
    await teardownVmLab(lab, dir);
  }, 60_000);
  return fx;
}
