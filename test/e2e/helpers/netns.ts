/**
 * Helpers of the network-namespace end-to-end tests (netns-*.test.ts): a lab whose hosts each run
 * in their own network namespace (Lab.create({ netns: true }), SPEC §4.4), real agents and real
 * process VMs, port 8182 (the namespaced addresses 10.99.X.(10+N) exist only inside the lab's
 * namespaces, so they never collide with a loopback lab). Adds, on top of vms.ts:
 *  - netnsSkipReason(): why these tests cannot run here (not root, a tool missing), or null;
 *  - where each VM process really runs (the VIGIL_LAB_HOST marker in its environment);
 *  - a watcher of the poweredoff/ directories (files appear and are removed by the master);
 *  - the agents' log events marked into a Timeline;
 *  - a teardown that checks that no process, namespace or mount of the lab is left.
 */
import { afterAll, beforeAll } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { controlRequest, type AgentStatus } from '@vigil/agent';
import { NetnsLab, netnsSupport, type LabIsolationResponse, type LabVmSpec } from '@vigil/cli';
import { poweredoffDir, vmIdFromFileName } from '@vigil/datastore';
import { Lab, describeLab, labTempDir, logSize, readLog, startHosts, tick, waitFor, type LogLine } from './lab.js';
import { CopyWatch, Timeline, byName, countCopies, timeOf, vmProcesses, vmsVia, type VmLab } from './vms.js';

/** Every netns lab of these tests uses the standard port: its addresses exist only in its namespaces. */
export const NETNS_LAB_PORT = 8182;

/** Why the netns tests cannot run on this machine (not root, a tool missing), or null. */
export async function netnsSkipReason(): Promise<string | null> {
  const s = await netnsSupport();
  if (s.ok) return null;
  return `${s.hint} (the netns end-to-end tests need root, ip, nft, ping, nsenter and unshare)`;
}

function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout: stdout ?? '' });
    });
  });
}

// ---- where VMs really run -------------------------------------------------------------------

/** The lab host a process belongs to, from the VIGIL_LAB_HOST=<dir>:<host> marker it inherited. */
export function processHost(pid: number): string | null {
  try {
    const env = readFileSync(`/proc/${pid}/environ`).toString('utf8').split('\0');
    const m = env.find((e) => e.startsWith('VIGIL_LAB_HOST='));
    return m ? (m.slice(m.lastIndexOf(':') + 1) || null) : null;
  } catch {
    return null;
  }
}

/** Every running copy of every lab VM, by name: the hosts whose processes they are. */
export async function vmLocations(dir: string): Promise<Map<string, { pid: number; host: string | null }[]>> {
  const out = new Map<string, { pid: number; host: string | null }[]>();
  for (const [name, pids] of await vmProcesses(dir)) out.set(name, pids.map((pid) => ({ pid, host: processHost(pid) })));
  return out;
}

/** A namespace of a process (`mnt:[inode]`, `net:[inode]`), or null if it is gone. */
export function nsOf(pid: number | 'self', kind: 'mnt' | 'net'): string | null {
  try {
    return readlinkSync(`/proc/${pid}/ns/${kind}`);
  } catch {
    return null;
  }
}

/** Every process of a lab host (its marker), with its command line and namespaces. */
export function hostProcesses(dir: string, host: string): { pid: number; cmd: string; mnt: string | null; net: string | null }[] {
  const needle = Buffer.from(`VIGIL_LAB_HOST=${dir}:${host}\0`);
  const out: { pid: number; cmd: string; mnt: string | null; net: string | null }[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (!readFileSync(`/proc/${e}/environ`).includes(needle)) continue;
      const cmd = readFileSync(`/proc/${e}/cmdline`).toString('utf8').split('\0').join(' ').trim();
      out.push({ pid: Number(e), cmd, mnt: nsOf(Number(e), 'mnt'), net: nsOf(Number(e), 'net') });
    } catch {
      /* gone */
    }
  }
  return out;
}

// ---- poweredoff/ ------------------------------------------------------------------------------

/**
 * Polls the poweredoff/ directory of every datastore (every ~intervalMs) and remembers every VM
 * id ever listed there and when it was first seen: the master removes the files once it has
 * restarted the VMs, so a single look at the end would miss them.
 */
export class PoweredOffWatch {
  readonly seen = new Map<string, number>();
  private running = false;
  private loop: Promise<void> | null = null;

  constructor(
    private readonly dirs: string[],
    private readonly intervalMs = 50,
  ) {}

  static forLab(lab: Lab, datastores = ['ds1', 'ds2']): PoweredOffWatch {
    return new PoweredOffWatch(datastores.map((d) => poweredoffDir(lab.paths.datastore(d), 'lab')));
  }

  start(): this {
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        for (const d of this.dirs) {
          const names = await readdir(d).catch(() => [] as string[]);
          for (const n of names) {
            if (n.startsWith('.')) continue;
            const id = vmIdFromFileName(n);
            if (id && !this.seen.has(id)) this.seen.set(id, Date.now());
          }
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
}

// ---- logs into the timeline ---------------------------------------------------------------------

/** Log lines of `hosts` written after `offsets`, whose event matches `events`, in time order. */
export function logLines(lab: Lab, hosts: readonly string[], offsets: Record<string, number>, events: RegExp, filter: (l: LogLine) => boolean = () => true): (LogLine & { from: string })[] {
  const out: (LogLine & { from: string })[] = [];
  for (const h of hosts) {
    for (const l of readLog(lab.paths.log(h), offsets[h] ?? 0)) {
      if (events.test(String(l.event)) && filter(l)) out.push({ ...l, from: h });
    }
  }
  return out.sort((a, b) => timeOf(a) - timeOf(b));
}

/** Mark log lines in the timeline, `host event: message` (message cut to `width`). */
export function markLog(tl: Timeline, lines: (LogLine & { from: string })[], width = 140): void {
  for (const l of lines) tl.mark(`${l.from} ${String(l.event)}: ${String(l.message).slice(0, width)}`, timeOf(l));
}

// ---- statuses ---------------------------------------------------------------------------------

export async function statuses(lab: Lab, hosts: readonly string[]): Promise<Map<string, AgentStatus | null>> {
  const reports = await Promise.all(hosts.map((h) => lab.status(h)));
  return new Map(reports.map((r) => [r.host, r.up ? r.status : null]));
}

/** One line per host: role, master, owned datastores. */
export function rolesLine(st: Map<string, AgentStatus | null>): string {
  return [...st]
    .map(([h, s]) => (s ? `${h}=${s.role}${s.role === 'slave' ? `(${s.master})` : ''}${s.ownedDatastores.length ? `[owns ${s.ownedDatastores.join(',')}]` : ''}` : `${h}=down`))
    .join(' ');
}

/**
 * Wait until each group of hosts follows one master of its own (a partition, or the whole lab
 * after a heal when `groups` has one group). Returns the masters, in group order.
 */
export async function waitGroupsConverged(lab: Lab, groups: string[][], timeoutMs: number): Promise<string[]> {
  return waitFor(
    `${groups.map((g) => g.join(',')).join(' / ')} to follow one master per group`,
    async () => {
      const masters: string[] = [];
      for (const g of groups) {
        const st = await statuses(lab, g);
        const ms = [...st.values()].filter((s) => s?.role === 'master');
        if (ms.length !== 1) return undefined;
        const m = ms[0]!.host;
        if (![...st.values()].every((s) => s && (s.host === m || (s.role === 'slave' && s.master === m)))) return undefined;
        masters.push(m);
      }
      return masters;
    },
    { timeoutMs, intervalMs: 100, describe: () => describeLab(lab) },
  );
}

/** The master's hosts view, by host (null if `master` does not answer). */
export async function hostStates(lab: Lab, master: string): Promise<Map<string, { state: string; isolated: boolean | null }> | null> {
  try {
    const r = (await controlRequest(lab.paths.socket(master), { cmd: 'hosts' }, 3000)) as { hosts: { host: string; state: string; isolated: boolean | null }[] };
    return new Map(r.hosts.map((h) => [h.host, { state: h.state, isolated: h.isolated }]));
  } catch {
    return null;
  }
}

// ---- the lab ------------------------------------------------------------------------------------

export interface NetnsVmLab extends VmLab {
  netns: NetnsLab;
}

export interface NetnsLabOptions {
  hosts: number;
  vms: number;
  isolationResponse?: LabIsolationResponse;
  /** Per-VM command, isolation response and host (`ctx.master` is the elected master). */
  vm?: (name: string, index: number, ctx: { master: string; hosts: string[]; dir: string }) => Partial<LabVmSpec>;
  timeline?: Timeline;
}

/**
 * A fresh netns lab in a unique temp dir: `hosts` agents in their namespaces (fast profile),
 * converged on one master, with `vms` VMs created and started through the master, all running,
 * protected and one process each.
 */
export async function startNetnsLab(name: string, opts: NetnsLabOptions, onLab: (lab: Lab, dir: string) => void): Promise<NetnsVmLab> {
  const dir = await labTempDir(`netns-${name}`);
  const lab = new Lab(dir);
  onLab(lab, dir);
  const hosts = await lab.create({
    dir,
    hosts: opts.hosts,
    datastores: 2,
    port: NETNS_LAB_PORT,
    profile: 'fast',
    netns: true,
    ...(opts.isolationResponse ? { isolationResponse: opts.isolationResponse } : {}),
  });
  const netns = await lab.netns();
  opts.timeline?.mark(`namespaces ${netns.prefix}-* up (isolation address ${netns.isolationAddress()})`);
  await startHosts(lab, hosts);
  const master = await lab.waitConverged(30_000);
  if (!master) throw new Error(`no master elected\n${await describeLab(lab)}`);
  opts.timeline?.mark(`${hosts.length} agents up in their namespaces, ${master} is master`);
  const vmFn = opts.vm;
  const names = await lab.createVms(opts.vms, { via: master, ...(vmFn ? { vm: (n: string, i: number) => vmFn(n, i, { master, hosts, dir }) } : {}) });
  await waitFor(
    `all ${names.length} VMs running and protected, one process each`,
    async () => {
      const v = await vmsVia(lab, [master]);
      if (!v) return undefined;
      const m = byName(v.vms);
      const counts = await countCopies(dir, names);
      return names.every((n) => m.get(n)?.state === 'running' && m.get(n)?.protected && counts.get(n) === 1) ? true : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 200, describe: () => describeLab(lab) },
  );
  opts.timeline?.mark(`${names.length} VMs created, running and protected`);
  return { lab, dir, hosts, master, names, netns };
}

/** Namespaces, processes and storage-loss mounts of the lab still present (empty when clean). */
export async function netnsLeftovers(netns: NetnsLab, dir: string): Promise<string[]> {
  const left: string[] = [];
  const ns = await netns.existingNamespaces().catch((err: Error) => [`(ip netns list failed: ${err.message})`]);
  left.push(...ns.map((n) => `namespace ${n}`));
  const r = await run('ip', ['-o', 'link', 'show']);
  for (const line of r.stdout.split('\n')) if (line.includes(`${netns.prefix}-`)) left.push(`link ${line.split(':')[1]?.trim()}`);
  for (const e of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/mountinfo`, 'utf8').includes(` ${netns.mountTag} `)) left.push(`mount ${netns.mountTag} in pid ${e}`);
    } catch {
      /* gone */
    }
  }
  const procs = await vmProcesses(dir);
  left.push(...[...procs].map(([n, p]) => `VM ${n}: ${p.join(',')}`));
  const pg = await run('pgrep', ['-f', dir]);
  if (pg.code === 0) left.push(...pg.stdout.trim().split('\n').filter((p) => Number(p) !== process.pid).map((p) => `process ${p} mentioning ${dir}`));
  return left;
}

/**
 * Take the lab down (agents, VM daemons, VMs, namespaces, nft, mounts), delete its directory,
 * and fail if anything of it is left.
 */
export async function teardownNetnsLab(lab: Lab | undefined, dir: string | undefined, netns: NetnsLab | undefined): Promise<void> {
  if (!lab || !dir) return;
  const n = netns ?? (existsSync(dir) && (await lab.isNetns()) ? await lab.netns() : undefined);
  if (existsSync(dir)) await lab.down({ purge: true });
  if (!n) return;
  let left: string[] = [];
  try {
    await waitFor('nothing of the lab left', async () => ((left = await netnsLeftovers(n, dir)).length === 0 ? true : undefined), { timeoutMs: 5000, intervalMs: 100 });
  } catch {
    await n.down().catch(() => {});
    throw new Error(`left behind after lab down: ${left.join('; ')}`);
  }
}

export interface NetnsLabFixture {
  readonly v: NetnsVmLab;
  watch: CopyWatch | undefined;
}

/** beforeAll/afterAll for a netns lab shared by the tests of one describe block (plus a CopyWatch). */
export function useNetnsLab(name: string, opts: Omit<NetnsLabOptions, 'timeline'>): NetnsLabFixture {
  let lab: Lab | undefined;
  let dir: string | undefined;
  let v: NetnsVmLab | undefined;
  const fx: NetnsLabFixture = {
    get v(): NetnsVmLab {
      if (!v) throw new Error(`the ${name} lab is not set up (see the beforeAll output)`);
      return v;
    },
    watch: undefined,
  };
  beforeAll(async () => {
    const tl = new Timeline(`setup of the ${name} lab`);
    try {
      v = await startNetnsLab(name, { ...opts, timeline: tl }, (l, d) => {
        lab = l;
        dir = d;
      });
      fx.watch = new CopyWatch(v.dir).start();
    } finally {
      tl.print();
    }
  }, 90_000);
  afterAll(async () => {
    await fx.watch?.stop();
    await teardownNetnsLab(lab, dir, v?.netns);
  }, 60_000);
  return fx;
}

/** Byte offsets of every host's log now. */
export function offsetsNow(lab: Lab, hosts: readonly string[]): Record<string, number> {
  return Object.fromEntries(hosts.map((h) => [h, logSize(lab.paths.log(h))]));
}

/**
 * A VM that handles SIGTERM (a node process, argv[0] the lab tag, that never forks: a bash loop
 * would fork, and its children carry the tag for a moment): on SIGTERM it appends
 * `TERM <its lab host> <ms>` to `<markerDir>/<name>.term` and exits 0.
 */
export function termTrapVm(dir: string, name: string, markerDir: string): { command: string; args: string[] } {
  const tag = `vigil-lab-vm:${dir}:${name}`;
  const marker = `${markerDir}/${name}.term`;
  const js = [
    `const fs = require('fs');`,
    `process.on('SIGTERM', () => { fs.appendFileSync(${JSON.stringify(marker)}, 'TERM ' + String(process.env.VIGIL_LAB_HOST).replace(/^.*:/, '') + ' ' + Date.now() + '\\n'); process.exit(0); });`,
    `setInterval(() => {}, 1 << 30);`,
  ].join(' ');
  return { command: 'bash', args: ['-c', `exec -a ${tag} ${process.execPath} -e ${shellQuote(js)}`] };
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
