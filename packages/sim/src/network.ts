/**
 * The simulated network: per-datagram delay, loss, duplication (which also reorders), and
 * partitions, including one-way ones. Deterministic through the world's Rng.
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

  /** Split hosts into groups that cannot talk to each other (both ways). */
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

  /** Cut a host off from everyone, both ways. */
  isolate(host: HostId, all: readonly HostId[]): void {
    for (const h of all) {
      if (h === host) continue;
      this.blocked.add(`${host}>${h}`);
      this.blocked.add(`${h}>${host}`);
    }
  }

  heal(): void {
    this.blocked.clear();
  }

  canReach(from: HostId, to: HostId): boolean {
    return !this.blocked.has(`${from}>${to}`);
  }

  /** Delivery delays for one datagram: [] when lost, two entries when duplicated. */
  deliveries(from: HostId, to: HostId, rng: Rng): number[] {
    if (!this.canReach(from, to)) return [];
    const f = this.faults;
    if (f.loss > 0 && rng.chance(f.loss)) return [];
    const one = () => rng.int(f.minDelayMs, f.maxDelayMs);
    return f.duplicate > 0 && rng.chance(f.duplicate) ? [one(), one()] : [one()];
  }
}
