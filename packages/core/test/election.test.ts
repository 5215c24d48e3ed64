import { describe, expect, it } from 'vitest';
import { FAST_TIMING, DEFAULT_TIMING, PROFILES } from '@vigil/config';
import { World, type SimHostSpec } from '@vigil/sim';
import type { Timing } from '@vigil/core';

function world(hosts: SimHostSpec[], seed = 1, timing: Timing = FAST_TIMING): World {
  return new World({ seed, timing, hosts });
}

function spec(id: string, datastores = ['ds1', 'ds2'], extra: Partial<SimHostSpec> = {}): SimHostSpec {
  return { id, datastores, ...extra };
}

/** Each host's view: its role, and whom it follows. */
function agreed(w: World, ids: readonly string[], master: string): boolean {
  return ids.every((id) => (id === master ? w.role(id) === 'master' : w.role(id) === 'slave' && w.masterOf(id) === master));
}

describe('election (real core, simulated network)', () => {
  it('elects the host with most datastores, then the highest id as a string', () => {
    const w = world([spec('host-1'), spec('host-2', ['ds1']), spec('host-100'), spec('host-99'), spec('host-9', ['ds1'])]);
    w.hostIds.forEach((id) => w.powerOn(id));
    const t = w.runUntil(() => agreed(w, w.hostIds, 'host-99'), 10_000);
    expect(t, w.formatTimeline()).not.toBeNull();
    // Not before the election window closes.
    expect(t!).toBeGreaterThanOrEqual(FAST_TIMING.electionWindowMs);
    w.run(w.now + 10_000);
    expect(agreed(w, w.hostIds, 'host-99')).toBe(true);
  });

  for (const [name, timing] of [['default', DEFAULT_TIMING], ['fdm', PROFILES.fdm]] as const) {
    it(`elects a master within about one election window under the ${name} profile`, () => {
      const w = world([spec('host-1'), spec('host-2'), spec('host-3')], 7, timing);
      w.hostIds.forEach((id) => w.powerOn(id));
      const t = w.runUntil(() => agreed(w, w.hostIds, 'host-3'), 60_000);
      expect(t).not.toBeNull();
      expect(t!).toBeGreaterThanOrEqual(timing.electionWindowMs);
      expect(t!).toBeLessThan(timing.electionWindowMs + 2 * timing.heartbeatIntervalMs);
    });
  }

  it('re-elects when the master dies, and the old master rejoins as a slave', () => {
    const ids = ['host-1', 'host-2', 'host-3', 'host-4', 'host-5'];
    const w = world(ids.map((id) => spec(id)));
    ids.forEach((id) => w.powerOn(id));
    expect(w.runUntil(() => agreed(w, ids, 'host-5'), 10_000)).not.toBeNull();
    w.powerOff('host-5');
    const rest = ids.filter((id) => id !== 'host-5');
    const t0 = w.now;
    const t = w.runUntil(() => agreed(w, rest, 'host-4'), 20_000);
    expect(t, w.formatTimeline()).not.toBeNull();
    // hostTimeout to notice, then a full election window.
    expect(t! - t0).toBeGreaterThanOrEqual(FAST_TIMING.hostTimeoutMs + FAST_TIMING.electionWindowMs - FAST_TIMING.heartbeatIntervalMs);
    w.powerOn('host-5');
    expect(w.runUntil(() => agreed(w, ids, 'host-4'), 10_000), w.formatTimeline()).not.toBeNull();
    w.run(w.now + 20_000);
    expect(agreed(w, ids, 'host-4'), 'a better host that joins later does not displace the master').toBe(true);
  });

  it('does not let a better host that starts later take over', () => {
    const w = world([spec('host-1', ['ds1']), spec('host-2', ['ds1']), spec('host-3', ['ds1', 'ds2', 'ds3'])]);
    w.powerOn('host-1');
    w.powerOn('host-2');
    expect(w.runUntil(() => agreed(w, ['host-1', 'host-2'], 'host-2'), 10_000)).not.toBeNull();
    w.powerOn('host-3');
    w.run(w.now + 30_000);
    expect(agreed(w, ['host-1', 'host-2', 'host-3'], 'host-2'), w.formatTimeline()).toBe(true);
  });

  it('elects one master per partition, and one survivor after the heal (2+2 and 3+1)', () => {
    for (const [a, b] of [
      [['host-1', 'host-2'], ['host-3', 'host-4']],
      [['host-1', 'host-2', 'host-4'], ['host-3']],
    ] as const) {
      const ids = [...a, ...b].sort();
      const w = world(ids.map((id) => spec(id)), 3);
      ids.forEach((id) => w.powerOn(id));
      expect(w.runUntil(() => agreed(w, ids, 'host-4'), 10_000)).not.toBeNull();
      w.network.partition([a, b]);
      const bestOf = (g: readonly string[]) => [...g].sort().reverse()[0]!;
      const split = w.runUntil(() => agreed(w, a, bestOf(a)) && agreed(w, b, bestOf(b)), 20_000);
      expect(split, w.formatTimeline()).not.toBeNull();
      expect(w.masters().sort()).toEqual([bestOf(a), bestOf(b)].sort());
      w.network.heal();
      const healedAt = w.now;
      const merged = w.runUntil(() => agreed(w, ids, 'host-4'), 10_000);
      expect(merged, w.formatTimeline()).not.toBeNull();
      const loser = [bestOf(a), bestOf(b)].find((m) => m !== 'host-4')!;
      const after = w.timeline.filter((e) => e.at >= healedAt);
      expect(after.some((e) => e.event === 'master.abdicated' && e.host === loser), w.formatTimeline()).toBe(true);
      // The loser's slaves followed the survivor without a new election.
      expect(after.filter((e) => e.event === 'election.started'), w.formatTimeline()).toEqual([]);
    }
  });

  it('keeps the survivor when datastore counts decide a merge (more datastores beats a higher id)', () => {
    const ids = ['host-1', 'host-2', 'host-3', 'host-4'];
    const w = world([spec('host-1', ['ds1', 'ds2', 'ds3']), spec('host-2'), spec('host-3'), spec('host-4')]);
    w.network.partition([['host-1', 'host-2'], ['host-3', 'host-4']]);
    ids.forEach((id) => w.powerOn(id));
    expect(w.runUntil(() => agreed(w, ['host-1', 'host-2'], 'host-1') && agreed(w, ['host-3', 'host-4'], 'host-4'), 10_000)).not.toBeNull();
    w.network.heal();
    expect(w.runUntil(() => agreed(w, ids, 'host-1'), 10_000), w.formatTimeline()).not.toBeNull();
  });

  it('counts only accessible datastores: losing one moves the win to another host', () => {
    const ids = ['host-1', 'host-2', 'host-3'];
    const w = world(ids.map((id) => spec(id)));
    w.setAccessible('host-3', ['ds1']);
    ids.forEach((id) => w.powerOn(id));
    expect(w.runUntil(() => agreed(w, ids, 'host-2'), 10_000), w.formatTimeline()).not.toBeNull();
  });

  it('converges under loss, duplication and reordering', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const ids = ['host-1', 'host-2', 'host-3', 'host-4', 'host-5', 'host-6'];
      const w = world(ids.map((id) => spec(id)), seed);
      w.network.faults = { loss: 0.1, duplicate: 0.1, minDelayMs: 1, maxDelayMs: 40 };
      ids.forEach((id) => w.powerOn(id, w.rng.int(0, 3000)));
      expect(w.runUntil(() => w.masters().length === 1 && ids.every((id) => w.role(id) !== 'election' && w.role(id) !== 'uninitialized'), 30_000), `seed ${seed}\n${w.formatTimeline()}`).not.toBeNull();
      w.run(w.now + 10_000);
      const m = w.masters();
      expect(m.length, `seed ${seed}\n${w.formatTimeline()}`).toBe(1);
      expect(agreed(w, ids, m[0]!)).toBe(true);
    }
  });

  it('survives a master failure in the middle of an election', () => {
    const ids = ['host-1', 'host-2', 'host-3', 'host-4'];
    const w = world(ids.map((id) => spec(id)));
    ids.forEach((id) => w.powerOn(id));
    w.run(FAST_TIMING.electionWindowMs / 2);
    w.powerOff('host-4'); // the favourite dies before the window closes
    const rest = ['host-1', 'host-2', 'host-3'];
    expect(w.runUntil(() => agreed(w, rest, 'host-3'), 10_000), w.formatTimeline()).not.toBeNull();
  });

  it('ignores clock offsets and drift: only local intervals matter', () => {
    const ids = ['host-1', 'host-2', 'host-3'];
    const w = world([
      spec('host-1', ['ds1', 'ds2'], { clockOffsetMs: 300_000, clockDrift: 0.001 }),
      spec('host-2', ['ds1', 'ds2'], { clockOffsetMs: -300_000, clockDrift: -0.001 }),
      spec('host-3'),
    ]);
    ids.forEach((id) => w.powerOn(id));
    expect(w.runUntil(() => agreed(w, ids, 'host-3'), 10_000)).not.toBeNull();
    w.run(w.now + 60_000);
    expect(agreed(w, ids, 'host-3'), w.formatTimeline()).toBe(true);
  });
});
