/**
 * A host's hypervisor: the process driver's VM daemon (packages/drivers/src/process/vmd.ts) and
 * the VMs it runs, on simulated storage and time. It outlives the agent (an agent crash leaves
 * the VMs running, and the restarted agent re-adopts them) and dies with the host's power (and
 * its VMs with it). Lease rules mirror the daemon's:
 *   - a host VM lease `host-N-vm` per datastore where it runs VMs, renewed by a keeper; if it is
 *     lost or not renewed before the self-fence deadline, every VM of that datastore is killed
 *     at once and their VM leases are abandoned;
 *   - a VM lease (`vms/<vm>`) acquired before the VM starts, naming the host VM lease generation:
 *     free, this host's own held record, or exactly the dead state the master judged (the holder's
 *     host VM lease included: parseTakeover), otherwise ELEASEHELD; released when the VM stops.
 * Beyond the daemon: capacity (a power-on that does not fit fails), slow power-ons, guests that
 * take time to shut down, and crashes of single VMs.
 */
import { parseTakeover, type HostId, type VmStopReason } from '@vigil/core';
import { attempt, describe, io, sleep, wait, type Proc, type Process } from './io.js';
import { LeaseError, SimLeaseFile } from './lease.js';
import { SimLeaseKeeper, type KeeperEvent } from './keeper.js';
import { enoent, type SimVmConfig } from './storage.js';

export type HypervisorEvent = { event: 'started'; vm: string } | { event: 'stopped'; vm: string; reason: VmStopReason; detail: string };

export interface HypervisorClient {
  onHypervisorEvent(ev: HypervisorEvent): void;
}

/** A failed daemon request, with the daemon's error code. */
export class VmdError extends Error {
  constructor(
    message: string,
    readonly code: 'EPOWERON' | 'ELEASEHELD' | 'EBUSY',
  ) {
    super(message);
    this.name = 'VmdError';
  }
}

/** What the hypervisor needs from its world. */
export interface HypervisorEnv {
  host: HostId;
  proc: Process;
  timing: { storageHeartbeatIntervalMs: number; selfFenceDeadlineMs: number; storageCallTimeoutMs: number };
  capacity: { memoryMB: number; cpus: number };
  token: () => string;
  /** A VM process now exists on this host (it may touch its disk) / is gone. */
  vmUp: (vm: string) => void;
  vmDown: (vm: string) => void;
  /** Deliver to another process of the host, after the current step (a unix socket). */
  post: (fn: () => void) => void;
  log: (event: string, message: string) => void;
}

type Callback = (err: unknown) => void;

interface VmEntry {
  vm: string;
  ds: string;
  phase: 'starting' | 'running' | 'exited';
  config: SimVmConfig | null;
  started: Callback[] | { err: unknown };
  gone: Callback[] | 'done';
  lease: SimLeaseFile | null;
  /** The VM process exists (spawned and not exited). */
  child: boolean;
  stop: 'hard' | 'graceful' | null;
  forced: boolean;
  fenced: string | null;
}

function settle(e: VmEntry, which: 'started', err: unknown): void;
function settle(e: VmEntry, which: 'gone', err: null): void;
function settle(e: VmEntry, which: 'started' | 'gone', err: unknown): void {
  if (which === 'started') {
    const ws = e.started;
    if (!Array.isArray(ws)) return;
    e.started = { err };
    for (const w of ws) w(err);
  } else {
    const ws = e.gone;
    if (ws === 'done') return;
    e.gone = 'done';
    for (const w of ws) w(null);
  }
}

function* awaitStarted(e: VmEntry): Proc<void> {
  const s = e.started;
  if (!Array.isArray(s)) {
    if (s.err) throw s.err;
    return;
  }
  yield* wait<void>((done) => s.push(done));
}

function* awaitGone(e: VmEntry): Proc<void> {
  const g = e.gone;
  if (g === 'done') return;
  yield* wait<void>((done) => g.push(done));
}

export class SimHypervisor {
  protected readonly vms = new Map<string, VmEntry>();
  protected readonly hostLeases = new Map<string, { lease: SimLeaseFile; generation: number }>();
  private readonly hostAcquiring = new Map<string, ((err: unknown, gen?: number) => void)[]>();
  protected readonly keeper: SimLeaseKeeper;
  private client: HypervisorClient | null = null;
  private readonly queue: HypervisorEvent[] = [];

  constructor(protected readonly env: HypervisorEnv) {
    const t = env.timing;
    this.keeper = new SimLeaseKeeper(env.proc, t.storageHeartbeatIntervalMs, t.selfFenceDeadlineMs, (ev) => this.onKeeperEvent(ev));
  }

  get host(): HostId {
    return this.env.host;
  }

  get alive(): boolean {
    return this.env.proc.alive;
  }

  /** Start the daemon. `orphans`: VMs a previous daemon of this host ran when it died (reported killed). */
  start(orphans: readonly string[]): void {
    this.keeper.start();
    for (const vm of orphans) {
      this.emit({ event: 'stopped', vm, reason: 'killed', detail: 'the VM daemon of this host had died, and the VM with it' });
    }
  }

  /** Power loss: the daemon and every VM die at once; nothing is reported, nothing released. */
  kill(): string[] {
    const had = [...this.vms.values()].filter((e) => e.child).map((e) => e.vm);
    this.env.proc.kill();
    for (const vm of had) this.env.vmDown(vm);
    this.vms.clear();
    return had;
  }

  // ---- the agent's connection -------------------------------------------------------------------

  attach(client: HypervisorClient): void {
    this.client = client;
    for (const ev of this.queue.splice(0)) this.env.post(() => this.client === client && client.onHypervisorEvent(ev));
  }

  detach(client: HypervisorClient): void {
    if (this.client === client) this.client = null;
  }

  private emit(ev: HypervisorEvent): void {
    const c = this.client;
    if (c) {
      this.env.post(() => c.onHypervisorEvent(ev));
      return;
    }
    if (ev.event === 'stopped') this.queue.push(ev);
  }

  /** The VMs the daemon lists (running, or exited and not yet reported). */
  list(): string[] {
    return [...this.vms.values()]
      .filter((e) => e.phase !== 'starting')
      .map((e) => e.vm)
      .sort();
  }

  /** VM processes that exist now (the ground truth for "runs on this host"). */
  running(): string[] {
    return [...this.vms.values()].filter((e) => e.child).map((e) => e.vm);
  }

  /** Memory and vCPUs of the VMs it runs or starts. */
  used(): { memoryMB: number; cpus: number } {
    let memoryMB = 0;
    let cpus = 0;
    for (const e of this.vms.values()) {
      if (e.phase === 'exited' || !e.config) continue;
      memoryMB += e.config.memoryMB;
      cpus += e.config.cpus;
    }
    return { memoryMB, cpus };
  }

  capacity(): { memoryMB: number; cpus: number } {
    return { ...this.env.capacity };
  }

  // ---- requests ---------------------------------------------------------------------------------

  /** A client's request: run `op` in the daemon; the answer goes back over the socket. */
  request(op: Proc<void>, done: (err: unknown) => void): void {
    this.env.proc.spawn(op, (err) => this.env.post(() => done(err)));
  }

  /** powerOn: resolves once the VM runs (at once if it already runs here: never a second copy). */
  *powerOn(vm: string, ds: string, takeover: string): Proc<void> {
    for (;;) {
      const e = this.vms.get(vm);
      if (!e) break;
      if (e.phase === 'exited') {
        yield* awaitGone(e);
        continue;
      }
      yield* awaitStarted(e);
      if (this.vms.get(vm) === e && e.phase === 'running') return;
    }
    const e: VmEntry = { vm, ds, phase: 'starting', config: null, started: [], gone: [], lease: null, child: false, stop: null, forced: false, fenced: null };
    this.vms.set(vm, e);
    try {
      yield* this.startVm(e, takeover);
      settle(e, 'started', null);
    } catch (err) {
      settle(e, 'started', err);
      if (e.child || e.phase === 'exited') yield* awaitGone(e);
      else {
        if (this.vms.get(vm) === e) this.vms.delete(vm);
        settle(e, 'gone', null);
      }
      this.env.log('vmd.power-on-failed', `${vm}: ${describe(err)}`);
      throw err;
    }
  }

  private *startVm(e: VmEntry, takeover: string): Proc<void> {
    const ds = e.ds;
    const t = this.env.timing.storageCallTimeoutMs;
    let config: SimVmConfig;
    try {
      config = yield* io({
        kind: 'io',
        ds,
        what: `read ${e.vm}`,
        timeoutMs: t,
        apply: (d) => {
          const c = d?.vmConfigs.get(e.vm);
          if (!c) throw enoent(`open ${e.vm}`);
          return { ...c };
        },
      });
    } catch (err) {
      throw new VmdError(describe(err), 'EPOWERON');
    }
    const used = this.used();
    const cap = this.env.capacity;
    if (used.memoryMB + config.memoryMB > cap.memoryMB || used.cpus + config.cpus > cap.cpus) {
      throw new VmdError(`cannot start ${e.vm}: ${config.memoryMB} MB / ${config.cpus} vCPUs do not fit (${used.memoryMB}/${cap.memoryMB} MB, ${used.cpus}/${cap.cpus} vCPUs in use)`, 'EPOWERON');
    }
    e.config = config;
    const generation = yield* this.ensureHostLease(ds);
    if (!this.keeper.valid(ds)) throw new VmdError(`the host VM lease on ${ds} is not renewed in time (storage trouble): not starting ${e.vm}`, 'EPOWERON');
    const lease = new SimLeaseFile({ ds, name: `vms/${e.vm}`, host: this.host, timeoutMs: t, hostLease: generation, token: this.env.token });
    try {
      yield* this.acquireVmLease(lease, takeover, ds);
    } catch (err) {
      const held = err instanceof LeaseError && (err.code === 'ELOCKED' || err.code === 'ECHANGED');
      throw new VmdError(`VM lease: ${describe(err)}`, held ? 'ELEASEHELD' : 'EPOWERON');
    }
    e.lease = lease;
    // The host lease may have been lost while we acquired: the VM lease died with it.
    if (e.fenced || !this.keeper.valid(ds) || this.hostLeases.get(ds)?.generation !== generation) {
      lease.abandon();
      throw new VmdError(e.fenced ?? `the host VM lease on ${ds} was lost while acquiring the VM lease`, 'EPOWERON');
    }
    // Spawn: from here the VM's process exists (and may use its disk) until it exits.
    e.child = true;
    this.env.vmUp(e.vm);
    yield* sleep(config.powerOnMs);
    if (e.fenced || e.phase === 'exited') throw new VmdError(e.fenced ?? `${e.vm} exited while starting`, 'EPOWERON');
    e.phase = 'running';
    this.env.log('vm.running', `${e.vm} runs here (lease generation ${lease.held?.generation}, host lease ${generation})`);
    this.emit({ event: 'started', vm: e.vm });
  }

  /** As Vmd.acquireVmLease: own record at once; the exact judged state; orphan; else only a free lease. */
  protected *acquireVmLease(lease: SimLeaseFile, takeover: string, ds: string): Proc<void> {
    const snap = yield* lease.read();
    const r = snap.record;
    const own = r && r.host === this.host && r.state === 'held' ? { ...r, maxClaim: snap.maxClaim } : undefined;
    if (takeover === 'orphan' && !r) {
      yield* lease.acquire('orphan');
      return;
    }
    const t = own ? null : parseTakeover(takeover);
    const judged = r && t && r.host === t.record.host && r.generation === t.record.generation && r.token === t.record.token && r.counter === t.record.counter ? { ...r, maxClaim: t.maxClaim } : undefined;
    // (A released record lives by nothing: one left behind a stray claim is taken over as judged.)
    if (r && t && judged && r.state === 'held' && r.hostLease !== undefined) {
      const holder = new SimLeaseFile({ ds, name: `${r.host}-vm`, host: this.host, timeoutMs: this.env.timing.storageCallTimeoutMs, token: this.env.token });
      const h = yield* holder.read();
      const cur = h.record;
      const moved = !cur || cur.generation !== r.hostLease;
      const same = !!cur && !!t.hostLease && cur.generation === t.hostLease.generation && cur.token === t.hostLease.token && cur.counter === t.hostLease.counter;
      if (!moved && !same) throw new LeaseError(`the host VM lease of ${r.host} was renewed since it was judged dead; not taking over`, 'ECHANGED');
    }
    yield* lease.acquire(own ?? judged);
  }

  /** Stop a VM (hard: kill; graceful: the guest shuts down, killed after timeoutMs); resolves once it is gone. */
  *stop(vm: string, mode: 'hard' | 'graceful', timeoutMs: number): Proc<void> {
    let e = this.vms.get(vm);
    if (e?.phase === 'starting') {
      yield* attempt(awaitStarted(e));
      e = this.vms.get(vm);
    }
    if (!e) return;
    if (e.phase === 'running' && e.child) {
      const entry = e;
      if (mode === 'hard') {
        e.stop = 'hard';
        this.exitVm(e, 'SIGKILL');
      } else {
        e.stop ??= 'graceful';
        const shutdownMs = e.config?.shutdownMs ?? 0;
        if (shutdownMs < timeoutMs) this.env.proc.after(shutdownMs, () => entry.phase === 'running' && this.exitVm(entry, 'SIGTERM'));
        this.env.proc.after(timeoutMs, () => {
          if (entry.phase !== 'running') return;
          entry.forced = true;
          this.exitVm(entry, 'SIGKILL');
        });
      }
    }
    yield* awaitGone(e);
  }

  /** A VM dies on its own: `killed` (a signal nobody in Vigil sent) or `exited` (a crash). */
  crashVm(vm: string, how: 'killed' | 'exited'): boolean {
    const e = this.vms.get(vm);
    if (!e || e.phase !== 'running' || !e.child) return false;
    this.exitVm(e, how === 'killed' ? 'SIGKILL' : null);
    return true;
  }

  /** The VM's process ends now (signal, or exit code 1 when `signal` is null). */
  private exitVm(e: VmEntry, signal: 'SIGKILL' | 'SIGTERM' | null): void {
    if (!e.child) return;
    e.child = false;
    this.env.vmDown(e.vm);
    this.env.proc.spawn(this.onExit(e, signal));
  }

  private *onExit(e: VmEntry, signal: 'SIGKILL' | 'SIGTERM' | null): Proc<void> {
    const wasRunning = e.phase === 'running';
    e.phase = 'exited';
    let ev: { reason: VmStopReason; detail: string };
    if (e.fenced) {
      e.lease?.abandon();
      ev = { reason: 'fenced', detail: `killed by the VM daemon: ${e.fenced}` };
    } else {
      if (e.lease) yield* attempt(e.lease.release());
      if (e.stop === 'hard') ev = { reason: 'requested', detail: 'hard power off through Vigil' };
      else if (e.stop === 'graceful') ev = { reason: 'requested', detail: e.forced ? 'graceful shutdown through Vigil; forced off after the timeout' : 'graceful shutdown through Vigil' };
      else if (signal) ev = { reason: 'killed', detail: `killed by ${signal}` };
      else ev = { reason: 'exited', detail: 'exited with code 1' };
    }
    if (this.vms.get(e.vm) === e) this.vms.delete(e.vm);
    this.env.log('vm.exited', `${e.vm} stopped here: ${ev.reason} (${ev.detail})`);
    if (wasRunning) this.emit({ event: 'stopped', vm: e.vm, ...ev });
    settle(e, 'gone', null);
  }

  // ---- host VM leases -----------------------------------------------------------------------------

  private *ensureHostLease(ds: string): Proc<number> {
    const h = this.hostLeases.get(ds);
    if (h && this.keeper.has(ds)) return h.generation;
    const waiting = this.hostAcquiring.get(ds);
    if (waiting) return yield* wait<number>((done) => waiting.push(done));
    const waiters: ((err: unknown, gen?: number) => void)[] = [];
    this.hostAcquiring.set(ds, waiters);
    try {
      const gen = yield* this.acquireHostLease(ds);
      this.hostAcquiring.delete(ds);
      for (const w of waiters) w(null, gen);
      return gen;
    } catch (err) {
      this.hostAcquiring.delete(ds);
      for (const w of waiters) w(err);
      throw err;
    }
  }

  private *acquireHostLease(ds: string): Proc<number> {
    const lease = new SimLeaseFile({ ds, name: `${this.host}-vm`, host: this.host, timeoutMs: this.env.timing.storageCallTimeoutMs, token: this.env.token });
    const startedAt = this.env.proc.now();
    try {
      const snap = yield* lease.read();
      const r = snap.record;
      if (r && r.host !== this.host) throw new Error(`${this.host}-vm on ${ds} names ${r.host}`);
      if (r && (r.state === 'held' || snap.maxClaim !== r.generation)) yield* lease.acquire({ ...r, maxClaim: snap.maxClaim });
      else if (!r && (snap.lockExists || snap.maxClaim > 0)) yield* lease.acquire('orphan');
      else yield* lease.acquire();
    } catch (err) {
      const msg = `cannot acquire the host VM lease ${this.host}-vm on ${ds}: ${describe(err)}`;
      this.env.log('vmd.host-lease-failed', msg);
      throw new VmdError(msg, 'EPOWERON');
    }
    const generation = lease.held!.generation;
    this.keeper.add(ds, lease, startedAt);
    this.hostLeases.set(ds, { lease, generation });
    this.env.log('vmd.host-lease', `host VM lease ${this.host}-vm on ${ds} acquired (generation ${generation})`);
    return generation;
  }

  protected onKeeperEvent(ev: KeeperEvent): void {
    if (ev.type !== 'lost') return;
    this.selfFence(ev.key, `host VM lease on ${ev.key} lost: ${ev.reason}`);
  }

  /** Kill every VM of a datastore at once and abandon their VM leases (they die with the host lease generation). */
  protected selfFence(ds: string, why: string): void {
    this.hostLeases.delete(ds);
    const victims = [...this.vms.values()].filter((e) => e.ds === ds && e.phase !== 'exited');
    for (const e of victims) {
      e.fenced = why;
      this.exitVm(e, 'SIGKILL');
    }
    for (const e of victims) e.lease?.abandon();
    this.env.log('vmd.fenced', `${why}; ${victims.length} VM(s) of ${ds} killed`);
  }
}
