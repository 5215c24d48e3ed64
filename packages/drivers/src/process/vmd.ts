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
 * Two backends run the VMs themselves (VmdArgs.backend): `process` (a VM is a command, spawned
 * here) and `libvirt` (a VM is a libvirt domain, created through virsh with --autodestroy on a
 * connection this daemon holds, so that libvirtd destroys it when this daemon dies; watched
 * through `virsh event`; see ../libvirt/backend.ts). Leases, self-fencing and the protocol are
 * the same for both.
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
import { isVmProcess, LineReader, MAX_LINE_CHARS, readVmdVms, vmdId, vmdSocketName, vmdTokenFile, vmdVmsFile, type VmdBackend, type VmdErrorCode, type VmdEvent, type VmdRequest, type VmdVm } from './vmd-protocol.js';
import { domainName, domainPrefix, LibvirtBackend } from '../libvirt/backend.js';
import { prepareDomainXml } from '../libvirt/domain-xml.js';
import { readLibvirtVm, type LibvirtVm } from '../libvirt/spec.js';
import { findDomainProcesses, isDomainProcess, type DomainEvent } from '../libvirt/virsh.js';

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
  /** What runs the VMs (default: process). */
  backend?: VmdBackend;
}

/** libvirt backend: a stop found by polling waits this long for libvirt's event, which says why. */
const POLL_GRACE_MS = 3000;

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
  /** libvirt backend: the domain's name (set before it is created). */
  domain: string | null;
  /** libvirt backend: id of the shell connection the domain lives by (null: not tied to this daemon any more). */
  guard: number | null;
  /** libvirt backend: the domain stopped while its power-on was still under way. */
  earlyStop: { reason: StopReason; detail: string } | null;
  /** libvirt backend: the last guest watchdog action seen (for the stop's detail). */
  watchdog: string | null;
  /** The VM's pid (libvirt backend: QEMU's; 0 if not known). */
  pid: number;
  startedAt: string;
  /** Stopped through the daemon: how (the last request wins: a power off overrides a shutdown). */
  stop: 'hard' | 'graceful' | null;
  /** A graceful shutdown ran out of time and the VM was SIGKILLed. */
  forced: boolean;
  /** Why the VM was fenced, if it was. */
  fenced: string | null;
  /** A benchmark stand-in (`benchmarkStandin` in its config): leases only, no process. */
  standin: boolean;
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

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

async function until(f: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (!f()) {
    if (performance.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
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
  /** libvirt backend (null: process backend). */
  private libvirt: LibvirtBackend | null = null;
  /** Domains by name (libvirt backend). */
  private readonly byDomain = new Map<string, VmEntry>();
  /** Domains named in the previous daemon's vmd-vms.json, to be destroyed by the libvirt sweep. */
  private readonly orphanDomains = new Map<string, string>();
  /** Settles when the libvirt sweep of an earlier life is done; power-ons wait for it. */
  private ready: Promise<void> = Promise.resolve();
  private readyDone = true;
  private readyProblem = '';
  private polling = false;
  /** Domains whose start failed without a sure destroy: destroyed if a poll finds them running. */
  private readonly suspects = new Map<string, string>();

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
    const b = this.a.backend;
    if (b?.type === 'libvirt') {
      this.libvirt = new LibvirtBackend(b.uri, this.a.stateDir, this.setpriv, {
        log: (level, event, message, fields) => this.log(level, event, message, fields),
        onEvent: (ev) => this.onDomainEvent(ev),
        onPoll: () => void this.pollDomains(),
        onShellLost: (id, why) => this.onShellLost(id, why),
      });
      this.libvirt.start();
      this.readyDone = false;
      this.ready = this.libvirtSweep().finally(() => (this.readyDone = true));
    }
    this.log('info', 'vmd.started', `VM daemon of ${this.a.host} started`, { stateDir: this.a.stateDir, setpriv: this.setpriv, backend: b?.type ?? 'process', ...(b?.type === 'libvirt' ? { uri: b.uri } : {}) });
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
      if (v.domain) {
        // A libvirt VM: its domain normally died with the daemon's connection (autodestroy). If
        // it did not (libvirtd had restarted under the daemon), kill its QEMU process now, and
        // have the libvirt sweep clean libvirt's side.
        const pids = v.pid > 0 && isDomainProcess(v.pid, v.domain) ? [v.pid] : findDomainProcesses(v.domain);
        for (const p of pids) killQuietly(p);
        this.orphanDomains.set(v.domain, v.vm);
        const detail =
          pids.length > 0
            ? `the VM daemon of this host had died; its domain ${v.domain} (QEMU pid ${pids.join(', ')}) was still running without its lease holder and was killed`
            : `the VM daemon of this host had died, and its domain ${v.domain} with it`;
        this.log('warn', 'vmd.orphan', `${v.vm}: ${detail}`, { vm: v.vm, vmPid: pids[0] ?? 0, domain: v.domain });
        this.emit({ event: 'stopped', vm: v.vm, reason: 'killed', detail });
        continue;
      }
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

  /**
   * Before this daemon starts any domain: no domain of an earlier life of this host's VM daemon
   * may run or stay defined. Destroys (and undefines, if persistent) every domain named
   * `vigil-<host>-*` whose Vigil metadata names this cluster, this host and this daemon (state
   * directory), and the ones the previous daemon's vmd-vms.json named. Domains of other clusters,
   * hosts or state directories that share this libvirtd are left alone. Retried until it works:
   * power-ons wait for it.
   */
  private async libvirtSweep(): Promise<void> {
    const lv = this.libvirt!;
    const me = vmdId(this.a.stateDir);
    for (let attempt = 1; !this.exiting; attempt++) {
      try {
        const names = (await lv.all()).filter((n) => n.startsWith(domainPrefix(this.a.host)));
        for (const n of names) {
          const listed = this.orphanDomains.get(n);
          const meta = listed ? null : await lv.metadata(n);
          if (!listed && (!meta || meta.cluster !== this.a.cluster || meta.host !== this.a.host || meta.daemon !== me)) continue;
          const vm = listed ?? meta!.vm ?? '?';
          const r = await lv.destroy(n);
          await lv.undefine(n);
          const what = r === 'destroyed' ? 'was running without its lease holder: destroyed' : listed ? 'was already stopped: removed from libvirt' : 'was defined, not running: removed';
          this.log('warn', 'vmd.libvirt-stale', `domain ${n} (${vm}) of an earlier life of this VM daemon ${what}`, { domain: n, vm });
          if (!listed && r === 'destroyed' && isVmId(vm)) this.emit({ event: 'stopped', vm, reason: 'killed', detail: `its domain ${n} was left running by an earlier life of this host's VM daemon, without its lease holder: destroyed` });
        }
        this.orphanDomains.clear();
        this.readyProblem = '';
        return;
      } catch (err) {
        this.readyProblem = describeError(err);
        this.log('error', 'vmd.libvirt-sweep-failed', `cannot check libvirt for domains of an earlier life (attempt ${attempt}): ${this.readyProblem}; no domain starts until this works`);
        await new Promise((r) => setTimeout(r, Math.min(attempt, 5) * 1000));
      }
    }
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
      this.send(sock, { id: req.id, ok: true, pid: process.pid, host: this.a.host, cluster: this.a.cluster, backend: this.a.backend?.type ?? 'process' });
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
      this.send(sock, { id: req.id, ok: true, pid: process.pid, host: this.a.host, cluster: this.a.cluster, backend: this.a.backend?.type ?? 'process', vms: this.listVms() });
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
        await this.whenReady();
        const e = await this.powerOn(req);
        return { pid: e.pid, startedAt: e.startedAt, ...(e.domain ? { domain: e.domain } : {}) };
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

  /** Power-ons wait (at most 10 s) for the libvirt sweep of an earlier life. */
  private async whenReady(): Promise<void> {
    if (this.readyDone) return;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((_res, rej) => {
      timer = setTimeout(() => rej(new VmdError(`libvirt is not ready: ${this.readyProblem || 'still checking for domains of an earlier life'}`, 'EPOWERON')), 10_000);
    });
    try {
      await Promise.race([this.ready, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private listVms(): VmdVm[] {
    // Exited ones are still listed until their lease is released and their stop event sent.
    return [...this.vms.values()]
      .filter((e) => e.phase !== 'starting')
      .map((e) => ({ vm: e.vm, pid: e.pid, startedAt: e.startedAt, ...(e.domain ? { domain: e.domain } : {}) }))
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
    const list = [...this.vms.values()]
      .filter((e) => e.pid > 0 || e.domain)
      .map((e) => ({ vm: e.vm, pid: e.pid, startedAt: e.startedAt, running: e.phase !== 'starting', ...(e.domain ? { domain: e.domain } : {}) }));
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
      if (e.domain) this.fenceDomain(e);
    }
    for (const e of victims) e.lease?.abandon();
    // A stand-in has no process whose exit would end it.
    for (const e of victims) if (e.standin && e.phase === 'running') void this.finish(e, { reason: 'killed', detail: 'fenced' });
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
      domain: null,
      guard: null,
      earlyStop: null,
      watchdog: null,
      pid: 0,
      startedAt: '',
      stop: null,
      forced: false,
      fenced: null,
      standin: false,
    };
    this.vms.set(req.vm, e);
    try {
      if (this.libvirt) await this.startDomain(e, req);
      else await this.startVm(e, req);
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
    if (config.benchmarkStandin) return this.startStandin(e, req, ds, dsPath);
    const env: NodeJS.ProcessEnv = { ...process.env, ...config.env, VIGIL_VM: e.vm };
    if (!findExecutable(config.command, env.PATH)) throw new VmdError(`cannot start ${config.command}: not found or not executable`, 'EPOWERON');

    const { lease, generation } = await this.takeLeases(e, ds, dsPath, req.takeover);

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
      child.on('exit', (code, signal) => void this.finish(e, signal ? { reason: 'killed', detail: `killed by ${signal}` } : { reason: 'exited', detail: `exited with code ${code}` }, { code, signal }));
    });
  }

  /**
   * Benchmark only (scripts/bench-scale.mjs): a stand-in VM takes and keeps its leases exactly
   * like a process VM, is reported running, stopped and fenced like one, but runs no process
   * (pid 0). Refused unless this daemon runs with VIGIL_BENCH_STANDIN=1 in its environment.
   */
  private async startStandin(e: VmEntry, req: Extract<ValidRequest, { op: 'powerOn' }>, ds: string, dsPath: string): Promise<void> {
    if (process.env.VIGIL_BENCH_STANDIN !== '1') {
      throw new VmdError(`${e.vm} is a benchmark stand-in (benchmarkStandin: true, no process): refused outside the scale benchmark (VIGIL_BENCH_STANDIN=1)`, 'EPOWERON');
    }
    const { lease, generation } = await this.takeLeases(e, ds, dsPath, req.takeover);
    e.standin = true;
    e.startedAt = new Date().toISOString();
    e.phase = 'running';
    this.log('info', 'vmd.vm-started', `${e.vm} started: benchmark stand-in, no process (lease generation ${lease.held?.generation}, host lease ${generation})`, { vm: e.vm, vmPid: 0, standin: true });
    this.emit({ event: 'started', vm: e.vm, pid: 0, startedAt: e.startedAt });
  }

  /**
   * The leases a power-on needs, in order: this host's VM lease on the datastore (valid, i.e.
   * renewed within the self-fence deadline), then the VM's lease under that generation. Sets
   * `e.lease`. Throws ELEASEHELD when the VM lease is held elsewhere, EPOWERON otherwise.
   */
  private async takeLeases(e: VmEntry, ds: string, dsPath: string, takeover: string): Promise<{ lease: LeaseFile; generation: number }> {
    const t = this.a.timing.storageCallTimeoutMs;
    const generation = await this.ensureHostLease(ds, dsPath);
    if (!this.keeper.valid(ds)) throw new VmdError(`the host VM lease on ${ds} is not renewed in time (storage trouble): not starting ${e.vm}`, 'EPOWERON');
    const lease = vmLease({ datastorePath: dsPath, cluster: this.a.cluster, vm: e.vm, host: this.a.host, timeoutMs: t, hostLease: generation, onCompromised: () => {} });
    try {
      await this.acquireVmLease(lease, takeover, dsPath);
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
    return { lease, generation };
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
    if (r && t && judged && r.state === 'held' && r.hostLease !== undefined) {
      // The VM lease lives by its holder's host VM lease: that must still be exactly as judged
      // (not renewed since), or at another generation than the one the VM lease is held under.
      // (A released record lives by nothing: one left behind a stray claim, by an acquisition
      // that failed half-way, is taken over as judged whatever its old holder's host lease does.)
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

  /**
   * The VM is gone (its process exited, or its domain stopped): release its lease (abandon it if
   * fenced) and report why. `natural`: what happened if nobody in Vigil stopped it.
   */
  private async finish(e: VmEntry, natural: { reason: StopReason; detail: string }, fields: Record<string, unknown> = {}): Promise<void> {
    if (e.phase === 'exited') return;
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
      else ev = natural;
    }
    if (this.vms.get(e.vm) === e) this.vms.delete(e.vm);
    if (e.domain && this.byDomain.get(e.domain) === e) this.byDomain.delete(e.domain);
    this.saveVms();
    this.log(ev.reason === 'requested' ? 'info' : 'warn', 'vmd.vm-stopped', `${e.vm} stopped: ${ev.reason} (${ev.detail})`, { vm: e.vm, reason: ev.reason, ...fields, ...(e.domain ? { domain: e.domain } : {}) });
    // A VM whose power-on never answered ok was never reported running: no stop to report.
    if (wasRunning) this.emit({ event: 'stopped', vm: e.vm, ...ev });
    e.gone.resolve();
  }

  // ---- libvirt domains ---------------------------------------------------------------------------

  /**
   * Power a libvirt VM on: read its files, take the host VM lease and the VM lease (exactly as for a
   * process VM), then create the domain, transient, under this host's name for it and with Vigil's
   * metadata, with --autodestroy on a connection of this daemon (it dies with the daemon).
   */
  private async startDomain(e: VmEntry, req: Extract<ValidRequest, { op: 'powerOn' }>): Promise<void> {
    const lv = this.libvirt!;
    const ds = req.datastore;
    const dsPath = this.datastorePath(ds, req.datastorePath);
    const t = this.a.timing.storageCallTimeoutMs;
    let vm: LibvirtVm;
    try {
      vm = await withTimeout(`read ${req.specPath}`, t, () => readLibvirtVm(req.specPath), dsPath);
    } catch (err) {
      throw new VmdError(describeError(err), 'EPOWERON');
    }
    const daemon = vmdId(this.a.stateDir);
    const name = domainName(this.a.host, this.a.cluster, daemon, e.vm, vm.config.name);
    let xml: string;
    try {
      xml = prepareDomainXml(vm.xml, name, { cluster: this.a.cluster, host: this.a.host, daemon, vm: e.vm });
    } catch (err) {
      throw new VmdError(`${vm.xmlPath}: ${describeError(err)}`, 'EPOWERON');
    }

    const { lease, generation } = await this.takeLeases(e, ds, dsPath, req.takeover);
    if (this.byDomain.has(name)) {
      await lease.release().catch(() => {});
      throw new VmdError(`domain ${name} is still being stopped here: try again`, 'EPOWERON');
    }

    // Listed before it exists: a successor daemon must find it if this one dies during the create.
    e.domain = name;
    this.byDomain.set(name, e);
    this.saveVms();
    try {
      e.guard = await lv.create(name, xml);
    } catch (err) {
      return this.abortDomain(e, `cannot create domain ${name}: ${describeError(err)}`);
    }
    if (e.fenced) {
      this.fenceDomain(e);
      return this.abortDomain(e, e.fenced);
    }
    const pids = findDomainProcesses(name);
    if (e.earlyStop && pids.length === 0) return this.abortDomain(e, `domain ${name} stopped as soon as it started (${e.earlyStop.detail})`);
    e.earlyStop = null;
    e.pid = pids[0] ?? 0;
    e.startedAt = new Date().toISOString();
    e.phase = 'running';
    this.saveVms();
    const wd = vm.domain.watchdogs.map((w) => `${w.model} (${w.action})`).join(', ');
    this.log('info', 'vmd.vm-started', `${e.vm} started: domain ${name} (QEMU pid ${e.pid || '?'}, lease generation ${lease.held?.generation}, host lease ${generation})${wd ? `; guest watchdog ${wd}` : ''}`, { vm: e.vm, vmPid: e.pid, domain: name });
    this.emit({ event: 'started', vm: e.vm, pid: e.pid, startedAt: e.startedAt, domain: name });
  }

  /**
   * A power-on that failed once the domain may exist: make sure it does not run, then let the VM
   * lease go (released if the domain is surely gone, else abandoned: it stays held under this
   * host's lease, so that the VM starts nowhere else while this daemon lives), and throw.
   */
  private async abortDomain(e: VmEntry, why: string): Promise<never> {
    const name = e.domain!;
    let gone = false;
    try {
      await this.libvirt!.destroy(name);
      gone = true;
    } catch (err) {
      const pids = findDomainProcesses(name);
      for (const p of pids) killQuietly(p);
      this.log('error', 'vmd.libvirt-abort', `${e.vm}: cannot destroy domain ${name} after a failed start (${describeError(err)}); ${pids.length ? `killed its QEMU process ${pids.join(', ')}` : 'no QEMU process of it found'}; it is watched until seen gone`, { vm: e.vm, domain: name });
      this.suspects.set(name, e.vm);
    }
    e.phase = 'exited';
    if (this.byDomain.get(name) === e) this.byDomain.delete(name);
    if (e.fenced || !gone) e.lease?.abandon();
    else await e.lease?.release().catch(() => {});
    if (this.vms.get(e.vm) === e) this.vms.delete(e.vm);
    this.saveVms();
    throw new VmdError(why, 'EPOWERON');
  }

  /** Self-fence one domain: SIGKILL its QEMU process at once (libvirtd may be as stuck as the storage), and destroy it through libvirt. */
  private fenceDomain(e: VmEntry): void {
    const name = e.domain!;
    const pids = e.pid > 0 && isDomainProcess(e.pid, name) ? [e.pid] : findDomainProcesses(name);
    for (const p of pids) killQuietly(p);
    if (e.phase !== 'running') return; // a start under way: startDomain destroys it when its create returns
    void this.libvirt!.destroy(name).then(
      () => this.finish(e, { reason: 'killed', detail: 'destroyed' }),
      (err: unknown) => this.log('error', 'vmd.libvirt-fence', `${e.vm}: virsh destroy ${name} failed while fencing: ${describeError(err)} (its QEMU process was SIGKILLed)`, { vm: e.vm, domain: name }),
    );
    // Gone once QEMU is gone, even if libvirtd does not answer.
    const t0 = performance.now();
    const timer = setInterval(() => {
      if (e.phase !== 'running') return clearInterval(timer);
      if (!this.domainAlive(e)) {
        clearInterval(timer);
        void this.finish(e, { reason: 'killed', detail: 'QEMU gone' });
      } else if (performance.now() - t0 > 60_000) clearInterval(timer);
    }, 50);
  }

  /** Its QEMU process is alive (the local /proc: the URI names this machine's libvirtd). */
  private domainAlive(e: VmEntry): boolean {
    return e.pid > 0 ? isDomainProcess(e.pid, e.domain!) : findDomainProcesses(e.domain!).length > 0;
  }

  /** Stop a domain (hard: destroy; graceful: ACPI shutdown, destroy after timeoutMs). Settles e.gone, or rejects. */
  private async stopDomain(e: VmEntry, mode: 'hard' | 'graceful', timeoutMs: number): Promise<void> {
    const lv = this.libvirt!;
    const name = e.domain!;
    const destroy = async () => {
      try {
        await lv.destroy(name);
      } catch (err) {
        // libvirtd refuses or hangs: kill QEMU itself.
        const pids = e.pid > 0 && isDomainProcess(e.pid, name) ? [e.pid] : findDomainProcesses(name);
        if (pids.length === 0) throw new VmdError(`cannot destroy domain ${name}: ${describeError(err)}`, 'EPOWERON');
        for (const p of pids) killQuietly(p);
        this.log('warn', 'vmd.libvirt-destroy-failed', `virsh destroy ${name} failed (${describeError(err)}): killed its QEMU process ${pids.join(', ')}`, { vm: e.vm, domain: name });
        await until(() => !this.domainAlive(e), 10_000);
      }
      await this.finish(e, { reason: 'killed', detail: 'destroyed' });
    };
    if (mode === 'hard') {
      e.stop = 'hard';
      return destroy();
    }
    e.stop ??= 'graceful';
    const timer = setTimeout(() => {
      if (e.phase !== 'running') return;
      e.forced = true;
      destroy().catch((err: unknown) => this.log('error', 'vmd.libvirt-stop-failed', `${e.vm}: ${describeError(err)}`, { vm: e.vm, domain: name }));
    }, timeoutMs);
    void e.gone.promise.then(() => clearTimeout(timer));
    try {
      await lv.shutdown(name);
    } catch (err) {
      if (!this.domainAlive(e)) return this.finish(e, { reason: 'exited', detail: 'the domain was already gone' });
      // An ACPI request refused: the timeout forces it off.
      this.log('warn', 'vmd.libvirt-shutdown-failed', `${e.vm}: virsh shutdown ${name}: ${describeError(err)}; forced off after ${timeoutMs} ms`, { vm: e.vm, domain: name });
    }
  }

  /** A libvirt event. Stops of domains of this daemon end their VMs; resets and watchdog firings are logged, never a stop. */
  private onDomainEvent(ev: DomainEvent): void {
    const e = this.byDomain.get(ev.domain);
    if (!e) return;
    if (ev.type === 'watchdog') {
      e.watchdog = ev.detail;
      this.log('warn', 'vmd.vm-watchdog', `${e.vm}: the guest watchdog of ${ev.domain} fired (action ${ev.detail || '?'})${/reset|none|dump|inject-nmi/.test(ev.detail) ? ': the domain keeps running under its lease, not a crash' : ''}`, { vm: e.vm, domain: ev.domain, action: ev.detail });
      return;
    }
    if (ev.type === 'reboot') {
      this.log('info', 'vmd.vm-reset', `${e.vm}: domain ${ev.domain} was reset (guest reboot or watchdog); it keeps running under its lease`, { vm: e.vm, domain: ev.domain });
      return;
    }
    if (ev.type !== 'lifecycle') return;
    const [what, why = ''] = ev.detail.split(' ', 2);
    if (what === 'Crashed') {
      this.log('warn', 'vmd.vm-crashed', `${e.vm}: the guest of ${ev.domain} crashed (${ev.detail}); it is reported stopped when the domain stops (on_crash)`, { vm: e.vm, domain: ev.domain });
      return;
    }
    if (what === 'Suspended') {
      this.log('warn', 'vmd.vm-paused', `${e.vm}: domain ${ev.domain} was paused (${ev.detail}); it keeps its lease`, { vm: e.vm, domain: ev.domain });
      return;
    }
    if (what !== 'Stopped') return;
    const wd = e.watchdog ? ` after its guest watchdog fired (action ${e.watchdog})` : '';
    const natural: { reason: StopReason; detail: string } =
      why === 'Shutdown'
        ? { reason: 'exited', detail: `the guest shut down${wd}` }
        : why === 'Crashed'
          ? { reason: 'exited', detail: 'the guest crashed' }
          : why === 'Failed'
            ? { reason: 'killed', detail: `QEMU died (killed or crashed)${wd}` }
            : why === 'Destroyed'
              ? { reason: 'killed', detail: `destroyed outside Vigil${wd}` }
              : { reason: 'killed', detail: `stopped (${ev.detail})${wd}` };
    this.domainStopped(e, natural);
  }

  /**
   * libvirt says the domain stopped. Believed only once its QEMU process is gone: a late event of
   * an earlier run of the same domain name must never end this one (its lease would be released
   * while it runs).
   */
  private domainStopped(e: VmEntry, natural: { reason: StopReason; detail: string }, tries = 0): void {
    if (e.phase === 'exited' || this.byDomain.get(e.domain!) !== e) return;
    if (e.phase === 'starting') {
      e.earlyStop = natural;
      return;
    }
    if (!this.domainAlive(e)) {
      void this.finish(e, natural);
      return;
    }
    if (tries < 10) setTimeout(() => this.domainStopped(e, natural, tries + 1), 200);
    else this.log('warn', 'vmd.libvirt-stale-event', `${e.vm}: libvirt said ${e.domain} stopped (${natural.detail}), but its QEMU process ${e.pid} runs: ignored`, { vm: e.vm, domain: e.domain });
  }

  /** The safety net under the events: running domains that libvirt no longer lists are gone. */
  private async pollDomains(): Promise<void> {
    if (!this.libvirt || this.polling || this.exiting) return;
    this.polling = true;
    try {
      const watched = [...this.byDomain.values()].filter((e) => e.phase === 'running');
      if (watched.length === 0 && this.suspects.size === 0) return;
      // QEMU gone is a stop, whether or not libvirtd answers; libvirt's event (which says why)
      // gets a moment to come first.
      for (const e of watched) {
        if (!this.domainAlive(e)) setTimeout(() => this.domainStopped(e, { reason: 'killed', detail: 'its QEMU process is gone (found by polling)' }), POLL_GRACE_MS);
      }
      const running = await this.libvirt.running();
      for (const e of watched) {
        if (running.has(e.domain!) || this.byDomain.get(e.domain!) !== e || e.phase !== 'running') continue;
        setTimeout(() => this.domainStopped(e, { reason: 'killed', detail: 'the domain is gone (found by polling libvirt)' }), POLL_GRACE_MS);
      }
      for (const [name, vm] of [...this.suspects]) {
        if (this.byDomain.has(name)) {
          this.suspects.delete(name);
          continue;
        }
        if (!running.has(name)) {
          this.suspects.delete(name);
          continue;
        }
        this.log('error', 'vmd.libvirt-suspect', `${vm}: domain ${name}, whose start failed, runs after all: destroying it`, { vm, domain: name });
        await this.libvirt.destroy(name).then(
          () => this.suspects.delete(name),
          () => {},
        );
      }
    } catch (err) {
      this.log('warn', 'vmd.libvirt-poll-failed', `cannot list running domains: ${describeError(err)}`);
    } finally {
      this.polling = false;
    }
  }

  /**
   * A shell connection is gone. If libvirtd stopped, it destroyed the domains created on it (the
   * events or the poll report them); if it crashed and came back, they run on but no longer die
   * with this daemon: said in the log, and a successor daemon destroys them (vmd-vms.json).
   */
  private onShellLost(id: number, why: string): void {
    const tied = [...this.byDomain.values()].filter((e) => e.guard === id);
    for (const e of tied) e.guard = null;
    this.log('warn', 'vmd.libvirt-connection-lost', `a virsh connection of this daemon is gone (${why}); ${tied.length} domain(s) were tied to it${tied.length ? ': those still running no longer die with this daemon by themselves (a restarted daemon destroys them)' : ''}`, { domains: tied.map((e) => e.domain) });
    setTimeout(() => void this.pollDomains(), 500);
  }

  /** Stop a VM (hard: SIGKILL; graceful: SIGTERM, SIGKILL after timeoutMs); resolves once it is gone. */
  private async stopVm(vm: string, mode: 'hard' | 'graceful', timeoutMs: number): Promise<void> {
    let e = this.vms.get(vm);
    if (e?.phase === 'starting') {
      await e.started.promise.catch(() => {});
      e = this.vms.get(vm);
    }
    if (!e) return; // not running here: nothing to do
    if (e.phase === 'running' && e.domain) {
      // A failure to stop it is the request's (the VM keeps running, and its lease).
      await Promise.race([this.stopDomain(e, mode, timeoutMs).then(() => e!.gone.promise), e.gone.promise]);
    } else if (e.phase === 'running' && e.standin) {
      e.stop = mode === 'hard' ? 'hard' : (e.stop ?? 'graceful');
      void this.finish(e, { reason: 'exited', detail: 'benchmark stand-in stopped' });
    } else if (e.phase === 'running' && e.child) {
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
    this.libvirt?.close();
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
