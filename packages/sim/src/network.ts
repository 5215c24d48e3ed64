/**
 * The simulated network: per-datagram delay, loss, duplication (which also reorders), and
 * partitions, including one-way ones. Deterministic through the world's Rng.
 *
 * Two kinds of cut: a partition or one-way block between hosts (each side still reaches the
 * gateway, i.e. its isolation addresses), and a host taken off the network altogether
 * (`isolate`): it reaches nobody, not even its isolation addresses.
 */
import type { HostId } from '@vigil/core';
import type { Rng } from './rng.js';

export interface NetworkFaults {
  /** Probability a datagram is lost. */
  loss: number;
  /** Probability a datagram is delivered twice. */
  duplicate: number;
  /** Delivery delay range in ms (uniform), which also reorders datagrams. */
  minDelayMs: number;
  maxDelayMs: number;
}

export const CLEAN_NETWORK: NetworkFaults = { loss: 0, duplicate: 0, minDelayMs: 1, maxDelayMs: 3 };

export class SimNetwork {
  faults: NetworkFaults = { ...CLEAN_NETWORK };
  /** Directed links that drop everything: "a>b". */
  private readonly blocked = new Set<string>();
  /** Hosts off the network altogether (no host, no gateway). */
  private readonly offline = new Set<HostId>();

  /** Split hosts into groups that cannot talk to each other (both ways). Replaces earlier blocks. */
  partition(groups: readonly (readonly HostId[])[]): void {
    this.blocked.clear();
    for (let i = 0; i < groups.length; i++) {
      for (let j = 0; j < groups.length; j++) {
        if (i === j) continue;
        for (const a of groups[i]!) for (const b of groups[j]!) this.blocked.add(`${a}>${b}`);
      }
    }
  }

  /** Drop datagrams from `from` to `to` only (a one-way partition). */
  blockOneWay(from: HostId, to: HostId): void {
    this.blocked.add(`${from}>${to}`);
  }

  /**
   * Cut a host off the network: no traffic with any host and no answer from its isolation
   * addresses. (`all` is accepted for compatibility and not needed.)
   */
  isolate(host: HostId, _all?: readonly HostId[]): void {
    this.offline.add(host);
  }

  /** Put an isolated host back on the network (other cuts stay). */
  reconnect(host: HostId): void {
    this.offline.delete(host);
  }

  /** Undo every cut: partitions, one-way blocks and isolation. */
  heal(): void {
    this.blocked.clear();
    this.offline.clear();
  }

  isOffline(host: HostId): boolean {
    return this.offline.has(host);
  }

  canReach(from: HostId, to: HostId): boolean {
    return !this.offline.has(from) && !this.offline.has(to) && !this.blocked.has(`${from}>${to}`);
  }

  /** Both directions work (what a ping or a TCP connection needs). */
  connected(a: HostId, b: HostId): boolean {
    return this.canReach(a, b) && this.canReach(b, a);
  }

  /** Whether a host's isolation addresses (its gateway) answer it. */
  gatewayReachable(host: HostId): boolean {
    return !this.offline.has(host);
  }

  /** Whether any cut is in force. */
  get cut(): boolean {
    return this.blocked.size > 0 || this.offline.size > 0;
  }

  /** Delivery delays for one datagram: [] when lost, two entries when duplicated. */
  deliveries(from: HostId, to: HostId, rng: Rng): number[] {
    if (!this.canReach(from, to)) return [];
    const f = this.faults;
    if (f.loss > 0 && rng.chance(f.loss)) return [];
    const one = () => rng.int(f.minDelayMs, f.maxDelayMs);
    return f.duplicate > 0 && rng.chance(f.duplicate) ? [one(), one()] : [one()];
  }

  /** One-way delay for anything else sent between hosts (a TCP segment, a ping). */
  delay(rng: Rng): number {
    return rng.int(this.faults.minDelayMs, this.faults.maxDelayMs);
  }
}
