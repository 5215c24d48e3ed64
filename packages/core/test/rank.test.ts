import { describe, expect, it } from 'vitest';
import { beats, best } from '@vigil/core';

describe('election rule', () => {
  it('prefers the host with more datastores', () => {
    expect(beats({ host: 'host-1', datastores: 3 }, { host: 'host-9', datastores: 2 })).toBe(true);
    expect(beats({ host: 'host-9', datastores: 2 }, { host: 'host-1', datastores: 3 })).toBe(false);
  });

  it('breaks ties on the host id compared as a string, left to right', () => {
    expect(beats({ host: 'host-99', datastores: 2 }, { host: 'host-100', datastores: 2 })).toBe(true);
    expect(beats({ host: 'host-100', datastores: 2 }, { host: 'host-99', datastores: 2 })).toBe(false);
    expect(beats({ host: 'host-2', datastores: 1 }, { host: 'host-10', datastores: 1 })).toBe(true);
    expect(best([
      { host: 'host-100', datastores: 1 },
      { host: 'host-99', datastores: 1 },
      { host: 'host-9', datastores: 1 },
      { host: 'host-1000', datastores: 1 },
    ])?.host).toBe('host-99');
  });

  it('is a strict total order (no host beats itself, exactly one of two wins)', () => {
    const ranks = ['host-1', 'host-10', 'host-2', 'host-99', 'host-100'].flatMap((host) =>
      [0, 1, 2].map((datastores) => ({ host, datastores })),
    );
    for (const a of ranks) {
      expect(beats(a, a)).toBe(false);
      for (const b of ranks) if (a !== b && a.host !== b.host) expect(beats(a, b) !== beats(b, a)).toBe(true);
    }
  });
});
