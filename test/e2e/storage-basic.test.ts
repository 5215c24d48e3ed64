/**
 * Shared storage with three real agents and two datastores (SPEC §3.3), fast profile:
 * - the master holds the protectedlist lock of both datastores (its status says so, and the
 *   protectedlist.owner records and protectedlist headers name it);
 * - every host holds and keeps renewing its host-N-hb on both datastores (the counters, read from
 *   outside, keep increasing; the master's `hosts` view calls every storage heartbeat alive);
 * - every host-N-poweron reads "0\n";
 * - after a slave is SIGKILLed, the master calls its storage heartbeat dead once it has seen it
 *   unchanged for the lease timeout (not sooner, and not much later), while the others stay alive.
 */
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { Cleanup, RecordSampler, StorageLab, T, readPoweron, readRecord, secs, waitFor } from './helpers/storage-harness.js';
import { parseProtectedList } from '@vigil/datastore';
import { readFile } from 'node:fs/promises';

const DSS = ['ds1', 'ds2'];
const EVENTS = /^(agent\.started|election\.(won|lost|joined)|ownership\.|heartbeat\.|host\.|storage\.)/;

describe('storage: heartbeats and protectedlist ownership with three agents', () => {
  const cleanup = new Cleanup();
  let s: StorageLab;
  let pids: Map<string, number>;
  let master = '';

  beforeAll(async () => {
    s = await StorageLab.create({ name: 'storage-basic', hosts: 3 });
    cleanup.add('lab down', () => s.down());
    pids = await s.startAll();
    master = await s.waitConverged();
    await s.waitSteady(master, DSS);
  });

  afterAll(async () => {
    await cleanup.run();
  });

  it('the master owns both protectedlists, every heartbeat is alive and renewed, every poweron is "0"', async () => {
    expect(master).toBe('host-3'); // all access 2 datastores: the highest id wins
    const st = await s.status(master);
    expect(st.ownedDatastores).toEqual(DSS);
    expect(st.heartbeatsHeld).toEqual(DSS);

    for (const ds of DSS) {
      const owner = await readRecord(s.file(ds, 'protectedlist.owner'));
      expect(owner.kind, `${ds} protectedlist.owner`).toBe('ok');
      if (owner.kind !== 'ok') return;
      expect(owner.record.host).toBe(master);
      expect(owner.record.state).toBe('held');
      const pl = parseProtectedList(await readFile(s.file(ds, 'protectedlist'), 'utf8'));
      expect(pl.ok && pl.value.owner, `${ds} protectedlist header`).toBe(master);
      expect(pl.ok && pl.value.generation).toBe(owner.record.generation);
    }

    const view = await s.hostsView(master);
    expect(view.isMaster).toBe(true);
    for (const h of s.hosts) expect(view.hosts.find((r) => r.host === h)?.storageHeartbeat, `${h} in ${master}'s view`).toBe('alive');

    // Counters keep increasing: read every host-N-hb now, then wait until each moved on by 3.
    const before = new Map<string, number>();
    for (const ds of DSS) {
      for (const h of s.hosts) {
        const r = await readRecord(s.file(ds, `${h}-hb`));
        expect(r.kind, `${ds}/${h}-hb`).toBe('ok');
        if (r.kind === 'ok') {
          expect(r.record.host).toBe(h);
          expect(r.record.state).toBe('held');
          before.set(`${ds}/${h}`, r.record.counter);
        }
      }
    }
    const t = Date.now();
    await waitFor(
      'every host-N-hb counter to advance by 3',
      async () => {
        for (const [key, c0] of before) {
          const [ds, h] = key.split('/') as [string, string];
          const r = await readRecord(s.file(ds, `${h}-hb`));
          if (r.kind !== 'ok' || r.record.counter < c0 + 3) return undefined;
        }
        return true;
      },
      { timeoutMs: 10 * T.storageHeartbeatIntervalMs, intervalMs: 50 },
    );
    s.mark(`every host-N-hb counter advanced by 3 within ${secs(Date.now() - t)} (renewal every ${T.storageHeartbeatIntervalMs} ms)`);

    for (const ds of DSS) {
      for (const h of s.hosts) {
        const p = await readPoweron(s.file(ds, `${h}-poweron`));
        expect(p.kind === 'ok' ? p.raw : p, `${ds}/${h}-poweron`).toBe('0\n');
      }
    }
    s.assertNoCrash(pids);
    s.printTimeline('steady state', EVENTS);
  });

  it('a SIGKILLed slave\'s storage heartbeat dies in the master\'s view after the lease timeout; the others stay alive', async () => {
    const victim = 'host-1';
    const others = s.hosts.filter((h) => h !== victim);
    const hbFiles = DSS.map((ds) => s.file(ds, `${victim}-hb`));
    const sampler = new RecordSampler(hbFiles, 20).start();
    cleanup.add('sampler', () => sampler.stop());
    await waitFor('the sampler to see the victim renew', () => hbFiles.every((f) => (sampler.changes.get(f)?.length ?? 0) >= 2), { timeoutMs: 5000 });

    const killedAt = s.mark(`SIGKILL ${victim}`);
    onTestFailed(() => s.printTimeline('FAILED: SIGKILL of a slave', EVENTS, { from: killedAt - 1000 }));
    await s.lab.kill(victim);
    pids.delete(victim);

    // Poll the master's view; nobody else may ever look anything but alive meanwhile.
    const othersNotAlive: string[] = [];
    const deadAt = await waitFor(
      `${master} to call ${victim}'s storage heartbeat dead`,
      async () => {
        const view = await s.hostsView(master);
        for (const h of others) {
          const st = view.hosts.find((r) => r.host === h)?.storageHeartbeat;
          if (st !== 'alive') othersNotAlive.push(`${h}=${st} at +${Date.now() - killedAt} ms`);
        }
        return view.hosts.find((r) => r.host === victim)?.storageHeartbeat === 'dead' ? Date.now() : undefined;
      },
      { timeoutMs: T.leaseTimeoutMs + 8000, intervalMs: 25 },
    );
    sampler.stop();
    const lastChange = Math.max(...hbFiles.map((f) => sampler.last(f)!.at));
    s.mark(`${master} reports ${victim}'s storage heartbeat dead`, deadAt);
    const afterKill = deadAt - killedAt;
    const afterLastChange = deadAt - lastChange;
    console.log(
      `${victim}: last heartbeat change seen ${lastChange - killedAt} ms relative to the kill; dead in ${master}'s view ${afterKill} ms after the kill, ${afterLastChange} ms after the last change (leaseTimeoutMs ${T.leaseTimeoutMs})`,
    );

    // The record stopped changing at the kill (one renewal may have been in flight).
    for (const f of hbFiles) expect(sampler.changesSince(f, killedAt + 100), f).toEqual([]);
    // Dead only after a whole lease timeout without change (minus the master's sampling period and the poll)...
    expect(afterLastChange).toBeGreaterThanOrEqual(T.leaseTimeoutMs - T.storageHeartbeatIntervalMs / 2 - 50);
    // ...and not much later than that.
    expect(afterKill).toBeLessThanOrEqual(T.leaseTimeoutMs + 1500);
    expect(othersNotAlive).toEqual([]);

    // Still alive a while later (well past another lease timeout).
    const until = Date.now() + T.leaseTimeoutMs + 500;
    await waitFor(
      'a lease timeout to pass with the others alive',
      async () => {
        const view = await s.hostsView(master);
        for (const h of others) {
          const st = view.hosts.find((r) => r.host === h)?.storageHeartbeat;
          if (st !== 'alive') othersNotAlive.push(`${h}=${st} at +${Date.now() - killedAt} ms`);
        }
        const v = view.hosts.find((r) => r.host === victim)?.storageHeartbeat;
        if (v !== 'dead') othersNotAlive.push(`${victim}=${v} (after dead) at +${Date.now() - killedAt} ms`);
        return Date.now() >= until ? true : undefined;
      },
      { timeoutMs: T.leaseTimeoutMs + 5000, intervalMs: 100 },
    );
    expect(othersNotAlive).toEqual([]);
    s.assertNoCrash(pids);
    s.printTimeline('SIGKILL of a slave', EVENTS, { from: killedAt - 1000 });
  });
});
