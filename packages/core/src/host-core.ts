/**
 * Everything one host decides, composed: today the election and the master's host view.
 * The agent runtime and the simulator both drive exactly this class.
 */
import type { HostId } from './ids.js';
import type { Timing } from './timing.js';
import type { CoreAction, CoreEvent } from './events.js';
import { Election, type ElectionStatus } from './election.js';
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
  private now = 0;

  constructor(opts: HostCoreOptions) {
    this.self = opts.self;
    this.hosts = [...opts.hosts].sort();
    this.timing = opts.timing;
    this.election = new Election({ self: opts.self, hosts: opts.hosts, timing: opts.timing, generation: opts.generation ?? 0 });
  }

  step(ev: CoreEvent): CoreAction[] {
    this.now = ev.now;
    return this.election.step(ev);
  }

  status(): ElectionStatus {
    return this.election.status();
  }

  /** The master's view of every configured host; on a non-master, what this host itself hears. */
  hostsView(): HostView[] {
    const st = this.election.status();
    const peers = this.election.peerView();
    const slaves = new Set(this.election.currentSlaves());
    return this.hosts.map((host): HostView => {
      if (host === this.self) {
        return { host, state: st.role === 'master' ? 'master' : st.role === 'election' ? 'election' : 'connected', lastHeartbeatMs: null, datastores: st.datastores.length };
      }
      const p = peers.get(host);
      if (!p || p.lastHeard === -Infinity) return { host, state: 'unknown', lastHeartbeatMs: null, datastores: null };
      const age = this.now - p.lastHeard;
      let state: HostView['state'];
      if (age >= this.timing.hostTimeoutMs) state = 'unreachable';
      else if (st.role === 'master' && slaves.has(host)) state = 'connected';
      else if (host === st.master) state = 'master';
      else if (p.lastRole === 'election') state = 'election';
      else if (p.lastRole === 'master') state = 'master';
      else state = 'connected';
      return { host, state, lastHeartbeatMs: age, datastores: p.datastores };
    });
  }
}
