/**
 * What the VM daemon (vmd.ts) and its clients (the process driver, driver.ts) share: the socket
 * name, the wire format, the local state files, and how a VM process is recognised.
 *
 * Wire format: newline-delimited JSON over a Linux abstract unix socket, one per state directory.
 *   request  {"id": <number>, "op": "hello" | "list" | "powerOn" | "powerOff" | "shutdown" | "exit", ...}
 *   reply    {"id": <same>, "ok": true, ...}  or  {"id": <same>, "ok": false, "error": "...", "code": "..."}
 *   event    {"event": "stopped", "vm", "reason", "detail"}   queued while no client is connected
 *            {"event": "started", "vm", "pid", "startedAt"}   only to clients connected at the time
 * A connection starts with `hello` and the token of `vmd.token` (an abstract socket has no file
 * permissions; the token file is readable only by the agent's user); until then every other
 * request is refused (EPERM) and no event is sent. A reply and the events are written in the
 * order things happened in the daemon, so a client that applies them in arrival order has the
 * daemon's view (see ProcessDriver).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { StopReason } from '../types.js';
import { isDomainProcess } from '../libvirt/virsh.js';

/**
 * The abstract unix socket of the VM daemon of `stateDir` (`\0vigil-vmd-<24 hex>`). Binding it is
 * what makes a daemon the only one of its state directory: the kernel refuses a second bind
 * (EADDRINUSE), and the name vanishes with the process, so there is never a stale socket file.
 * Abstract names are per network namespace.
 */
export function vmdSocketName(stateDir: string): string {
  return `\0vigil-vmd-${vmdId(stateDir)}`;
}

/** The identity of the VM daemon of `stateDir` (24 hex of sha256 of the path): its socket name, and the `daemon` of its libvirt domains' metadata. */
export function vmdId(stateDir: string): string {
  return createHash('sha256').update(resolve(stateDir)).digest('hex').slice(0, 24);
}

/** What runs the VMs of a VM daemon. */
export type VmdBackend = { type: 'process' } | { type: 'libvirt'; uri: string };

/**
 * `<stateDir>/vmd-vms.json`: the VM processes of the daemon, `[{vm, pid, startedAt, running, domain?}]`,
 * rewritten on change. A VM is listed from its spawn (so that a successor can kill it), and
 * `running` once it was reported running. A libvirt VM has its `domain` name, and is listed from
 * just before the domain is created (`pid` 0 until QEMU's pid is known).
 */
export function vmdVmsFile(stateDir: string): string {
  return join(stateDir, 'vmd-vms.json');
}

/** `<stateDir>/vmd.token`: the secret a client presents in `hello` (mode 0600, new at each daemon start). */
export function vmdTokenFile(stateDir: string): string {
  return join(stateDir, 'vmd.token');
}

/** `<stateDir>/vmd.log`: the daemon's JSON log lines (its stdout and stderr). */
export function vmdLogFile(stateDir: string): string {
  return join(stateDir, 'vmd.log');
}

/** Longest request or reply line accepted (a longer one is dropped with an error reply). */
export const MAX_LINE_CHARS = 1024 * 1024;

/** Error codes of failed replies. */
export type VmdErrorCode =
  /** The VM's lease is held elsewhere (ELOCKED / ECHANGED): not a failure, the master waits. */
  | 'ELEASEHELD'
  /** The power-on failed (bad config, no host VM lease, command not found, storage error...). */
  | 'EPOWERON'
  /** A malformed or unknown request. */
  | 'EPROTO'
  /** No `hello` with the right token on this connection yet. */
  | 'EPERM'
  /** The daemon refuses (e.g. `exit` while VMs run, any request while exiting). */
  | 'EBUSY';

export type VmdRequest =
  /** First request of a connection: the token of vmd.token. Reply: {pid, host, cluster, backend}; queued events follow it. */
  | { id: number; op: 'hello'; token: string }
  | { id: number; op: 'list' }
  | {
      id: number;
      op: 'powerOn';
      vm: string;
      /** Absolute path of the VM's config file. */
      specPath: string;
      datastore: string;
      /** The datastore's path as the client knows it (used if the daemon was not given it). */
      datastorePath?: string;
      /** '' | 'orphan' | the lease state the master judged dead (PowerOnMsg.takeover in @vigil/core). */
      takeover: string;
    }
  | { id: number; op: 'powerOff'; vm: string }
  | { id: number; op: 'shutdown'; vm: string; timeoutMs: number }
  | { id: number; op: 'exit' };

export interface VmdVm {
  vm: string;
  /** The VM's process (libvirt: its QEMU process; 0 if not known). */
  pid: number;
  /** Wall-clock start, for display only. */
  startedAt: string;
  /** libvirt backend: the domain's name on this host. */
  domain?: string;
}

/** Reply to `list` (besides id and ok). */
export interface VmdListReply {
  pid: number;
  host: string;
  cluster: string;
  /** 'process' or 'libvirt' (absent from daemons older than the libvirt backend: process). */
  backend?: string;
  vms: VmdVm[];
}

export type VmdEvent =
  | { event: 'stopped'; vm: string; reason: StopReason; detail: string }
  | { event: 'started'; vm: string; pid: number; startedAt: string; domain?: string };

/**
 * Splits a stream (decoded as UTF-8) into lines. A line longer than `max` characters is dropped
 * and reported once as null, and the rest of it (up to its newline) is skipped.
 */
export class LineReader {
  private buf = '';
  private skipping = false;

  constructor(private readonly max = MAX_LINE_CHARS) {}

  push(chunk: string): (string | null)[] {
    const out: (string | null)[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf('\n', start);
      if (nl < 0) break;
      const piece = chunk.slice(start, nl);
      start = nl + 1;
      if (this.skipping) {
        this.skipping = false; // the end of the overlong line, already reported
      } else if (this.buf.length + piece.length > this.max) {
        out.push(null);
      } else {
        out.push(this.buf + piece);
      }
      this.buf = '';
    }
    const rest = chunk.slice(start);
    if (!this.skipping) {
      if (this.buf.length + rest.length > this.max) {
        out.push(null);
        this.buf = '';
        this.skipping = true;
      } else {
        this.buf += rest;
      }
    }
    return out;
  }
}

/**
 * True if `pid` is alive and is the process of `vm` (its environment has `VIGIL_VM=<vm>`, which
 * the daemon gives every VM): guards against a recycled pid. Linux /proc; needs the same user.
 * A process in the middle of an exec (setpriv starting the VM's command) shows an empty
 * environment for an instant: read again briefly before concluding.
 */
export function isVmProcess(pid: number, vm: string): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 1) return false;
  const needle = Buffer.from(`\0VIGIL_VM=${vm}\0`);
  for (let attempt = 0; attempt < 20; attempt++) {
    let env: Buffer;
    try {
      // Entries are NUL-terminated: look for the whole entry, at the start or after a NUL.
      env = Buffer.concat([Buffer.from([0]), readFileSync(`/proc/${pid}/environ`)]);
    } catch {
      return false;
    }
    if (env.length > 1) return env.includes(needle);
    try {
      if (/^\d+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) return false; // dead, not reaped
    } catch {
      return false;
    }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
  }
  return false;
}

/** True if the VM of a vmd-vms.json entry still runs here (its process, or its domain's QEMU process). */
export function isVmdEntryAlive(v: { vm: string; pid: number; domain?: string | undefined }): boolean {
  return v.domain ? isDomainProcess(v.pid, v.domain) : isVmProcess(v.pid, v.vm);
}

/** An entry of vmd-vms.json. */
export interface VmdVmsEntry extends VmdVm {
  running: boolean;
}

/** Parse `vmd-vms.json` (never throws: a missing or bad file is an empty list). */
export function readVmdVms(stateDir: string): VmdVmsEntry[] {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(vmdVmsFile(stateDir), 'utf8'));
  } catch {
    return [];
  }
  if (!Array.isArray(v)) return [];
  return v.filter(
    (x): x is VmdVmsEntry =>
      !!x &&
      typeof x === 'object' &&
      typeof (x as VmdVm).vm === 'string' &&
      Number.isSafeInteger((x as VmdVm).pid) &&
      typeof (x as VmdVm).startedAt === 'string' &&
      typeof (x as VmdVmsEntry).running === 'boolean' &&
      ((x as VmdVm).domain === undefined || typeof (x as VmdVm).domain === 'string'),
  );
}
