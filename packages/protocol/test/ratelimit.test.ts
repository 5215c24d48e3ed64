import { describe, expect, it } from 'vitest';
import { RateLimitedCounter } from '../src/index.js';

describe('RateLimitedCounter', () => {
  it('logs the first event, suppresses within the interval, reports the count after', () => {
    const r = new RateLimitedCounter(10_000);
    expect(r.hit('unauthenticated', 0)).toEqual({ log: true, suppressed: 0 });
    expect(r.hit('unauthenticated', 1)).toEqual({ log: false });
    expect(r.hit('unauthenticated', 5_000)).toEqual({ log: false });
    expect(r.hit('unauthenticated', 9_999)).toEqual({ log: false });
    expect(r.hit('unauthenticated', 10_000)).toEqual({ log: true, suppressed: 3 });
    expect(r.hit('unauthenticated', 10_001)).toEqual({ log: false });
    expect(r.hit('unauthenticated', 30_000)).toEqual({ log: true, suppressed: 1 });
    expect(r.hit('unauthenticated', 40_000)).toEqual({ log: true, suppressed: 0 });
  });

  it('limits each key separately', () => {
    const r = new RateLimitedCounter(1_000);
    expect(r.hit('truncated', 0).log).toBe(true);
    expect(r.hit('malformed', 1).log).toBe(true);
    expect(r.hit('truncated', 2).log).toBe(false);
    expect(r.hit('malformed', 3).log).toBe(false);
  });

  it('flush reports suppressed counts once their interval elapsed', () => {
    const r = new RateLimitedCounter(1_000);
    r.hit('a', 0);
    r.hit('a', 10);
    r.hit('a', 20);
    r.hit('b', 0);
    expect(r.flush(500)).toEqual([]);
    expect(r.flush(1_000)).toEqual([{ key: 'a', suppressed: 2 }]);
    expect(r.flush(5_000)).toEqual([]);
    // The flush started a new interval for 'a'.
    expect(r.hit('a', 1_500)).toEqual({ log: false });
    expect(r.hit('a', 2_000)).toEqual({ log: true, suppressed: 1 });
  });

  it('re-anchors if time goes backwards', () => {
    const r = new RateLimitedCounter(1_000);
    r.hit('a', 5_000);
    r.hit('a', 5_001);
    expect(r.hit('a', 100)).toEqual({ log: true, suppressed: 1 });
    expect(r.hit('a', 200)).toEqual({ log: false });
  });

  it('bounds the number of keys', () => {
    const r = new RateLimitedCounter(1_000, 2);
    r.hit('a', 0);
    r.hit('b', 0);
    r.hit('c', 0); // evicts a
    expect(r.hit('b', 1)).toEqual({ log: false });
    expect(r.hit('a', 1)).toEqual({ log: true, suppressed: 0 });
  });

  it('rejects bad parameters', () => {
    expect(() => new RateLimitedCounter(-1)).toThrow(RangeError);
    expect(() => new RateLimitedCounter(Number.NaN)).toThrow(RangeError);
    expect(() => new RateLimitedCounter(1, 0)).toThrow(RangeError);
  });
});
