/**
 * LeaseFile (packages/datastore/src/lease.ts) on simulated storage: the same records, lock
 * directories and O_EXCL generation claims, the same acquire / renew / release / take-over rules,
 * and the same grouping of filesystem calls under one deadline each, so that the calls of several
 * hosts interleave exactly where the real ones can. Keep the two in step.
 */
import type { HostId } from '@vigil/core';
import { io, type Proc } from './io.js';
import { enoent, type SimDatastore, type SimLeaseRecord } from './storage.js';

export class LeaseError extends Error {
  constructor(
    message: string,
    readonly code: 'ELOCKED' | 'ECHANGED' | 'ELOST' | 'ECORRUPT' | 'EIO',
  ) {
    super(message);
    this.name = 'LeaseError';
  }
}

export interface LeaseSnapshot {
  record: SimLeaseRecord | null;
  lockExists: boolean;
  maxClaim: number;
}

export interface Holding {
  generation: number;
  token: string;
  counter: number;
}

export interface SimLeaseOptions {
  ds: string;
  /** Lease name X: `host-3-hb`, `protectedlist`, `host-3-vm`, `vms/<vm>`. */
  name: string;
  host: HostId;
  timeoutMs: number;
  /** VM leases: the holder's host VM lease generation, written into every record. */
  hostLease?: number;
  /** A fresh random token per holding. */
  token: () => string;
}

/** Read a lease's state as a snapshot (record, lock directory, highest claim). */
export function snapshotOf(d: SimDatastore | null, name: string): LeaseSnapshot {
  if (!d) return { record: null, lockExists: false, maxClaim: 0 };
  const l = d.leases.get(name);
  return { record: l?.record ? { ...l.record } : null, lockExists: l?.lock ?? false, maxClaim: d.maxClaim(name) };
}

export class SimLeaseFile {
  private holding: Holding | null = null;
  /** The filesystem the lease was acquired on (the datastore, or what was mounted in its place). */
  store: SimDatastore | null = null;

  constructor(readonly opts: SimLeaseOptions) {}

  get name(): string {
    return this.opts.name;
  }

  get held(): Holding | null {
    return this.holding ? { ...this.holding } : null;
  }

  private record(generation: number, counter: number, token: string, state: 'held' | 'released'): SimLeaseRecord {
    return { host: this.opts.host, generation, counter, token, state, ...(this.opts.hostLease !== undefined ? { hostLease: this.opts.hostLease } : {}) };
  }

  private call<T>(what: string, apply: (d: SimDatastore | null) => T): Proc<T> {
    return io({ kind: 'io', ds: this.opts.ds, what: `${what} (${this.opts.name})`, timeoutMs: this.opts.timeoutMs, apply });
  }

  *read(): Proc<LeaseSnapshot> {
    return yield* this.call('read lease', (d) => snapshotOf(d, this.opts.name));
  }

  /** As LeaseFile.acquire: free, or the exact judged state (`takeover`), or 'orphan'. */
  *acquire(takeover?: (SimLeaseRecord & { maxClaim?: number }) | 'orphan'): Proc<Holding> {
    if (this.holding) return { ...this.holding };
    const snap = yield* this.read();
    const rec = snap.record;
    let base: number;
    if (takeover === 'orphan') {
      if (rec) throw new LeaseError(`${this.opts.name}: a record appeared since the lock was judged orphaned; not taking over`, 'ECHANGED');
      base = snap.maxClaim;
    } else if (takeover) {
      if (!rec || rec.host !== takeover.host || rec.generation !== takeover.generation || rec.token !== takeover.token || rec.counter !== takeover.counter) {
        throw new LeaseError(`${this.opts.name}: the record changed since it was judged dead; not taking over`, 'ECHANGED');
      }
      const judged = takeover.maxClaim ?? rec.generation;
      if (snap.maxClaim !== judged) throw new LeaseError(`${this.opts.name}: generation ${snap.maxClaim} was claimed since it was judged dead; not taking over`, 'ECHANGED');
      base = judged;
    } else {
      if ((rec && rec.state === 'held') || (snap.lockExists && !(rec && rec.state === 'released'))) {
        throw new LeaseError(`${this.opts.name} is held by ${rec?.host ?? 'an unknown holder'}`, 'ELOCKED');
      }
      if (snap.maxClaim !== (rec?.generation ?? 0)) throw new LeaseError(`${this.opts.name}: generation ${snap.maxClaim} is being acquired by another host`, 'ELOCKED');
      base = snap.maxClaim;
    }
    const generation = base + 1;
    const token = this.opts.token();
    // The claim: exactly one contender creates generation g+1 (O_EXCL).
    yield* this.call('claim', (d) => {
      if (!d) throw enoent(`mkdir ${this.opts.name}.claims`);
      const l = d.lease(this.opts.name);
      if (l.claims.has(generation)) throw new LeaseError(`${this.opts.name}: another host claimed generation ${generation} first`, 'ELOCKED');
      l.claims.add(generation);
    });
    // Only the claim winner removes a stale or released lock directory.
    if (snap.lockExists) {
      yield* this.call('remove stale lock', (d) => {
        if (d) d.lease(this.opts.name).lock = false;
      });
    }
    yield* this.call('lock', (d) => {
      if (!d) throw enoent(`mkdir ${this.opts.name}.lock`);
      const l = d.lease(this.opts.name);
      if (l.lock) throw new LeaseError(`${this.opts.name}: lock directory reappeared during acquisition`, 'ELOCKED');
      l.lock = true;
    });
    yield* this.call('write', (d) => {
      if (!d) throw enoent(`write ${this.opts.name}`);
      d.lease(this.opts.name).record = this.record(generation, 0, token, 'held');
      this.store = d;
    });
    this.holding = { generation, token, counter: 0 };
    return { ...this.holding };
  }

  /** As LeaseFile.renew: ELOST if claim g+1 exists or the lock directory is gone; other errors keep the holding. */
  *renew(): Proc<Holding> {
    const h = this.holding;
    if (!h) throw new LeaseError(`${this.opts.name} is not held`, 'ELOST');
    const lost = yield* this.call('check claims', (d) => {
      if (!d) throw enoent(`stat ${this.opts.name}.claims/${h.generation + 1}`);
      const l = d.lease(this.opts.name);
      if (l.claims.has(h.generation + 1)) return `generation ${h.generation + 1} was claimed by another holder`;
      return l.lock ? null : 'lock directory is gone';
    });
    if (lost) {
      this.holding = null;
      throw new LeaseError(`${this.opts.name}: lease lost: ${lost}`, 'ELOST');
    }
    const counter = h.counter + 1;
    yield* this.call('write', (d) => {
      if (!d) throw enoent(`write ${this.opts.name}`);
      d.lease(this.opts.name).record = this.record(h.generation, counter, h.token, 'held');
    });
    h.counter = counter;
    return { ...h };
  }

  /** As LeaseFile.release: best effort, never over a later claim. */
  *release(): Proc<void> {
    const h = this.holding;
    if (!h) return;
    this.holding = null;
    let superseded: boolean;
    try {
      superseded = yield* this.call('check claims', (d) => (d ? d.lease(this.opts.name).claims.has(h.generation + 1) : false));
    } catch {
      superseded = true;
    }
    if (superseded) return;
    try {
      yield* this.call('write', (d) => {
        if (!d) throw enoent(`write ${this.opts.name}`);
        d.lease(this.opts.name).record = this.record(h.generation, h.counter + 1, h.token, 'released');
      });
    } catch {
      /* best effort */
    }
    try {
      yield* this.call('unlock', (d) => {
        if (!d) throw enoent(`rmdir ${this.opts.name}.lock`);
        d.lease(this.opts.name).lock = false;
      });
    } catch {
      /* best effort */
    }
  }

  /** Forget the holding without touching storage. */
  abandon(): void {
    this.holding = null;
  }
}
