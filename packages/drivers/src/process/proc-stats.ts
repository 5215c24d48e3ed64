/**
 * Statistics of process VMs, read from Linux /proc by the agent itself (the VM daemon's `list`
 * gives each VM's pid; /proc/<pid>/stat and /io are readable by the same user, which the VM
 * daemon and its VMs are). Per VM, two reads:
 *
 *   - /proc/<pid>/stat: CPU time = utime + stime of the process plus cutime + cstime (the children
 *     it has reaped; children still running are not counted until they are reaped), resident
 *     memory = rss pages, and the start time, which with the pid names this power-on;
 *   - /proc/<pid>/io: read_bytes / write_bytes, what the process (and the children it reaped)
 *     made the storage layer fetch or send, i.e. real disk I/O, not page-cache hits, pipes or
 *     sockets (that would be rchar / wchar). Disk request counts do not exist for a process, so
 *     the ops fields are null.
 *
 * A process VM shares the host's network namespace: its traffic cannot be told apart from the
 * host's, so its network counters are null, never a made-up figure.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { VmCounters } from '../types.js';

export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  /** Clock ticks (USER_HZ). */
  utime: number;
  stime: number;
  cutime: number;
  cstime: number;
  /** Clock ticks after boot. */
  starttime: number;
  /** Pages. */
  rss: number;
}

/** Parse /proc/<pid>/stat. Throws a clear error on anything else. */
export function parseProcStat(text: string): ProcStat {
  // The command name is in parentheses and may itself contain spaces and parentheses: the last ')' ends it.
  const open = text.indexOf(' (');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error('malformed /proc stat line: no "(comm)"');
  const pid = Number(text.slice(0, open));
  const f = text.slice(close + 1).trim().split(/\s+/);
  // f[0] is field 3 (state): field n is f[n - 3]; rss is field 24.
  if (!Number.isSafeInteger(pid) || f.length < 22) throw new Error(`malformed /proc stat line: ${f.length + 2} fields`);
  const int = (n: number, name: string): number => {
    const v = f[n - 3]!;
    if (!/^-?[0-9]+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new Error(`malformed /proc stat line: ${name} is "${v}"`);
    return Number(v);
  };
  return {
    pid,
    comm: text.slice(open + 2, close),
    state: f[0]!,
    ppid: int(4, 'ppid'),
    utime: int(14, 'utime'),
    stime: int(15, 'stime'),
    cutime: int(16, 'cutime'),
    cstime: int(17, 'cstime'),
    starttime: int(22, 'starttime'),
    rss: int(24, 'rss'),
  };
}

export interface ProcIo {
  readBytes: number;
  writeBytes: number;
}

/** Parse /proc/<pid>/io (read_bytes and write_bytes). Throws when either is missing or not a number. */
export function parseProcIo(text: string): ProcIo {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+):\s*(\S+)\s*$/.exec(line);
    if (m) fields.set(m[1]!, m[2]!);
  }
  const int = (name: string): number => {
    const v = fields.get(name);
    if (v === undefined || !/^[0-9]+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new Error(`malformed /proc io: ${name} is ${v === undefined ? 'missing' : `"${v}"`}`);
    return Number(v);
  };
  return { readBytes: int('read_bytes'), writeBytes: int('write_bytes') };
}

export interface ProcSys {
  /** USER_HZ: clock ticks per second of /proc/<pid>/stat. */
  clockTicks: number;
  pageSize: number;
}

let sys: ProcSys | null = null;

function getconf(name: string, fallback: number): number {
  try {
    const v = Number(execFileSync('getconf', [name], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    return Number.isSafeInteger(v) && v > 0 ? v : fallback;
  } catch {
    return fallback;
  }
}

/** The machine's USER_HZ and page size (`getconf`, once; 100 and 4096 if it cannot tell). */
export function procSys(): ProcSys {
  sys ??= { clockTicks: getconf('CLK_TCK', 100), pageSize: getconf('PAGESIZE', 4096) };
  return sys;
}

/** A VM with no counters at all: every field null, and why. */
export function noCounters(vm: string, error: string, incarnation = ''): VmCounters {
  return {
    vm,
    incarnation,
    cpuTimeNs: null,
    memoryBytes: null,
    diskReadBytes: null,
    diskWriteBytes: null,
    diskReadOps: null,
    diskWriteOps: null,
    netRxBytes: null,
    netTxBytes: null,
    error,
  };
}

/** `pid:starttime` of a live process (its identity across pid reuse), or null if it is gone or a zombie. */
export function processIncarnation(pid: number, read: (path: string) => string = (p) => readFileSync(p, 'utf8')): string | null {
  try {
    const st = parseProcStat(read(`/proc/${pid}/stat`));
    return st.state === 'Z' || st.state === 'X' ? null : `${pid}:${st.starttime}`;
  } catch {
    return null;
  }
}

/**
 * The counters of a process VM whose process is `pid`. Never throws: a vanished process gives
 * null fields and an error; an unreadable io file (another user's process) null disk fields.
 * `read` is injectable for tests.
 */
export function processCounters(vm: string, pid: number, s: ProcSys = procSys(), read: (path: string) => string = (p) => readFileSync(p, 'utf8')): VmCounters {
  if (!Number.isSafeInteger(pid) || pid <= 1) return noCounters(vm, `no process id known for ${vm}`);
  let st: ProcStat;
  try {
    st = parseProcStat(read(`/proc/${pid}/stat`));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return noCounters(vm, code === 'ENOENT' || code === 'ESRCH' ? `its process ${pid} is gone` : `/proc/${pid}/stat: ${(err as Error).message}`);
  }
  if (st.state === 'Z' || st.state === 'X') return noCounters(vm, `its process ${pid} has exited`);
  const out: VmCounters = {
    vm,
    incarnation: `${pid}:${st.starttime}`,
    cpuTimeNs: Math.round(((st.utime + st.stime + st.cutime + st.cstime) * 1e9) / s.clockTicks),
    memoryBytes: st.rss * s.pageSize,
    diskReadBytes: null,
    diskWriteBytes: null,
    diskReadOps: null,
    diskWriteOps: null,
    netRxBytes: null,
    netTxBytes: null,
  };
  try {
    const io = parseProcIo(read(`/proc/${pid}/io`));
    out.diskReadBytes = io.readBytes;
    out.diskWriteBytes = io.writeBytes;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    out.error = code === 'EACCES' || code === 'EPERM' ? `/proc/${pid}/io is not readable by this user: no disk counters` : `/proc/${pid}/io: ${(err as Error).message}`;
  }
  return out;
}
