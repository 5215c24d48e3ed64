/** Same seed, same run: byte for byte. */
import { describe, expect, it } from 'vitest';
import { runSim } from '@vigil/sim';

describe('reproducible from a seed', () => {
  it('gives a byte-identical timeline for the same seed, and a different one for another', () => {
    const opts = { hosts: 4, vms: 12, durationMs: 3 * 60_000, profile: 'fast' as const };
    const a = runSim({ seed: 42, ...opts });
    const b = runSim({ seed: 42, ...opts });
    const c = runSim({ seed: 43, ...opts });
    expect(a.timeline.length).toBeGreaterThan(100);
    expect(JSON.stringify(b.timeline)).toBe(JSON.stringify(a.timeline));
    expect(b.script).toBe(a.script);
    expect(JSON.stringify(c.timeline)).not.toBe(JSON.stringify(a.timeline));
  });
});
