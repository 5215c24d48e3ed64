/**
 * Rate limiting for "dropped datagram" log lines: at most one line per key (e.g. drop reason)
 * per interval, reporting how many were suppressed since the previous line. Pure: the caller
 * passes the current time (monotonic ms) and does the logging.
 */

export type RateDecision = { log: true; suppressed: number } | { log: false };

export interface SuppressedSummary<K extends string> {
  key: K;
  suppressed: number;
}

interface KeyState {
  lastLogAt: number;
  suppressed: number;
}

export const DEFAULT_MAX_KEYS = 1024;

export class RateLimitedCounter<K extends string = string> {
  private readonly state = new Map<K, KeyState>();

  constructor(
    private readonly intervalMs: number,
    private readonly maxKeys: number = DEFAULT_MAX_KEYS,
  ) {
    if (!Number.isFinite(intervalMs) || intervalMs < 0) {
      throw new RangeError(`intervalMs must be a finite number >= 0, got ${String(intervalMs)}`);
    }
    if (!Number.isInteger(maxKeys) || maxKeys < 1) {
      throw new RangeError(`maxKeys must be an integer >= 1, got ${String(maxKeys)}`);
    }
  }

  /**
   * Records one event for `key` at `nowMs`. Returns { log: true, suppressed } if the caller
   * should log now (suppressed = events not logged since the previous line), else { log: false }.
   * A time earlier than the last line (clock stepped back) re-anchors the interval and logs.
   */
  hit(key: K, nowMs: number): RateDecision {
    const s = this.state.get(key);
    if (s === undefined) {
      this.put(key, { lastLogAt: nowMs, suppressed: 0 });
      return { log: true, suppressed: 0 };
    }
    if (nowMs - s.lastLogAt >= this.intervalMs || nowMs < s.lastLogAt) {
      const suppressed = s.suppressed;
      s.lastLogAt = nowMs;
      s.suppressed = 0;
      return { log: true, suppressed };
    }
    s.suppressed += 1;
    return { log: false };
  }

  /**
   * Keys whose interval has elapsed with suppressed events still unreported: returns them and
   * resets their counts (call periodically so a burst that stopped is still summarised).
   */
  flush(nowMs: number): SuppressedSummary<K>[] {
    const out: SuppressedSummary<K>[] = [];
    for (const [key, s] of this.state) {
      if (s.suppressed > 0 && (nowMs - s.lastLogAt >= this.intervalMs || nowMs < s.lastLogAt)) {
        out.push({ key, suppressed: s.suppressed });
        s.lastLogAt = nowMs;
        s.suppressed = 0;
      }
    }
    return out;
  }

  private put(key: K, s: KeyState): void {
    this.state.set(key, s);
    while (this.state.size > this.maxKeys) {
      const oldest = this.state.keys().next();
      if (oldest.done === true) break;
      this.state.delete(oldest.value);
    }
  }
}
