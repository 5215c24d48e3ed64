/**
 * Keeps a set of held leases renewed, and enforces the self-fence deadline: a lease that has not
 * completed a renewal for selfFenceDeadlineMs (counted from the start of its last successful
 * renewal) is reported lost and abandoned, even if the renewal call is still hanging. The
 * deadline check runs on its own timer, so hung storage cannot delay it.
 */
import { SelfFence } from '@vigil/core';
import type { LeaseFile } from './lease.js';
import { LeaseError } from './lease.js';
import { describeError } from './timeout.js';

export type KeeperEvent =
  | { type: 'renewFailed'; key: string; error: string }
  | { type: 'lost'; key: string; reason: string; fenced: boolean }
  | { type: 'renewed'; key: string; counter: number };

export interface LeaseKeeperOptions {
  intervalMs: number;
  selfFenceDeadlineMs: number;
  now: () => number;
  onEvent: (ev: KeeperEvent) => void;
}

interface Entry {
  lease: LeaseFile;
  fence: SelfFence;
  renewing: boolean;
}

export class LeaseKeeper {
  private readonly entries = new Map<string, Entry>();
  private renewTimer: NodeJS.Timeout | null = null;
  private checkTimer: NodeJS.Timeout | null = null;
  /** How early before the deadline the loss is reported (one check period). */
  readonly checkMs: number;

  constructor(private readonly opts: LeaseKeeperOptions) {
    this.checkMs = Math.max(5, Math.min(100, Math.floor(opts.selfFenceDeadlineMs / 10)));
  }

  /** Track a lease just acquired (its acquisition counts as the first renewal, started at `startedAt`). */
  add(key: string, lease: LeaseFile, startedAt: number): void {
    const fence = new SelfFence(this.opts.selfFenceDeadlineMs);
    fence.renewed(startedAt);
    this.entries.set(key, { lease, fence, renewing: false });
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  keys(): string[] {
    return [...this.entries.keys()];
  }

  /** True while the lease is held and within its self-fence deadline. */
  valid(key: string): boolean {
    const e = this.entries.get(key);
    return !!e && e.fence.valid(this.opts.now());
  }

  /** Stop tracking and abandon the holding, touching nothing on storage. */
  forget(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    e.lease.abandon();
  }

  /** Stop tracking and release on storage (best effort). */
  async release(key: string): Promise<void> {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    await e.lease.release();
  }

  start(): void {
    if (this.renewTimer) return;
    this.renewTimer = setInterval(() => this.renewAll(), this.opts.intervalMs);
    this.checkTimer = setInterval(() => this.checkDeadlines(), this.checkMs);
  }

  async stop(release: boolean): Promise<void> {
    if (this.renewTimer) clearInterval(this.renewTimer);
    if (this.checkTimer) clearInterval(this.checkTimer);
    this.renewTimer = this.checkTimer = null;
    const keys = [...this.entries.keys()];
    if (release) await Promise.all(keys.map((k) => this.release(k)));
    else this.entries.clear();
  }

  renewAll(): void {
    for (const [key, e] of this.entries) {
      if (e.renewing) continue; // the previous call still hangs: the deadline check decides
      e.renewing = true;
      const started = this.opts.now();
      e.lease.renew().then(
        (h) => {
          e.renewing = false;
          if (this.entries.get(key) !== e) return;
          e.fence.renewed(started);
          this.opts.onEvent({ type: 'renewed', key, counter: h.counter });
        },
        (err: unknown) => {
          e.renewing = false;
          if (this.entries.get(key) !== e) return;
          if (err instanceof LeaseError && err.code === 'ELOST') {
            this.entries.delete(key);
            this.opts.onEvent({ type: 'lost', key, reason: err.message, fenced: false });
          } else {
            this.opts.onEvent({ type: 'renewFailed', key, error: describeError(err) });
          }
        },
      );
    }
  }

  checkDeadlines(): void {
    const now = this.opts.now();
    for (const [key, e] of this.entries) {
      // Report one check period early, so the loss is known before the deadline itself.
      if (e.fence.remaining(now) <= this.checkMs) {
        this.entries.delete(key);
        e.lease.abandon();
        this.opts.onEvent({
          type: 'lost',
          key,
          reason: `no successful renewal for ${Math.round(this.opts.selfFenceDeadlineMs - e.fence.remaining(now))} ms (self-fence deadline ${this.opts.selfFenceDeadlineMs} ms)`,
          fenced: true,
        });
      }
    }
  }
}
