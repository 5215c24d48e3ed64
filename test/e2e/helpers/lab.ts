/**
 * Shared helpers of the end-to-end tests: polling with a deadline (never a bare sleep as
 * synchronisation), starting a lab and checking that every agent really came up, reading the
 * agents' JSON log lines, and running the real `vigil` CLI as a child process.
 */
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab, VIGIL_BIN, type HostReport } from '@vigil/cli';
import type { AgentStatus } from '@vigil/agent';

export type UpReport = Extract<HostReport, { up: true }>;

export function tick(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A fresh, unique lab directory under the OS temp dir. */
export function labTempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `vigil-e2e-${prefix}-`));
}

/**
 * Poll `probe` every `intervalMs` until it returns something other than undefined/false/null, or
 * fail after `timeoutMs` with `what` and the last value seen (or the last error thrown).
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  opts: { timeoutMs: number; intervalMs?: number; describe?: () => string | Promise<string> },
): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  let last: unknown = undefined;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== null && v !== false) return v;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const extra = opts.describe ? `\n${await opts.describe()}` : '';
      const lastText = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${what} (last: ${lastText})${extra}`);
    }
    await tick(opts.intervalMs ?? 100);
  }
}

/**
 * Wait until nothing is bound on any of `addresses`:`port` (another lab, e.g. a concurrent test
 * run of someone else, would make our agents fail with EADDRINUSE in confusing ways).
 */
export async function waitPortsFree(addresses: string[], port: number, timeoutMs = 45_000): Promise<void> {
  const tryBind = (address: string) =>
    new Promise<string | null>((resolve) => {
      const s = createSocket({ type: 'udp4', reuseAddr: false });
      s.once('error', (err: NodeJS.ErrnoException) => {
        s.close();
        resolve(`${address}:${port} ${err.code ?? err.message}`);
      });
      s.bind({ address, port, exclusive: true }, () => s.close(() => resolve(null)));
    });
  await waitFor(
    `${addresses.join(', ')} port ${port} to be free`,
    async () => {
      const busy = (await Promise.all(addresses.map(tryBind))).filter((x): x is string => x !== null);
      return busy.length === 0 ? true : undefined;
    },
    { timeoutMs, intervalMs: 250 },
  );
}

/** The lab's log lines of `host`, parsed (lines that are not JSON, e.g. "vigil: ..." on stderr, are skipped). */
export interface LogLine {
  event?: string;
  level?: string;
  message?: string;
  host?: string;
  reason?: string;
  [k: string]: unknown;
}

export function logSize(file: string): number {
  return existsSync(file) ? statSync(file).size : 0;
}

export function readLog(file: string, fromOffset = 0): LogLine[] {
  if (!existsSync(file)) return [];
  const text = readFileSync(file).subarray(fromOffset).toString('utf8');
  const out: LogLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as LogLine);
    } catch {
      /* a partially written last line: picked up by the next poll */
    }
  }
  return out;
}

export function isUp(r: HostReport): r is UpReport {
  return r.up;
}

/** Everything a test needs to tell "the same agent, in the same role" apart from a change. */
export function fingerprint(s: AgentStatus): string {
  return `${s.host} pid=${s.pid} inc=${s.incarnation} role=${s.role} master=${s.master} gen=${s.generation}`;
}

export async function describeLab(lab: Lab): Promise<string> {
  const s = await lab.readState();
  const lines: string[] = [];
  for (const h of s?.hosts ?? []) {
    const r = await lab.status(h);
    lines.push(r.up ? `  ${fingerprint(r.status)}` : `  ${h} down (${r.error})`);
    lines.push(
      lab
        .tail(h, 8)
        .split('\n')
        .map((l) => `    | ${l.slice(0, 300)}`)
        .join('\n'),
    );
  }
  return `lab ${lab.dir}:\n${lines.join('\n')}`;
}

/**
 * Start the agents of `hosts` (one after the other: Lab.start rewrites lab.json) and wait until
 * each answers on its control socket. Fails at once, with the log tail, if an agent process died
 * (bind error, bad config...).
 */
export async function startHosts(lab: Lab, hosts: string[], timeoutMs = 20_000): Promise<void> {
  const pids = new Map<string, number>();
  for (const h of hosts) pids.set(h, await lab.start(h));
  await waitFor(
    `agents ${hosts.join(', ')} to answer on their control sockets`,
    async () => {
      for (const [h, pid] of pids) {
        if (!lab.alive(pid)) throw new Error(`the agent of ${h} (pid ${pid}) exited:\n${lab.tail(h, 10)}`);
      }
      const reports = await Promise.all(hosts.map((h) => lab.status(h)));
      return reports.every((r) => r.up && r.status.pid === pids.get(r.host)) ? true : undefined;
    },
    { timeoutMs, describe: () => describeLab(lab) },
  );
}

/**
 * Wait until every host of `hosts` is up, `master` is master and every other one is its slave.
 * Returns the reports.
 */
export async function waitAgreedOn(lab: Lab, hosts: string[], master: string, timeoutMs: number): Promise<UpReport[]> {
  return waitFor(
    `${hosts.join(', ')} to agree on ${master} as master`,
    async () => {
      const reports = await Promise.all(hosts.map((h) => lab.status(h)));
      if (!reports.every(isUp)) return undefined;
      const ok = reports.every((r) =>
        r.host === master ? r.status.role === 'master' && r.status.master === master : r.status.role === 'slave' && r.status.master === master,
      );
      return ok ? reports : undefined;
    },
    { timeoutMs, describe: () => describeLab(lab) },
  );
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run the real CLI (`node packages/cli/bin/vigil.cjs ...args`) to completion. */
export function runCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [VIGIL_BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...(opts.env ?? {}) },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`vigil ${args.join(' ')} did not exit within ${opts.timeoutMs ?? 20_000} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, opts.timeoutMs ?? 20_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export { Lab, VIGIL_BIN };
