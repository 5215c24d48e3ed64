/**
 * LeaseKeeper (packages/datastore/src/keeper.ts) on simulated time: renews every held lease each
 * interval (one renewal in flight per lease), and reports a lease lost when no renewal completed
 * for the self-fence deadline (one check period early), even while a renewal call hangs. The real
 * keeper polls its deadlines every check period; here the poll that would first see a deadline
 * is computed and scheduled, which gives the same moments with far fewer events.
 */
import { SelfFence } from '@vigil/core';
import { describe, type Process, type Proc } from './io.js';
import { LeaseError, type SimLeaseFile } from './lease.js';

export type KeeperEvent =
  | { type: 'renewFailed'; key: string; error: string }
  | { type: 'lost'; key: string; reason: string; fenced: boolean }
  | { type: 'renewed'; key: string; counter: number };

interface Entry {
  lease: SimLeaseFile;
  fence: SelfFence;
  renewing: boolean;
}

export class SimLeaseKeeper {
  private readonly entries = new Map<string, Entry>();
  /** Local time of the keeper's first deadline poll (its timer's phase). */
  private pollOrigin: number | null = null;
  private nextCheck: number | null = null;
  readonly checkMs: number;

  constructor(
    private readonly proc: Process,
    private readonly intervalMs: number,
    private readonly deadlineMs: number,
    private readonly onEvent: (ev: KeeperEvent) => void,
  ) {
    this.checkMs = Math.max(5, Math.min(100, Math.floor(deadlineMs / 10)));
  }

  add(key: string, lease: SimLeaseFile, startedAt: number): void {
    const fence = new SelfFence(this.deadlineMs);
    fence.renewed(startedAt);
    this.entries.set(key, { lease, fence, renewing: false });
    this.schedule();
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  keys(): string[] {
    return [...this.entries.keys()];
  }

  valid(key: string): boolean {
    const e = this.entries.get(key);
    return !!e && e.fence.valid(this.proc.now());
  }

  forget(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    e.lease.abandon();
  }

  *release(key: string): Proc<void> {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    yield* e.lease.release();
  }

  start(): void {
    if (this.pollOrigin !== null) return;
    this.pollOrigin = this.proc.now();
    this.proc.every(this.intervalMs, () => this.renewAll());
  }

  /** Stop renewing; release every lease (clean stop) or just forget them. */
  *stop(release: boolean): Proc<void> {
    this.pollOrigin = null;
    const keys = [...this.entries.keys()];
    if (release) {
      for (const k of keys) yield* this.release(k);
    } else this.entries.clear();
  }

  renewAll(): void {
    if (this.pollOrigin === null) return;
    for (const [key, e] of this.entries) {
      if (e.renewing) continue; // the previous call still hangs: the deadline check decides
      e.renewing = true;
      const started = this.proc.now();
      this.proc.spawn(e.lease.renew(), (err, h) => {
        e.renewing = false;
        if (this.entries.get(key) !== e) return;
        if (!err) {
          e.fence.renewed(started);
          this.schedule();
          this.onEvent({ type: 'renewed', key, counter: h!.counter });
        } else if (err instanceof LeaseError && err.code === 'ELOST') {
          this.entries.delete(key);
          this.onEvent({ type: 'lost', key, reason: err.message, fenced: false });
        } else {
          this.onEvent({ type: 'renewFailed', key, error: describe(err) });
        }
      });
    }
  }

  /** The real keeper's poll; `at`: the poll's own time (timers fire on time, floats do not always). */
  checkDeadlines(at = this.proc.now()): void {
    for (const [key, e] of this.entries) {
      if (e.fence.remaining(at) <= this.checkMs + 1e-6) {
        this.entries.delete(key);
        e.lease.abandon();
        this.onEvent({
          type: 'lost',
          key,
          reason: `no successful renewal for ${Math.round(this.deadlineMs - e.fence.remaining(at))} ms (self-fence deadline ${this.deadlineMs} ms)`,
          fenced: true,
        });
      }
    }
    this.schedule();
  }

  /** Schedule the poll that would first find a lease within one check period of its deadline. */
  private schedule(): void {
    const now = this.proc.now();
    const origin = this.pollOrigin ?? now;
    let due = Infinity;
    for (const e of this.entries.values()) {
      const t = now + e.fence.remaining(now) - this.checkMs;
      if (t < due) due = t;
    }
    if (!Number.isFinite(due)) return;
    // The first poll of the real timer at or after `due`, and after now.
    const first = Math.max(Math.ceil((due - origin) / this.checkMs - 1e-9), Math.floor((now - origin) / this.checkMs) + 1, 1);
    const poll = origin + first * this.checkMs;
    if (this.nextCheck !== null && this.nextCheck <= poll && this.nextCheck > now) return;
    this.nextCheck = poll;
    this.proc.after(poll - now, () => {
      if (this.nextCheck !== poll) return;
      this.nextCheck = null;
      this.checkDeadlines(Math.max(this.proc.now(), poll));
    });
  }
}
