/**
 * The master's VM manager (SPEC §3.5, §3.6): protected VMs, where they run, restarts after
 * host failure, VM monitoring, and the CLI's VM operations.
 *
 * One reconciliation rule covers host failure, master failure and VM crashes: a protected VM
 * that runs on no live host is restarted, provided
 *   - its last host is dead (not merely silent, partitioned, isolated or agent-unreachable), or
 *     it stopped on a live host (crash), or it is listed in poweredoff/ (isolation response);
 *   - its VM lease is free: absent, released, or seen unchanged for the whole lease timeout
 *     (nothing is ever powered on while its lease may still be held elsewhere);
 *   - this master holds the protectedlist of the VM's datastore.
 * Restarts go in priority order, to a connected, non-maintenance host that mounts the datastore
 * and has the capacity (most free memory first: spreads load), at most maxConcurrentPerHost
 * power-ons in flight per host, retried on the configured schedule.
 */
import type { HostId } from './ids.js';
import { vmDatastore } from './ids.js';
import type { Timing } from './timing.js';
import type { CoreAction, LeaseRecordView, LogLevel } from './events.js';
import { ChangeTracker, type Liveness } from './liveness.js';
import type { FailureState } from './failure.js';

export type Priority = 'disabled' | 'lowest' | 'low' | 'medium' | 'high' | 'highest';
const PRIORITY_RANK: Record<Priority, number> = { highest: 0, high: 1, medium: 2, low: 3, lowest: 4, disabled: 5 };

export interface CatalogVm {
  id: string;
  name: string;
  memoryMB: number;
  cpus: number;
  priority: Priority;
}

/** What the manager needs to know of each host at a reconciliation. */
export interface HostPlacementInfo {
  host: HostId;
  state: FailureState | 'self';
  maintenance: boolean;
  /** Datastores it mounts. */
  datastores: readonly string[];
  capacity: { memoryMB: number; cpus: number } | null;
  /** Network silence so far (0 when heard recently). */
  silentForMs: number;
}

export type VmCommand =
  | { op: 'start'; vm: string; host?: HostId }
  | { op: 'stop'; vm: string }
  | { op: 'protect'; vm: string }
  | { op: 'unprotect'; vm: string };

interface VmTrack {
  attempts: number;
  nextAt: number;
  failed: boolean;
  lastError: string | null;
  pending: { host: HostId; req: number; since: number; kind: 'restart' | 'start' | 'stop' | 'evacuate'; why?: string } | null;
  /** Times of unexpected stops on a live host (VM monitoring). */
  resets: number[];
  restarts: number;
  lastHost: HostId | null;
  /** Restart on this host first (a crash on a live host). */
  preferHost: HostId | null;
  /**
   * Hosts this VM was just fenced on, or failed to start on: placed elsewhere while any other
   * host fits (a host that lost the VM's datastore still lists it in the config). Cleared when
   * the VM runs again.
   */
  avoid: Set<HostId>;
  /** Why it may be restarted now (crash, host dead...), null if it need not be. */
  wantRestart: string | null;
  waitingLogged: string | null;
}

interface PendingCommand {
  req: number;
  cmd: VmCommand;
  stage: 'powering' | 'committing' | 'stopping';
  since: number;
  host?: HostId;
}

export interface VmView {
  id: string;
  name: string;
  host: HostId | null;
  power: 'on' | 'off';
  protected: boolean;
  priority: Priority;
  restarts: number;
  attempts: number;
  /**
   * running: on a connected host; unconfirmed: listed by a host the master cannot reach (not
   * dead: never restarted); waiting: protected, not running, restart pending a condition;
   * restarting / starting: power-on in flight; failed: gave up; stopped: not running, unprotected.
   */
  state: 'running' | 'unconfirmed' | 'stopped' | 'restarting' | 'waiting' | 'failed' | 'starting';
  detail: string | null;
}

export interface VmManagerOptions {
  self: HostId;
  timing: Timing;
  maxConcurrentPerHost: number;
  maxAttempts: number;
  /**
   * Priority order of restarts. A lower-priority VM always waits while a higher-priority one's
   * lease is still being judged (it is not placed yet). `allocated`: it then waits no longer than
   * the pass that places the higher-priority VMs (vSphere's default "resources allocated");
   * `poweredOn`: it also waits until their power-ons have finished.
   */
  nextPriorityWhen?: 'allocated' | 'poweredOn';
  /** VM monitoring: at most this many resets per vmMonitorWindowMs (FDM: 3). */
  maxResets?: number;
  /** Timeout of one power-on request (then the lease and poweron files decide). */
  powerOnTimeoutMs?: number;
  /** Graceful stop timeout for `vm stop`. */
  stopTimeoutMs?: number;
}

export class VmManager {
  private readonly catalog = new Map<string, CatalogVm>();
  private readonly running = new Map<string, HostId>();
  private readonly tracks = new Map<string, VmTrack>();
  private readonly leases: ChangeTracker;
  /**
   * Renewals by the recorded holder only (the record without the claim counter). A takeover in
   * progress bumps the claim counter, which is activity on the lease but no sign that the old
   * holder lives: judging the old holder's host uses this tracker.
   */
  private readonly renewals: ChangeTracker;
  /** The VM lease records as last read. */
  private readonly leaseViews = new Map<string, LeaseRecordView | null>();
  /**
   * Host VM leases (`host-N-vm`), keyed `host@datastore`: a VM lease is not renewed itself; it
   * lives as long as its holder's host VM lease is renewed with the generation in its record.
   * Kept across role changes: a slave watches its master's, so that as the new master it can
   * judge the old master's VM leases at once.
   */
  private readonly hostVm: ChangeTracker;
  private readonly hostVmRecords = new Map<string, LeaseRecordView | null>();
  /** Last lease record seen per VM, encoded for a takeover ('' none, 'orphan' lock without record). */
  private readonly leaseRecords = new Map<string, string>();
  /** Holder of each VM's lease as last read. */
  private readonly leaseHolders = new Map<string, HostId | null>();
  private readonly poweredoff = new Set<string>();
  private readonly commands = new Map<number, PendingCommand>();
  private protectedSet = new Set<string>();
  private owned = new Set<string>();
  private hostVms = new Map<HostId, Set<string>>();
  private readonly maintenanceSet = new Set<HostId>();
  /** Maintenance requests waiting for their evacuation to finish: req -> host. */
  private readonly evacuations = new Map<number, HostId>();
  private readonly hostStates = new Map<HostId, FailureState | 'self'>();
  /** VMs a host reported started (vmResult ok), and when: see setHostVms. */
  private readonly recentStarts = new Map<string, { host: HostId; at: number }>();
  private readonly startGraceMs: number;
  private dirty = false;
  private nextReq = 1;
  private inventoryReady = false;
  private out: CoreAction[] = [];
  private readonly maxResets: number;
  private readonly powerOnTimeoutMs: number;
  private readonly stopTimeoutMs: number;

  constructor(private readonly opts: VmManagerOptions) {
    this.leases = new ChangeTracker(opts.timing.leaseTimeoutMs);
    this.renewals = new ChangeTracker(opts.timing.leaseTimeoutMs);
    this.hostVm = new ChangeTracker(opts.timing.leaseTimeoutMs);
    this.maxResets = opts.maxResets ?? 3;
    this.powerOnTimeoutMs = opts.powerOnTimeoutMs ?? 3 * opts.timing.storageCallTimeoutMs + 10_000;
    this.stopTimeoutMs = opts.stopTimeoutMs ?? Math.min(opts.timing.isolationShutdownTimeoutMs, 30_000);
    // A host rewrites its poweron file at once; a read can lag by a sampling period and a call.
    this.startGraceMs = opts.timing.storageHeartbeatIntervalMs + 2 * opts.timing.storageCallTimeoutMs;
  }

  /** Forget the master's state (no longer master). Pending CLI commands fail. */
  reset(why: string): CoreAction[] {
    this.out = [];
    for (const c of this.commands.values()) this.reply(c.req, false, `aborted: ${why}`);
    for (const req of this.evacuations.keys()) this.reply(req, false, `aborted: ${why}`);
    this.commands.clear();
    this.evacuations.clear();
    this.maintenanceSet.clear();
    this.tracks.clear();
    this.running.clear();
    this.hostVms.clear();
    this.hostStates.clear();
    this.inventoryReady = false;
    return this.out;
  }

  private track(vm: string): VmTrack {
    let t = this.tracks.get(vm);
    if (!t) {
      t = { attempts: 0, nextAt: 0, failed: false, lastError: null, pending: null, resets: [], restarts: 0, lastHost: null, preferHost: null, avoid: new Set(), wantRestart: null, waitingLogged: null };
      this.tracks.set(vm, t);
    }
    return t;
  }

  // ---- inputs -------------------------------------------------------------------------------

  setCatalog(datastore: string, vms: CatalogVm[]): void {
    for (const [id] of this.catalog) if (vmDatastore(id) === datastore) this.catalog.delete(id);
    for (const v of vms) this.catalog.set(v.id, v);
  }

  setProtected(protectedByDs: Map<string, string[]>, owned: string[]): void {
    this.owned = new Set(owned);
    this.protectedSet = new Set([...protectedByDs.values()].flat());
  }

  /** The VMs a host runs, from its poweron file (or the master's own driver). */
  setHostVms(host: HostId, vms: readonly string[], now?: number): void {
    const set = new Set(vms);
    // A poweron file read just before the host rewrote it does not list a VM the host has just
    // reported started: that report wins for a short while (else the master would "restart" a
    // VM that runs). A stop is reported by its own message, not by this file.
    for (const [vm, r] of this.recentStarts) {
      if (now === undefined || now - r.at >= this.startGraceMs) this.recentStarts.delete(vm);
      else if (r.host === host) set.add(vm);
    }
    this.hostVms.set(host, set);
    this.dirty = true;
  }

  private isLive(host: HostId): boolean {
    if (host === this.opts.self) return true;
    const st = this.hostStates.get(host);
    return st === 'connected' || st === 'self';
  }

  /**
   * Where each VM runs: the host whose poweron file (or driver) lists it, preferring live hosts.
   * A dead host's last poweron file still lists its VMs; a live host's word wins over it.
   */
  private relocate(): void {
    if (!this.dirty) return;
    this.dirty = false;
    this.running.clear();
    for (const [h, set] of this.hostVms) {
      const live = this.isLive(h);
      for (const vm of set) {
        const cur = this.running.get(vm);
        // A live host's word wins; between hosts the master cannot see, the lease holder's.
        if (!cur || (live && !this.isLive(cur)) || (!live && !this.isLive(cur) && this.leaseHolders.get(vm) === h)) this.running.set(vm, h);
      }
    }
    for (const [vm, h] of this.running) {
      if (!this.isLive(h)) continue;
      const t = this.track(vm);
      t.lastHost = h;
      t.wantRestart = null;
    }
  }

  private setStates(hosts: Map<HostId, HostPlacementInfo>): void {
    for (const h of this.maintenanceSet) {
      const info = hosts.get(h);
      if (info) hosts.set(h, { ...info, maintenance: true });
    }
    for (const [h, info] of hosts) {
      if (this.hostStates.get(h) !== info.state) this.dirty = true;
      this.hostStates.set(h, info.state);
    }
    this.relocate();
  }

  setPoweredOff(vms: Iterable<string>): void {
    this.poweredoff.clear();
    for (const v of vms) this.poweredoff.add(v);
  }

  /** The master has read every host's poweron file once: restarts may be decided. */
  markInventoryReady(): void {
    this.inventoryReady = true;
  }

  leaseSample(vm: string, record: LeaseRecordView | null, lockExists: boolean, maxClaim: number, now: number): void {
    const orphan = !record && (lockExists || maxClaim > 0);
    const value = record ? `${record.host}:${record.generation}:${record.token}:${record.counter}:${maxClaim}` : orphan ? `lock-without-record:${maxClaim}` : null;
    const released = record?.state === 'released' && maxClaim === record.generation;
    this.leases.observe(vm, { value, released }, now);
    const renewal = record && !released ? `${record.host}:${record.generation}:${record.token}:${record.counter}` : null;
    this.renewals.observe(vm, { value: renewal }, now);
    this.leaseViews.set(vm, record);
    this.leaseRecords.set(vm, record ? (released ? '' : value!) : orphan ? 'orphan' : '');
    const holder = record && !released ? record.host : null;
    if (this.leaseHolders.get(vm) !== holder) this.dirty = true;
    this.leaseHolders.set(vm, holder);
  }

  /** A read of host `host`'s host VM lease on `datastore`. */
  hostVmLeaseSample(host: HostId, datastore: string, record: LeaseRecordView | null, now: number): void {
    const key = `${host}@${datastore}`;
    const held = record && record.state === 'held' && record.host === host ? record : null;
    this.hostVm.observe(key, { value: held ? `${held.generation}:${held.token}:${held.counter}` : null }, now);
    this.hostVmRecords.set(key, held);
  }

  /**
   * The liveness of a VM's lease. A change of the VM lease itself (acquired, released, a claim)
   * within the lease timeout: alive. Otherwise, if its record names a host VM lease generation
   * and the holder's host VM lease on that datastore has that generation: whatever that host
   * lease's liveness is (renewed: alive; unchanged for the lease timeout: dead, even if this
   * host only started watching the VM lease now). Otherwise (no host lease, or it moved to
   * another generation): the VM lease's own record, dead after the lease timeout unchanged.
   */
  private leaseStateOf(vm: string, now: number): Liveness {
    const st = this.leases.state(vm, now);
    if (st === 'alive' || st === 'released' || st === 'absent') return st;
    const key = this.hostLeaseKey(vm);
    if (key) {
      const h = this.hostVm.state(key, now);
      if (h === 'alive' || h === 'dead') return h;
      if (h === 'unknown') return 'unknown';
    }
    return st;
  }

  /** `host@datastore` of the host VM lease the VM's lease is held under, if it has that generation now. */
  private hostLeaseKey(vm: string): string | null {
    const rec = this.leaseViews.get(vm);
    if (!rec || rec.state !== 'held' || rec.hostLease === undefined) return null;
    const key = `${rec.host}@${vmDatastore(vm)}`;
    return this.hostVmRecords.get(key)?.generation === rec.hostLease ? key : null;
  }

  /** What a host must present to take the VM's lease over ('' when it is free). */
  private takeoverOf(vm: string, now: number): string {
    if (this.leaseStateOf(vm, now) !== 'dead') return '';
    const base = this.leaseRecords.get(vm) ?? '';
    const rec = this.leaseViews.get(vm);
    if (!base || base === 'orphan' || !rec || rec.hostLease === undefined) return base;
    const key = this.hostLeaseKey(vm);
    const h = key ? this.hostVmRecords.get(key) : null;
    return `${base}/${h ? `${h.generation}:${h.token}:${h.counter}` : '-'}`;
  }

  /**
   * What the VM leases of `host` say about it: some are alive (its VMs run, held by it), some
   * are not judged yet, or none of either. Leases held by other hosts (its VMs restarted
   * elsewhere) say nothing about it.
   */
  hostLeases(host: HostId, now: number): { alive: boolean; unjudged: boolean } {
    let alive = false;
    let unjudged = false;
    this.relocate();
    for (const vm of this.hostVms.get(host) ?? []) {
      // Listed by this host's (maybe stale) poweron file but running on another host now: its
      // lease is that host's business, and says nothing about this one.
      const where = this.running.get(vm);
      if (where !== undefined && where !== host) continue;
      const st = this.leaseStateOf(vm, now);
      const holder = this.leaseHolders.get(vm);
      if (st === 'unknown' && (holder === undefined || holder === host)) unjudged = true;
      if (holder === host && (this.renewals.state(vm, now) === 'alive' || (st === 'alive' && this.hostLeaseKey(vm) !== null))) alive = true;
    }
    // Its VM daemon renewing a host VM lease anywhere: the host itself lives (only its agent is silent).
    for (const [key] of this.hostVmRecords) if (key.startsWith(`${host}@`) && this.hostVm.state(key, now) === 'alive') alive = true;
    return { alive, unjudged };
  }

  leaseState(vm: string, now: number): Liveness {
    return this.leaseStateOf(vm, now);
  }

  maintenance(): HostId[] {
    return [...this.maintenanceSet].sort();
  }

  inMaintenance(host: HostId): boolean {
    return this.maintenanceSet.has(host);
  }

  /** The maintenance set found on disk (a new master adopts it). */
  loadMaintenance(hosts: readonly HostId[]): void {
    this.maintenanceSet.clear();
    for (const h of hosts) this.maintenanceSet.add(h);
  }

  /**
   * `vigil host maintenance enter|exit HOST [--evacuate]`. Entering is refused while protected VMs
   * run on the host, unless evacuating: they are shut down and restarted elsewhere. Replies when
   * the host holds no protected VM any more. Emits writeMaintenance to persist the set.
   */
  setHostMaintenance(req: number, host: HostId, enter: boolean, evacuate: boolean, now: number, hosts: Map<HostId, HostPlacementInfo>): CoreAction[] {
    this.out = [];
    this.setStates(hosts);
    if (!hosts.has(host)) {
      this.reply(req, false, `unknown host ${host}`);
      return this.out;
    }
    if (!enter) {
      if (this.maintenanceSet.delete(host)) this.out.push({ type: 'writeMaintenance', hosts: this.maintenance() });
      this.log('info', 'host.maintenance-exit', `${host} left maintenance mode`, { subject: host });
      this.reply(req, true, `${host} is out of maintenance mode`);
      return this.out;
    }
    const onHost = [...(this.hostVms.get(host) ?? [])].filter((vm) => this.protectedSet.has(vm)).sort();
    if (onHost.length > 0 && !evacuate) {
      this.reply(req, false, `${host} runs ${onHost.length} protected VMs (${onHost.slice(0, 5).join(', ')}${onHost.length > 5 ? ', ...' : ''}): use --evacuate to move them`);
      return this.out;
    }
    if (!this.maintenanceSet.has(host)) {
      this.maintenanceSet.add(host);
      this.out.push({ type: 'writeMaintenance', hosts: this.maintenance() });
    }
    this.log('info', 'host.maintenance-enter', `${host} entered maintenance mode${onHost.length ? `; evacuating ${onHost.length} VMs` : ''}`, { subject: host, evacuate: onHost });
    if (onHost.length === 0) {
      this.reply(req, true, `${host} is in maintenance mode (no protected VM runs there)`);
      return this.out;
    }
    this.evacuations.set(req, host);
    for (const vm of onHost) {
      const t = this.track(vm);
      if (t.pending) continue;
      const r = this.nextReq++;
      t.pending = { host, req: r, since: now, kind: 'evacuate' };
      this.out.push({ type: 'vmPowerOff', host, vm, req: r, graceful: true, timeoutMs: this.stopTimeoutMs });
    }
    return this.out;
  }

  private checkEvacuations(): void {
    for (const [req, host] of this.evacuations) {
      const left = [...this.tracks].filter(([, t]) => t.pending?.kind === 'evacuate' && t.pending.host === host).length;
      if (left > 0) continue;
      this.evacuations.delete(req);
      const still = [...(this.hostVms.get(host) ?? [])].filter((vm) => this.protectedSet.has(vm));
      this.reply(req, still.length === 0, still.length === 0 ? `${host} is in maintenance mode; its VMs were shut down and are restarting elsewhere` : `${host} is in maintenance mode but ${still.length} VMs could not be stopped: ${still.join(', ')}`);
    }
  }

  /** Resolve a CLI name or id to a VM id ('ambiguous' if several VMs share the name). */
  resolve(nameOrId: string): string | null | 'ambiguous' {
    if (nameOrId.includes(':')) return this.catalog.has(nameOrId) || this.protectedSet.has(nameOrId) ? nameOrId : null;
    const hits = [...this.catalog.values()].filter((v) => v.name === nameOrId).map((v) => v.id);
    if (hits.length > 1) return 'ambiguous';
    return hits[0] ?? null;
  }

  /** VM leases the runtime should sample now: VMs that may need a restart, or whose host is silent. */
  leasesToWatch(hosts: Map<HostId, HostPlacementInfo>): string[] {
    this.setStates(hosts);
    const out = new Set<string>();
    for (const vm of this.protectedSet) {
      const host = this.running.get(vm);
      const h = host ? hosts.get(host) : undefined;
      // Watch from T+storageWatchAfterMs, so a dead host's leases are judged by T+deadMs.
      if (!host || !h || (h.state !== 'connected' && h.state !== 'self') || h.silentForMs >= this.opts.timing.storageWatchAfterMs) out.add(vm);
    }
    for (const [vm, t] of this.tracks) if (t.wantRestart || t.pending) out.add(vm);
    // A VM that runs nowhere as far as this master knows, whose lease was last seen held: read it
    // again (it was likely released since; `vm start` must not be refused on a stale view).
    for (const [vm, rec] of this.leaseViews) if (rec?.state === 'held' && !this.running.has(vm) && this.catalog.has(vm)) out.add(vm);
    return [...out].sort();
  }

  /** A VM stopped on `host` (driver event, local or reported by a slave). */
  vmStopped(host: HostId, vm: string, reason: string, now: number): CoreAction[] {
    this.out = [];
    this.hostVms.get(host)?.delete(vm);
    if (this.recentStarts.get(vm)?.host === host) this.recentStarts.delete(vm);
    this.dirty = true;
    this.relocate();
    const where = this.running.get(vm);
    if (where !== undefined && where !== host && this.isLive(where)) {
      // A stale report: a host back from a power cut reports the VMs it ran before, which run
      // elsewhere now. Nothing to restart.
      this.log('debug', 'vm.stale-stop', `${vm} stopped on ${host} (${reason}), but it runs on ${where}: nothing to do`, { vm, host, runsOn: where, reason });
      return this.out;
    }
    const t = this.track(vm);
    if (!this.protectedSet.has(vm) || reason === 'requested' || t.pending?.kind === 'stop' || t.pending?.kind === 'evacuate') return this.out;
    if (reason === 'fenced') {
      t.wantRestart = `${host} lost its lease (self-fence)`;
      t.preferHost = null;
      t.avoid.add(host);
      this.log('warn', 'vm.fenced', `${vm} was killed on ${host}: its lease could not be renewed; it will run elsewhere`, { vm, host: host });
      return this.out;
    }
    t.resets = t.resets.filter((at) => now - at < this.opts.timing.vmMonitorWindowMs);
    t.resets.push(now);
    if (t.resets.length > this.maxResets) {
      t.failed = true;
      t.wantRestart = null;
      t.lastError = `stopped ${t.resets.length} times within ${Math.round(this.opts.timing.vmMonitorWindowMs / 1000)} s`;
      this.log('error', 'vm.failed', `${vm} stopped unexpectedly on ${host} (${reason}) for the ${t.resets.length}th time in the monitoring window: giving up`, {
        vm,
        host,
        reason,
        resets: t.resets.length,
      });
      return this.out;
    }
    t.wantRestart = `stopped unexpectedly on ${host} (${reason})`;
    t.preferHost = host;
    t.nextAt = now;
    this.log('warn', 'vm.stopped', `${vm} stopped unexpectedly on ${host} (${reason}): restarting it (reset ${t.resets.length} of ${this.maxResets})`, {
      vm,
      host,
      reason,
      resets: t.resets.length,
    });
    return this.out;
  }

  /** Outcome of a powerOn / powerOff request. */
  result(vm: string, host: HostId, req: number, ok: boolean, leaseHeld: boolean, error: string, now: number): CoreAction[] {
    this.out = [];
    const t = this.track(vm);
    const p = t.pending;
    const cmd = [...this.commands.values()].find((c) => c.cmd.vm === vm && (c.stage === 'powering' || c.stage === 'stopping'));
    if (!p || p.req !== req || p.host !== host) return this.out;
    t.pending = null;
    if (p.kind === 'evacuate') {
      if (ok) {
        this.hostVms.get(host)?.delete(vm);
        this.recentStarts.delete(vm);
        this.dirty = true;
        this.relocate();
        t.wantRestart = `evacuated from ${host} (maintenance)`;
        t.preferHost = null;
        t.nextAt = now;
      }
      this.checkEvacuations();
      return this.out;
    }
    if (p.kind === 'stop') {
      if (ok) {
        this.hostVms.get(host)?.delete(vm);
        this.recentStarts.delete(vm);
        this.dirty = true;
        this.relocate();
      }
      if (cmd) {
        this.commands.delete(cmd.req);
        this.reply(cmd.req, ok, ok ? `${vm} stopped on ${host}; it is not protected and will not be restarted` : `${vm} is unprotected but could not be stopped on ${host}: ${error}`);
      }
      return this.out;
    }
    if (ok) {
      const why = p.why ?? t.wantRestart;
      let set = this.hostVms.get(host);
      if (!set) this.hostVms.set(host, (set = new Set()));
      set.add(vm);
      this.recentStarts.set(vm, { host, at: now });
      this.dirty = true;
      this.relocate();
      t.lastHost = host;
      t.wantRestart = null;
      t.preferHost = null;
      t.avoid.clear();
      t.attempts = 0;
      t.lastError = null;
      this.poweredoff.delete(vm);
      if (p.kind === 'restart') {
        t.restarts += 1;
        this.log('info', 'vm.restarted', `${vm} restarted on ${host} (${why ?? 'not running'})`, { vm, host, reason: why, restarts: t.restarts });
        this.out.push({ type: 'removePoweredOff', vm });
      } else {
        this.log('info', 'vm.started', `${vm} started on ${host}`, { vm, host });
      }
      if (cmd) {
        cmd.stage = 'committing';
        cmd.since = now;
        const write = this.setProtection(vm, true);
        this.out.push(...write);
        if (write.length === 0) {
          // Already protected (a failed or waiting VM started again): nothing to commit.
          this.commands.delete(cmd.req);
          this.reply(cmd.req, true, `${vm} runs on ${host} and is protected`);
        }
      }
      this.stopAfterPowerOn(vm, host, true, now);
      return this.out;
    }
    t.lastError = error;
    if (leaseHeld) {
      this.log('warn', 'vm.lease-held', `${vm} was not started on ${host}: its lease is held elsewhere; waiting`, { vm, host });
      t.nextAt = now + this.opts.timing.storageHeartbeatIntervalMs;
    } else {
      t.attempts += 1;
      t.avoid.add(host);
      if (t.preferHost === host) t.preferHost = null;
      const delays = this.opts.timing.restartRetryDelaysMs;
      if (p.kind === 'restart' && t.attempts >= this.opts.maxAttempts) {
        t.failed = true;
        this.log('error', 'vm.failed', `${vm} failed to start ${t.attempts} times (last on ${host}: ${error}); giving up`, { vm, host, attempts: t.attempts, error });
      } else {
        t.nextAt = now + (delays[Math.min(t.attempts - 1, delays.length - 1)] ?? 0);
        this.log('warn', 'vm.start-failed', `${vm} could not start on ${host}: ${error}; attempt ${t.attempts} of ${this.opts.maxAttempts}`, { vm, host, attempts: t.attempts, error });
      }
    }
    if (cmd) {
      this.commands.delete(cmd.req);
      this.reply(cmd.req, false, `${vm} could not start on ${host}: ${error}`);
    }
    this.stopAfterPowerOn(vm, host, false, now);
    return this.out;
  }

  /**
   * A `vm stop` that came while a power-on of the VM was in flight waited for it (onCommitted):
   * the VM runs now, so stop it; or it did not start, so answer. (Else the stop would be answered
   * "not running" and the power-on would then start an unprotected VM.)
   */
  private stopAfterPowerOn(vm: string, host: HostId, started: boolean, now: number): void {
    const c = [...this.commands.values()].find((x) => x.cmd.op === 'stop' && x.cmd.vm === vm && x.stage === 'committing');
    if (!c || this.protectedSet.has(vm)) return;
    if (!started) {
      this.commands.delete(c.req);
      this.reply(c.req, true, `${vm} is unprotected and was not running`);
      return;
    }
    c.stage = 'stopping';
    const req = this.nextReq++;
    this.track(vm).pending = { host, req, since: now, kind: 'stop' };
    this.out.push({ type: 'vmPowerOff', host, vm, req, graceful: true, timeoutMs: this.stopTimeoutMs });
  }

  /** The protectedlist of a datastore now holds exactly `vms` on disk. */
  committed(datastore: string, vms: string[], now?: number): CoreAction[] {
    this.out = [];
    this.onCommitted(datastore, vms, now);
    return this.out;
  }

  private onCommitted(datastore: string, vms: string[], now?: number): void {
    const onDisk = new Set(vms);
    for (const c of [...this.commands.values()]) {
      if (c.stage !== 'committing' || vmDatastore(c.cmd.vm) !== datastore) continue;
      const vm = c.cmd.vm;
      if (c.cmd.op === 'start' || c.cmd.op === 'protect') {
        if (!onDisk.has(vm)) continue;
        this.commands.delete(c.req);
        this.reply(c.req, true, c.cmd.op === 'start' ? `${vm} runs on ${this.running.get(vm) ?? c.host ?? '?'} and is protected` : `${vm} is protected`);
      } else {
        if (onDisk.has(vm)) continue;
        if (c.cmd.op === 'stop') {
          let host = this.running.get(vm);
          const inFlight = this.tracks.get(vm)?.pending;
          // A power-on in flight (a restart: it runs nowhere, or its last host is dead) may still
          // start it: wait for its outcome (result()), rather than answer "not running" now.
          if ((inFlight?.kind === 'restart' || inFlight?.kind === 'start') && (!host || this.hostStates.get(host) === 'dead')) continue;
          // No poweron file read so far lists it, but its lease is renewed: it runs on the holder.
          const holder = this.leaseHolders.get(vm);
          if (!host && holder && now !== undefined && this.leaseStateOf(vm, now) === 'alive') {
            if (!this.isLive(holder)) {
              this.commands.delete(c.req);
              this.reply(c.req, false, `${vm} is unprotected, but it runs on ${holder} (its lease is renewed), which this master cannot reach; retry when it is back`);
              continue;
            }
            host = holder;
          }
          if (!host) {
            this.commands.delete(c.req);
            this.reply(c.req, true, `${vm} is unprotected and was not running`);
            continue;
          }
          c.stage = 'stopping';
          const req = this.nextReq++;
          this.track(vm).pending = { host, req, since: c.since, kind: 'stop' };
          this.out.push({ type: 'vmPowerOff', host, vm, req, graceful: true, timeoutMs: this.stopTimeoutMs });
        } else {
          this.commands.delete(c.req);
          this.reply(c.req, true, `${vm} is no longer protected`);
        }
      }
    }
  }

  /**
   * A write of the protectedlist failed (a slow or failing datastore). Ownership rewrites it at
   * the next tick, so the commands waiting for it keep waiting; those that have waited longer
   * than powerOnTimeoutMs fail with the error.
   */
  commitFailed(datastore: string, error: string, now: number): CoreAction[] {
    this.out = [];
    this.expireCommits(now, (c) => vmDatastore(c.cmd.vm) === datastore, `could not commit the protectedlist of ${datastore}: ${error}`);
    return this.out;
  }

  private expireCommits(now: number, which: (c: PendingCommand) => boolean, why: string): void {
    for (const c of [...this.commands.values()]) {
      if (c.stage !== 'committing' || !which(c) || now - c.since < this.powerOnTimeoutMs) continue;
      this.commands.delete(c.req);
      this.reply(c.req, false, why);
    }
  }

  /** A CLI command reaching the master. Replies come as `reply` actions. */
  command(req: number, cmd: VmCommand, now: number, hosts: Map<HostId, HostPlacementInfo>): CoreAction[] {
    this.out = [];
    this.setStates(hosts);
    const vm = cmd.vm;
    const ds = vmDatastore(vm);
    if (!this.owned.has(ds)) {
      this.reply(req, false, `this master does not hold the protectedlist of ${ds} (yet); retry shortly`);
      return this.out;
    }
    // Where VMs run is known only once every host's poweron file was read (inventoryScanned):
    // before that a new master would take a running VM for stopped.
    if ((cmd.op === 'start' || cmd.op === 'stop') && !this.inventoryReady) {
      this.reply(req, false, `this master has not read every host's files yet (it was elected a moment ago); retry shortly`);
      return this.out;
    }
    const t = this.track(vm);
    const pc: PendingCommand = { req, cmd, stage: 'committing', since: now };
    switch (cmd.op) {
      case 'protect':
      case 'unprotect':
        this.commands.set(req, pc);
        this.out.push(...this.setProtection(vm, cmd.op === 'protect'));
        if (!this.out.some((a) => a.type === 'setProtection')) {
          this.commands.delete(req);
          this.reply(req, true, `${vm} is ${cmd.op === 'protect' ? 'already protected' : 'already unprotected'}`);
        }
        return this.out;
      case 'stop':
        t.failed = false;
        t.wantRestart = null;
        this.commands.set(req, pc);
        this.out.push(...this.setProtection(vm, false));
        if (!this.out.some((a) => a.type === 'setProtection')) this.onCommitted(ds, [...this.protectedSet].filter((v) => vmDatastore(v) === ds), now);
        return this.out;
      case 'start': {
        const spec = this.catalog.get(vm);
        if (!spec) {
          this.reply(req, false, `no VM config ${vm} (see vigil vms)`);
          return this.out;
        }
        t.failed = false;
        t.attempts = 0;
        t.resets = [];
        const where = this.running.get(vm);
        if (where) {
          pc.host = where;
          this.commands.set(req, pc);
          this.out.push(...this.setProtection(vm, true));
          if (!this.out.some((a) => a.type === 'setProtection')) {
            this.commands.delete(req);
            this.reply(req, true, `${vm} already runs on ${where} and is protected`);
          }
          return this.out;
        }
        if (t.pending) {
          this.reply(req, false, `${vm} is already being started on ${t.pending.host}`);
          return this.out;
        }
        const lease = this.leaseStateOf(vm, now);
        if (lease === 'alive') {
          this.reply(req, false, `${vm}'s lease is held and alive: it runs somewhere this master does not see`);
          return this.out;
        }
        const host = cmd.host ?? this.place(spec, hosts, null);
        if (!host) {
          this.reply(req, false, `no connected host mounts ${ds} with ${spec.memoryMB} MB and ${spec.cpus} vCPUs free`);
          return this.out;
        }
        const h = hosts.get(host);
        if (!h || (h.state !== 'connected' && h.state !== 'self')) {
          this.reply(req, false, `${host} is not a connected host`);
          return this.out;
        }
        if (!h.datastores.includes(ds)) {
          this.reply(req, false, `${host} does not mount ${ds}`);
          return this.out;
        }
        pc.stage = 'powering';
        pc.host = host;
        this.commands.set(req, pc);
        const r = this.nextReq++;
        t.pending = { host, req: r, since: now, kind: 'start' };
        this.out.push({ type: 'vmPowerOn', host, vm, req: r, takeover: this.takeoverOf(vm, now) });
        return this.out;
      }
    }
  }

  private setProtection(vm: string, on: boolean): CoreAction[] {
    if (this.protectedSet.has(vm) === on) return [];
    if (on) this.protectedSet.add(vm);
    else this.protectedSet.delete(vm);
    return [{ type: 'setProtection', vm, protected: on }];
  }

  // ---- reconciliation -------------------------------------------------------------------------

  tick(now: number, hosts: Map<HostId, HostPlacementInfo>): CoreAction[] {
    this.out = [];
    this.expireCommits(now, () => true, `the protectedlist change was not on disk within ${this.powerOnTimeoutMs} ms`);
    // Expire lost requests: the lease and the poweron files will tell what happened.
    for (const [vm, t] of this.tracks) {
      const limit = t.pending && (t.pending.kind === 'stop' || t.pending.kind === 'evacuate') ? this.stopTimeoutMs + this.powerOnTimeoutMs : this.powerOnTimeoutMs;
      // A request to a host declared dead gets no answer: drop it now, the lease decides.
      const targetDead = t.pending !== null && hosts.get(t.pending.host)?.state === 'dead';
      if (t.pending && (targetDead || now - t.pending.since > limit)) {
        this.log('warn', 'vm.request-timeout', `no answer from ${t.pending.host} about ${vm} within ${this.powerOnTimeoutMs} ms`, { vm, host: t.pending.host });
        const cmd = [...this.commands.values()].find((c) => c.cmd.vm === vm && (c.stage === 'powering' || c.stage === 'stopping'));
        if (cmd) {
          this.commands.delete(cmd.req);
          this.reply(cmd.req, false, `no answer from ${t.pending.host} in time; see vigil vms`);
        }
        t.pending = null;
        this.checkEvacuations();
      }
    }
    for (const [req, c] of this.commands) {
      if (now - c.since > this.powerOnTimeoutMs + this.stopTimeoutMs + 10_000) {
        this.commands.delete(req);
        this.reply(req, false, 'timed out');
      }
    }
    this.setStates(hosts);
    if (!this.inventoryReady) return this.out;

    const inflight = new Map<HostId, number>();
    for (const t of this.tracks.values()) if (t.pending) inflight.set(t.pending.host, (inflight.get(t.pending.host) ?? 0) + 1);


    const candidates: { vm: string; why: string; spec: CatalogVm }[] = [];
    let judging = Infinity; // best priority rank among VMs whose lease is not judged yet
    for (const vm of this.protectedSet) {
      if (!this.owned.has(vmDatastore(vm))) continue;
      const t = this.track(vm);
      const where = this.running.get(vm);
      const h = where ? hosts.get(where) : undefined;
      if (where && h && h.state !== 'dead') {
        t.wantRestart = null;
        continue; // runs on a host that is alive, or not known to be dead: never a second copy
      }
      if (t.pending || t.failed) continue;
      const spec = this.catalog.get(vm);
      if (!spec || spec.priority === 'disabled') continue;
      let why = t.wantRestart;
      if (!why) {
        const last = t.lastHost ? hosts.get(t.lastHost) : undefined;
        if (where && h?.state === 'dead') why = `${where} is dead`;
        else if (this.poweredoff.has(vm)) why = 'powered off by an isolation response';
        else if (!t.lastHost) why = 'protected but not running on any host';
        else if (!last || last.state === 'dead' || last.state === 'connected' || last.state === 'self') why = `not running (last on ${t.lastHost})`;
        else {
          this.waiting(t, vm, `its last host ${t.lastHost} is ${last.state}: not restarting it`);
          continue;
        }
      }
      if (now < t.nextAt) continue;
      const lease = this.leaseStateOf(vm, now);
      if (lease === 'alive' || lease === 'unknown') {
        this.waiting(t, vm, lease === 'alive' ? 'its lease is still renewed elsewhere' : 'watching its lease (not yet judged)');
        if (lease === 'unknown') judging = Math.min(judging, PRIORITY_RANK[spec.priority]);
        continue;
      }
      candidates.push({ vm, why, spec });
    }
    candidates.sort((a, b) => PRIORITY_RANK[a.spec.priority] - PRIORITY_RANK[b.spec.priority] || (a.vm < b.vm ? -1 : 1));
    // Priority order: while a higher-priority VM's lease is still being judged, lower-priority VMs
    // wait; with nextPriorityWhen 'poweredOn' they also wait while its restart is in flight.
    // Candidates are placed in priority order, so higher-priority VMs get capacity first.
    const untilPoweredOn = this.opts.nextPriorityWhen === 'poweredOn';
    if (untilPoweredOn) {
      for (const [vm, t] of this.tracks) {
        if (t.pending?.kind !== 'restart') continue;
        const p = this.catalog.get(vm)?.priority;
        if (p) judging = Math.min(judging, PRIORITY_RANK[p]);
      }
    }
    while (candidates.length > 0 && PRIORITY_RANK[candidates[candidates.length - 1]!.spec.priority] > judging) {
      const c = candidates.pop()!;
      this.waiting(this.track(c.vm), c.vm, 'a higher-priority VM goes first');
    }
    for (const c of candidates) {
      if (PRIORITY_RANK[c.spec.priority] > judging) {
        this.waiting(this.track(c.vm), c.vm, 'a higher-priority VM goes first');
        continue;
      }
      const t = this.track(c.vm);
      const host = this.place(c.spec, hosts, t.preferHost, inflight, t.avoid);
      if (!host) {
        this.waiting(t, c.vm, `no connected host mounting ${vmDatastore(c.vm)} has ${c.spec.memoryMB} MB / ${c.spec.cpus} vCPUs free (or all are busy)`);
        continue;
      }
      const req = this.nextReq++;
      t.pending = { host, req, since: now, kind: 'restart', why: c.why };
      t.wantRestart = c.why;
      t.waitingLogged = null;
      inflight.set(host, (inflight.get(host) ?? 0) + 1);
      if (untilPoweredOn) judging = Math.min(judging, PRIORITY_RANK[c.spec.priority]);
      this.log('info', 'vm.restarting', `restarting ${c.vm} on ${host}: ${c.why} (priority ${c.spec.priority})`, { vm: c.vm, host, reason: c.why, priority: c.spec.priority, attempt: t.attempts + 1 });
      this.out.push({ type: 'vmPowerOn', host, vm: c.vm, req, takeover: this.takeoverOf(c.vm, now) });
    }
    return this.out;
  }

  private waiting(t: VmTrack, vm: string, why: string): void {
    if (t.waitingLogged === why) return;
    t.waitingLogged = why;
    this.log('info', 'vm.waiting', `${vm} waits: ${why}`, { vm, reason: why });
  }

  /** Free capacity of a host: its capacity minus its running VMs and the starts in flight to it. */
  private free(host: HostPlacementInfo): { memoryMB: number; cpus: number } {
    const cap = host.capacity ?? { memoryMB: 0, cpus: 0 };
    let mem = cap.memoryMB;
    let cpu = cap.cpus;
    const count = (vm: string) => {
      const s = this.catalog.get(vm);
      mem -= s?.memoryMB ?? 0;
      cpu -= s?.cpus ?? 0;
    };
    const here = this.hostVms.get(host.host) ?? new Set<string>();
    here.forEach(count);
    for (const [vm, t] of this.tracks) if (t.pending?.host === host.host && t.pending.kind !== 'stop' && !here.has(vm)) count(vm);
    return { memoryMB: mem, cpus: cpu };
  }

  private place(
    spec: CatalogVm,
    hosts: Map<HostId, HostPlacementInfo>,
    prefer: HostId | null,
    inflight = new Map<HostId, number>(),
    avoid: ReadonlySet<HostId> = new Set(),
  ): HostId | null {
    const ds = vmDatastore(spec.id);
    const fits = (h: HostPlacementInfo) => {
      if (h.state !== 'connected' && h.state !== 'self') return false;
      if (h.maintenance || !h.datastores.includes(ds)) return false;
      if ((inflight.get(h.host) ?? 0) >= this.opts.maxConcurrentPerHost) return false;
      const f = this.free(h);
      return f.memoryMB >= spec.memoryMB && f.cpus >= spec.cpus;
    };
    if (prefer) {
      const h = hosts.get(prefer);
      if (h && fits(h)) return prefer;
    }
    // The host with the most free memory, among the hosts not to avoid if any of them fits.
    let bestHost: HostPlacementInfo | null = null;
    let bestFree = -Infinity;
    let bestAvoided = true;
    for (const h of [...hosts.values()].sort((a, b) => (a.host < b.host ? -1 : 1))) {
      if (!fits(h)) continue;
      const avoided = avoid.has(h.host);
      const f = this.free(h).memoryMB;
      if ((bestAvoided && !avoided) || (avoided === bestAvoided && f > bestFree)) {
        bestFree = f;
        bestHost = h;
        bestAvoided = avoided;
      }
    }
    return bestHost?.host ?? null;
  }

  // ---- views ----------------------------------------------------------------------------------

  view(now: number): VmView[] {
    this.relocate();
    const ids = new Set([...this.catalog.keys(), ...this.protectedSet, ...this.running.keys()]);
    return [...ids].sort().map((id) => {
      const spec = this.catalog.get(id);
      const t = this.tracks.get(id);
      const host = this.running.get(id) ?? null;
      const prot = this.protectedSet.has(id);
      let state: VmView['state'] = host ? 'running' : 'stopped';
      let detail: string | null = null;
      const hostState = host ? (host === this.opts.self ? 'self' : this.hostStates.get(host)) : undefined;
      const live = hostState === 'self' || hostState === 'connected';
      if (host && !live) {
        // Listed by a host the master cannot see: not confirmed running (and never if dead).
        state = hostState === 'dead' ? (prot ? 'waiting' : 'stopped') : 'unconfirmed';
        detail = `${host} is ${hostState ?? 'unknown'}`;
      }
      if (t?.failed) {
        state = 'failed';
        detail = t.lastError;
      } else if (t?.pending && t.pending.kind !== 'stop') {
        state = t.pending.kind === 'restart' ? 'restarting' : 'starting';
        detail = `on ${t.pending.host}`;
      } else if ((!host || hostState === 'dead') && prot) {
        state = 'waiting';
        detail = t?.waitingLogged ?? t?.wantRestart ?? detail;
      }
      void now;
      return {
        id,
        name: spec?.name ?? id.slice(id.lastIndexOf('/') + 1).replace(/\.json$/, ''),
        power: host && hostState !== 'dead' ? 'on' : 'off',
        host: host && hostState !== 'dead' ? host : null,
        protected: prot,
        priority: spec?.priority ?? 'medium',
        restarts: t?.restarts ?? 0,
        attempts: t?.attempts ?? 0,
        state,
        detail,
      };
    });
  }

  /** Restart state to persist on shared storage: VMs with attempts or failed. */
  queue(): { vm: string; attempts: number; failed: boolean }[] {
    const out: { vm: string; attempts: number; failed: boolean }[] = [];
    for (const [vm, t] of this.tracks) if (this.protectedSet.has(vm) && (t.attempts > 0 || t.failed || t.wantRestart)) out.push({ vm, attempts: t.attempts, failed: t.failed });
    return out.sort((a, b) => (a.vm < b.vm ? -1 : 1));
  }

  /** A new master continues the queue it found on disk. */
  restoreQueue(entries: { vm: string; attempts: number; failed: boolean }[]): void {
    for (const e of entries) {
      const t = this.track(e.vm);
      t.attempts = Math.max(t.attempts, e.attempts);
      t.failed = t.failed || e.failed;
    }
  }

  private reply(req: number, ok: boolean, message: string): void {
    this.out.push({ type: 'reply', req, ok, message });
  }

  private log(level: LogLevel, event: string, message: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, message, fields });
  }
}
