/**
 * Sender side of replay protection: (incarnation, seq) pairs for outgoing datagrams.
 */
import { ProtocolError } from './errors.js';
import { MAX_SEQ } from './wire.js';

export interface SeqPair {
  incarnation: number;
  seq: number;
}

/**
 * The incarnation an agent should use at start: max(wall-clock ms now, persisted previous + 1).
 * The wall clock makes it larger than any earlier run without state; the persisted value keeps it
 * increasing even if the clock went backwards. The agent persists the value it uses (and again
 * whenever SendSequence bumps it).
 */
export function chooseIncarnation(wallClockMs: number, persistedPrevious?: number): number {
  const fromClock = Number.isFinite(wallClockMs) && wallClockMs > 0 ? Math.floor(wallClockMs) : 0;
  const fromState =
    persistedPrevious !== undefined && Number.isSafeInteger(persistedPrevious) && persistedPrevious >= 0
      ? persistedPrevious + 1
      : 0;
  const chosen = Math.max(fromClock, fromState);
  if (!Number.isSafeInteger(chosen)) {
    throw new ProtocolError(`incarnation ${chosen} is not a safe integer`);
  }
  return chosen;
}

/**
 * Hands out (incarnation, seq) pairs: seq 0, 1, ..., 2^32-1, then incarnation + 1 and seq 0 again.
 * One sequence per agent serves all destinations (receivers keep a window per sender, gaps are fine).
 */
export class SendSequence {
  private inc: number;
  private nextSeq = 0;

  /** `initialSeq` (default 0) is the first seq handed out; mainly for tests of the wrap. */
  constructor(initialIncarnation: number, initialSeq = 0) {
    if (!Number.isSafeInteger(initialIncarnation) || initialIncarnation < 0) {
      throw new ProtocolError(`invalid incarnation ${String(initialIncarnation)}: must be a safe integer >= 0`);
    }
    if (!Number.isInteger(initialSeq) || initialSeq < 0 || initialSeq > MAX_SEQ) {
      throw new ProtocolError(`invalid seq ${String(initialSeq)}: must be an integer in 0..${MAX_SEQ}`);
    }
    this.inc = initialIncarnation;
    this.nextSeq = initialSeq;
  }

  /** The incarnation the next pair will carry (persist it when it changes). */
  get incarnation(): number {
    return this.nextSeq > MAX_SEQ ? this.inc + 1 : this.inc;
  }

  next(): SeqPair {
    if (this.nextSeq > MAX_SEQ) {
      if (this.inc >= Number.MAX_SAFE_INTEGER) {
        throw new ProtocolError('incarnation exhausted');
      }
      this.inc += 1;
      this.nextSeq = 0;
    }
    const pair = { incarnation: this.inc, seq: this.nextSeq };
    this.nextSeq += 1;
    return pair;
  }
}
