/**
 * The storage half of the simulated agent: StorageRuntime (packages/agent/src/storage.ts) on
 * simulated storage. It performs the core's storage actions (protectedlist leases and files,
 * poweron, restart queue, maintenance, poweredoff removal), keeps this host's heartbeat leases,
 * and feeds the same observations back, at the same periods: protectedlist records on every
 * host, other hosts' heartbeats and host VM leases on the master (its master's on a slave),
 * poweron and poweredoff files through a file watcher (fs.watch) and a periodic rescan. Keep it in step
 * with the real one; it decides nothing.
 */
import type { CoreAction, CoreEvent, HostId, LeaseRecordView, Role, Timing } from '@vigil/core';
import { all, attempt, describe, io, type Proc, type Process } from './io.js';
import { SimLeaseFile } from './lease.js';
import { SimLeaseKeeper, type KeeperEvent } from './keeper.js';
import { enoent, type PoweronFile, type SimDatastore } from './storage.js';

export interface AgentHostInfo {
  address: string;
  datastores: string[];
  heartbeatDatastores: string[];
}

export interface AgentStorageEnv {
  host: HostId;
  hosts: Record<HostId, AgentHostInfo>;
  timing: Timing;
  proc: Process;
  token: () => string;
  feed: (ev: CoreEvent) => void;
  log: (level: 'info' | 'warn' | 'error', event: string, message: string) => void;
  /** Start / stop receiving file watcher notifications (the master's chokidar). */
  watch: (on: boolean) => void;
  /** A lease was acquired or given up (invariant checks). */
  leasesChanged: () => void;
}

const hbKey = (ds: string) => `hb:${ds}`;
const plKey = (ds: string) => `pl:${ds}`;
const poweronKey = (p: PoweronFile) => `${p.isolated ? 1 : 0}|${p.vms.join(',')}`;

export class AgentStorage {
  readonly keeper: SimLeaseKeeper;
  private readonly hbDatastores: string[];
  private readonly hbLeases = new Map<string, SimLeaseFile>();
  private readonly plLeases = new Map<string, SimLeaseFile>();
  private readonly acquiringHb = new Set<string>();
  private readonly poweronOnDisk = new Map<string, string>();
  private readonly errors = new Map<string, string>();
  private poweron: PoweronFile | null = null;
  private accessible: string[] = [];
  private role: Role = 'uninitialized';
  private masterHost: HostId | null = null;
  private watching = false;
  private sampling = false;
  private stopped = false;
  private readonly plWriting = new Set<string>();
  private readonly plNext = new Map<string, string[]>();

  constructor(private readonly env: AgentStorageEnv) {
    this.hbDatastores = env.hosts[env.host]!.heartbeatDatastores;
    const t = env.timing;
    this.keeper = new SimLeaseKeeper(env.proc, t.storageHeartbeatIntervalMs, t.selfFenceDeadlineMs, (ev) => this.onKeeperEvent(ev));
  }

  private get t(): number {
    return this.env.timing.storageCallTimeoutMs;
  }

  private lease(ds: string, name: string): SimLeaseFile {
    return new SimLeaseFile({ ds, name, host: this.env.host, timeoutMs: this.t, token: this.env.token });
  }

  private spawn(gen: Proc<unknown>): void {
    this.env.proc.spawn(gen);
  }

  start(): void {
    const t = this.env.timing;
    this.keeper.start();
    this.env.proc.every(Math.max(50, Math.floor(t.storageHeartbeatIntervalMs / 2)), () => this.spawn(this.sample()));
    this.env.proc.every(t.storageHeartbeatIntervalMs, () => this.spawn(this.ensureHeartbeats()));
    this.env.proc.every(t.rescanIntervalMs, () => this.spawn(this.rescan()));
  }

  /** Clean stop: release every lease. */
  *stop(): Proc<void> {
    this.stopped = true;
    if (this.watching) this.env.watch(false);
    this.watching = false;
    yield* this.keeper.stop(true);
    this.env.leasesChanged();
  }

  setAccessible(accessible: string[]): void {
    const gone = this.accessible.filter((d) => !accessible.includes(d));
    this.accessible = accessible;
    for (const ds of gone) {
      if (this.hbLeases.get(ds) && this.keeper.has(hbKey(ds))) {
        this.keeper.forget(hbKey(ds));
        this.onKeeperEvent({ type: 'lost', key: hbKey(ds), reason: `datastore ${ds} is no longer accessible`, fenced: true });
      }
      if (this.plLeases.get(ds) && this.keeper.has(plKey(ds))) {
        this.keeper.forget(plKey(ds));
        this.onKeeperEvent({ type: 'lost', key: plKey(ds), reason: `datastore ${ds} is no longer accessible`, fenced: true });
      }
    }
    this.spawn(this.ensureHeartbeats());
  }

  setRole(role: Role, master: HostId | null): void {
    this.masterHost = master;
    const was = this.role;
    this.role = role;
    if (role === 'master' && was !== 'master') this.startWatching();
    if (role !== 'master' && was === 'master' && this.watching) {
      this.watching = false;
      this.env.watch(false);
    }
  }

  heldHeartbeats(): string[] {
    return this.hbDatastores.filter((d) => this.keeper.valid(hbKey(d)));
  }

  /** Datastores whose protectedlist this host holds within its self-fence deadline, with the filesystem it holds it on. */
  validProtectedlists(): Map<string, SimDatastore | null> {
    const out = new Map<string, SimDatastore | null>();
    for (const [d, lease] of this.plLeases) if (this.keeper.valid(plKey(d))) out.set(d, lease.store);
    return out;
  }

  // ---- actions from the core ------------------------------------------------------------------

  perform(a: CoreAction): boolean {
    switch (a.type) {
      case 'acquireProtectedlist':
        this.spawn(this.acquireProtectedlist(a.datastore, a.takeover));
        return true;
      case 'releaseProtectedlist':
        this.spawn(this.releaseProtectedlist(a.datastore));
        return true;
      case 'writeProtectedlist':
        this.queueProtectedlist(a.datastore, a.vms);
        return true;
      case 'removePoweredOff': {
        const ds = a.vm.slice(0, a.vm.indexOf(':'));
        if (this.env.hosts[this.env.host]) {
          this.spawn(
            (function* (self: AgentStorage, vm: string) {
              const r = yield* attempt(io({ kind: 'io', ds, what: `unlink poweredoff ${vm}`, timeoutMs: self.t, apply: (d) => d?.removePoweredOff(vm) }));
              if (!r.ok) self.noteError(`poweredoff-rm:${vm}`, `cannot remove poweredoff/ entry of ${vm}: ${describe(r.error)}`);
            })(this, a.vm),
          );
        }
        return true;
      }
      case 'writeMaintenance':
        for (const ds of this.plLeases.keys()) this.spawn(this.writeMaintenance(ds, a.hosts, a.seq ?? 0));
        return true;
      case 'writeRestartQueue':
        this.spawn(this.writeRestartQueue(a.datastore, a.entries));
        return true;
      case 'writePoweron':
        this.poweron = { isolated: a.isolated, vms: [...a.vms] };
        this.spawn(this.writePoweron());
        return true;
      default:
        return false;
    }
  }

  private *acquireProtectedlist(ds: string, takeover: LeaseRecordView | 'orphan' | null): Proc<void> {
    const lease = this.lease(ds, 'protectedlist');
    const started = this.env.proc.now();
    try {
      const h = yield* lease.acquire(takeover ?? undefined);
      if (this.stopped) {
        yield* lease.release();
        return;
      }
      this.plLeases.set(ds, lease);
      this.keeper.add(plKey(ds), lease, started);
      this.env.leasesChanged();
      let vms: string[] | null = null;
      const r = yield* attempt(io({ kind: 'io', ds, what: 'read protectedlist', timeoutMs: this.t, apply: (d) => (d ? d.protectedlist : null) }));
      if (!r.ok) {
        // An unreadable list must not be rewritten empty: give the lease back, try again later.
        this.plLeases.delete(ds);
        this.env.leasesChanged();
        yield* attempt(this.keeper.release(plKey(ds)));
        this.env.feed({ type: 'protectedlistAcquireFailed', now: this.env.proc.now(), datastore: ds, error: `cannot read protectedlist: ${describe(r.error)}` });
        return;
      }
      if (r.value) vms = [...r.value.vms];
      const error: string | undefined = undefined;
      // The self-fence deadline may have passed while the list was read: the loss was reported then.
      if (this.plLeases.get(ds) !== lease || !this.keeper.valid(plKey(ds))) {
        this.env.feed({ type: 'protectedlistAcquireFailed', now: this.env.proc.now(), datastore: ds, error: `lost the protectedlist of ${ds} again while reading it (storage too slow)` });
        return;
      }
      this.env.feed({ type: 'protectedlistAcquired', now: this.env.proc.now(), datastore: ds, generation: h.generation, vms, ...(error ? { error } : {}) });
      yield* this.readRestartQueue(ds);
    } catch (err) {
      this.env.feed({ type: 'protectedlistAcquireFailed', now: this.env.proc.now(), datastore: ds, error: describe(err) });
    }
  }

  private *releaseProtectedlist(ds: string): Proc<void> {
    this.plLeases.delete(ds);
    this.env.leasesChanged();
    const r = yield* attempt(this.keeper.release(plKey(ds)));
    if (!r.ok) this.env.log('warn', 'ownership.release-failed', `could not release the protectedlist of ${ds}: ${describe(r.error)}`);
  }

  /** One protectedlist write in flight per datastore; later requests coalesce into the newest set. */
  private queueProtectedlist(ds: string, vms: string[]): void {
    this.plNext.set(ds, vms);
    if (this.plWriting.has(ds)) return;
    this.plWriting.add(ds);
    this.spawn(
      (function* (self: AgentStorage) {
        try {
          for (let next = self.plNext.get(ds); next; next = self.plNext.get(ds)) {
            self.plNext.delete(ds);
            yield* self.writeProtectedlist(ds, next);
          }
        } finally {
          self.plWriting.delete(ds);
        }
      })(this),
    );
  }

  private *writeProtectedlist(ds: string, vms: string[]): Proc<void> {
    const lease = this.plLeases.get(ds);
    const held = lease?.held;
    if (!lease || !held || !this.keeper.valid(plKey(ds))) {
      this.env.log('warn', 'ownership.write-refused', `not writing the protectedlist of ${ds}: this host does not hold it`);
      return;
    }
    const r = yield* attempt(
      io({
        kind: 'io',
        ds,
        what: 'write protectedlist',
        timeoutMs: this.t,
        apply: (d) => {
          if (!d) throw enoent('write protectedlist');
          d.protectedlist = { owner: this.env.host, generation: held.generation, vms: [...vms] };
        },
      }),
    );
    if (r.ok) this.env.feed({ type: 'protectedlistWritten', now: this.env.proc.now(), datastore: ds, vms });
    else {
      this.env.log('error', 'storage.write-failed', `could not write protectedlist on ${ds}: ${describe(r.error)}`);
      this.env.feed({ type: 'protectedlistWritten', now: this.env.proc.now(), datastore: ds, vms, error: describe(r.error) });
    }
  }

  private *writeRestartQueue(ds: string, entries: { vm: string; attempts: number; failed: boolean }[]): Proc<void> {
    if (!this.plLeases.get(ds)?.held || !this.keeper.valid(plKey(ds))) return;
    const copy = entries.map((e) => ({ ...e }));
    const r = yield* attempt(
      io({
        kind: 'io',
        ds,
        what: 'write restartqueue',
        timeoutMs: this.t,
        apply: (d) => {
          if (!d) throw enoent('write restartqueue');
          d.restartqueue = copy;
        },
      }),
    );
    if (!r.ok) this.noteError(`queue:${ds}`, `could not write restartqueue on ${ds}: ${describe(r.error)}`);
  }

  private *readRestartQueue(ds: string): Proc<void> {
    const r = yield* attempt(io({ kind: 'io', ds, what: 'read restartqueue', timeoutMs: this.t, apply: (d) => (d?.restartqueue ? d.restartqueue.map((e) => ({ ...e })) : null) }));
    if (!r.ok || r.value === null) return;
    this.env.feed({ type: 'restartQueue', now: this.env.proc.now(), datastore: ds, entries: r.value });
  }

  private *writeMaintenance(ds: string, hosts: string[], seq: number): Proc<void> {
    if (!this.plLeases.get(ds)?.held || !this.keeper.valid(plKey(ds))) return;
    const r = yield* attempt(
      io({
        kind: 'io',
        ds,
        what: 'write maintenance',
        timeoutMs: this.t,
        apply: (d) => {
          if (!d) throw enoent('write maintenance');
          d.maintenance = { seq, hosts: [...hosts] };
        },
      }),
    );
    if (!r.ok) this.noteError(`maintenance:${ds}`, `could not write maintenance on ${ds}: ${describe(r.error)}`);
  }

  private *readMaintenance(): Proc<void> {
    let best: { seq: number; hosts: string[] } | null = null;
    for (const ds of [...this.accessible].sort()) {
      const r = yield* attempt(io({ kind: 'io', ds, what: 'read maintenance', timeoutMs: this.t, apply: (d) => (d?.maintenance ? { seq: d.maintenance.seq, hosts: [...d.maintenance.hosts] } : null) }));
      if (!r.ok || !r.value) continue;
      if (!best || r.value.seq > best.seq) best = r.value;
    }
    this.env.feed({ type: 'maintenanceSample', now: this.env.proc.now(), hosts: best?.hosts ?? [], seq: best?.seq ?? 0 });
  }

  *rescanAll(): Proc<void> {
    yield* this.rescan();
  }

  // ---- own heartbeat and poweron ----------------------------------------------------------------

  private *ensureHeartbeats(): Proc<void> {
    if (this.stopped) return;
    for (const ds of this.hbDatastores) {
      if (this.keeper.has(hbKey(ds)) || this.acquiringHb.has(ds) || !this.accessible.includes(ds)) continue;
      this.acquiringHb.add(ds);
      const lease = this.lease(ds, `${this.env.host}-hb`);
      const started = this.env.proc.now();
      try {
        const snap = yield* lease.read();
        // Only this host ever holds host-N-hb: whatever is there is its own, taken over at once.
        const r = snap.record;
        const h =
          r && r.host === this.env.host
            ? yield* lease.acquire({ ...r, maxClaim: snap.maxClaim })
            : !r && (snap.lockExists || snap.maxClaim > 0)
              ? yield* lease.acquire('orphan')
              : yield* lease.acquire();
        if (this.stopped) {
          yield* lease.release();
          return;
        }
        this.hbLeases.set(ds, lease);
        this.keeper.add(hbKey(ds), lease, started);
        this.env.log('info', 'heartbeat.acquired', `holding storage heartbeat ${this.env.host}-hb on ${ds} (generation ${h.generation})`);
        this.poweronOnDisk.delete(ds);
        this.spawn(this.writePoweron());
      } catch (err) {
        this.noteError(`hb-acquire:${ds}`, `cannot take storage heartbeat ${this.env.host}-hb on ${ds}: ${describe(err)}`);
      } finally {
        this.acquiringHb.delete(ds);
      }
    }
  }

  private *writePoweron(): Proc<void> {
    const content = this.poweron;
    if (content === null || this.stopped) return;
    const key = poweronKey(content);
    for (const ds of this.hbDatastores) {
      if (!this.accessible.includes(ds) || this.poweronOnDisk.get(ds) === key) continue;
      const r = yield* attempt(
        io({
          kind: 'io',
          ds,
          what: `write ${this.env.host}-poweron`,
          timeoutMs: this.t,
          apply: (d) => {
            if (!d) throw enoent(`write ${this.env.host}-poweron`);
            d.setPoweron(this.env.host, { isolated: content.isolated, vms: [...content.vms] });
          },
        }),
      );
      if (r.ok) this.poweronOnDisk.set(ds, key);
      else {
        this.poweronOnDisk.delete(ds);
        this.noteError(`poweron-write:${ds}`, `could not write ${this.env.host}-poweron on ${ds}: ${describe(r.error)}`);
      }
    }
  }

  private onKeeperEvent(ev: KeeperEvent): void {
    const [kind, ds] = ev.key.split(':') as ['hb' | 'pl', string];
    if (ev.type === 'renewed') {
      this.clearError(`renew:${ev.key}`);
      return;
    }
    if (ev.type === 'renewFailed') {
      this.noteError(`renew:${ev.key}`, `renewal of ${kind === 'hb' ? `${this.env.host}-hb` : 'protectedlist'} on ${ds} failed: ${ev.error}`);
      return;
    }
    if (kind === 'hb') {
      this.hbLeases.delete(ds);
      this.poweronOnDisk.delete(ds);
      this.env.feed({ type: 'heartbeatLost', now: this.env.proc.now(), datastore: ds, reason: ev.reason });
    } else {
      this.plLeases.delete(ds);
      this.env.leasesChanged();
      this.env.feed({ type: 'protectedlistLost', now: this.env.proc.now(), datastore: ds, reason: ev.reason });
    }
  }

  // ---- observation ------------------------------------------------------------------------------

  private *sample(): Proc<void> {
    if (this.sampling || this.stopped) return;
    this.sampling = true;
    try {
      const reads: Proc<void>[] = [];
      const self = this;
      for (const ds of this.accessible) {
        reads.push(
          (function* () {
            const r = yield* attempt(self.lease(ds, 'protectedlist').read());
            if (!r.ok) return void self.noteError(`pl-read:${ds}`, `cannot read the protectedlist lease on ${ds}: ${describe(r.error)}`);
            const snap = r.value;
            self.env.feed({ type: 'protectedlistSample', now: self.env.proc.now(), datastore: ds, record: snap.record, lockExists: snap.lockExists, maxClaim: snap.maxClaim });
          })(),
        );
        if (this.role !== 'master' && this.role !== 'slave') continue;
        for (const [host, h] of Object.entries(this.env.hosts)) {
          if (!h.datastores.includes(ds)) continue;
          // The master also reads its own host VM lease (the VMs fenced on it live by it).
          if (host === this.env.host && this.role !== 'master') continue;
          if (this.role === 'slave' && host !== this.masterHost) continue;
          reads.push(
            (function* () {
              const r = yield* attempt(self.lease(ds, `${host}-vm`).read());
              if (r.ok) self.env.feed({ type: 'hostVmLeaseSample', now: self.env.proc.now(), host, datastore: ds, record: r.value.record });
            })(),
          );
          if (host === this.env.host || !h.heartbeatDatastores.includes(ds)) continue;
          reads.push(
            (function* () {
              const r = yield* attempt(self.lease(ds, `${host}-hb`).read());
              if (r.ok) self.env.feed({ type: 'heartbeatSample', now: self.env.proc.now(), host, datastore: ds, record: r.value.record });
            })(),
          );
        }
      }
      yield* all(this.env.proc, reads);
    } finally {
      this.sampling = false;
    }
  }

  /** Master: follow poweron and poweredoff changes (fs.watch on the cluster directories), then a full rescan. */
  private startWatching(): void {
    if (this.watching) return;
    this.watching = true;
    this.env.watch(true);
    this.spawn(this.rescan());
  }

  /** A file watcher event (only while watching). */
  onFileChange(ds: string, what: 'poweron' | 'poweredoff', host: HostId | null): void {
    if (!this.watching || this.stopped) return;
    if (what === 'poweron' && host) this.spawn(this.readPoweron(host, ds));
    else if (what === 'poweredoff') this.spawn(this.readPoweredOff(ds));
  }

  private *readPoweron(host: HostId, ds: string): Proc<void> {
    if (host === this.env.host || !this.env.hosts[host]) return;
    const r = yield* attempt(io({ kind: 'io', ds, what: `read ${host}-poweron`, timeoutMs: this.t, apply: (d) => d?.poweron.get(host) ?? null }));
    const base = { type: 'poweronSample' as const, host, datastore: ds };
    if (r.ok) {
      if (!r.value) return; // ENOENT
      this.env.feed({ ...base, now: this.env.proc.now(), isolated: r.value.isolated, vms: [...r.value.vms] });
    } else {
      this.env.feed({ ...base, now: this.env.proc.now(), isolated: null, vms: null, error: `${host}-poweron: ${describe(r.error)}` });
    }
  }

  private *readPoweredOff(ds: string): Proc<void> {
    const r = yield* attempt(io({ kind: 'io', ds, what: 'list poweredoff', timeoutMs: this.t, apply: (d) => (d ? [...d.poweredoff.keys()].sort() : []) }));
    if (!r.ok) return void this.noteError(`poweredoff-read:${ds}`, `cannot list poweredoff/ on ${ds}: ${describe(r.error)}`);
    this.env.feed({ type: 'poweredoffSample', now: this.env.proc.now(), datastore: ds, vms: r.value });
  }

  /** Fallback for missed change events, and repair of what this host owns. */
  private *rescan(): Proc<void> {
    if (this.stopped) return;
    yield* this.readMaintenance();
    for (const ds of this.hbDatastores) {
      if (!this.accessible.includes(ds) || this.poweron === null) continue;
      const want = poweronKey(this.poweron);
      const r = yield* attempt(io({ kind: 'io', ds, what: `read ${this.env.host}-poweron`, timeoutMs: this.t, apply: (d) => d?.poweron.get(this.env.host) ?? null }));
      const text = r.ok && r.value ? poweronKey(r.value) : null;
      if (text !== want) {
        if (this.poweronOnDisk.has(ds)) this.env.log('warn', 'storage.repaired', `${this.env.host}-poweron on ${ds} did not hold what this host wrote; rewriting it`);
        this.poweronOnDisk.delete(ds);
      }
    }
    this.spawn(this.writePoweron());
    if (this.role !== 'master') return;
    for (const [ds, lease] of this.plLeases) {
      const held = lease.held;
      if (!held) continue;
      const r = yield* attempt(io({ kind: 'io', ds, what: 'read protectedlist', timeoutMs: this.t, apply: (d) => (d?.protectedlist ? { ...d.protectedlist } : null) }));
      const p = r.ok ? r.value : null;
      const problem = !p ? 'missing or unreadable' : p.owner !== this.env.host || p.generation !== held.generation ? `owner ${p.owner} generation ${p.generation}, not ours` : null;
      if (problem) this.env.feed({ type: 'protectedlistDamaged', now: this.env.proc.now(), datastore: ds, problem: `protectedlist: ${problem}` });
    }
    for (const ds of this.accessible) {
      yield* this.readPoweredOff(ds);
      for (const host of Object.keys(this.env.hosts)) {
        if (host !== this.env.host) yield* this.readPoweron(host, ds);
      }
    }
  }

  // ---- rate-limited problem logging -----------------------------------------------------------

  private noteError(key: string, message: string): void {
    if (this.errors.get(key) === message) return;
    this.errors.set(key, message);
    this.env.log('warn', 'storage.error', message);
  }

  private clearError(key: string): void {
    if (this.errors.delete(key)) this.env.log('info', 'storage.recovered', `recovered: ${key}`);
  }
}
