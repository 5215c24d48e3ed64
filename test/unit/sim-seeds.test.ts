/**
 * Random worlds from fixed seeds (packages/sim): the real core under simulated network, storage,
 * hypervisors and every kind of fault, checked against SPEC §5 on every step and, once the
 * faults are over, for convergence. A failure prints the seed, the step, the timeline and the
 * command that replays it (`vigil sim --seed N ...`); `npm run soak -- --seeds N` runs many more.
 * The small, dense worlds are in sim-seeds-small.test.ts (a file of their own runs in parallel).
 */
import { describe, expect, it } from 'vitest';
import { formatResult, runSim } from '@vigil/sim';

/** Full-size worlds: 8 hosts, 60 VMs, 30 simulated minutes with FDM's timings. */
const LARGE = Array.from({ length: 24 }, (_, i) => 1 + i);

describe('random worlds: 8 hosts, 60 VMs, 30 min, default profile', () => {
  it.each(LARGE)('seed %i', (seed) => {
    const r = runSim({ seed });
    expect(r.ok, formatResult(r, { timelineLines: 80 })).toBe(true);
    expect(r.stats.steps).toBeGreaterThan(5);
  });
});
