/**
 * The VM daemon of the process driver ("vmd"): ONE process per host (per agent state directory)
 * that starts, stops and watches every VM of the host and holds their leases, sanlock style:
 *
 *   - On each datastore where it runs VMs it holds the host VM lease `host-N-vm` and keeps it
 *     renewed (LeaseKeeper, every storageHeartbeatIntervalMs, self-fence deadline
 *     selfFenceDeadlineMs). That is its only periodic storage write, whatever the number of VMs.
 *   - A VM lease (`vms/<vm>.lease`) is acquired before the VM starts, with the host VM lease
 *     generation in its record, and released when the VM stops. It is never renewed: it lives as
 *     long as the host VM lease is renewed with that generation.
 *   - If the host VM lease of a datastore is lost (taken over, lock gone) or cannot be renewed
 *     before the self-fence deadline, every VM of that datastore is SIGKILLed at once and their
 *     VM leases are abandoned (they die with the host lease generation).
 *   - VMs run under `setpriv --pdeathsig SIGKILL` (when available): if the daemon dies, the holder
 *     of their leases is gone, and so are they, at once.
 *
 * It outlives the agent (the driver starts it detached, in its own session), so an agent crash or
 * upgrade does not stop VMs; a restarted agent's driver connects to it again. Only one daemon
 * runs per state directory: it binds the abstract socket vmdSocketName(stateDir), and a second
 * one gets EADDRINUSE and exits 0. That also makes it safe to take over its own earlier records
 * (host VM lease, VM leases naming this host): nobody else on this host can hold them.
 *
 * Clients authenticate with the token of `<stateDir>/vmd.token` (mode 0600; the state directory
 * is the agent's, 0700): an abstract socket has no file permissions, and a powerOn runs a command.
 * Protocol: vmd-protocol.ts. Log: JSON lines on stdout (the spawner points it at `vmd.log`).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants as fsConstants, mkdirSync, openSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { isVmId, parseTakeover } from '@vigil/core';
import { describeError, hostVmLease, LeaseError, LeaseKeeper, vmFileName, vmLease, withTimeout, type KeeperEvent, type LeaseFile } from '@vigil/datastore';
import type { StopReason } from '../types.js';
import { readProcessVm, type ProcessVmConfig } from './spec.js';
import { isVmProcess, LineReader, MAX_LINE_CHARS, readVmdVms, vmdSocketName, vmdTokenFile, vmdVmsFile, type VmdErrorCode, type VmdEvent, type VmdRequest, type VmdVm } from './vmd-protocol.js';

export { vmdSocketName } from './vmd-protocol.js';

export interface VmdArgs {
  host: string;
  cluster: string;
  /** Datastore name -> absolute path on this host. */
  datastores: Record<string, string>;
  /** The agent's state directory (absolute): socket name, `vmd.log`, `vmd-vms.json`, `vms/<vm>.log`. */
  stateDir: string;
  timing: { storageHeartbeatIntervalMs: number; selfFenceDeadlineMs: number; storageCallTimeoutMs: number };
  /** Default graceful-stop timeout. */
  shutdownTimeoutMs: number;
}

/** Stop events kept while no client is connected (the oldest are dropped beyond this). */
export const MAX_QUEUED_EVENTS = 10_000;

class VmdError extends Error {
  constructor(
    message: string,
    readonly code: VmdErrorCode,
  ) {
    super(message);
  }
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: unknown) => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // awaited by whoever needs it; never an unhandled rejection
  return { promise, resolve, reject };
}

/** One VM of this daemon, from its power-on until it is gone (stopped and its lease let go). */
interface VmEntry {
  vm: string;
  datastore: string;
  /** starting: lease and spawn under way; running: the VM runs; exited: it ended, lease being released. */
  phase: 'starting' | 'running' | 'exited';
  /** Settles with the power-on attempt (resolved: the VM runs). */
  started: Deferred;
  /** Resolves when the entry is removed. */
  gone: Deferred;
  lease: LeaseFile | null;
  child: ChildProcess | null;
  pid: number;
  startedAt: string;
  /** Stopped through the daemon: how (the last request wins: a power off overrides a shutdown). */
  stop: 'hard' | 'graceful' | null;
  /** A graceful shutdown ran out of time and the VM was SIGKILLed. */
  forced: boolean;
  /** Why the VM was fenced, if it was. */
  fenced: string | null;
}

/** Executable named like execvp would find it (PATH of the VM's environment), or null. */
function findExecutable(command: string, pathEnv: string | undefined): string | null {
  const ok = (p: string) => {
    try {
      if (!statSync(p).isFile()) return false;
      accessSync(p, fsConstants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (command.includes('/')) return ok(command) ? command : null;
  for (const dir of (pathEnv ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter)) {
    const p = join(dir || '.', command);
    if (ok(p)) return p;
  }
  return null;
}

/** `setpriv` if it is on PATH and supports --pdeathsig, else null. */
function findSetpriv(): string | null {
  const p = findExecutable('setpriv', process.env.PATH);
  if (!p) return null;
  const r = spawnSync(p, ['--pdeathsig', 'SIGKILL', '--', p, '--version'], { stdio: 'ignore', timeout: 5000 });
  return r.status === 0 ? p : null;
}

export class Vmd {
  private readonly vms = new Map<string, VmEntry>();
  private readonly hostLeases = new Map<string, { lease: LeaseFile; generation: number; path: string }>();
  private readonly hostAcquiring = new Map<string, Promise<number>>();
  /** Renewals of host VM leases in flight. */
  private readonly renewals = new Set<Promise<unknown>>();
  private readonly datastores = new Map<string, string>();
  private readonly keeper: LeaseKeeper;
  /** Connected clients; `true` once authenticated. */
  private readonly clients = new Map<Socket, boolean>();
  private readonly queue: VmdEvent[] = [];
  private droppedEvents = 0;
  private server: Server | null = null;
  private token = '';
  private setpriv: string | null = null;
  private exiting = false;

  constructor(private readonly a: VmdArgs) {
    for (const [ds, p] of Object.entries(a.datastores)) this.datastores.set(ds, resolve(p));
    this.keeper = new LeaseKeeper({
      intervalMs: a.timing.storageHeartbeatIntervalMs,
      selfFenceDeadlineMs: a.timing.selfFenceDeadlineMs,
      now: () => performance.now(),
      onEvent: (ev) => this.onKeeperEvent(ev),
    });
  }

  log(level: 'info' | 'warn' | 'error', event: string, message: string, fields: Record<string, unknown> = {}): void {
    process.stdout.write(JSON.stringify({ timestamp: new Date().toISOString(), level, event, message, host: this.a.host, pid: process.pid, ...fields }) + '\n');
  }

  /** Bind the socket and start serving. False if another daemon of this state directory runs. */
  async start(): Promise<boolean> {
    mkdirSync(join(this.a.stateDir, 'vms'), { recursive: true, mode: 0o700 });
    const server = createServer((sock) => this.accept(sock));
    const bound = await new Promise<boolean>((res, rej) => {
      server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? res(false) : rej(err)));
      server.listen(vmdSocketName(this.a.stateDir), () => {
        // Before any connection is handled: this daemon is now the only one of the state dir.
        try {
          this.writeToken();
          this.sweepOrphans();
          res(true);
        } catch (err) {
          rej(err);
        }
      });
    });
    if (!bound) return false;
    server.on('error', (err) => this.log('error', 'vmd.socket-error', `socket error: ${describeError(err)}`));
    this.server = server;
    this.setpriv = findSetpriv();
    if (!this.setpriv) this.log('warn', 'vmd.no-pdeathsig', 'setpriv with --pdeathsig is not available: VMs will not die with the VM daemon (a restarted daemon kills them)');
    this.keeper.start();
    this.log('info', 'vmd.started', `VM daemon of ${this.a.host} started`, { stateDir: this.a.stateDir, setpriv: this.setpriv });
    return true;
  }

  /** A fresh client token, mode 0600, replacing the previous daemon's. */
  private writeToken(): void {
    this.token = randomBytes(32).toString('hex');
    const file = vmdTokenFile(this.a.stateDir);
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, this.token + '\n', { mode: 0o600 });
    renameSync(tmp, file);
  }

  /**
   * VMs listed by a previous daemon of this state dir (it died: we got its socket). Their lease
   * holder is gone: any still running (no pdeathsig) is killed now, and each is reported stopped.
   */
  private sweepOrphans(): void {
    for (const v of readVmdVms(this.a.stateDir)) {
      const alive = isVmProcess(v.pid, v.vm);
      if (alive) {
        try {
          process.kill(v.pid, 'SIGKILL');
        } catch {
          /* gone meanwhile */
        }
      }
      const detail = alive
        ? `the VM daemon of this host had died; the VM (pid ${v.pid}) was still running without its lease holder and was killed`
        : 'the VM daemon of this host had died, and the VM with it';
      this.log('warn', 'vmd.orphan', `${v.vm}: ${detail}`, { vm: v.vm, vmPid: v.pid });
      this.emit({ event: 'stopped', vm: v.vm, reason: 'killed', detail });
    }
    this.saveVms();
  }

  // ---- clients ---------------------------------------------------------------------------------

  private accept(sock: Socket): void {
    this.clients.set(sock, false);
    sock.setEncoding('utf8');
    sock.on('error', () => {});
    sock.on('close', () => this.clients.delete(sock));
    const reader = new LineReader();
    sock.on('data', (chunk: string) => {
      for (const line of reader.push(chunk)) this.onLine(sock, line);
    });
  }

  private send(sock: Socket, msg: object): void {
    if (!sock.destroyed && sock.writable) sock.write(JSON.stringify(msg) + '\n');
  }

  /** Push an event to every authenticated client; `stopped` events wait for one if none is connected. */
  private emit(ev: VmdEvent): void {
    const targets = [...this.clients].filter(([, authed]) => authed).map(([s]) => s);
    if (targets.length > 0) {
      for (const s of targets) this.send(s, ev);
      return;
    }
    if (ev.event !== 'stopped') return; // a later client learns what runs from `list`
    this.queue.push(ev);
    if (this.queue.length > MAX_QUEUED_EVENTS) {
      this.queue.shift();
      if (this.droppedEvents++ % 1000 === 0) this.log('warn', 'vmd.events-dropped', `no client for a while: dropped the oldest stop events (${this.droppedEvents} so far)`);
    }
  }

  private onLine(sock: Socket, line: string | null): void {
    if (line === null) {
      this.send(sock, { id: null, ok: false, code: 'EPROTO', error: `request longer than ${MAX_LINE_CHARS} characters` });
      return;
    }
    if (line.trim() === '') return;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      this.send(sock, { id: null, ok: false, code: 'EPROTO', error: 'request is not valid JSON' });
      return;
    }
    const req = validateRequest(raw);
    if (typeof req === 'string') {
      const id = raw && typeof raw === 'object' && Number.isSafeInteger((raw as { id?: unknown }).id) ? (raw as { id: number }).id : null;
      this.send(sock, { id, ok: false, code: 'EPROTO', error: req });
      return;
    }
    if (req.op === 'hello') {
      const a = Buffer.from(req.token);
      const b = Buffer.from(this.token);
      if (a.length !== b.length || !timingSafeEqual(a, b)) {
        this.send(sock, { id: req.id, ok: false, code: 'EPERM', error: `bad token (read it from ${vmdTokenFile(this.a.stateDir)})` });
        sock.end();
        return;
      }
      this.clients.set(sock, true);
      this.send(sock, { id: req.id, ok: true, pid: process.pid, host: this.a.host, cluster: this.a.cluster });
      // Stops that happened while no client was connected.
      for (const ev of this.queue.splice(0)) this.send(sock, ev);
      return;
    }
    if (!this.clients.get(sock)) {
      this.send(sock, { id: req.id, ok: false, code: 'EPERM', error: 'say hello with the token first' });
      return;
    }
    if (req.op === 'list') {
      // Answered at once: the reply is the state between the events before and after it.
      this.send(sock, { id: req.id, ok: true, pid: process.pid, host: this.a.host, cluster: this.a.cluster, vms: this.listVms() });
      return;
    }
    this.handle(req).then(
      (body) => this.send(sock, { id: req.id, ok: true, ...body }),
      (err: unknown) => {
        const code: VmdErrorCode = err instanceof VmdError ? err.code : 'EPOWERON';
        this.send(sock, { id: req.id, ok: false, code, error: err instanceof Error ? err.message : String(err) });
      },
    );
  }

  private async handle(req: Exclude<ValidRequest, { op: 'hello' | 'list' }>): Promise<object> {
    if (this.exiting) throw new VmdError('the VM daemon is exiting', 'EBUSY');
    switch (req.op) {
      case 'powerOn': {
        const e = await this.powerOn(req);
        return { pid: e.pid, startedAt: e.startedAt };
      }
      case 'powerOff':
        await this.stopVm(req.vm, 'hard', 0);
        return {};
      case 'shutdown':
        await this.stopVm(req.vm, 'graceful', req.timeoutMs);
        return {};
      case 'exit':
        return this.exit();
    }
  }

  private listVms(): VmdVm[] {
    // Exited ones are still listed until their lease is released and their stop event sent.
    return [...this.vms.values()]
      .filter((e) => e.phase !== 'starting')
      .map((e) => ({ vm: e.vm, pid: e.pid, startedAt: e.startedAt }))
      .sort((x, y) => (x.vm < y.vm ? -1 : 1));
  }

  /**
   * Rewrite vmd-vms.json, synchronously: it must name a VM from the moment it is spawned, since a
   * VM whose daemon dies before its setpriv has set the death signal survives it, and only this
   * file lets the next daemon find and kill it. Local state, read only if this process dies while
   * the machine lives: no fsync.
   */
  private saveVms(): void {
    const file = vmdVmsFile(this.a.stateDir);
    const tmp = `${file}.${process.pid}.tmp`;
    const list = [...this.vms.values()].filter((e) => e.pid > 0).map((e) => ({ vm: e.vm, pid: e.pid, startedAt: e.startedAt, running: e.phase !== 'starting' }));
    try {
      writeFileSync(tmp, JSON.stringify(list) + '\n');
      renameSync(tmp, file);
    } catch (err) {
      this.log('error', 'vmd.state-write-failed', `cannot write ${file}: ${describeError(err)}`);
    }
  }

  // ---- host VM leases --------------------------------------------------------------------------

  /** The datastore's path; the client's path is taken if the daemon has no VMs there yet. */
  private datastorePath(ds: string, fromClient: string | undefined): string {
    const held = this.hostLeases.get(ds);
    const wanted = fromClient ? resolve(fromClient) : undefined;
    if (held) {
      if (wanted && wanted !== held.path) {
        throw new VmdError(`datastore ${ds} is ${wanted} for the agent but ${held.path} for the VM daemon, which runs VMs there (restart the VM daemon once they are stopped)`, 'EPOWERON');
      }
      return held.path;
    }
    const p = wanted ?? this.datastores.get(ds);
    if (!p) throw new VmdError(`datastore ${ds} is not known to the VM daemon`, 'EPOWERON');
    this.datastores.set(ds, p);
    return p;
  }

  /** The generation of our host VM lease on `ds`, acquiring it first if needed (one acquisition at a time). */
  private ensureHostLease(ds: string, dsPath: string): Promise<number> {
    const h = this.hostLeases.get(ds);
    if (h && this.keeper.has(ds)) return Promise.resolve(h.generation);
    let p = this.hostAcquiring.get(ds);
    if (!p) {
      p = this.acquireHostLease(ds, dsPath).finally(() => this.hostAcquiring.delete(ds));
      this.hostAcquiring.set(ds, p);
    }
    return p;
  }

  /**
   * Acquire `host-N-vm` on `ds`: free, or this host's own record from an earlier life (held, or
   * left half-acquired: nobody but this host's one daemon ever writes it). A record naming another
   * host or a corrupt one is an error: two hosts configured with one name, or foreign files.
   */
  private async acquireHostLease(ds: string, dsPath: string): Promise<number> {
    const lease = hostVmLease({ datastorePath: dsPath, cluster: this.a.cluster, host: this.a.host, timeoutMs: this.a.timing.storageCallTimeoutMs, onCompromised: () => {} });
    const startedAt = performance.now();
    try {
      const snap = await lease.read();
      const r = snap.record;
      if (snap.error) throw new Error(`unreadable record: ${snap.error}`);
      if (r && r.host !== this.a.host) throw new Error(`${lease.recordPath} names ${r.host}, not ${this.a.host} (two hosts configured with one name?)`);
      if (r && (r.state === 'held' || snap.maxClaim !== r.generation)) await lease.acquire({ ...r, maxClaim: snap.maxClaim });
      else if (!r && (snap.lockExists || snap.maxClaim > 0)) await lease.acquire('orphan');
      else await lease.acquire();
    } catch (err) {
      const msg = `cannot acquire the host VM lease ${this.a.host}-vm on ${ds}: ${describeError(err)}`;
      this.log('error', 'vmd.host-lease-failed', msg, { datastore: ds });
      throw new VmdError(msg, 'EPOWERON');
    }
    const generation = lease.held!.generation;
    // Track the keeper's renewals of this lease: a release must not race one still in flight
    // (its write, state held, could land after the release's).
    const renew = lease.renew.bind(lease);
    lease.renew = () => {
      const p = renew();
      this.renewals.add(p);
      void p.then(
        () => this.renewals.delete(p),
        () => this.renewals.delete(p),
      );
      return p;
    };
    this.keeper.add(ds, lease, startedAt);
    this.hostLeases.set(ds, { lease, generation, path: dsPath });
    this.log('info', 'vmd.host-lease', `host VM lease ${this.a.host}-vm on ${ds} acquired (generation ${generation})`, { datastore: ds, generation });
    void lease.pruneClaims().catch(() => {});
    return generation;
  }

  private onKeeperEvent(ev: KeeperEvent): void {
    if (ev.type === 'renewFailed') {
      this.log('warn', 'vmd.host-lease-renew-failed', `host VM lease on ${ev.key}: renewal failed: ${ev.error}`, { datastore: ev.key });
      return;
    }
    if (ev.type !== 'lost') return;
    // Self-fence: others may take over these VMs' leases once they see the host lease dead.
    const ds = ev.key;
    this.hostLeases.delete(ds);
    const victims = [...this.vms.values()].filter((e) => e.datastore === ds && e.phase !== 'exited');
    const why = `host VM lease on ${ds} lost: ${ev.reason}`;
    for (const e of victims) {
      e.fenced = why;
      e.child?.kill('SIGKILL');
    }
    for (const e of victims) e.lease?.abandon();
    this.log('error', 'vmd.fenced', `${why}; ${victims.length} VM(s) of ${ds} killed`, { datastore: ds, vms: victims.map((e) => e.vm) });
  }

  // ---- VMs -------------------------------------------------------------------------------------

  private async powerOn(req: Extract<ValidRequest, { op: 'powerOn' }>): Promise<VmEntry> {
    for (;;) {
      const e = this.vms.get(req.vm);
      if (!e) break;
      if (e.phase === 'exited') {
        await e.gone.promise;
        continue;
      }
      // Running or starting here: never a second copy.
      await e.started.promise;
      if (this.vms.get(req.vm) === e && e.phase === 'running') return e;
    }
    const e: VmEntry = {
      vm: req.vm,
      datastore: req.datastore,
      phase: 'starting',
      started: deferred(),
      gone: deferred(),
      lease: null,
      child: null,
      pid: 0,
      startedAt: '',
      stop: null,
      forced: false,
      fenced: null,
    };
    this.vms.set(req.vm, e);
    try {
      await this.startVm(e, req);
      e.started.resolve();
      return e;
    } catch (err) {
      e.started.reject(err);
      if (e.child) {
        // Spawned, then fenced: the exit handler removes the entry once the process is gone.
        await e.gone.promise;
      } else {
        if (this.vms.get(e.vm) === e) this.vms.delete(e.vm);
        e.gone.resolve();
      }
      this.log('warn', 'vmd.power-on-failed', `${e.vm}: ${(err as Error).message}`, { vm: e.vm, code: err instanceof VmdError ? err.code : 'EPOWERON' });
      throw err;
    }
  }

  private async startVm(e: VmEntry, req: Extract<ValidRequest, { op: 'powerOn' }>): Promise<void> {
    const ds = req.datastore;
    const dsPath = this.datastorePath(ds, req.datastorePath);
    const t = this.a.timing.storageCallTimeoutMs;
    let config: ProcessVmConfig;
    try {
      config = await withTimeout(`read ${req.specPath}`, t, () => readProcessVm(req.specPath), dsPath);
    } catch (err) {
      throw new VmdError(describeError(err), 'EPOWERON');
    }
    const env: NodeJS.ProcessEnv = { ...process.env, ...config.env, VIGIL_VM: e.vm };
    if (!findExecutable(config.command, env.PATH)) throw new VmdError(`cannot start ${config.command}: not found or not executable`, 'EPOWERON');

    const generation = await this.ensureHostLease(ds, dsPath);
    if (!this.keeper.valid(ds)) throw new VmdError(`the host VM lease on ${ds} is not renewed in time (storage trouble): not starting ${e.vm}`, 'EPOWERON');
    const lease = vmLease({ datastorePath: dsPath, cluster: this.a.cluster, vm: e.vm, host: this.a.host, timeoutMs: t, hostLease: generation, onCompromised: () => {} });
    try {
      await this.acquireVmLease(lease, req.takeover, dsPath);
    } catch (err) {
      const held = err instanceof LeaseError && (err.code === 'ELOCKED' || err.code === 'ECHANGED');
      throw new VmdError(`VM lease: ${describeError(err)}`, held ? 'ELEASEHELD' : 'EPOWERON');
    }
    e.lease = lease;
    // The host lease may have been lost while we acquired: the VM lease died with it.
    if (e.fenced || !this.keeper.valid(ds) || this.hostLeases.get(ds)?.generation !== generation) {
      lease.abandon();
      throw new VmdError(e.fenced ?? `the host VM lease on ${ds} was lost while acquiring the VM lease`, 'EPOWERON');
    }

    const [cmd, args] = this.setpriv ? [this.setpriv, ['--pdeathsig', 'SIGKILL', '--', config.command, ...config.args]] : [config.command, config.args];
    let child: ChildProcess;
    try {
      const out = openSync(join(this.a.stateDir, 'vms', `${vmFileName(e.vm)}.log`), 'a');
      try {
        child = spawn(cmd, args, { env, stdio: ['ignore', out, out] });
      } finally {
        closeSync(out);
      }
    } catch (err) {
      // Nothing runs: give the lease back.
      await lease.release().catch(() => {});
      throw new VmdError(`cannot start ${config.command}: ${describeError(err)}`, 'EPOWERON');
    }
    e.child = child;
    if (child.pid) {
      e.pid = child.pid;
      e.startedAt = new Date().toISOString();
      this.saveVms();
    }
    await new Promise<void>((res, rej) => {
      child.once('spawn', () => {
        if (e.fenced) {
          rej(new VmdError(e.fenced, 'EPOWERON'));
          return;
        }
        e.phase = 'running';
        this.saveVms();
        this.log('info', 'vmd.vm-started', `${e.vm} started (pid ${e.pid}, lease generation ${lease.held?.generation}, host lease ${generation})`, { vm: e.vm, vmPid: e.pid });
        this.emit({ event: 'started', vm: e.vm, pid: e.pid, startedAt: e.startedAt });
        res();
      });
      child.once('error', (err) => {
        if (e.phase !== 'starting') return;
        child.removeAllListeners('exit');
        e.child = null;
        e.pid = 0;
        if (this.vms.get(e.vm) === e) this.vms.delete(e.vm);
        this.saveVms();
        void lease.release().finally(() => rej(new VmdError(`cannot start ${config.command}: ${err.message}`, 'EPOWERON')));
      });
      child.on('exit', (code, signal) => void this.onExit(e, code, signal));
    });
  }

  /**
   * Acquire the VM lease (the rules of SPEC §3.6): this host's own held record from an earlier
   * life at once (only this daemon runs VMs here, and this VM is not running under it); else a
   * takeover only of the exact state the master judged dead (`takeover`, holder's host VM lease
   * included); `orphan` only while there is still no record; else only a free lease.
   */
  private async acquireVmLease(lease: LeaseFile, takeover: string, dsPath: string): Promise<void> {
    const snap = await lease.read();
    const r = snap.record;
    const own = r && r.host === this.a.host && r.state === 'held' ? { ...r, maxClaim: snap.maxClaim } : undefined;
    if (takeover === 'orphan' && !r) {
      await lease.acquire('orphan');
      return;
    }
    // A takeover is allowed only of the exact state the master saw unchanged for the lease timeout.
    const t = own ? null : parseTakeover(takeover);
    const judged = r && t && r.host === t.record.host && r.generation === t.record.generation && r.token === t.record.token && r.counter === t.record.counter ? { ...r, maxClaim: t.maxClaim } : undefined;
    if (r && t && judged && r.hostLease !== undefined) {
      // The VM lease lives by its holder's host VM lease: that must still be exactly as judged
      // (not renewed since), or at another generation than the one the VM lease is held under.
      const h = await hostVmLease({ datastorePath: dsPath, cluster: this.a.cluster, host: r.host, timeoutMs: this.a.timing.storageCallTimeoutMs }).read();
      if (h.error) throw new LeaseError(`host VM lease of ${r.host}: ${h.error}; not taking over`, 'ECHANGED');
      const cur = h.record;
      const moved = !cur || cur.generation !== r.hostLease;
      const same = !!cur && !!t.hostLease && cur.generation === t.hostLease.generation && cur.token === t.hostLease.token && cur.counter === t.hostLease.counter;
      if (!moved && !same) throw new LeaseError(`the host VM lease of ${r.host} was renewed since it was judged dead; not taking over`, 'ECHANGED');
    }
    // Without `own` or `judged` this is a plain acquisition: only a free lease.
    await lease.acquire(own ?? judged);
  }

  private async onExit(e: VmEntry, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    const wasRunning = e.phase === 'running';
    e.phase = 'exited';
    let ev: { reason: StopReason; detail: string } | null = null;
    if (e.fenced) {
      // No release: the VM lease dies with the host lease generation (others may hold it soon).
      e.lease?.abandon();
      ev = { reason: 'fenced', detail: `killed by the VM daemon: ${e.fenced}` };
    } else {
      await e.lease?.release().catch(() => {});
      if (e.stop === 'hard') ev = { reason: 'requested', detail: 'hard power off through Vigil' };
      else if (e.stop === 'graceful') ev = { reason: 'requested', detail: e.forced ? 'graceful shutdown through Vigil; forced off after the timeout' : 'graceful shutdown through Vigil' };
      else if (signal) ev = { reason: 'killed', detail: `killed by ${signal}` };
      else ev = { reason: 'exited', detail: `exited with code ${code}` };
    }
    if (this.vms.get(e.vm) === e) this.vms.delete(e.vm);
    this.saveVms();
    this.log(ev.reason === 'requested' ? 'info' : 'warn', 'vmd.vm-stopped', `${e.vm} stopped: ${ev.reason} (${ev.detail})`, { vm: e.vm, reason: ev.reason, code, signal });
    // A VM whose power-on never answered ok was never reported running: no stop to report.
    if (wasRunning) this.emit({ event: 'stopped', vm: e.vm, ...ev });
    e.gone.resolve();
  }

  /** Stop a VM (hard: SIGKILL; graceful: SIGTERM, SIGKILL after timeoutMs); resolves once it is gone. */
  private async stopVm(vm: string, mode: 'hard' | 'graceful', timeoutMs: number): Promise<void> {
    let e = this.vms.get(vm);
    if (e?.phase === 'starting') {
      await e.started.promise.catch(() => {});
      e = this.vms.get(vm);
    }
    if (!e) return; // not running here: nothing to do
    if (e.phase === 'running' && e.child) {
      const child = e.child;
      const entry = e;
      if (mode === 'hard') {
        e.stop = 'hard';
        child.kill('SIGKILL');
      } else {
        e.stop ??= 'graceful';
        child.kill('SIGTERM');
        const timer = setTimeout(() => {
          if (entry.phase !== 'running') return;
          entry.forced = true;
          child.kill('SIGKILL');
        }, timeoutMs);
        void e.gone.promise.then(() => clearTimeout(timer));
      }
    }
    await e.gone.promise;
  }

  /** Exit (tests, maintenance): only when no VM runs; releases the host VM leases first. */
  private async exit(): Promise<object> {
    if (this.vms.size > 0) throw new VmdError(`${this.vms.size} VM(s) run under this VM daemon: power them off first`, 'EBUSY');
    this.exiting = true;
    // No new renewal, wait for the ones in flight, then release (best effort).
    await this.keeper.stop(false);
    await Promise.allSettled([...this.renewals]);
    await Promise.all([...this.hostLeases.values()].map((h) => h.lease.release()));
    this.hostLeases.clear();
    this.log('info', 'vmd.exit', 'VM daemon exiting on request');
    this.server?.close();
    // Let the reply go out, then leave.
    setTimeout(() => process.exit(0), 50);
    return {};
  }

  /** SIGTERM: exit like the `exit` request if no VM runs; else keep running (VMs would die with us). */
  onSigterm(): void {
    if (this.vms.size === 0) {
      void this.exit();
      return;
    }
    this.log('warn', 'vmd.sigterm-ignored', `SIGTERM ignored: ${this.vms.size} VM(s) run (power them off first, or SIGKILL to kill them all)`);
  }
}

// ---- request validation ------------------------------------------------------------------------

type ValidRequest = VmdRequest;

function validateRequest(raw: unknown): ValidRequest | string {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return 'a request must be a JSON object';
  const o = raw as Record<string, unknown>;
  const id = o.id;
  if (typeof id !== 'number' || !Number.isSafeInteger(id)) return 'id must be an integer';
  const str = (k: string, max = 4096): string | null => (typeof o[k] === 'string' && (o[k] as string).length <= max ? (o[k] as string) : null);
  switch (o.op) {
    case 'hello': {
      const token = str('token', 256);
      return token === null ? 'hello needs a token' : { id, op: 'hello', token };
    }
    case 'list':
    case 'exit':
      return { id, op: o.op };
    case 'powerOn': {
      const vm = str('vm', 1024);
      const specPath = str('specPath');
      const datastore = str('datastore', 256);
      const takeover = str('takeover', 512);
      const datastorePath = o.datastorePath === undefined ? undefined : str('datastorePath');
      if (vm === null || !isVmId(vm)) return 'powerOn: bad vm id';
      if (specPath === null || !isAbsolute(specPath)) return 'powerOn: specPath must be an absolute path';
      if (datastore === null || datastore !== vm.slice(0, vm.indexOf(':'))) return "powerOn: datastore must be the VM id's datastore";
      if (takeover === null) return 'powerOn: takeover must be a string';
      if (datastorePath === null || (datastorePath !== undefined && !isAbsolute(datastorePath))) return 'powerOn: datastorePath must be an absolute path';
      return { id, op: 'powerOn', vm, specPath, datastore, takeover, ...(datastorePath !== undefined ? { datastorePath } : {}) };
    }
    case 'powerOff': {
      const vm = str('vm', 1024);
      return vm === null ? 'powerOff: vm must be a string' : { id, op: 'powerOff', vm };
    }
    case 'shutdown': {
      const vm = str('vm', 1024);
      const t = o.timeoutMs;
      if (vm === null) return 'shutdown: vm must be a string';
      if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 0 || t > 24 * 3600 * 1000) return 'shutdown: timeoutMs must be an integer from 0 to 86400000';
      return { id, op: 'shutdown', vm, timeoutMs: t };
    }
    default:
      return `unknown op ${JSON.stringify(String(o.op)).slice(0, 40)}`;
  }
}

/** Run the daemon in this process (vmd-main.ts). Resolves false if another one already runs. */
export async function runVmd(args: VmdArgs): Promise<boolean> {
  const d = new Vmd(args);
  // A closed terminal or a Ctrl-C aimed at something else must not take the VMs down.
  process.on('SIGINT', () => {});
  process.on('SIGHUP', () => {});
  process.on('uncaughtException', (err) => d.log('error', 'vmd.bug', `uncaught exception: ${err.stack ?? String(err)}`));
  process.on('unhandledRejection', (err) => d.log('error', 'vmd.bug', `unhandled rejection: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`));
  if (!(await d.start())) return false;
  process.on('SIGTERM', () => d.onSigterm());
  return true;
}
