import { describe, expect, it } from 'vitest';
import { MAX_SEQ, ProtocolError, ReplayGuard, SendSequence, chooseIncarnation } from '../src/index.js';

describe('SendSequence', () => {
  it('hands out increasing seqs in one incarnation', () => {
    const s = new SendSequence(42);
    expect(s.next()).toEqual({ incarnation: 42, seq: 0 });
    expect(s.next()).toEqual({ incarnation: 42, seq: 1 });
    expect(s.next()).toEqual({ incarnation: 42, seq: 2 });
    expect(s.incarnation).toBe(42);
  });

  it('bumps the incarnation instead of wrapping the seq', () => {
    const s = new SendSequence(42, MAX_SEQ - 1);
    expect(s.next()).toEqual({ incarnation: 42, seq: MAX_SEQ - 1 });
    expect(s.incarnation).toBe(42);
    expect(s.next()).toEqual({ incarnation: 42, seq: MAX_SEQ });
    expect(s.incarnation).toBe(43);
    expect(s.next()).toEqual({ incarnation: 43, seq: 0 });
    expect(s.next()).toEqual({ incarnation: 43, seq: 1 });
  });

  it('pairs across the wrap are all accepted by a ReplayGuard', () => {
    const s = new SendSequence(7, MAX_SEQ - 2);
    const g = new ReplayGuard();
    for (let i = 0; i < 6; i++) {
      const p = s.next();
      expect(g.check('host-1', p.incarnation, p.seq)).toBe('ok');
    }
  });

  it('refuses invalid starting values', () => {
    expect(() => new SendSequence(-1)).toThrow(ProtocolError);
    expect(() => new SendSequence(1.5)).toThrow(ProtocolError);
    expect(() => new SendSequence(Number.MAX_SAFE_INTEGER + 1)).toThrow(ProtocolError);
    expect(() => new SendSequence(1, MAX_SEQ + 1)).toThrow(ProtocolError);
  });

  it('refuses to exceed MAX_SAFE_INTEGER', () => {
    const s = new SendSequence(Number.MAX_SAFE_INTEGER, MAX_SEQ);
    expect(s.next()).toEqual({ incarnation: Number.MAX_SAFE_INTEGER, seq: MAX_SEQ });
    expect(() => s.next()).toThrow(ProtocolError);
  });
});

describe('chooseIncarnation', () => {
  it('uses the wall clock when it is ahead', () => {
    expect(chooseIncarnation(1_700_000_000_000, 5)).toBe(1_700_000_000_000);
    expect(chooseIncarnation(1_700_000_000_000.7)).toBe(1_700_000_000_000);
  });

  it('uses persisted + 1 when the clock went backwards', () => {
    expect(chooseIncarnation(1_000, 1_700_000_000_000)).toBe(1_700_000_000_001);
    expect(chooseIncarnation(1_700_000_000_000, 1_700_000_000_000)).toBe(1_700_000_000_001);
  });

  it('ignores nonsense inputs', () => {
    expect(chooseIncarnation(Number.NaN, 9)).toBe(10);
    expect(chooseIncarnation(-5)).toBe(0);
  });

  it('a restarted sender is accepted, its old captures are stale', () => {
    const g = new ReplayGuard();
    const first = chooseIncarnation(1_700_000_000_000);
    expect(g.check('host-1', first, 900)).toBe('ok');
    const second = chooseIncarnation(1_700_000_000_000 - 60_000, first); // clock stepped back
    expect(second).toBeGreaterThan(first);
    expect(g.check('host-1', second, 0)).toBe('ok');
    expect(g.check('host-1', first, 901)).toBe('stale');
  });
});
