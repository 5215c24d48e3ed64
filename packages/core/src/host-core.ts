/**
 * Everything one host decides, composed: election, datastore ownership (master), and the
 * master's view of every host. The agent runtime and the simulator both drive exactly this class.
 */
import type { HostId } from './ids.js';
import type { Timing } from './timing.js';
import type { CoreAction, CoreEvent, Role } from './events.js';
import { Election, type ElectionStatus } from './election.js';
import { Ownership, type DatastoreOwnership } from './ownership.js';
import { StorageView } from './storage-view.js';
import type { HostView } from './hostview.js';

export interface HostCoreOptions {
  self: HostId;
  hosts: readonly HostId[];
  timing: Timing;
  generation?: number;
}

export class HostCore {
  readonly self: HostId;
  private readonly hosts: readonly HostId[];
  private readonly timing: Timing;
  private readonly election: Election;
  private readonly ownership: Ownership;
  private readonly storage: StorageView;
  private role: Role = 'uninitialized';
  private poweronWritten: string | null = null;
  private now = 0;

  constructor(opts: HostCoreOptions) {
    this.self = opts.self;
    this.hosts = [...opts.hosts].sort();
    this.timing = opts.timing;
    this.election = new Election({ self: opts.self, hosts: opts.hosts, timing: opts.timing, generation: opts.generation ?? 0 });
    this.ownership = new Ownership({ self: opts.self, leaseTimeoutMs: opts.timing.leaseTimeoutMs, retryMs: opts.timing.storageHeartbeatIntervalMs });
    this.storage = new StorageView(opts.timing.leaseTimeoutMs);
  }

  step(ev: CoreEvent): CoreAction[] {
    this.now = ev.now;
    const out: CoreAction[] = [];
    switch (ev.type) {
      case 'protectedlistSample':
      case 'protectedlistAcquired':
      case 'protectedlistAcquireFailed':
      case 'protectedlistDamaged':
      case 'protectedlistLost':
        out.push(...this.ownership.step(ev));
        break;
      case 'heartbeatLost':
        out.push({
          type: 'log',
          level: 'warn',
          event: 'heartbeat.lost',
          message: `own storage heartbeat on ${ev.datastore} lost: ${ev.reason}`,
          fields: { datastore: ev.datastore, reason: ev.reason },
        });
        break;
      case 'heartbeatSample':
      case 'poweredoffSample':
      case 'poweronSample':
        out.push(...this.storage.step(ev));
        break;
      case 'datastores':
        this.ownership.setAccessible(ev.accessible);
        out.push(...this.election.step(ev));
        break;
      default:
        out.push(...this.election.step(ev));
        if (ev.type === 'tick') out.push(...this.ownership.step(ev));
    }
    // Follow role changes: a master owns datastores, nobody else does.
    for (const a of [...out]) {
      if (a.type !== 'role') continue;
      const wasMaster = this.role === 'master';
      this.role = a.role;
      if (a.role === 'master' && !wasMaster) out.push(...this.ownership.setWanted(true, ev.now, 'became master'));
      if (a.role !== 'master' && wasMaster) {
        const why = ev.type === 'shutdown' ? 'agent stopping' : `no longer master (${a.role})`;
        out.push(...this.ownership.setWanted(false, ev.now, why));
      }
    }
    if (this.role !== 'uninitialized') out.push(...this.poweron());
    return out;
  }

  /** The poweron content this host should have on disk (isolation and VMs come with later work). */
  private poweron(): CoreAction[] {
    const isolated = this.role === 'isolated';
    const vms: string[] = [];
    const key = `${isolated ? 1 : 0}|${vms.join(',')}`;
    if (key === this.poweronWritten) return [];
    this.poweronWritten = key;
    return [{ type: 'writePoweron', isolated, vms }];
  }

  status(): ElectionStatus & { owned: string[] } {
    return { ...this.election.status(), owned: this.ownership.owned() };
  }

  ownershipView(): DatastoreOwnership[] {
    return this.ownership.view(this.now);
  }

  poweredOff(): Map<string, string[]> {
    return this.storage.poweredOff();
  }

  protectedVms(): Map<string, string[]> {
    return this.ownership.protectedVms();
  }

  /** The master's view of every configured host; on a non-master, what this host itself hears. */
  hostsView(): HostView[] {
    const st = this.election.status();
    const peers = this.election.peerView();
    const slaves = new Set(this.election.currentSlaves());
    return this.hosts.map((host): HostView => {
      const storage = this.storage.host(host, this.now);
      const base = { storageHeartbeat: storage.storageHeartbeat, isolated: storage.isolated, vms: storage.vms ? storage.vms.length : null };
      if (host === this.self) {
        return { host, state: st.role === 'master' ? 'master' : st.role === 'election' ? 'election' : 'connected', lastHeartbeatMs: null, datastores: st.datastores.length, ...base };
      }
      const p = peers.get(host);
      if (!p || p.lastHeard === -Infinity) return { host, state: 'unknown', lastHeartbeatMs: null, datastores: null, ...base };
      const age = this.now - p.lastHeard;
      let state: HostView['state'];
      if (age >= this.timing.hostTimeoutMs) state = 'unreachable';
      else if (st.role === 'master' && slaves.has(host)) state = 'connected';
      else if (host === st.master) state = 'master';
      else if (p.lastRole === 'election') state = 'election';
      else if (p.lastRole === 'master') state = 'master';
      else state = 'connected';
      return { host, state, lastHeartbeatMs: age, datastores: p.datastores, ...base };
    });
  }
}
