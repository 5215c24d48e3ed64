/**
 * Replay protection: per sender, the newest accepted incarnation and a 64-entry sliding window
 * over sequence numbers within it (as in IPsec/DTLS anti-replay).
 */
import type { HostId } from '@vigil/core';

export type ReplayVerdict = 'ok' | 'replayed' | 'stale';

/** Width of the sequence window. */
export const REPLAY_WINDOW = 64;
/** Default bound on the number of senders remembered. */
export const DEFAULT_MAX_SENDERS = 4096;

const WINDOW_MASK = (1n << BigInt(REPLAY_WINDOW)) - 1n;

interface SenderWindow {
  incarnation: number;
  /** Highest seq accepted in this incarnation. */
  highest: number;
  /** Bit i set <=> seq (highest - i) has been accepted. Bit 0 is `highest` itself. */
  seen: bigint;
}

/**
 * Call check() only for authenticated datagrams from configured senders. It both checks and,
 * on 'ok', records. Memory is bounded by maxSenders (least recently accepted sender evicted).
 */
export class ReplayGuard {
  private readonly windows = new Map<HostId, SenderWindow>();
  private readonly maxSenders: number;

  constructor(maxSenders: number = DEFAULT_MAX_SENDERS) {
    this.maxSenders = Number.isInteger(maxSenders) && maxSenders > 0 ? maxSenders : DEFAULT_MAX_SENDERS;
  }

  check(sender: HostId, incarnation: number, seq: number): ReplayVerdict {
    if (!Number.isSafeInteger(incarnation) || incarnation < 0 || !Number.isSafeInteger(seq) || seq < 0) {
      return 'stale';
    }
    const w = this.windows.get(sender);
    if (w === undefined || incarnation > w.incarnation) {
      this.accept(sender, { incarnation, highest: seq, seen: 1n });
      return 'ok';
    }
    if (incarnation < w.incarnation) {
      return 'stale';
    }
    if (seq > w.highest) {
      const shift = seq - w.highest;
      const seen = shift >= REPLAY_WINDOW ? 1n : ((w.seen << BigInt(shift)) | 1n) & WINDOW_MASK;
      this.accept(sender, { incarnation, highest: seq, seen });
      return 'ok';
    }
    const age = w.highest - seq;
    if (age >= REPLAY_WINDOW) {
      return 'stale';
    }
    const bit = 1n << BigInt(age);
    if ((w.seen & bit) !== 0n) {
      return 'replayed';
    }
    this.accept(sender, { incarnation, highest: w.highest, seen: w.seen | bit });
    return 'ok';
  }

  /** Forget a sender (e.g. removed from the cluster configuration). */
  forget(sender: HostId): void {
    this.windows.delete(sender);
  }

  /** Number of senders currently remembered. */
  get size(): number {
    return this.windows.size;
  }

  private accept(sender: HostId, w: SenderWindow): void {
    // Re-insert so Map order is least recently accepted first.
    this.windows.delete(sender);
    this.windows.set(sender, w);
    while (this.windows.size > this.maxSenders) {
      const oldest = this.windows.keys().next();
      if (oldest.done === true) break;
      this.windows.delete(oldest.value);
    }
  }
}
