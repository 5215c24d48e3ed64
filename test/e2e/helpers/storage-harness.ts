/**
 * Shared harness of the storage end-to-end tests (test/e2e/storage-*.test.ts): a lab on its own
 * UDP port (28182, so it never collides with the other e2e files on 8182), readers of the files
 * on the datastores, a background sampler that notes when each record changes (on the test's
 * clock), a timeline printer that merges the agents' JSON log lines with the test's own marks,
 * and a cleanup stack that runs in afterAll even when a test failed half-way.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { controlRequest, type AgentStatus, type HostRow } from '@vigil/agent';
import { clusterDir, parseLeaseRecord, parsePoweron, type LeaseRecord, type Poweron } from '@vigil/datastore';
import { Lab, describeLab, labTempDir, readLog, waitFor, waitPortsFree, type LogLine } from './lab.js';

export { Lab, describeLab, readLog, waitFor, type LogLine };

/** Our own port: the other e2e files use 127.0.0.11-15:8182. */
export const STORAGE_PORT = 28182;

/** The fast profile's storage timings, spelled out so that the assertions can use them. */
export const T = {
  storageHeartbeatIntervalMs: 500,
  leaseTimeoutMs: 1500,
  selfFenceDeadlineMs: 1000,
  storageCallTimeoutMs: 400,
  datastoreProbeIntervalMs: 500,
  rescanIntervalMs: 3000,
} as const;

export const CLUSTER = 'lab';

export function hostIds(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `host-${i + 1}`);
}

export function addresses(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `127.0.0.${11 + i}`);
}

// ---- processes ---------------------------------------------------------------------------------

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a command to completion (never through a shell). Rejects only if it cannot be started or times out. */
export function run(cmd: string, args: string[], timeoutMs = 10_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: unknown; killed?: boolean }) | null;
      if (e && (e.code === 'ENOENT' || e.killed)) return reject(new Error(`${cmd} ${args.join(' ')}: ${e.killed ? `no exit within ${timeoutMs} ms` : 'not found'}`));
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Run a command and fail with its output if it exits non-zero. */
export async function runOk(cmd: string, args: string[], timeoutMs = 10_000): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout;
}

export async function which(cmd: string): Promise<string | null> {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
    const p = join(dir, cmd);
    if (existsSync(p)) return p;
  }
  return null;
}

export function alive(pid: number | null | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Direct children of a process (from /proc). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      /* gone */
    }
  }
  return out;
}

export function descendantsOf(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  while (queue.length) {
    for (const c of childrenOf(queue.shift()!)) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

export function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
  } catch {
    return '?';
  }
}

/** Kill one process by pid (no broad names), ignoring "already gone". */
export function killPid(pid: number | null | undefined, sig: NodeJS.Signals = 'SIGKILL'): void {
  if (!pid) return;
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

/** A long-running child whose exit the test can await. */
export interface Daemon {
  child: ChildProcess;
  pid: number;
  output: () => string;
  exited: Promise<number | null>;
}

export function startDaemon(cmd: string, args: string[]): Daemon {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (c: string) => (out = (out + c).slice(-20_000)));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (out = (out + c).slice(-20_000)));
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => resolve(code));
    child.on('error', () => resolve(-1));
  });
  if (!child.pid) throw new Error(`could not start ${cmd}`);
  return { child, pid: child.pid, output: () => out, exited };
}

// ---- cleanup -----------------------------------------------------------------------------------

/** Cleanup steps, run last-in first-out, each one even if an earlier one failed. */
export class Cleanup {
  private readonly steps: { what: string; fn: () => Promise<unknown> | unknown }[] = [];

  add(what: string, fn: () => Promise<unknown> | unknown): void {
    this.steps.push({ what, fn });
  }

  async run(): Promise<void> {
    while (this.steps.length) {
      const s = this.steps.pop()!;
      try {
        await s.fn();
      } catch (err) {
        console.warn(`cleanup: ${s.what} failed: ${(err as Error).message}`);
      }
    }
  }
}

// ---- the lab -----------------------------------------------------------------------------------

export interface StorageLabOptions {
  name: string;
  hosts: number;
  datastores?: number;
  hostDatastores?: Record<string, string[]>;
  timing?: Record<string, number>;
}

export class StorageLab {
  readonly lab: Lab;
  readonly hosts: string[];
  readonly t0 = Date.now();
  /** Time offsets of hosts run under faketime (their log timestamps are shifted by this). */
  readonly skewMs = new Map<string, number>();
  private readonly marks: { at: number; text: string }[] = [];

  private constructor(lab: Lab, hosts: string[]) {
    this.lab = lab;
    this.hosts = hosts;
  }

  static async create(opts: StorageLabOptions): Promise<StorageLab> {
    await waitPortsFree(addresses(opts.hosts), STORAGE_PORT);
    const dir = await labTempDir(opts.name);
    const lab = new Lab(dir);
    const ids = await lab.create({
      dir,
      hosts: opts.hosts,
      datastores: opts.datastores ?? 2,
      ...(opts.hostDatastores ? { hostDatastores: opts.hostDatastores } : {}),
      profile: 'fast',
      port: STORAGE_PORT,
      timing: { ...T, ...(opts.timing ?? {}) },
    });
    return new StorageLab(lab, ids);
  }

  get dir(): string {
    return this.lab.dir;
  }

  /** The datastore's directory (`datastores/<ds>`). */
  dsPath(ds: string): string {
    return this.lab.paths.datastore(ds);
  }

  /** `<datastore>/.vigil-ha/lab/`. */
  clusterDir(ds: string): string {
    return clusterDir(this.dsPath(ds), CLUSTER);
  }

  file(ds: string, name: string): string {
    return join(this.clusterDir(ds), name);
  }

  /**
   * Start an agent (optionally under a prefix command) and wait until it answers on its control
   * socket. Returns the agent's own pid (from its status; with `faketime`, which forks, that is
   * not the pid Lab.start returns).
   */
  async start(host: string, opts: { prefix?: string[]; env?: Record<string, string> } = {}): Promise<number> {
    const launched = await this.lab.start(host, opts);
    const st = await waitFor(
      `the agent of ${host} to answer on its control socket`,
      async () => {
        if (!alive(launched)) throw new Error(`the agent of ${host} (pid ${launched}) exited:\n${this.lab.tail(host, 15)}`);
        const r = await this.lab.status(host);
        return r.up ? r.status : undefined;
      },
      { timeoutMs: 20_000, describe: () => describeLab(this.lab) },
    );
    this.mark(`started ${host} (pid ${st.pid}${opts.prefix ? `, under ${opts.prefix.join(' ')}` : ''})`);
    return st.pid;
  }

  async startAll(hosts = this.hosts): Promise<Map<string, number>> {
    const pids = new Map<string, number>();
    for (const h of hosts) pids.set(h, await this.start(h));
    return pids;
  }

  async status(host: string): Promise<AgentStatus> {
    return (await controlRequest(this.lab.paths.socket(host), { cmd: 'status' }, 2000)) as AgentStatus;
  }

  async hostsView(host: string): Promise<{ master: string | null; isMaster: boolean; hosts: HostRow[] }> {
    return (await controlRequest(this.lab.paths.socket(host), { cmd: 'hosts' }, 2000)) as { master: string | null; isMaster: boolean; hosts: HostRow[] };
  }

  async waitConverged(timeoutMs = 20_000, hosts?: string[]): Promise<string> {
    const m = await this.lab.waitConverged(timeoutMs, hosts);
    if (!m) throw new Error(`the lab did not converge on one master within ${timeoutMs} ms\n${await describeLab(this.lab)}`);
    this.mark(`converged: master ${m}`);
    return m;
  }

  /** Wait until `master` owns every datastore in `dss` and every host's storage heartbeat is alive in its view. */
  async waitSteady(master: string, dss: string[], timeoutMs = 20_000, hosts = this.hosts): Promise<void> {
    await waitFor(
      `${master} to own ${dss.join(', ')} and see every storage heartbeat alive`,
      async () => {
        const st = await this.status(master);
        if (dss.some((d) => !st.ownedDatastores.includes(d))) return undefined;
        const view = await this.hostsView(master);
        return hosts.every((h) => view.hosts.find((r) => r.host === h)?.storageHeartbeat === 'alive') ? true : undefined;
      },
      { timeoutMs, describe: () => describeLab(this.lab) },
    );
    this.mark(`steady: ${master} owns ${dss.join(', ')}, all storage heartbeats alive`);
  }

  logs(host: string): LogLine[] {
    return readLog(this.lab.paths.log(host));
  }

  /** Log lines of `host` with this event (optionally also matching a predicate). */
  events(host: string, event: string | RegExp, pred: (l: LogLine) => boolean = () => true): LogLine[] {
    return this.logs(host).filter((l) => (typeof event === 'string' ? l.event === event : event.test(String(l.event))) && pred(l));
  }

  /** Every host's lines with this event. */
  eventsAll(event: string | RegExp, pred: (l: LogLine) => boolean = () => true): LogLine[] {
    return this.hosts.flatMap((h) => this.events(h, event, pred));
  }

  /** A log line's time on the test's clock (faketime offsets removed). */
  timeOf(l: LogLine): number {
    const ts = Date.parse(String(l.timestamp));
    return ts - (this.skewMs.get(String(l.host)) ?? 0);
  }

  /** Remember something the test did (printed in the timeline). */
  mark(text: string, at = Date.now()): number {
    this.marks.push({ at, text });
    return at;
  }

  /**
   * Print what happened: the test's marks and the agents' log lines whose event matches, in time
   * order, relative to the lab's creation.
   */
  printTimeline(title: string, events: RegExp, opts: { from?: number; maxLines?: number } = {}): void {
    const from = opts.from ?? this.t0;
    const rows: { at: number; text: string }[] = this.marks.filter((m) => m.at >= from).map((m) => ({ at: m.at, text: `[test]  ${m.text}` }));
    for (const h of this.hosts) {
      for (const l of this.logs(h)) {
        if (!events.test(String(l.event))) continue;
        const at = this.timeOf(l);
        if (at < from) continue;
        const skew = this.skewMs.get(h);
        rows.push({ at, text: `${h}${skew ? `(${skew > 0 ? '+' : ''}${skew / 1000}s)` : ''} ${l.event}: ${String(l.message ?? '').slice(0, 220)}` });
      }
    }
    rows.sort((a, b) => a.at - b.at);
    const max = opts.maxLines ?? 80;
    const shown = rows.length > max ? [...rows.slice(0, max / 2), { at: NaN, text: `... ${rows.length - max} lines ...` }, ...rows.slice(-max / 2)] : rows;
    const fmt = (ms: number) => (Number.isNaN(ms) ? '        ' : `${((ms - this.t0) / 1000).toFixed(3).padStart(7)}s`);
    console.log(`--- timeline: ${title} (lab ${this.dir}) ---\n${shown.map((r) => `${fmt(r.at)}  ${r.text}`).join('\n')}\n---`);
  }

  /** No agent logged a crash or a core failure, and every given pid still runs. */
  assertNoCrash(pids: Iterable<[string, number]>): void {
    for (const [h, pid] of pids) {
      if (!alive(pid)) throw new Error(`the agent of ${h} (pid ${pid}) is gone:\n${this.lab.tail(h, 15)}`);
    }
    const bad = this.eventsAll(/^(agent\.crashed|core\.error|agent\.start-failed)$/);
    if (bad.length) throw new Error(`agents logged failures:\n${bad.map((l) => JSON.stringify(l)).join('\n')}`);
  }

  /** Stop every agent, keeping the lab directory (e.g. to unmount something inside it first). */
  async stop(): Promise<void> {
    await this.lab.down({ graceMs: 3000 });
  }

  async down(): Promise<void> {
    await this.lab.down({ purge: true, graceMs: 3000 });
  }
}

// ---- files on the datastore -------------------------------------------------------------------

export type RecordRead = { kind: 'absent' } | { kind: 'ok'; record: LeaseRecord; raw: string } | { kind: 'bad'; error: string; raw: string };

export async function readRecord(path: string): Promise<RecordRead> {
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'absent' };
    return { kind: 'bad', error: (err as Error).message, raw: '' };
  }
  const p = parseLeaseRecord(raw);
  return p.ok ? { kind: 'ok', record: p.value, raw } : { kind: 'bad', error: p.error, raw };
}

export type PoweronRead = { kind: 'absent' } | { kind: 'ok'; poweron: Poweron; raw: string } | { kind: 'bad'; error: string; raw: string };

export async function readPoweron(path: string): Promise<PoweronRead> {
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'absent' };
    return { kind: 'bad', error: (err as Error).message, raw: '' };
  }
  const p = parsePoweron(raw);
  return p.ok ? { kind: 'ok', poweron: p.value, raw } : { kind: 'bad', error: p.error, raw };
}

/** Names of `.tmp` files (writeFileAtomic's temporaries) in a directory. */
export async function tmpFiles(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((n) => n.endsWith('.tmp'));
  } catch {
    return [];
  }
}

/**
 * Follows lease records from outside (the test's own view of the directory): notes, on the test's
 * clock, every change of each record (generation, token, counter), and every read that did not
 * parse. This is the observer's "liveness by change" done independently of the agents.
 */
export class RecordSampler {
  readonly changes = new Map<string, { at: number; record: LeaseRecord | null }[]>();
  readonly bad: { at: number; path: string; error: string; raw: string }[] = [];
  private timer: NodeJS.Timeout | null = null;
  private busy = false;

  constructor(private readonly paths: string[], private readonly intervalMs = 20) {}

  start(): this {
    this.timer = setInterval(() => void this.sample(), this.intervalMs);
    return this;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async sample(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      await Promise.all(
        this.paths.map(async (p) => {
          const r = await readRecord(p);
          const at = Date.now();
          if (r.kind === 'bad') return void this.bad.push({ at, path: p, error: r.error, raw: r.raw });
          const rec = r.kind === 'ok' ? r.record : null;
          const list = this.changes.get(p) ?? [];
          const last = list[list.length - 1];
          const same =
            last &&
            ((last.record === null && rec === null) ||
              (last.record && rec && last.record.generation === rec.generation && last.record.token === rec.token && last.record.counter === rec.counter && last.record.state === rec.state));
          if (!same) list.push({ at, record: rec });
          this.changes.set(p, list);
        }),
      );
    } finally {
      this.busy = false;
    }
  }

  /** The last change seen of `path` (time and record). */
  last(path: string): { at: number; record: LeaseRecord | null } | undefined {
    const l = this.changes.get(path);
    return l?.[l.length - 1];
  }

  /** Changes of `path` seen at or after `since`. */
  changesSince(path: string, since: number): { at: number; record: LeaseRecord | null }[] {
    return (this.changes.get(path) ?? []).filter((c) => c.at >= since);
  }

  /** Distinct (generation, token) pairs seen for `path`. */
  holdings(path: string): string[] {
    return [...new Set((this.changes.get(path) ?? []).filter((c) => c.record).map((c) => `${c.record!.host}:${c.record!.generation}:${c.record!.token}`))];
  }
}

/** ms -> "1.234 s" */
export function secs(ms: number): string {
  return `${(ms / 1000).toFixed(3)} s`;
}

// ---- faketime ----------------------------------------------------------------------------------

export interface FaketimeCheck {
  ok: boolean;
  /** Extra environment that made node work under faketime ({} when none was needed). */
  env: Record<string, string>;
  /** What was measured, for the test's output. */
  detail: string;
}

/**
 * Does node run correctly under `faketime -f <offset>` here? Checks that the wall clock is shifted
 * by the offset, that timers fire after the right delay and that performance.now() (the agent's
 * monotonic clock) advances at the right rate. Tries plain faketime first, then with
 * FAKETIME_DONT_FAKE_MONOTONIC=1 (for libfaketime builds that break the monotonic clock).
 */
export async function checkFaketime(offset: string, expectedShiftMs: number): Promise<FaketimeCheck> {
  const script =
    "const {performance}=require('node:perf_hooks');const w0=Date.now(),m0=performance.now(),h0=process.hrtime.bigint();" +
    "setTimeout(()=>{console.log(JSON.stringify({wall:w0,mono:performance.now()-m0,hr:Number(process.hrtime.bigint()-h0)/1e6,wallDelta:Date.now()-w0}))},300)";
  const tries: Record<string, string>[] = [{}, { FAKETIME_DONT_FAKE_MONOTONIC: '1' }];
  const notes: string[] = [];
  for (const env of tries) {
    const before = Date.now();
    const r = await new Promise<RunResult>((resolve) => {
      execFile('faketime', ['-f', offset, process.execPath, '-e', script], { timeout: 10_000, env: { ...process.env, ...env } }, (err, stdout, stderr) =>
        resolve({ code: err ? 1 : 0, stdout: String(stdout), stderr: String(stderr) }),
      );
    });
    const label = Object.keys(env).length ? Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ') : 'no extra env';
    if (r.code !== 0) {
      notes.push(`${label}: node failed: ${r.stderr.trim().slice(0, 200)}`);
      continue;
    }
    try {
      const m = JSON.parse(r.stdout.trim()) as { wall: number; mono: number; hr: number; wallDelta: number };
      const shift = m.wall - before;
      const okShift = Math.abs(shift - expectedShiftMs) < 20_000;
      const okMono = m.mono >= 290 && m.mono < 3000 && m.hr >= 290 && m.hr < 3000 && m.wallDelta >= 250 && m.wallDelta < 3000;
      const detail = `${label}: wall clock shifted ${(shift / 1000).toFixed(1)} s, a 300 ms timer took ${m.mono.toFixed(0)} ms by performance.now(), ${m.hr.toFixed(0)} ms by hrtime, ${m.wallDelta} ms by Date.now()`;
      if (okShift && okMono) return { ok: true, env, detail: [...notes, detail].join('; ') };
      notes.push(detail);
    } catch {
      notes.push(`${label}: unexpected output ${r.stdout.slice(0, 200)}`);
    }
  }
  return { ok: false, env: {}, detail: notes.join('; ') };
}
