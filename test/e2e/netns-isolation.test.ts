/**
 * Isolation with the `powerOff` response (SPEC §3.4, §3.2; issue 5), real agents and real process
 * VMs, each host in its own network namespace (`vigil lab up --netns`), 4 hosts, 8 VMs:
 *  - a slave loses all network (`lab isolate`: no agent traffic, and the isolation address stops
 *    answering ping): it declares itself isolated, sets its isolation bit, and after the response
 *    delay writes poweredoff/<vm> and powers its VMs off (a master visibly owns their datastores);
 *    the master classifies it `isolated` and restarts exactly those VMs elsewhere, once each;
 *    after `lab heal` it rejoins as a slave and clears its bit;
 *  - the master loses all network: it declares itself isolated at T+masterIsolationMs and
 *    releases its protectedlists; the others elect a new master, which takes the protectedlists
 *    only after they were released (or their leases expired); the old master's VMs are powered
 *    off there and restarted elsewhere; after the heal one master remains.
 * A background pgrep watch checks that no VM ever runs twice, at any moment.
 */
import { describe, expect, it } from 'vitest';
import { FAST_TIMING } from '@vigil/config';
import { describeLab, waitFor } from './helpers/lab.js';
import { Timeline, byName, countCopies, secs, timeOf, vmsVia, waitRunningElsewhere } from './helpers/vms.js';
import { PoweredOffWatch, hostStates, logLines, markLog, netnsSkipReason, offsetsNow, rolesLine, statuses, useNetnsLab, vmLocations, waitGroupsConverged } from './helpers/netns.js';

const skip = await netnsSkipReason();
if (skip) console.log(`SKIPPED netns-isolation: ${skip}`);

const T = FAST_TIMING;
/** Slack on top of a timing for a loaded 2-core machine. */
const SLACK_MS = 1500;

describe.skipIf(!!skip)('isolation with powerOff (netns, 4 hosts, 8 VMs)', () => {
  const fx = useNetnsLab('isolation', { hosts: 4, vms: 8, isolationResponse: 'powerOff' });
  /** Problems checked at the end of each test, so the whole timeline is shown first. */
  let problems: string[] = [];

  /** Every VM runs exactly once, and (per its process marker) on `host` if given. */
  async function allOnce(): Promise<string | null> {
    const locs = await vmLocations(fx.v.dir);
    for (const n of fx.v.names) {
      const l = locs.get(n) ?? [];
      if (l.length !== 1) return `${n} runs ${l.length} times (${l.map((x) => `${x.host}:${x.pid}`).join(', ')})`;
    }
    return null;
  }

  it('a slave isolated with powerOff: its VMs run again elsewhere once each, poweredoff/ written first; it rejoins after the heal', async () => {
    const tl = new Timeline('slave isolated (powerOff)');
    problems = [];
    const { lab, master, hosts } = fx.v;
    try {
      const view = (await vmsVia(lab, [master]))!;
      const victim = hosts.filter((h) => h !== master).sort((a, b) => view.vms.filter((r) => r.host === b).length - view.vms.filter((r) => r.host === a).length)[0]!;
      const lost = view.vms.filter((r) => r.host === victim);
      const others = view.vms.filter((r) => r.host !== victim);
      expect(lost.length, `${victim} runs VMs`).toBeGreaterThan(0);
      const offsets = offsetsNow(lab, hosts);
      const pw = PoweredOffWatch.forLab(lab).start();
      const t0 = tl.mark(`lab isolate ${victim} (runs ${lost.map((r) => r.name).join(', ')})`);
      await lab.isolate(victim);

      // The victim: isolated at T+slaveIsolationMs.
      const declared = await waitFor(`${victim} to declare itself isolated`, () => logLines(lab, [victim], offsets, /^isolation\.declared$/)[0], { timeoutMs: 30_000, intervalMs: 50, describe: () => describeLab(lab) });
      const detectMs = timeOf(declared) - t0;
      tl.mark(`${victim} isolated ${secs(detectMs)} after the cut (slaveIsolationMs ${T.slaveIsolationMs} ms)`, timeOf(declared));
      if (detectMs > T.slaveIsolationMs + T.icmpPingTimeoutMs + SLACK_MS) problems.push(`${victim} declared isolation ${detectMs} ms after the cut, expected about slaveIsolationMs (${T.slaveIsolationMs} ms) + a ping round`);
      expect((await lab.status(victim)).up && (await lab.status(victim) as { status: { role: string } }).status.role).toBe('isolated');

      // The master: the silent host with a live storage heartbeat and isolation bit 1 is `isolated`.
      await waitFor(`${master} to classify ${victim} as isolated`, async () => (await hostStates(lab, master))?.get(victim)?.state === 'isolated', { timeoutMs: 20_000, intervalMs: 100 });
      tl.mark(`${master}'s hosts view: ${victim} isolated`);

      const back = await waitRunningElsewhere(fx.v, () => hosts.filter((h) => h !== victim), lost.map((r) => r.name), [victim], t0, tl, 40_000);
      await pw.stop();

      markLog(tl, logLines(lab, [victim], offsets, /^(isolation\.(response|stopped|poweredoff-failed)|election\.won)$/));
      markLog(tl, logLines(lab, [master], offsets, /^(host\.(isolated|partitioned|dead|agentUnreachable|isolation-bit)|vm\.restart(ing|ed))$/, (l) => l.subject === victim || String(l.event).startsWith('vm.')));
      for (const [vm, at] of pw.seen) tl.mark(`poweredoff/${vm} seen on disk`, at);

      // Exactly the VMs of the victim were restarted, because of the isolation response.
      const restarting = logLines(lab, [master], offsets, /^vm\.restarting$/);
      const ids = lost.map((r) => r.id).sort();
      expect([...new Set(restarting.map((l) => String(l.vm)))].sort(), 'restarted: exactly the isolated host\'s VMs').toEqual(ids);
      for (const l of restarting) expect(String(l.reason), `${String(l.vm)} restarted because of the isolation response`).toMatch(/isolation response/);
      expect([...pw.seen.keys()].sort(), 'a poweredoff/ file for each VM it powered off').toEqual(ids);
      const stopped = logLines(lab, [victim], offsets, /^isolation\.stopped$/);
      expect(stopped.map((l) => String(l.vm)).sort(), `${victim} logged isolation.stopped for each`).toEqual(ids);
      // poweredoff/ first, then the stop: each file was seen before the restart elsewhere.
      for (const r of lost) expect(pw.seen.get(r.id)! <= t0 + back.get(r.name)!.afterMs, `poweredoff/${r.id} written before ${r.name} ran again`).toBe(true);

      // The isolated host's copies are gone; each VM runs once, on another host.
      const locs = await vmLocations(fx.v.dir);
      for (const r of lost) {
        const l = locs.get(r.name) ?? [];
        expect(l.map((x) => x.host), `${r.name} runs once, not on ${victim}`).toHaveLength(1);
        expect(l[0]!.host).not.toBe(victim);
      }
      const after = byName((await vmsVia(lab, [master]))!.vms);
      for (const o of others) expect(after.get(o.name)?.host, `${o.name} did not move`).toBe(o.host);

      // Heal: back as a slave, isolation bit cleared.
      const t1 = tl.mark(`lab heal`);
      await lab.heal();
      await waitFor(`${victim} to rejoin as a slave of ${master}`, async () => {
        const st = (await statuses(lab, [victim])).get(victim);
        return st?.role === 'slave' && st.master === master;
      }, { timeoutMs: 15_000, intervalMs: 50, describe: () => describeLab(lab) });
      tl.mark(`${victim} slave of ${master} again (${secs(Date.now() - t1)} after the heal)`);
      await waitFor(`${master} to see ${victim} connected with its isolation bit cleared`, async () => {
        const s = (await hostStates(lab, master))?.get(victim);
        return s?.state === 'connected' && s.isolated === false;
      }, { timeoutMs: 10_000, intervalMs: 100 });
      tl.mark(`${master}'s hosts view: ${victim} connected, isolation bit 0`);
      markLog(tl, logLines(lab, [victim], offsets, /^(isolation\.ended|election\.joined)$/));
      expect(await allOnce()).toBeNull();
      expect(fx.watch!.doubled(), 'no VM ever ran twice').toEqual([]);
      expect(problems, 'timing').toEqual([]);
    } finally {
      tl.print();
    }
  }, 90_000);

  it('the master isolated: a new master takes the protectedlists only once released; the old master\'s VMs run again elsewhere; one master after the heal', async () => {
    const tl = new Timeline('master isolated (powerOff)');
    problems = [];
    const { lab, hosts } = fx.v;
    try {
      const old = (await lab.waitConverged(10_000))!;
      expect(old, 'one master before the test').not.toBeNull();
      const rest = hosts.filter((h) => h !== old);
      const view = (await vmsVia(lab, [old]))!;
      const lost = view.vms.filter((r) => r.host === old);
      const offsets = offsetsNow(lab, hosts);
      const pw = PoweredOffWatch.forLab(lab).start();
      const t0 = tl.mark(`lab isolate ${old} (the master; runs ${lost.map((r) => r.name).join(', ') || 'no VM'})`);
      await lab.isolate(old);

      const declared = await waitFor(`${old} to declare itself isolated`, () => logLines(lab, [old], offsets, /^isolation\.declared$/)[0], { timeoutMs: 20_000, intervalMs: 50, describe: () => describeLab(lab) });
      const detectMs = timeOf(declared) - t0;
      tl.mark(`${old} isolated ${secs(detectMs)} after the cut (masterIsolationMs ${T.masterIsolationMs} ms)`, timeOf(declared));
      if (detectMs > T.masterIsolationMs + 2 * T.icmpPingTimeoutMs + SLACK_MS) problems.push(`the master declared isolation ${detectMs} ms after the cut, expected about masterIsolationMs (${T.masterIsolationMs} ms) + a ping round`);

      const [nm] = await waitGroupsConverged(lab, [rest], 20_000);
      const newMaster = nm!;
      tl.mark(`${rest.join(', ')} follow ${newMaster}`);
      await waitFor(`${newMaster} to own ds1 and ds2`, async () => {
        const s = (await statuses(lab, [newMaster])).get(newMaster);
        return s && ['ds1', 'ds2'].every((d) => s.ownedDatastores.includes(d));
      }, { timeoutMs: 15_000, intervalMs: 50 });

      // Ownership handed over, never shared: acquired by the new master only after the old one
      // released it (or, if it never did, after its lease expired: ownership.takeover).
      const released = logLines(lab, [old], offsets, /^ownership\.(released|lost)$/);
      const acquired = logLines(lab, [newMaster], offsets, /^ownership\.(acquired|takeover|waiting)$/);
      markLog(tl, released);
      markLog(tl, acquired);
      for (const d of ['ds1', 'ds2']) {
        const acq = acquired.find((l) => l.event === 'ownership.acquired' && l.datastore === d);
        const rel = released.find((l) => l.datastore === d);
        const takeover = acquired.find((l) => l.event === 'ownership.takeover' && l.datastore === d);
        expect(acq, `${newMaster} acquired ${d}`).toBeDefined();
        expect(rel || takeover, `${old} released ${d} (or ${newMaster} took it over after its lease expired)`).toBeDefined();
        if (rel) expect(timeOf(acq!), `${newMaster} took ${d} after ${old} released it`).toBeGreaterThanOrEqual(timeOf(rel));
        else expect(timeOf(acq!) - t0, `${newMaster} took ${d} no sooner than the lease timeout`).toBeGreaterThanOrEqual(T.leaseTimeoutMs);
      }
      const oldSt = (await statuses(lab, [old])).get(old);
      expect(oldSt?.role, `${old} is isolated`).toBe('isolated');
      expect(oldSt?.ownedDatastores, `${old} owns nothing`).toEqual([]);

      if (lost.length > 0) await waitRunningElsewhere(fx.v, () => rest, lost.map((r) => r.name), [old], t0, tl, 40_000);
      await pw.stop();
      markLog(tl, logLines(lab, [old], offsets, /^isolation\.(response|stopped)$/));
      markLog(tl, logLines(lab, [newMaster], offsets, /^(host\.(isolated|partitioned|dead|agentUnreachable)|vm\.restart(ing|ed))$/, (l) => l.subject === old || String(l.event).startsWith('vm.')));
      for (const [vm, at] of pw.seen) tl.mark(`poweredoff/${vm} seen on disk`, at);
      expect([...pw.seen.keys()].sort(), 'a poweredoff/ file for each VM of the old master').toEqual(lost.map((r) => r.id).sort());
      const restarted = [...new Set(logLines(lab, [newMaster], offsets, /^vm\.restarting$/).map((l) => String(l.vm)))].sort();
      expect(restarted, 'restarted: exactly the old master\'s VMs').toEqual(lost.map((r) => r.id).sort());
      expect(await allOnce()).toBeNull();

      const t1 = tl.mark('lab heal');
      await lab.heal();
      const m = await waitFor('one master, every host connected', () => lab.waitConverged(500), { timeoutMs: 20_000, describe: () => describeLab(lab) });
      tl.mark(`converged after ${secs(Date.now() - t1)}: ${rolesLine(await statuses(lab, hosts))}`);
      await waitFor(`${m} to see every host connected`, async () => {
        const hs = await hostStates(lab, m);
        return hs && hosts.every((h) => h === m || (hs.get(h)?.state === 'connected' && hs.get(h)?.isolated === false));
      }, { timeoutMs: 10_000, intervalMs: 100 });
      markLog(tl, logLines(lab, hosts, offsets, /^(isolation\.ended|master\.abdicated)$/));
      expect(await allOnce()).toBeNull();
      await fx.watch!.stop();
      expect(fx.watch!.doubled(), 'no VM ever ran twice').toEqual([]);
      tl.mark(`copy watch: ${fx.watch!.samples} samples over the whole file, no VM ever seen twice`);
      const counts = await countCopies(fx.v.dir, fx.v.names);
      for (const n of fx.v.names) expect(counts.get(n), `${n} runs exactly once`).toBe(1);
      expect(problems, 'timing').toEqual([]);
    } finally {
      tl.print();
    }
  }, 90_000);
});
