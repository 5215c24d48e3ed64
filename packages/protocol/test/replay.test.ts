import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { REPLAY_WINDOW, ReplayGuard } from '../src/index.js';

describe('ReplayGuard', () => {
  it('accepts the first datagram of a sender and rejects its replay', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 100, 5)).toBe('ok');
    expect(g.check('host-1', 100, 5)).toBe('replayed');
    expect(g.check('host-1', 100, 6)).toBe('ok');
    expect(g.check('host-1', 100, 6)).toBe('replayed');
    expect(g.check('host-1', 100, 5)).toBe('replayed');
  });

  it('keeps senders apart', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 100, 5)).toBe('ok');
    expect(g.check('host-2', 100, 5)).toBe('ok');
    expect(g.check('host-2', 100, 5)).toBe('replayed');
  });

  it('accepts out-of-order datagrams within the window exactly once', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 1, 10)).toBe('ok');
    expect(g.check('host-1', 1, 8)).toBe('ok');
    expect(g.check('host-1', 1, 9)).toBe('ok');
    expect(g.check('host-1', 1, 8)).toBe('replayed');
    expect(g.check('host-1', 1, 9)).toBe('replayed');
    expect(g.check('host-1', 1, 7)).toBe('ok');
    expect(g.check('host-1', 1, 12)).toBe('ok');
    expect(g.check('host-1', 1, 11)).toBe('ok');
    expect(g.check('host-1', 1, 11)).toBe('replayed');
    expect(g.check('host-1', 1, 10)).toBe('replayed');
  });

  it('window edge: highest-63 is inside, highest-64 is stale', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 1, 1000)).toBe('ok');
    expect(g.check('host-1', 1, 1000 - (REPLAY_WINDOW - 1))).toBe('ok');
    expect(g.check('host-1', 1, 1000 - (REPLAY_WINDOW - 1))).toBe('replayed');
    expect(g.check('host-1', 1, 1000 - REPLAY_WINDOW)).toBe('stale');
    expect(g.check('host-1', 1, 0)).toBe('stale');
  });

  it('remembers seen entries as the window slides', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 1, 0)).toBe('ok');
    expect(g.check('host-1', 1, 2)).toBe('ok');
    expect(g.check('host-1', 1, 40)).toBe('ok'); // slide by 38
    expect(g.check('host-1', 1, 2)).toBe('replayed');
    expect(g.check('host-1', 1, 1)).toBe('ok');
    expect(g.check('host-1', 1, 63)).toBe('ok'); // window now 0..63
    expect(g.check('host-1', 1, 0)).toBe('replayed');
    expect(g.check('host-1', 1, 64)).toBe('ok'); // 0 falls out
    expect(g.check('host-1', 1, 0)).toBe('stale');
    expect(g.check('host-1', 1, 1)).toBe('replayed');
    expect(g.check('host-1', 1, 3)).toBe('ok');
  });

  it('a jump larger than the window clears it', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 1, 5)).toBe('ok');
    expect(g.check('host-1', 1, 5 + 1000)).toBe('ok');
    expect(g.check('host-1', 1, 1005 - 10)).toBe('ok');
    expect(g.check('host-1', 1, 5)).toBe('stale');
  });

  it('older incarnation -> stale, newer incarnation accepted and resets the window', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 500, 1000)).toBe('ok');
    expect(g.check('host-1', 499, 2000)).toBe('stale');
    // Restarted sender: new incarnation, seq starts over.
    expect(g.check('host-1', 501, 0)).toBe('ok');
    expect(g.check('host-1', 501, 1)).toBe('ok');
    expect(g.check('host-1', 501, 0)).toBe('replayed');
    // The old incarnation's traffic is now stale, even with a new-looking seq.
    expect(g.check('host-1', 500, 1001)).toBe('stale');
    expect(g.check('host-1', 500, 5)).toBe('stale');
  });

  it('does not record rejected datagrams', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 10, 100)).toBe('ok');
    expect(g.check('host-1', 9, 200)).toBe('stale');
    // Had the stale one been recorded, seq 150 of incarnation 10 would look old or seen.
    expect(g.check('host-1', 10, 150)).toBe('ok');
    expect(g.check('host-1', 10, 30)).toBe('stale');
    expect(g.check('host-1', 10, 151)).toBe('ok');
  });

  it('handles uint32 extremes', () => {
    const g = new ReplayGuard();
    expect(g.check('host-1', 1, 0xffffffff)).toBe('ok');
    expect(g.check('host-1', 1, 0xffffffff - 63)).toBe('ok');
    expect(g.check('host-1', 1, 0xffffffff)).toBe('replayed');
    expect(g.check('host-1', 1, 0)).toBe('stale');
    expect(g.check('host-1', 2, 0)).toBe('ok');
  });

  it('caps the number of senders, evicting the least recently accepted', () => {
    const g = new ReplayGuard(3);
    expect(g.check('host-1', 1, 1)).toBe('ok');
    expect(g.check('host-2', 1, 1)).toBe('ok');
    expect(g.check('host-3', 1, 1)).toBe('ok');
    expect(g.check('host-1', 1, 2)).toBe('ok'); // host-1 is now the most recent
    expect(g.check('host-4', 1, 1)).toBe('ok'); // evicts host-2
    expect(g.size).toBe(3);
    expect(g.check('host-1', 1, 2)).toBe('replayed');
    expect(g.check('host-3', 1, 1)).toBe('replayed');
    expect(g.check('host-2', 1, 1)).toBe('ok'); // forgotten, so accepted again
  });

  it('is bounded at 4096 senders by default', () => {
    const g = new ReplayGuard();
    for (let i = 0; i < 5000; i++) g.check(`host-${i}`, 1, 1);
    expect(g.size).toBe(4096);
  });

  it('forget() drops a sender', () => {
    const g = new ReplayGuard();
    g.check('host-1', 1, 1);
    g.forget('host-1');
    expect(g.size).toBe(0);
    expect(g.check('host-1', 1, 1)).toBe('ok');
  });

  it('property: matches a reference model (set of accepted seqs, window of 64 below the max)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 300 }), (seqs) => {
        const g = new ReplayGuard();
        const accepted = new Set<number>();
        let highest = -1;
        for (const s of seqs) {
          let expected: string;
          if (highest >= 0 && s <= highest - REPLAY_WINDOW) expected = 'stale';
          else if (accepted.has(s)) expected = 'replayed';
          else expected = 'ok';
          expect(g.check('host-1', 7, s)).toBe(expected);
          if (expected === 'ok') {
            accepted.add(s);
            highest = Math.max(highest, s);
          }
        }
      }),
      { numRuns: 500 },
    );
  });
});
