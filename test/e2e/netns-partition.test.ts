/**
 * Network partitions (SPEC §3.1, §3.2, §3.6; issue 5), real agents and process VMs in network
 * namespaces, 4 hosts, 8 VMs; the cluster's isolation response is `powerOff`, so a partitioned
 * host that wrongly thought itself isolated would power its VMs off:
 *  - 2+2 (`lab partition host-1,host-2/host-3,host-4`): each side elects its own master; the
 *    master holding the protectedlists classifies the other side `partitioned` and restarts
 *    nothing that runs there; the other side's master owns nothing and restarts nothing; no host
 *    declares itself isolated (both sides still reach the isolation address); after the heal one
 *    master remains (the election rule), every host follows it, nothing moved or doubled;
 *  - 3+1 with the master alone: it keeps its role and its protectedlists (it is not isolated: it
 *    reaches the isolation address); the three others elect a master that owns nothing; nothing
 *    is restarted or doubled; after the heal one master and every host connected.
 * A background pgrep watch checks that no VM ever runs twice.
 */
import { describe, expect, it } from 'vitest';
import { FAST_TIMING } from '@vigil/config';
import { describeLab, waitFor } from './helpers/lab.js';
import { Timeline, holdFor, secs, timeOf, vmsVia } from './helpers/vms.js';
import { hostStates, logLines, markLog, netnsSkipReason, offsetsNow, rolesLine, statuses, useNetnsLab, vmLocations, waitGroupsConverged } from './helpers/netns.js';

const skip = await netnsSkipReason();
if (skip) console.log(`SKIPPED netns-partition: ${skip}`);

const T = FAST_TIMING;
/** How long each partition is held and watched: past the isolation response (silence + delay). */
const HOLD_MS = T.slaveIsolationMs + T.isolationResponseDelayMs + 1000;

describe.skipIf(!!skip)('partitions (netns, 4 hosts, 8 VMs, isolation response powerOff)', () => {
  const fx = useNetnsLab('partition', { hosts: 4, vms: 8, isolationResponse: 'powerOff' });

  /**
   * Partition the lab into `groups`, check what must hold for HOLD_MS, heal, and check that it
   * converges on one master with nothing moved.
   */
  async function partitionAndHeal(title: string, groups: string[][]): Promise<void> {
    const tl = new Timeline(title);
    const { lab, hosts, dir, names } = fx.v;
    try {
      const master = await waitFor('one master before the partition', () => lab.waitConverged(500), { timeoutMs: 15_000 });
      const before = await vmLocations(dir);
      for (const n of names) expect(before.get(n), `${n} runs once before the partition`).toHaveLength(1);
      const owner = (await statuses(lab, [master])).get(master)!;
      expect(owner.ownedDatastores.sort()).toEqual(['ds1', 'ds2']);
      const offsets = offsetsNow(lab, hosts);
      const t0 = tl.mark(`lab partition ${groups.map((g) => g.join(',')).join('/')} (master ${master}; VMs: ${names.map((n) => `${n}@${before.get(n)![0]!.host}`).join(' ')})`);
      await lab.partition(groups);

      const masters = await waitGroupsConverged(lab, groups, 20_000);
      tl.mark(`one master per side: ${masters.join(' and ')} (${rolesLine(await statuses(lab, hosts))})`);
      const withLocks = groups.findIndex((g) => g.includes(master));
      expect(masters[withLocks], `${master} stays master of its side`).toBe(master);

      // The master with the locks sees the other side partitioned (storage heartbeat alive, bit 0).
      const otherSide = groups.filter((_, i) => i !== withLocks).flat();
      await waitFor(`${master} to classify ${otherSide.join(', ')} as partitioned`, async () => {
        const hs = await hostStates(lab, master);
        return hs && otherSide.every((h) => hs.get(h)?.state === 'partitioned' && hs.get(h)?.isolated === false);
      }, { timeoutMs: 15_000, intervalMs: 100 });
      tl.mark(`${master}'s hosts view: ${otherSide.join(', ')} partitioned`);

      // For HOLD_MS: each VM keeps running where it ran, once; only `master` owns datastores; no
      // host declares isolation; nobody restarts or powers off anything.
      let ownersSeen = '';
      const polls = await holdFor('during the partition: nothing restarted, moved or doubled; one owner per datastore', HOLD_MS - (Date.now() - t0), async () => {
        const locs = await vmLocations(dir);
        for (const n of names) {
          const l = locs.get(n) ?? [];
          if (l.length !== 1) return `${n} runs ${l.length} times (${l.map((x) => `${x.host}:${x.pid}`).join(', ')})`;
          if (l[0]!.pid !== before.get(n)![0]!.pid) return `${n} was restarted (now pid ${l[0]!.pid} on ${l[0]!.host})`;
        }
        const st = await statuses(lab, hosts);
        for (const d of ['ds1', 'ds2']) {
          const owners = [...st.values()].filter((s) => s?.ownedDatastores.includes(d)).map((s) => s!.host);
          if (owners.length > 1) return `${d} owned by ${owners.join(' and ')}`;
          if (owners.length === 1 && owners[0] !== master) return `${d} owned by ${owners[0]}, not ${master}`;
        }
        ownersSeen = rolesLine(st);
        const bad = logLines(lab, hosts, offsets, /^(vm\.restarting|isolation\.(declared|stopped))$/);
        return bad.length > 0 ? `${bad[0]!.from} logged ${String(bad[0]!.event)}: ${String(bad[0]!.message)}` : null;
      });
      tl.mark(`held ${secs(HOLD_MS)} after the cut (${polls} polls): nothing restarted, moved or doubled; no host isolated; ${ownersSeen}`);
      const other = masters.filter((m) => m !== master);
      for (const m of other) {
        const v = await vmsVia(lab, [m]);
        const owned = (await statuses(lab, [m])).get(m)?.ownedDatastores ?? [];
        expect(owned, `${m}, master of the other side, owns no datastore`).toEqual([]);
        tl.mark(`${m} (the other side's master) owns ${owned.join(',') || 'no datastore'} and sees ${v?.vms.filter((r) => r.protected).length ?? '?'} protected VMs`);
      }
      markLog(tl, logLines(lab, hosts, offsets, /^(election\.won|master\.lost|host\.(partitioned|isolated|dead))$/));

      const t1 = tl.mark('lab heal');
      await lab.heal();
      const m = await waitFor('one master, every host following it', () => lab.waitConverged(500), { timeoutMs: 20_000, describe: () => describeLab(lab) });
      tl.mark(`converged ${secs(Date.now() - t1)} after the heal: ${rolesLine(await statuses(lab, hosts))}`);
      await waitFor(`${m} to see every host connected`, async () => {
        const hs = await hostStates(lab, m);
        return hs && hosts.every((h) => h === m || hs.get(h)?.state === 'connected');
      }, { timeoutMs: 10_000, intervalMs: 100 });
      await waitFor(`${m} to own ds1 and ds2`, async () => (await statuses(lab, [m])).get(m)?.ownedDatastores.length === 2, { timeoutMs: 10_000, intervalMs: 100 });
      tl.mark(`${m} sees every host connected and owns ds1, ds2`);
      markLog(tl, logLines(lab, hosts, offsets, /^(master\.abdicated|election\.joined)$/).filter((l) => timeOf(l) >= t1));
      const polls2 = await holdFor('after the heal: nothing moved or doubled', 2000, async () => {
        const locs = await vmLocations(dir);
        for (const n of names) {
          const l = locs.get(n) ?? [];
          if (l.length !== 1 || l[0]!.pid !== before.get(n)![0]!.pid) return `${n}: ${l.map((x) => `${x.host}:${x.pid}`).join(', ') || 'not running'} (was ${before.get(n)![0]!.host}:${before.get(n)![0]!.pid})`;
        }
        return null;
      });
      tl.mark(`held 2 s after converging (${polls2} polls): every VM is the same single process as before the partition`);
      expect(logLines(lab, hosts, offsets, /^vm\.restarting$/).map((l) => `${l.from}: ${String(l.message)}`), 'no restart at all').toEqual([]);
      expect(fx.watch!.doubled(), 'no VM ever ran twice').toEqual([]);
    } finally {
      tl.print();
    }
  }

  it('2+2: two masters, only the one holding the locks could restart, and it restarts nothing that runs; one master after the heal', async () => {
    const master = (await fx.v.lab.waitConverged(10_000))!;
    // The master's side gets one slave; the two others form the other side.
    const slaves = fx.v.hosts.filter((h) => h !== master);
    await partitionAndHeal('2+2 partition', [[master, slaves[0]!], [slaves[1]!, slaves[2]!]]);
  }, 90_000);

  it('3+1 with the master alone: it keeps the locks (not isolated); the three elect a master that restarts nothing; one master after the heal', async () => {
    const master = (await fx.v.lab.waitConverged(10_000))!;
    await partitionAndHeal('3+1 partition, the master alone', [[master], fx.v.hosts.filter((h) => h !== master)]);
    await fx.watch!.stop();
    expect(fx.watch!.doubled(), 'no VM ever ran twice').toEqual([]);
    console.log(`copy watch: ${fx.watch!.samples} samples over the whole file, no VM ever seen twice`);
  }, 90_000);
});

