/**
 * Small, dense random worlds from fixed seeds: 4 hosts, 12 VMs, 5 minutes of the fast profile,
 * a fault every second or so (see sim-seeds.test.ts for the full-size ones).
 */
import { describe, expect, it } from 'vitest';
import { formatResult, runSim } from '@vigil/sim';

const SMALL = Array.from({ length: 40 }, (_, i) => 1001 + i);

describe('random worlds: 4 hosts, 12 VMs, 5 min, fast profile', () => {
  it.each(SMALL)('seed %i', (seed) => {
    const r = runSim({ seed, hosts: 4, vms: 12, durationMs: 5 * 60_000, profile: 'fast' });
    expect(r.ok, formatResult(r, { timelineLines: 80 })).toBe(true);
  });
});
