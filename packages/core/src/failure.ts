/**
 * The master's failure detection (SPEC §3.2): when a slave falls silent at T0,
 *   T+storageWatchAfterMs  its storage heartbeat is watched (the master samples it anyway),
 *   T+hostTimeoutMs        it is declared unreachable and its management address is pinged
 *                          for icmpPingTimeoutMs,
 *   T+deadMs               (or deadNoHeartbeatDatastoreMs without heartbeat datastores) it is
 *                          declared dead if its storage heartbeat is dead and it did not answer.
 *
 * | network hb | storage hb | ping | isolation bit | state            |
 * | yes        |  -         |  -   |  -            | connected        |
 * | no         | alive      | no   | 1             | isolated         |
 * | no         | alive      | no   | 0             | partitioned      |
 * | no         | dead       | no   | -             | dead (restart)   |
 * | no         |  -         | yes  | -             | agentUnreachable |
 *
 * One more guard, for hosts whose VMs outlive their agent: if any VM lease of the silent host
 * is still being renewed, its VMs run, so it is `agentUnreachable`, never dead.
 * A state is left as soon as the host is heard again.
 */
import type { HostId } from './ids.js';
import type { Timing } from './timing.js';
import type { CoreAction, LogLevel } from './events.js';
import type { StorageHeartbeat } from './storage-view.js';

export type FailureState = 'connected' | 'unreachable' | 'dead' | 'isolated' | 'partitioned' | 'agentUnreachable';

export interface FailureInputs {
  /** Local time the host was last heard on the network (-Infinity: never). */
  lastHeard: number;
  storageHeartbeat: StorageHeartbeat;
  /** The host has heartbeat datastores at all. */
  hasHeartbeatDatastores: boolean;
  isolationBit: boolean | null;
  /** Some VM lease held by this host is seen alive. */
  vmLeasesAlive: boolean;
  /** Some of its VMs' leases are not judged yet (a new master has not watched them long enough). */
  vmLeasesUnjudged?: boolean;
}

interface Track {
  state: FailureState;
  /** Start of the current silence (= lastHeard when it began). */
  silentSince: number | null;
  pingStartedAt: number | null;
  pingReplied: boolean | null;
  reason: string;
}

export interface FailureView {
  state: FailureState;
  reason: string;
  silentForMs: number | null;
}

export class FailureDetector {
  private readonly tracks = new Map<HostId, Track>();
  private out: CoreAction[] = [];

  constructor(
    private readonly timing: Timing,
    private readonly addresses: Record<HostId, string>,
  ) {}

  view(host: HostId, now: number): FailureView | null {
    const t = this.tracks.get(host);
    if (!t) return null;
    return { state: t.state, reason: t.reason, silentForMs: t.silentSince === null ? null : now - t.silentSince };
  }

  state(host: HostId): FailureState | null {
    return this.tracks.get(host)?.state ?? null;
  }

  /** Forget everything (no longer master). */
  reset(): void {
    this.tracks.clear();
  }

  pingResult(host: HostId, replied: boolean): void {
    const t = this.tracks.get(host);
    if (!t || t.pingStartedAt === null) return;
    t.pingReplied = replied;
  }

  update(now: number, host: HostId, inp: FailureInputs): CoreAction[] {
    this.out = [];
    let t = this.tracks.get(host);
    if (!t) {
      t = { state: 'connected', silentSince: null, pingStartedAt: null, pingReplied: null, reason: '' };
      this.tracks.set(host, t);
    }
    const silent = inp.lastHeard === -Infinity ? Infinity : now - inp.lastHeard;
    if (silent < this.timing.hostTimeoutMs) {
      if (t.state !== 'connected' && t.silentSince !== null) {
        this.log('info', 'host.connected', `${host} is heard again (was ${t.state})`, { subject: host, was: t.state });
      }
      t.state = 'connected';
      t.silentSince = null;
      t.pingStartedAt = null;
      t.pingReplied = null;
      t.reason = '';
      return this.out;
    }
    if (t.silentSince === null) t.silentSince = inp.lastHeard === -Infinity ? now : inp.lastHeard;
    const since = now - t.silentSince;
    // From T+hostTimeout: ping the management address for icmpPingTimeoutMs (and again every
    // time a verdict is re-examined after that).
    if (t.pingStartedAt === null || (t.pingReplied !== null && now - t.pingStartedAt >= this.timing.icmpPingTimeoutMs * 2)) {
      t.pingStartedAt = now;
      const address = this.addresses[host];
      if (address) this.out.push({ type: 'ping', host, address, timeoutMs: this.timing.icmpPingTimeoutMs });
    }
    const deadAfter = inp.hasHeartbeatDatastores ? this.timing.deadMs : this.timing.deadNoHeartbeatDatastoreMs;
    let next: FailureState = 'unreachable';
    let reason = `no network heartbeat for ${Math.round(since)} ms`;
    if (t.pingReplied === true) {
      next = 'agentUnreachable';
      reason = 'answers ping but its agent is silent: its VMs are not restarted';
    } else if (inp.storageHeartbeat === 'alive' && t.pingReplied === false) {
      next = inp.isolationBit ? 'isolated' : 'partitioned';
      reason = inp.isolationBit ? 'storage heartbeat alive and its poweron file says isolated' : 'storage heartbeat alive, isolation bit 0: network partition';
    } else if (inp.vmLeasesAlive) {
      next = 'agentUnreachable';
      reason = 'its VM leases are still renewed: its VMs run; not restarting them';
    } else if (t.state === 'dead') {
      next = 'dead'; // sticky: only being heard, a ping reply or a live storage heartbeat revive it
      reason = t.reason;
    } else if (since >= deadAfter && t.pingReplied === false && (inp.storageHeartbeat === 'dead' || !inp.hasHeartbeatDatastores) && !inp.vmLeasesUnjudged) {
      next = 'dead';
      reason = inp.hasHeartbeatDatastores
        ? `no network heartbeat for ${Math.round(since)} ms, storage heartbeat dead, no ping reply`
        : `no network heartbeat for ${Math.round(since)} ms, no ping reply (no heartbeat datastore)`;
    }
    if (next !== t.state) {
      const level: LogLevel = next === 'dead' ? 'error' : 'warn';
      const event = next === 'dead' ? 'host.dead' : `host.${next}`;
      this.log(level, event, `${host} declared ${next}: ${reason}`, {
        subject: host,
        state: next,
        was: t.state,
        reason,
        silentForMs: Math.round(since),
        storageHeartbeat: inp.storageHeartbeat,
        pingReplied: t.pingReplied,
      });
      t.state = next;
    }
    t.reason = reason;
    return this.out;
  }

  private log(level: LogLevel, event: string, message: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, message, fields });
  }
}
