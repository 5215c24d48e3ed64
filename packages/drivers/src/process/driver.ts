/**
 * The process driver: a VM is a long-running process described by a JSON file on a datastore.
 * The VMs of a host run under its one VM daemon (vmd.ts), which holds their leases and outlives
 * the agent; this driver is the daemon's client. On construction it connects to the daemon of
 * the state directory, so a restarted agent finds the VMs that kept running. It starts a daemon
 * (detached, in its own session) when none runs and one is needed: for a power-on, or when
 * `vmd-vms.json` still lists VMs of a daemon that died (the new one kills any still running and
 * reports them); a host that runs no VM has no daemon. If the daemon dies, its VMs die with it
 * (pdeathsig): the driver reports them stopped and starts a new daemon.
 *
 * `list()` is synchronous: it returns a view of the daemon's VMs kept from the daemon's `list`
 * replies, its events and the replies to power operations, applied in the order they arrive
 * (the daemon's order). Before the first reply the view comes from `<stateDir>/vmd-vms.json`
 * (VMs whose process is still there), so an agent that just restarted still knows them.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hostCapacity } from '../capacity.js';
import type { Driver, DriverEvent, HostCapacity, StopReason, VmCounters, VmRuntime, VmSpec } from '../types.js';
import { noCounters, processCounters } from './proc-stats.js';
import { readProcessVm, specOf } from './spec.js';
import { codedError, VmdConnection, type VmdReply, type VmdRequestBody } from './vmd-client.js';
import { isVmdEntryAlive, readVmdVms, vmdLogFile, type VmdBackend, type VmdEvent, type VmdVm } from './vmd-protocol.js';
import type { VmdArgs } from './vmd.js';

const VMD_MAIN = fileURLToPath(new URL('./vmd-main.js', import.meta.url));

export interface ProcessDriverOptions {
  host: string;
  cluster: string;
  /** Datastore name -> path on this host. */
  datastores: Record<string, string>;
  /** Agent state directory; the VM daemon keeps `vmd.log`, `vmd-vms.json`, `vms/<vm>.log` there. */
  stateDir: string;
  timing: { storageHeartbeatIntervalMs: number; selfFenceDeadlineMs: number; storageCallTimeoutMs: number; heartbeatIntervalMs: number };
  capacity?: { memoryMB: number; cpus: number };
  /** Default graceful-stop timeout. */
  shutdownTimeoutMs: number;
  /** What the VM daemon runs VMs with (default: process). LibvirtDriver sets it. */
  backend?: VmdBackend;
}

/** How long an operation waits for a connection to the daemon (it is being started). */
const CONNECT_WAIT_MS = 10_000;
/** A daemon that does not come up is started again after this long. */
const RESPAWN_AFTER_MS = 3000;

const STOP_REASONS: readonly StopReason[] = ['exited', 'killed', 'fenced', 'requested', 'leaseHeld', 'failed'];

export class ProcessDriver implements Driver {
  readonly type: string = 'process';
  private readonly stateDir: string;
  private readonly backend: VmdBackend;
  /** The daemon's VMs as this client knows them. */
  private readonly vms = new Map<string, { pid: number; startedAt: string; domain?: string }>();
  private handler: ((ev: DriverEvent) => void) | null = null;
  private readonly pending: DriverEvent[] = [];
  private conn: VmdConnection | null = null;
  private readonly waiters = new Set<() => void>();
  private closed = false;
  private daemonPid: number | undefined;
  /** Set when the daemon of this state directory serves another host or cluster. */
  private mismatch: string | null = null;
  /** VMs reported stopped when the previous daemon's connection was lost (its successor reports them again). */
  private readonly reportedDead = new Set<string>();
  private lastSpawn = -Infinity;
  /** A connection attempt is running; it settles connected, closed, or idle (no daemon, none needed). */
  private connecting: Promise<void> | null = null;
  /** Start a daemon if none listens (else an attempt that finds none ends idle). */
  private wantDaemon = false;

  constructor(private readonly opts: ProcessDriverOptions) {
    this.stateDir = resolve(opts.stateDir);
    this.backend = opts.backend ?? { type: 'process' };
    mkdirSync(this.stateDir, { recursive: true, mode: 0o700 });
    const listed = readVmdVms(this.stateDir);
    // What ran when the daemon last wrote its list, and still does (before the daemon's own reply).
    for (const v of listed) if (v.running && isVmdEntryAlive(v)) this.vms.set(v.vm, { pid: v.pid, startedAt: v.startedAt, ...(v.domain ? { domain: v.domain } : {}) });
    this.connect(listed.length > 0);
  }

  // ---- connection to the daemon ----------------------------------------------------------------

  /** Connect if not connected (or connecting); `wantDaemon`: start a daemon if none runs. */
  private connect(wantDaemon: boolean): void {
    if (wantDaemon) this.wantDaemon = true;
    if (this.conn || this.connecting || this.closed) return;
    this.connecting = this.connectLoop().finally(() => {
      this.connecting = null;
      // Ended without a connection: nobody waiting for one can have it now.
      if (!this.conn) for (const w of [...this.waiters]) w();
    });
  }

  private async connectLoop(): Promise<void> {
    let delay = 20;
    while (!this.closed) {
      try {
        let opened: VmdConnection | null = null;
        const c = await VmdConnection.open(this.stateDir, { onEvent: (ev) => this.onDaemonEvent(ev), onClose: () => opened && this.onDisconnect(opened) });
        opened = c;
        if (this.closed) {
          c.close();
          return;
        }
        this.attach(c);
        return;
      } catch (err) {
        // ECONNREFUSED: nobody listens on the abstract name. (Anything else, e.g. no token file
        // or EPERM for an old token, is a daemon starting up: try again.)
        const nobody = (err as NodeJS.ErrnoException).code === 'ECONNREFUSED';
        if (nobody && !this.wantDaemon) return; // idle: no daemon, and none needed yet
        // Nobody listens: start the daemon (again if it did not come up after a while).
        if (nobody && Date.now() - this.lastSpawn > RESPAWN_AFTER_MS) this.spawnDaemon();
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 500);
    }
  }

  private spawnDaemon(): void {
    this.lastSpawn = Date.now();
    const args: VmdArgs = {
      host: this.opts.host,
      cluster: this.opts.cluster,
      datastores: Object.fromEntries(Object.entries(this.opts.datastores).map(([d, p]) => [d, resolve(p)])),
      stateDir: this.stateDir,
      timing: {
        storageHeartbeatIntervalMs: this.opts.timing.storageHeartbeatIntervalMs,
        selfFenceDeadlineMs: this.opts.timing.selfFenceDeadlineMs,
        storageCallTimeoutMs: this.opts.timing.storageCallTimeoutMs,
      },
      shutdownTimeoutMs: this.opts.shutdownTimeoutMs,
      ...(this.backend.type === 'process' ? {} : { backend: this.backend }),
    };
    let log: number;
    try {
      log = openSync(vmdLogFile(this.stateDir), 'a', 0o600);
    } catch {
      return; // the connection wait reports the daemon unreachable
    }
    try {
      // Own session (detached): it outlives the agent and its terminal. The environment is the
      // agent's (a lab host's marker reaches the daemon and its VMs).
      const child = spawn(process.execPath, [VMD_MAIN, Buffer.from(JSON.stringify(args)).toString('base64url')], {
        detached: true,
        stdio: ['ignore', log, log],
        cwd: '/',
        env: process.env,
      });
      child.on('error', () => {});
      child.unref();
    } finally {
      closeSync(log);
    }
  }

  private attach(c: VmdConnection): void {
    this.conn = c;
    this.wantDaemon = false;
    this.lastSpawn = -Infinity; // it came up: if it dies, start the next one at once
    this.daemonPid = c.hello.pid;
    this.mismatch =
      c.hello.host !== this.opts.host || c.hello.cluster !== this.opts.cluster
        ? `the VM daemon of ${this.stateDir} (pid ${c.hello.pid}) serves ${c.hello.host} of cluster ${c.hello.cluster}, not ${this.opts.host} of ${this.opts.cluster}`
        : c.hello.backend !== this.backend.type
          ? `the VM daemon of ${this.stateDir} (pid ${c.hello.pid}) runs ${c.hello.backend} VMs, not ${this.backend.type} VMs (the driver was changed while it ran VMs: power them off, or stop the daemon, first)`
          : null;
    void c.request({ op: 'list' }, 10_000, (r) => this.applyList(r)).catch(() => {});
    for (const w of [...this.waiters]) w();
  }

  /** The connection is gone: the daemon died, and its VMs with it. */
  private onDisconnect(c: VmdConnection): void {
    if (this.conn !== c) return;
    this.conn = null;
    if (this.closed) return;
    const pid = this.daemonPid;
    for (const vm of [...this.vms.keys()].sort()) {
      this.vms.delete(vm);
      this.reportedDead.add(vm);
      this.emit({ type: 'stopped', vm, reason: 'killed', detail: `the VM daemon${pid ? ` (pid ${pid})` : ''} died, and its VMs with it` });
    }
    // A successor kills whatever of its VMs is still running (it died before their setpriv had
    // set the death signal) and reports them: needed while its list still names any.
    this.connect(readVmdVms(this.stateDir).length > 0);
  }

  /**
   * The connection to the daemon. `start`: start a daemon if none runs (power-on); otherwise
   * null when none runs (then no VM runs here either).
   */
  private connection(start: boolean): Promise<VmdConnection | null> {
    if (this.closed) return Promise.reject(codedError('the process driver is closed', 'EPOWERON'));
    if (this.conn) return Promise.resolve(this.conn);
    this.connect(start);
    return new Promise<VmdConnection | null>((res, rej) => {
      const timer = setTimeout(() => {
        this.waiters.delete(w);
        rej(codedError(`the VM daemon of ${this.stateDir} is not reachable (see ${vmdLogFile(this.stateDir)})`, 'EPOWERON'));
      }, CONNECT_WAIT_MS);
      const w = () => {
        // Woken on a connection, on close, or when an attempt ended without one.
        if (!this.conn && !this.closed && (this.connecting || this.wantDaemon)) return; // still coming
        this.waiters.delete(w);
        clearTimeout(timer);
        if (this.conn) res(this.conn);
        else if (this.closed) rej(codedError('the process driver is closed', 'EPOWERON'));
        else res(null);
      };
      this.waiters.add(w);
      if (!this.connecting) w(); // the attempt already ended idle
    });
  }

  private async call(body: VmdRequestBody, timeoutMs: number, onOk?: (r: VmdReply) => void): Promise<VmdReply | null> {
    const c = await this.connection(body.op === 'powerOn');
    if (!c) return null; // no daemon runs: nothing runs here to stop
    if (body.op === 'powerOn' && this.mismatch) throw codedError(this.mismatch, 'EPOWERON');
    return c.request(body, timeoutMs, onOk);
  }

  // ---- the view of the daemon's VMs ------------------------------------------------------------

  private onDaemonEvent(ev: VmdEvent): void {
    if (typeof ev.vm !== 'string') return;
    if (ev.event === 'started') {
      if (!Number.isSafeInteger(ev.pid)) return;
      this.vms.set(ev.vm, { pid: ev.pid, startedAt: String(ev.startedAt), ...(typeof ev.domain === 'string' ? { domain: ev.domain } : {}) });
      this.reportedDead.delete(ev.vm);
      return;
    }
    if (ev.event !== 'stopped') return;
    const had = this.vms.delete(ev.vm);
    // Already reported when the connection to the daemon that ran it was lost.
    if (!had && this.reportedDead.delete(ev.vm)) return;
    const reason = STOP_REASONS.includes(ev.reason) ? ev.reason : 'killed';
    this.emit({ type: 'stopped', vm: ev.vm, reason, detail: String(ev.detail) });
  }

  private applyList(r: VmdReply): void {
    if (Number.isSafeInteger(r.pid)) this.daemonPid = r.pid as number;
    const list = (Array.isArray(r.vms) ? r.vms : []).filter((v): v is VmdVm => !!v && typeof v.vm === 'string' && Number.isSafeInteger(v.pid));
    const now = new Set(list.map((v) => v.vm));
    // Known here but not run by the daemon, and no stop event said so (a stale vmd-vms.json).
    for (const vm of [...this.vms.keys()].sort()) {
      if (now.has(vm)) continue;
      this.vms.delete(vm);
      this.emit({ type: 'stopped', vm, reason: 'killed', detail: `the VM daemon (pid ${this.daemonPid}) does not run it (any more)` });
    }
    for (const v of list) this.vms.set(v.vm, { pid: v.pid, startedAt: String(v.startedAt), ...(typeof v.domain === 'string' ? { domain: v.domain } : {}) });
    // The events that came before this reply included the new daemon's reports of its predecessor's VMs.
    this.reportedDead.clear();
  }

  private emit(ev: DriverEvent): void {
    if (this.handler) this.handler(ev);
    else this.pending.push(ev);
  }

  // ---- Driver ----------------------------------------------------------------------------------

  async loadSpec(vmId: string, path: string): Promise<VmSpec> {
    return specOf(vmId, path, await readProcessVm(path));
  }

  async powerOn(spec: VmSpec, takeover = ''): Promise<void> {
    const dsPath = this.opts.datastores[spec.datastore];
    if (!dsPath) throw new Error(`datastore ${spec.datastore} is not mounted on ${this.opts.host}`);
    const t = this.opts.timing.storageCallTimeoutMs;
    try {
      // The daemon answers once the VM runs (at once if it already runs there: never a second copy).
      await this.call({ op: 'powerOn', vm: spec.id, specPath: resolve(spec.path), datastore: spec.datastore, datastorePath: resolve(dsPath), takeover }, 20 * t + 10_000, (r) => {
        this.vms.set(spec.id, { pid: Number(r.pid), startedAt: String(r.startedAt), ...(typeof r.domain === 'string' ? { domain: r.domain } : {}) });
        this.reportedDead.delete(spec.id);
      });
    } catch (err) {
      const code = (err as { code?: string }).code;
      throw codedError((err as Error).message, code === 'ELEASEHELD' ? 'ELEASEHELD' : 'EPOWERON');
    }
  }

  async powerOff(vmId: string): Promise<void> {
    await this.call({ op: 'powerOff', vm: vmId }, 4 * this.opts.timing.storageCallTimeoutMs + 30_000);
  }

  async shutdown(vmId: string, timeoutMs: number): Promise<void> {
    await this.call({ op: 'shutdown', vm: vmId, timeoutMs }, timeoutMs + 4 * this.opts.timing.storageCallTimeoutMs + 30_000);
  }

  list(): VmRuntime[] {
    return [...this.vms.entries()]
      .map(([id, v]) => ({ id, power: 'on' as const, pid: v.pid, ...(this.daemonPid ? { daemonPid: this.daemonPid } : {}), ...(v.domain ? { domain: v.domain } : {}) }))
      .sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  onEvent(handler: (ev: DriverEvent) => void): void {
    this.handler = handler;
    for (const ev of this.pending.splice(0)) handler(ev);
  }

  capacity(): HostCapacity {
    return hostCapacity(this.opts.capacity);
  }

  /** Counters of each VM from /proc (proc-stats.ts), read by this process: no request to the daemon. */
  async stats(): Promise<VmCounters[]> {
    const out: VmCounters[] = [];
    for (const [i, v] of this.list().entries()) {
      out.push(v.pid ? processCounters(v.id, v.pid) : noCounters(v.id, 'its process id is not known yet'));
      // Two small synchronous reads per VM: let the event loop breathe on hosts with many VMs.
      if (i % 64 === 63) await new Promise((r) => setImmediate(r));
    }
    return out;
  }

  /** Disconnect; the daemon and its VMs keep running. */
  async close(): Promise<void> {
    this.closed = true;
    const c = this.conn;
    this.conn = null;
    c?.close();
    for (const w of [...this.waiters]) w();
  }
}
