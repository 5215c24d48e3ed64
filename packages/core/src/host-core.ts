/**
 * Everything one host decides, composed: election, datastore ownership, failure detection and
 * the VM manager on the master, and the slave side of VM operations. The agent runtime and the
 * simulator both drive exactly this class: events in, actions out.
 */
import type { HostId } from './ids.js';
import { vmDatastore } from './ids.js';
import type { Timing } from './timing.js';
import type { CoreAction, CoreEvent, Role } from './events.js';
import type { Message } from './messages.js';
import { clipError } from './messages.js';
import { Election, type ElectionStatus } from './election.js';
import { Ownership } from './ownership.js';
import { StorageView } from './storage-view.js';
import { FailureDetector } from './failure.js';
import { VmManager, type HostPlacementInfo, type VmView } from './vms.js';
import type { HostView } from './hostview.js';
import { IsolationMonitor, type IsolationOutput, type IsolationResponse } from './isolation.js';

export interface HostCoreHost {
  address: string;
  /** Datastores it mounts. */
  datastores: readonly string[];
  /** Whether it keeps a storage heartbeat at all. */
  heartbeatDatastores: readonly string[];
}

export interface HostCoreOptions {
  self: HostId;
  /** Every configured host, self included. */
  hosts: readonly HostId[] | Record<HostId, HostCoreHost>;
  timing: Timing;
  generation?: number;
  capacity?: { memoryMB: number; cpus: number };
  maxConcurrentPerHost?: number;
  maxAttempts?: number;
  /** When lower-priority restarts may begin (VmManagerOptions.nextPriorityWhen). Default allocated. */
  nextPriorityWhen?: 'allocated' | 'poweredOn';
  /** The cluster's isolation response (per-VM settings override it). Default leavePoweredOn. */
  isolationResponse?: IsolationResponse;
  /** Whether this host has isolation addresses to ping. Default true. */
  hasIsolationAddresses?: boolean;
}

export class HostCore {
  readonly self: HostId;
  private readonly hostIds: readonly HostId[];
  private readonly hostInfo: Record<HostId, HostCoreHost>;
  private readonly timing: Timing;
  private readonly capacity: { memoryMB: number; cpus: number };
  private readonly election: Election;
  private readonly ownership: Ownership;
  private readonly storage: StorageView;
  private readonly failure: FailureDetector;
  private readonly vms: VmManager;
  private readonly isolation: IsolationMonitor;
  private readonly isolationResponse: IsolationResponse;
  private vmResponses: Record<string, IsolationResponse> = {};
  /** VMs the isolation response was applied to (or decided for) during this isolation. */
  private readonly responded = new Set<string>();
  private readonly responseWaitLogged = new Set<string>();
  private accessible = new Set<string>();
  private role: Role = 'uninitialized';
  private master: HostId | null = null;
  private localVms: string[] = [];
  private poweronWritten: string | null = null;
  private queueWritten = new Map<string, string>();
  private maintenanceLoaded = false;
  private selfMaintenanceReq: number | null = null;
  private maintenanceSeq = 0;
  private now = 0;

  constructor(opts: HostCoreOptions) {
    this.self = opts.self;
    if (Array.isArray(opts.hosts)) {
      this.hostInfo = Object.fromEntries((opts.hosts as readonly HostId[]).map((h) => [h, { address: '', datastores: [], heartbeatDatastores: [] }]));
    } else {
      this.hostInfo = opts.hosts as Record<HostId, HostCoreHost>;
    }
    this.hostIds = Object.keys(this.hostInfo).sort();
    this.timing = opts.timing;
    this.capacity = opts.capacity ?? { memoryMB: 0, cpus: 0 };
    this.election = new Election({ self: opts.self, hosts: this.hostIds, timing: opts.timing, generation: opts.generation ?? 0, capacity: this.capacity });
    this.ownership = new Ownership({ self: opts.self, leaseTimeoutMs: opts.timing.leaseTimeoutMs, retryMs: opts.timing.storageHeartbeatIntervalMs });
    this.storage = new StorageView(opts.timing.leaseTimeoutMs);
    this.failure = new FailureDetector(opts.timing, Object.fromEntries(this.hostIds.map((h) => [h, this.hostInfo[h]!.address])));
    this.vms = new VmManager({
      self: opts.self,
      timing: opts.timing,
      maxConcurrentPerHost: opts.maxConcurrentPerHost ?? 32,
      maxAttempts: opts.maxAttempts ?? 5,
      nextPriorityWhen: opts.nextPriorityWhen ?? 'allocated',
    });
    this.isolationResponse = opts.isolationResponse ?? 'leavePoweredOn';
    this.isolation = new IsolationMonitor({ clusterSize: this.hostIds.length, hasAddresses: opts.hasIsolationAddresses ?? true, timing: opts.timing });
  }

  step(ev: CoreEvent): CoreAction[] {
    this.now = ev.now;
    const out: CoreAction[] = [];
    const master = this.role === 'master';
    switch (ev.type) {
      case 'protectedlistAcquired':
        out.push(...this.ownership.step(ev));
        if (master && this.maintenanceLoaded) out.push(...this.translate([{ type: 'writeMaintenance', hosts: this.vms.maintenance() }]));
        break;
      case 'protectedlistAcquireFailed':
      case 'protectedlistSample':
      case 'protectedlistDamaged':
      case 'protectedlistLost':
        out.push(...this.ownership.step(ev));
        break;
      case 'protectedlistWritten':
        out.push(...this.ownership.step(ev));
        if (master) out.push(...this.translate(ev.error ? this.vms.commitFailed(ev.datastore, ev.error, ev.now) : this.vms.committed(ev.datastore, ev.vms, ev.now)));
        break;
      case 'heartbeatLost':
        out.push({ type: 'log', level: 'warn', event: 'heartbeat.lost', message: `own storage heartbeat on ${ev.datastore} lost: ${ev.reason}`, fields: { datastore: ev.datastore, reason: ev.reason } });
        break;
      case 'heartbeatSample':
      case 'poweredoffSample':
        out.push(...this.storage.step(ev));
        if (ev.type === 'poweredoffSample') this.vms.setPoweredOff([...this.storage.poweredOff().values()].flat());
        break;
      case 'poweronSample':
        out.push(...this.storage.step(ev));
        if (master && ev.vms && ev.host !== this.self) this.vms.setHostVms(ev.host, ev.vms, ev.now);
        break;
      case 'pingResult':
        this.failure.pingResult(ev.host, ev.replied);
        break;
      case 'vmCatalog':
        this.vms.setCatalog(ev.datastore, ev.vms);
        break;
      case 'inventoryScanned':
        if (master) this.vms.markInventoryReady();
        break;
      case 'hostVmLeaseSample':
        this.vms.hostVmLeaseSample(ev.host, ev.datastore, ev.record, ev.now);
        break;
      case 'vmLeaseSample':
        this.vms.leaseSample(ev.vm, ev.record, ev.lockExists, ev.maxClaim, ev.now);
        break;
      case 'restartQueue':
        if (master) this.vms.restoreQueue(ev.entries);
        break;
      case 'maintenanceSample':
        this.maintenanceSeq = Math.max(this.maintenanceSeq, ev.seq);
        out.push(...this.election.setMaintenance(ev.hosts.includes(this.self), ev.now));
        if (master && !this.maintenanceLoaded) {
          this.maintenanceLoaded = true;
          this.vms.loadMaintenance(ev.hosts);
          // Every datastore this master owns gets the same, current copy.
          out.push(...this.translate([{ type: 'writeMaintenance', hosts: this.vms.maintenance() }]));
        }
        break;
      case 'maintenanceCommand':
        if (!master) {
          out.push({ type: 'reply', req: ev.req, ok: false, message: 'not the master' });
          break;
        }
        this.maintenanceLoaded = true;
        if (ev.host === this.self && ev.enter) this.selfMaintenanceReq = ev.req;
        out.push(...this.translate(this.vms.setHostMaintenance(ev.req, ev.host, ev.enter, ev.evacuate, ev.now, this.placementInfo())));
        break;
      case 'command': {
        if (!master) {
          out.push({ type: 'reply', req: ev.req, ok: false, message: 'not the master' });
          break;
        }
        const id = this.vms.resolve(ev.cmd.vm);
        if (id === null || id === 'ambiguous') {
          out.push({ type: 'reply', req: ev.req, ok: false, message: id === null ? `no VM named ${ev.cmd.vm} (see vigil vms)` : `several VMs are named ${ev.cmd.vm}: use its id (datastore:path)` });
          break;
        }
        out.push(...this.translate(this.vms.command(ev.req, { ...ev.cmd, vm: id }, ev.now, this.placementInfo())));
        break;
      }
      case 'isolationPingResult':
        out.push(...this.isolationOutputs(this.isolation.pingResult(ev.now, ev.replied)));
        break;
      case 'localVms':
        this.localVms = [...ev.vms].sort();
        if (ev.responses) this.vmResponses = { ...ev.responses };
        if (master) this.vms.setHostVms(this.self, this.localVms);
        break;
      case 'localVmStopped':
        if (master) out.push(...this.vms.vmStopped(this.self, ev.vm, ev.reason, ev.now));
        else if (this.master && this.role === 'slave') out.push({ type: 'send', to: this.master, msg: { type: 'vmStopped', vm: ev.vm, reason: ev.reason } });
        break;
      case 'localVmResult':
        if (ev.replyTo === this.self) {
          if (master) out.push(...this.translate(this.vms.result(ev.vm, this.self, ev.req, ev.ok, ev.leaseHeld, ev.error, ev.now)));
        } else {
          out.push({ type: 'send', to: ev.replyTo, msg: { type: 'vmResult', vm: ev.vm, req: ev.req, ok: ev.ok, leaseHeld: ev.leaseHeld, error: clipError(ev.error) } });
        }
        break;
      case 'message':
        out.push(...this.isolationOutputs(this.isolation.heard(ev.now, ev.from)));
        out.push(...this.onMessage(ev.from, ev.msg));
        break;
      case 'datastores':
        this.accessible = new Set(ev.accessible);
        this.ownership.setAccessible(ev.accessible);
        out.push(...this.election.step(ev));
        break;
      default:
        out.push(...this.election.step(ev));
        if (ev.type === 'tick') {
          out.push(...this.ownership.step(ev));
          if (this.role === 'master') out.push(...this.masterTick());
          out.push(...this.isolationOutputs(this.isolation.tick(ev.now, this.role)));
          if (this.role === 'isolated') out.push(...this.isolationResponses());
        }
    }
    // The master itself entered maintenance: once its VMs are gone, hand the role over.
    if (this.selfMaintenanceReq !== null && out.some((a) => a.type === 'reply' && a.req === this.selfMaintenanceReq)) {
      const ok = out.some((a) => a.type === 'reply' && a.req === this.selfMaintenanceReq && a.ok);
      this.selfMaintenanceReq = null;
      if (ok) out.push(...this.election.setMaintenance(true, ev.now));
    }
    this.followRoles(out, ev);
    if (this.role !== 'uninitialized') out.push(...this.poweron());
    return out;
  }

  private onMessage(from: HostId, msg: Message): CoreAction[] {
    switch (msg.type) {
      case 'powerOn':
        // Only the master we follow may power VMs on here.
        if (this.role !== 'slave' || from !== this.master) return [];
        return [{ type: 'localPowerOn', vm: msg.vm, req: msg.req, replyTo: from, takeover: msg.takeover }];
      case 'powerOff':
        if (this.role !== 'slave' || from !== this.master) return [];
        return [{ type: 'localPowerOff', vm: msg.vm, req: msg.req, replyTo: from, graceful: msg.graceful, timeoutMs: msg.timeoutMs }];
      case 'vmResult':
        if (this.role !== 'master') return [];
        return this.translate(this.vms.result(msg.vm, from, msg.req, msg.ok, msg.leaseHeld, msg.error, this.now));
      case 'vmStopped':
        if (this.role !== 'master') return [];
        return this.vms.vmStopped(from, msg.vm, msg.reason, this.now);
      default:
        return this.election.step({ type: 'message', now: this.now, from, msg });
    }
  }

  /** Turn the VM manager's host-level actions into local actions or messages. */
  private translate(actions: CoreAction[]): CoreAction[] {
    const out: CoreAction[] = [];
    for (const a of actions) {
      if (a.type === 'vmPowerOn') {
        if (a.host === this.self) out.push({ type: 'localPowerOn', vm: a.vm, req: a.req, replyTo: this.self, takeover: a.takeover });
        else out.push({ type: 'send', to: a.host, msg: { type: 'powerOn', vm: a.vm, req: a.req, takeover: a.takeover } });
      } else if (a.type === 'vmPowerOff') {
        if (a.host === this.self) out.push({ type: 'localPowerOff', vm: a.vm, req: a.req, replyTo: this.self, graceful: a.graceful, timeoutMs: a.timeoutMs });
        else out.push({ type: 'send', to: a.host, msg: { type: 'powerOff', vm: a.vm, req: a.req, graceful: a.graceful, timeoutMs: a.timeoutMs } });
      } else if (a.type === 'writeMaintenance') {
        out.push({ ...a, generation: this.election.status().generation, seq: ++this.maintenanceSeq });
      } else if (a.type === 'setProtection') {
        out.push(...this.ownership.setProtected(vmDatastore(a.vm), a.vm, a.protected));
      } else {
        out.push(a);
      }
    }
    return out;
  }

  /** The master's periodic work: classify silent hosts, then reconcile VMs. */
  private masterTick(): CoreAction[] {
    const out: CoreAction[] = [];
    const peers = this.election.peerView();
    for (const host of this.hostIds) {
      if (host === this.self) continue;
      const p = peers.get(host);
      const lastHeard = p?.lastHeard ?? -Infinity;
      // The detector reads the storage and VM lease inputs only of a host silent for
      // hostTimeoutMs (failure.ts): for a host heard since, skip the work (O(its VMs), every
      // tick, for every host: most of a 16,000-VM master's CPU).
      const heard = lastHeard !== -Infinity && this.now - lastHeard < this.timing.hostTimeoutMs;
      const st = heard ? null : this.storage.host(host, this.now);
      const leases = heard ? { alive: false, unjudged: false } : this.vms.hostLeases(host, this.now);
      out.push(
        ...this.failure.update(this.now, host, {
          lastHeard,
          storageHeartbeat: st?.storageHeartbeat ?? 'unknown',
          hasHeartbeatDatastores: (this.hostInfo[host]?.heartbeatDatastores.length ?? 0) > 0,
          isolationBit: st?.isolated ?? null,
          vmLeasesAlive: leases.alive,
          vmLeasesUnjudged: leases.unjudged,
        }),
      );
    }
    this.vms.setProtected(this.ownership.protectedVms(), this.ownership.owned());
    out.push(...this.translate(this.vms.tick(this.now, this.placementInfo())));
    // Persist the restart state on each owned datastore when it changes.
    const byDs = new Map<string, { vm: string; attempts: number; failed: boolean }[]>();
    for (const d of this.ownership.owned()) byDs.set(d, []);
    for (const e of this.vms.queue()) byDs.get(vmDatastore(e.vm))?.push(e);
    for (const [d, entries] of byDs) {
      const key = JSON.stringify(entries);
      if (this.queueWritten.get(d) === key) continue;
      this.queueWritten.set(d, key);
      out.push({ type: 'writeRestartQueue', datastore: d, entries });
    }
    return out;
  }

  private placementInfo(): Map<HostId, HostPlacementInfo> {
    const m = new Map<HostId, HostPlacementInfo>();
    const peers = this.election.peerView();
    for (const host of this.hostIds) {
      const self = host === this.self;
      const heard = peers.get(host)?.lastHeard ?? -Infinity;
      const state = self ? 'self' : (this.failure.state(host) ?? 'unreachable');
      const connected = self || (state === 'connected' && this.election.currentSlaves().includes(host));
      m.set(host, {
        host,
        state: connected ? (self ? 'self' : 'connected') : state === 'connected' ? 'unreachable' : state,
        maintenance: false,
        datastores: self ? this.election.status().datastores : (this.hostInfo[host]?.datastores ?? []),
        capacity: self ? this.capacity : this.election.peerCapacity(host),
        silentForMs: self ? 0 : heard === -Infinity ? Infinity : this.now - heard,
      });
    }
    return m;
  }

  /** Follow role changes: a master owns datastores and manages VMs; nobody else does. */
  private followRoles(out: CoreAction[], ev: CoreEvent): void {
    for (const a of [...out]) {
      if (a.type !== 'role') continue;
      const wasMaster = this.role === 'master';
      if (this.role === a.role && this.master === a.master) continue; // already followed
      this.role = a.role;
      this.master = a.master;
      this.isolation.role(a.role, ev.now);
      if (a.role === 'master' && !wasMaster) {
        out.push(...this.ownership.setWanted(true, ev.now, 'became master'));
        this.vms.setHostVms(this.self, this.localVms);
        this.queueWritten.clear();
        this.maintenanceLoaded = false;
      }
      if (a.role !== 'master' && wasMaster) {
        const why = ev.type === 'shutdown' ? 'agent stopping' : `no longer master (${a.role})`;
        out.push(...this.ownership.setWanted(false, ev.now, why));
        out.push(...this.vms.reset(why));
        this.failure.reset();
      }
    }
  }

  /** Turn the isolation monitor's outputs into role changes and actions. */
  private isolationOutputs(outs: IsolationOutput[]): CoreAction[] {
    const out: CoreAction[] = [];
    for (const o of outs) {
      if (o.type === 'pingIsolation') out.push(o);
      else if (o.type === 'log') out.push(o);
      else if (o.type === 'isolate') out.push(...this.election.isolate(this.now, o.reason));
      else {
        this.responded.clear();
        this.responseWaitLogged.clear();
        out.push(...this.election.endIsolation(this.now, o.reason));
      }
    }
    // Role changes must be seen by followRoles even when they come from here.
    this.followRoles(out, { type: 'tick', now: this.now });
    return out;
  }

  /**
   * The isolation response, once isolationResponseDelayMs has passed: for each VM running here
   * whose response is not leavePoweredOn, stop it (poweredoff/ file first) only if a master
   * visibly owns its datastore, or this host lost that datastore; otherwise wait.
   */
  private isolationResponses(): CoreAction[] {
    if (!this.isolation.responseDue(this.now)) return [];
    const out: CoreAction[] = [];
    for (const vm of this.localVms) {
      if (this.responded.has(vm)) continue;
      const response = this.vmResponses[vm] ?? this.isolationResponse;
      if (response === 'leavePoweredOn') {
        this.responded.add(vm);
        out.push({ type: 'log', level: 'info', event: 'isolation.response', message: `isolation response for ${vm}: leavePoweredOn (it keeps running)`, fields: { vm, response } });
        continue;
      }
      const ds = vmDatastore(vm);
      const owner = this.ownership.visibleOwner(ds, this.now);
      const lost = !this.accessible.has(ds);
      if (!owner && !lost) {
        if (!this.responseWaitLogged.has(vm)) {
          this.responseWaitLogged.add(vm);
          out.push({ type: 'log', level: 'warn', event: 'isolation.response-waiting', message: `isolation response ${response} for ${vm} waits: no master visibly owns ${ds} (nobody could restart it) and ${ds} is still accessible`, fields: { vm, response, datastore: ds } });
        }
        continue;
      }
      this.responded.add(vm);
      const why = owner ? `master ${owner} owns ${ds}` : `this host lost ${ds}`;
      out.push({ type: 'log', level: 'warn', event: 'isolation.response', message: `isolation response for ${vm}: ${response} (${why})`, fields: { vm, response, datastore: ds, owner, datastoreLost: lost } });
      out.push({ type: 'isolationStop', vm, graceful: response === 'shutdown', timeoutMs: this.timing.isolationShutdownTimeoutMs });
    }
    return out;
  }

  /** The poweron content this host should have on disk. */
  private poweron(): CoreAction[] {
    const isolated = this.role === 'isolated';
    const key = `${isolated ? 1 : 0}|${this.localVms.join(',')}`;
    if (key === this.poweronWritten) return [];
    this.poweronWritten = key;
    return [{ type: 'writePoweron', isolated, vms: [...this.localVms] }];
  }

  // ---- queries (no state change) ---------------------------------------------------------------

  status(): ElectionStatus & { owned: string[] } {
    return { ...this.election.status(), owned: this.ownership.owned() };
  }


  protectedVms(): Map<string, string[]> {
    return this.ownership.protectedVms();
  }


  vmsView(): VmView[] {
    return this.vms.view(this.now);
  }

  /** VM leases the runtime should sample now (master). */
  leasesToWatch(): string[] {
    return this.role === 'master' ? this.vms.leasesToWatch(this.placementInfo()) : [];
  }

  /** The master's view of every configured host; on a non-master, what this host itself hears. */
  hostsView(): HostView[] {
    const st = this.election.status();
    const peers = this.election.peerView();
    const slaves = new Set(this.election.currentSlaves());
    return this.hostIds.map((host): HostView => {
      const storage = this.storage.host(host, this.now);
      const base = { storageHeartbeat: storage.storageHeartbeat, isolated: storage.isolated, vms: storage.vms ? storage.vms.length : null, maintenance: this.vms.inMaintenance(host) };
      if (host === this.self) {
        return { host, state: st.role === 'master' ? 'master' : st.role === 'election' ? 'election' : 'connected', lastHeartbeatMs: null, datastores: st.datastores.length, ...base };
      }
      const p = peers.get(host);
      const failure = st.role === 'master' ? this.failure.state(host) : null;
      if (!p || p.lastHeard === -Infinity) return { host, state: failure && failure !== 'connected' ? failure : 'unknown', lastHeartbeatMs: null, datastores: null, ...base };
      const age = this.now - p.lastHeard;
      let state: HostView['state'];
      if (failure && failure !== 'connected') state = failure;
      else if (age >= this.timing.hostTimeoutMs) state = 'unreachable';
      else if (st.role === 'master' && slaves.has(host)) state = 'connected';
      else if (host === st.master) state = 'master';
      else if (p.lastRole === 'election') state = 'election';
      else if (p.lastRole === 'master') state = 'master';
      else state = 'connected';
      return { host, state, lastHeartbeatMs: age, datastores: p.datastores, ...base };
    });
  }
}
