/**
 * Multiple failures (SPEC §3.5, §3.6; issue 4), 5 hosts, 15 VMs:
 *  - two slaves lose power at once: every VM of both runs again on the three others, once each;
 *  - after they are back, a slave loses power and, while its VMs are being restarted (the
 *    master's first `vm.restarting` line), the host receiving that restart loses power too: the
 *    VMs of both, including the one in flight, run again on the survivors, once each.
 * A background pgrep watch checks that no VM ever runs twice, and at the end every VM of the
 * cluster runs exactly once: nothing lost, nothing doubled.
 */
import { describe, expect, it } from 'vitest';
import { describeLab, startHosts, waitFor } from './helpers/lab.js';
import {
  Timeline,
  byName,
  countCopies,
  firstRestarts,
  logEvents,
  logOffsets,
  powerCut,
  useVmLab,
  timeOf,
  vmsVia,
  waitRunningElsewhere,
} from './helpers/vms.js';

describe('double failures: nothing lost, nothing doubled (5 hosts, 15 VMs)', () => {
  const fx = useVmLab('double', { hosts: 5, vms: 15 });
  const down: string[] = [];
  const alive = () => fx.v.hosts.filter((h) => !down.includes(h));
  /** Supervisors that survived a lab power cut (a lab bug; see powerCut). */
  const strays: string[] = [];

  async function allOnceOnLiveHosts(tl: Timeline, master: string): Promise<void> {
    const m = byName((await vmsVia(fx.v.lab, [master]))!.vms);
    const counts = await countCopies(fx.v.dir, fx.v.names);
    for (const n of fx.v.names) {
      expect(counts.get(n), `${n} runs exactly once`).toBe(1);
      expect(m.get(n)?.state, `${n} running`).toBe('running');
      expect(down, `${n} on a live host`).not.toContain(m.get(n)?.host);
    }
    tl.mark(`all ${fx.v.names.length} VMs run exactly once on live hosts`);
  }

  it('two slaves cut at once: all their VMs run again on the others, once each', async () => {
    const tl = new Timeline('two slaves at once');
    try {
      const view = (await vmsVia(fx.v.lab, [fx.v.master]))!;
      const slaves = fx.v.hosts.filter((h) => h !== fx.v.master).sort((a, b) => view.vms.filter((r) => r.host === b).length - view.vms.filter((r) => r.host === a).length);
      const victims = slaves.slice(0, 2);
      const lost = view.vms.filter((r) => victims.includes(r.host!)).map((r) => r.name);
      const t0 = tl.mark(`power cut of ${victims.join(' and ')} (${lost.length} VMs: ${lost.join(', ')})`);
      strays.push(...(await powerCut(fx.v.lab, fx.v.dir, ...victims)));
      down.push(...victims);
      const back = await waitRunningElsewhere(fx.v, alive, lost, down, t0, tl);
      tl.mark(`all ${lost.length} back within ${Math.max(...[...back.values()].map((b) => b.afterMs))} ms`);
      await allOnceOnLiveHosts(tl, fx.v.master);

      // Both come back as slaves; nothing moves.
      const before = byName((await vmsVia(fx.v.lab, [fx.v.master]))!.vms);
      await startHosts(fx.v.lab, victims);
      down.length = 0;
      const m = await waitFor('all five to follow one master', () => fx.v.lab.waitConverged(1000), { timeoutMs: 30_000, describe: () => describeLab(fx.v.lab) });
      expect(m).toBe(fx.v.master);
      tl.mark(`${victims.join(' and ')} back as slaves of ${m}`);
      const after = byName((await vmsVia(fx.v.lab, [m]))!.vms);
      for (const [n, r] of before) expect(after.get(n)?.host, `${n} did not move`).toBe(r.host);
    } finally {
      tl.print();
    }
  }, 90_000);

  it('a second host cut while the first one\'s VMs are being restarted (the one receiving them)', async () => {
    const tl = new Timeline('second cut during restarts');
    try {
      const m = fx.v.master;
      const view = (await vmsVia(fx.v.lab, [m]))!;
      const first = fx.v.hosts.filter((h) => h !== m).sort((a, b) => view.vms.filter((r) => r.host === b).length - view.vms.filter((r) => r.host === a).length)[0]!;
      const lostFirst = view.vms.filter((r) => r.host === first);
      const ids = new Set(lostFirst.map((r) => r.id));
      const offsets = logOffsets(fx.v.lab, fx.v.hosts);
      const t0 = tl.mark(`power cut of ${first} (${lostFirst.map((r) => `${r.name}/${r.priority}`).join(', ')})`);
      strays.push(...(await powerCut(fx.v.lab, fx.v.dir, first)));
      down.push(first);

      // The first restart decision that sends a VM of `first` to a slave: cut that slave at once.
      const inFlight = await waitFor(
        `${m} to start restarting ${first}'s VMs on a slave`,
        () => firstRestarts(logEvents(fx.v.lab, m, 'vm.restarting', offsets[m]), ids).find((r) => r.target !== m && r.target !== first),
        { timeoutMs: 20_000, intervalMs: 20 },
      );
      const second = inFlight.target;
      const restartedBefore = logEvents(fx.v.lab, m, 'vm.restarted', offsets[m]).filter((l) => ids.has(String(l.vm))).length;
      const onSecond = byName((await vmsVia(fx.v.lab, [m]))!.vms);
      const t1 = tl.mark(`power cut of ${second} (${restartedBefore} of ${lostFirst.length} VMs of ${first} restarted so far)`);
      const escaped = await powerCut(fx.v.lab, fx.v.dir, second);
      strays.push(...escaped);
      for (const e of escaped) tl.mark(`!! ${e} (killed now)`);
      down.push(second);
      tl.mark(`${m} logged "restarting ${inFlight.vm} on ${second}"`, inFlight.at);
      expect(restartedBefore, `the second cut came while ${first}'s restarts were still in progress`).toBeLessThan(lostFirst.length);

      // Everything that ran on either host, or was on its way to `second`, runs again elsewhere.
      const lostSecond = [...onSecond.values()].filter((r) => r.host === second).map((r) => r.name);
      const lost = [...new Set([...lostFirst.map((r) => r.name), ...lostSecond])];
      const back = await waitRunningElsewhere(fx.v, alive, lost, down, t0, tl);
      const afterSecond = Math.max(...[...back.values()].map((b) => b.afterMs)) - (t1 - t0);
      tl.mark(`all ${lost.length} VMs of ${first} and ${second} back, ${afterSecond} ms after the second cut`);
      const dead = logEvents(fx.v.lab, m, 'host.dead', offsets[m]);
      for (const d of dead) tl.mark(`${m} declared ${String(d.subject)} dead`, timeOf(d));
      for (const ev of ['vm.restarting', 'vm.request-timeout', 'vm.start-failed', 'vm.lease-held']) {
        for (const l of logEvents(fx.v.lab, m, ev, offsets[m])) tl.mark(`   ${m} ${ev}: ${String(l.message)}`, timeOf(l));
      }
      await allOnceOnLiveHosts(tl, m);
      await fx.watch!.stop();
      expect(fx.watch!.doubled(), 'no VM ever ran twice').toEqual([]);
      tl.mark(`copy watch: ${fx.watch!.samples} samples over the whole file, no VM ever seen twice`);
      // Checked last, so that the outcome above is shown regardless. A power-on sent to a host
      // that then died must not hold up the restarts for the request timeout (11 s in the fast
      // profile, 22 s in default): the master knows that host is dead at T+deadMs.
      const problems = [
        ...(afterSecond >= 1800 + 1500 + 5000 ? [`the VMs took ${afterSecond} ms after the second cut (bound: deadMs + leaseTimeoutMs + 5 s = 8300 ms)`] : []),
        ...strays.map((x) => `lab kill: ${x}`),
      ];
      expect(problems, 'restarts not held up by a power-on sent to a host that died; lab kill left nothing running').toEqual([]);
    } finally {
      tl.print();
    }
  }, 90_000);
});
