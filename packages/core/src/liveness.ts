/**
 * Liveness by change, not by clock (SPEC §3.3). An observer samples a lock's renewal record
 * (holder, generation, counter) and notes, on its OWN monotonic clock, when the record last
 * changed. The holder is alive while the record keeps changing, and dead only after it has been
 * seen unchanged for the whole lease timeout. No remote timestamp is ever compared with the
 * local clock, so a host whose clock is minutes off neither steals a live lock nor is declared
 * dead. This is how sanlock's delta leases and CloudStack's KVM heartbeat judge liveness.
 *
 * "Unchanged for the lease timeout" must be SEEN: the judgement runs from the first sighting of
 * the value to the latest read that still returned it, never to the current time. Records only
 * move forward (generations and counters grow, tokens are random), so two reads returning the
 * same value prove that nothing was renewed in between, however long the gap; but an observer
 * whose reads fail, hang or were not made (a slave during an election) has seen nothing, and
 * the silence of its own storage is no evidence that the holder stopped.
 */

export type Liveness =
  /** The record changed within the lease timeout. */
  | 'alive'
  /** Seen unchanged for at least the lease timeout (or absent after having existed). */
  | 'dead'
  /** The holder released it cleanly: free at once. */
  | 'released'
  /** Never observed, or not long enough (first sighting less than a lease timeout ago, no change seen). */
  | 'unknown'
  /** Observed, and there is no record at all. */
  | 'absent';

interface Track {
  value: string | null;
  /** Local time of the first observation of this key. */
  firstSeen: number;
  /** Local time the value was last seen to change (or first seen, if never changed). */
  lastChange: number;
  changedEver: boolean;
  released: boolean;
  /** Local time of the latest observation. */
  lastSample: number;
}

/** What an observation reports: a comparable value (null = no record) and whether it says released. */
export interface Sample {
  value: string | null;
  released?: boolean;
}

export class ChangeTracker {
  private readonly tracks = new Map<string, Track>();

  constructor(private readonly leaseTimeoutMs: number) {}

  observe(key: string, sample: Sample, now: number): void {
    const t = this.tracks.get(key);
    if (!t) {
      this.tracks.set(key, { value: sample.value, firstSeen: now, lastChange: now, changedEver: false, released: !!sample.released, lastSample: now });
      return;
    }
    t.lastSample = Math.max(t.lastSample, now);
    if (t.value !== sample.value) {
      t.value = sample.value;
      t.lastChange = now;
      t.changedEver = true;
    }
    t.released = !!sample.released;
  }

  state(key: string, now: number): Liveness {
    const t = this.tracks.get(key);
    if (!t) return 'unknown';
    if (t.released) return 'released';
    if (t.value === null) return t.changedEver ? 'dead' : 'absent';
    // Seen unchanged from lastChange to lastSample (not to `now`: see the header).
    if (t.lastSample - t.lastChange >= this.leaseTimeoutMs) return 'dead';
    return t.changedEver && now - t.lastChange < this.leaseTimeoutMs ? 'alive' : 'unknown';
  }

  /** Local time since the value last changed (or was first seen). */
  quietFor(key: string, now: number): number | null {
    const t = this.tracks.get(key);
    return t ? now - t.lastChange : null;
  }

  forget(key: string): void {
    this.tracks.delete(key);
  }
}

/**
 * The holder's side: it must stop using what a lease protects when it has not completed a
 * renewal for selfFenceDeadlineMs, counted from the START of its last successful renewal (the
 * write may have landed at any moment of that call). Observers wait leaseTimeoutMs from the
 * last change they saw, which is later than that start; the config enforces
 * leaseTimeoutMs > selfFenceDeadlineMs + leaseSafetyMarginMs.
 */
export class SelfFence {
  private lastRenewStart: number | null = null;

  constructor(private readonly deadlineMs: number) {}

  /** A renewal that started at `startedAt` has completed successfully. */
  renewed(startedAt: number): void {
    if (this.lastRenewStart === null || startedAt > this.lastRenewStart) this.lastRenewStart = startedAt;
  }

  reset(): void {
    this.lastRenewStart = null;
  }

  /** True while the lease may still be used. */
  valid(now: number): boolean {
    return this.lastRenewStart !== null && now - this.lastRenewStart < this.deadlineMs;
  }

  /** Milliseconds left before the deadline (<= 0: fenced). */
  remaining(now: number): number {
    return this.lastRenewStart === null ? 0 : this.deadlineMs - (now - this.lastRenewStart);
  }
}
