/**
 * Isolation detection and the isolation response (SPEC §3.4, FDM), as a pure state machine.
 *
 * A host is isolated when it hears no agent traffic at all (heartbeats, election messages,
 * anything authenticated from a configured host) and none of its isolation addresses answers
 * ping. FDM's timeline, counted from the last traffic T:
 *   - a slave (or a host that became master only after T, by electing itself alone) pings its
 *     isolation addresses from T + slaveIsolationMs - icmpPingTimeoutMs and declares itself
 *     isolated at T + slaveIsolationMs (FDM: 30 s);
 *   - a master that was master before T does so at T + masterIsolationMs (FDM: 5 s), and
 *     releases its protectedlist locks (the role change does that);
 *   - isolationResponseDelayMs after declaring isolation (FDM: 30 s), it applies the isolation
 *     response to each VM it runs: leavePoweredOn (nothing), powerOff, or shutdown (graceful,
 *     forced off after isolationShutdownTimeoutMs). Only when a master visibly owns the VM's
 *     datastore (its protectedlist lease is seen renewed) or this host lost that datastore: a
 *     host whose network is gone but whose VMs nobody else could restart keeps them running.
 * Isolation ends on any agent traffic or one ping reply; the host then rejoins (election).
 * A cluster of one host is never isolated (there is no traffic to miss).
 */
import type { Timing } from './timing.js';
import type { LogLevel } from './events.js';

export type IsolationResponse = 'leavePoweredOn' | 'powerOff' | 'shutdown';
export const ISOLATION_RESPONSE_VALUES: readonly IsolationResponse[] = ['leavePoweredOn', 'powerOff', 'shutdown'];

export interface IsolationOptions {
  /** Number of configured hosts: with one, isolation is never declared. */
  clusterSize: number;
  /** Whether there is any isolation address to ping (without one, silence alone isolates). */
  hasAddresses: boolean;
  timing: Pick<Timing, 'slaveIsolationMs' | 'masterIsolationMs' | 'isolationResponseDelayMs' | 'icmpPingTimeoutMs' | 'heartbeatIntervalMs'>;
}

export type IsolationOutput =
  | { type: 'pingIsolation'; timeoutMs: number }
  | { type: 'isolate'; reason: string }
  | { type: 'end'; reason: string }
  | { type: 'log'; level: LogLevel; event: string; message: string; fields: Record<string, unknown> };

export class IsolationMonitor {
  private lastTraffic: number | null = null;
  private masterSince: number | null = null;
  /** The current ping round: when it started, and whether any address answered. */
  private round: { startedAt: number; replied: boolean | null } | null = null;
  private isolatedAt: number | null = null;

  constructor(private readonly opts: IsolationOptions) {}

  get isolatedSince(): number | null {
    return this.isolatedAt;
  }

  /** Whether the isolation response is due (isolated for isolationResponseDelayMs). */
  responseDue(now: number): boolean {
    return this.isolatedAt !== null && now - this.isolatedAt >= this.opts.timing.isolationResponseDelayMs;
  }

  /** Any authenticated message from a configured host. */
  heard(now: number, from: string): IsolationOutput[] {
    this.lastTraffic = now;
    this.round = null;
    if (this.isolatedAt === null) return [];
    return this.end(now, `agent traffic from ${from}`);
  }

  /** The role this host has now (from the election). */
  role(role: string, now: number): void {
    if (role === 'master') this.masterSince ??= now;
    else if (role !== 'isolated') this.masterSince = null;
  }

  pingResult(now: number, replied: boolean): IsolationOutput[] {
    if (!this.round || this.round.replied !== null) return [];
    this.round.replied = replied;
    if (!replied) return [];
    // Connected to the network: whatever the silence means (everyone else down, a partition of
    // one), this host is not isolated; silence is counted again from now.
    this.lastTraffic = now;
    this.round = null;
    if (this.isolatedAt === null) return [];
    return this.end(now, 'an isolation address answered ping');
  }

  tick(now: number, role: string): IsolationOutput[] {
    if (this.opts.clusterSize < 2 || role === 'uninitialized') return [];
    if (this.lastTraffic === null) this.lastTraffic = now;
    const out: IsolationOutput[] = [];
    const silent = now - this.lastTraffic;
    const wasMaster = this.masterSince !== null && this.masterSince <= this.lastTraffic;
    const threshold = wasMaster ? this.opts.timing.masterIsolationMs : this.opts.timing.slaveIsolationMs;
    const pingMs = this.opts.timing.icmpPingTimeoutMs;
    // The verdict first: a round that ended without a reply must be read before the next round
    // replaces it. (A ping without a reply answers only once its timeout has passed, so the
    // round is always old enough to be replaced at the first tick after its result.)
    if (this.isolatedAt === null && silent >= threshold) {
      const noReply = !this.opts.hasAddresses || (this.round !== null && this.round.replied === false);
      if (noReply) {
        this.isolatedAt = now;
        const reason = `no agent traffic for ${Math.round(silent)} ms and ${this.opts.hasAddresses ? 'no isolation address answered ping' : 'no isolation address configured'}`;
        out.push({ type: 'isolate', reason });
      }
    }
    // Ping from (threshold - ping timeout), so that a verdict exists at the threshold; then one
    // round after another while the silence lasts (an isolated host keeps trying).
    // Never before two heartbeat intervals of silence: a host that hears its peers must not ping.
    // A round lasts at most icmpPingTimeoutMs, and is cut shorter when that is what it takes to
    // have a verdict at the threshold (a master: FDM's T+5 s with 5 s pings, starting at T+2 s).
    const hb = this.opts.timing.heartbeatIntervalMs;
    const start = Math.max(2 * hb, threshold - pingMs);
    const roundMs = Math.min(pingMs, Math.max(hb, threshold - start));
    if (this.opts.hasAddresses && silent >= start) {
      if (!this.round || (this.round.replied !== null && now - this.round.startedAt >= roundMs) || now - this.round.startedAt >= 2 * pingMs) {
        this.round = { startedAt: now, replied: null };
        out.push({ type: 'pingIsolation', timeoutMs: roundMs });
      }
    }
    return out;
  }

  private end(now: number, why: string): IsolationOutput[] {
    const was = this.isolatedAt;
    this.isolatedAt = null;
    this.masterSince = null;
    return [
      { type: 'log', level: 'info', event: 'isolation.ended', message: `isolation ended: ${why}; rejoining the cluster`, fields: { reason: why, isolatedForMs: was === null ? 0 : Math.round(now - was) } },
      { type: 'end', reason: why },
    ];
  }
}
