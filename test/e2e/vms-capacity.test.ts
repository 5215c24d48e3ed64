/**
 * Restarts limited by capacity (SPEC §3.5; issue 4): 3 hosts offering 256 MB each, 10 VMs of
 * 64 MB (4 fit on a host; 12 slots in all). A power cut of a host running more VMs than the
 * survivors have room for: as many as fit are restarted (the higher priorities first), the others
 * wait (`waiting` in `vms`, for capacity) and do not run; when the host is powered on again, they
 * start there. Each VM runs exactly once throughout.
 */
import { describe, expect, it } from 'vitest';
import { startHosts, waitFor } from './helpers/lab.js';
import {
  PRIORITY_RANK,
  Timeline,
  byName,
  countCopies,
  holdFor,
  powerCut,
  useVmLab,
  vmsVia,
} from './helpers/vms.js';

const CAPACITY = { memoryMB: 256, cpus: 64 };
const VM_MB = 64;
const SLOTS = CAPACITY.memoryMB / VM_MB;
/** A 4-cycle over 3 hosts, so that each host runs VMs of different priorities. */
const PRIORITIES = ['highest', 'high', 'medium', 'low'];

describe('not enough capacity: VMs wait, and start when a host comes back', () => {
  const fx = useVmLab('capacity', { hosts: 3, vms: 10, capacity: CAPACITY, memoryMB: VM_MB, priorities: PRIORITIES });

  it('power cut of a full host: what fits restarts, the rest waits, then starts on the returning host', async () => {
    const tl = new Timeline('capacity');
    try {
      const view = (await vmsVia(fx.v.lab, [fx.v.master]))!;
      const perHost = fx.v.hosts.map((h) => `${h}: ${view.vms.filter((r) => r.host === h).map((r) => r.name).join(',')}`);
      tl.mark(`placement (${SLOTS} slots per host): ${perHost.join(' | ')}`);
      for (const h of fx.v.hosts) expect(view.vms.filter((r) => r.host === h).length, `${h} within capacity`).toBeLessThanOrEqual(SLOTS);
      const victim = fx.v.hosts.filter((h) => h !== fx.v.master).sort((a, b) => view.vms.filter((r) => r.host === b).length - view.vms.filter((r) => r.host === a).length)[0]!;
      const lost = view.vms.filter((r) => r.host === victim);
      const survivors = fx.v.hosts.filter((h) => h !== victim);
      const free = survivors.length * SLOTS - (fx.v.names.length - lost.length);
      const fit = Math.min(free, lost.length);
      expect(fit, 'the test needs some VMs not to fit').toBeLessThan(lost.length);

      const t0 = tl.mark(`power cut of ${victim} (${lost.map((r) => `${r.name}/${r.priority}`).join(', ')}); room for ${fit} of them on ${survivors.join(', ')}`);
      const strays = await powerCut(fx.v.lab, fx.v.dir, victim);
      const lostNames = lost.map((r) => r.name);
      const split = await waitFor(
        `${fit} of ${victim}'s VMs restarted elsewhere and the other ${lost.length - fit} waiting for capacity`,
        async () => {
          const m = byName((await vmsVia(fx.v.lab, [fx.v.master]))?.vms ?? []);
          const counts = await countCopies(fx.v.dir, lostNames);
          const running = lostNames.filter((n) => m.get(n)?.state === 'running' && survivors.includes(m.get(n)!.host!) && counts.get(n) === 1);
          const waiting = lostNames.filter((n) => m.get(n)?.state === 'waiting' && /free/.test(m.get(n)?.detail ?? '') && counts.get(n) === 0);
          return running.length === fit && waiting.length === lost.length - fit ? { running, waiting, m } : undefined;
        },
        {
          timeoutMs: 30_000,
          describe: async () => JSON.stringify((await vmsVia(fx.v.lab, [fx.v.master]))?.vms.filter((r) => lostNames.includes(r.name)), null, 1),
        },
      );
      tl.mark(`${split.running.map((n) => `${n}/${split.m.get(n)!.priority}`).join(', ')} restarted (${split.running.map((n) => split.m.get(n)!.host).join(', ')}); ${split.waiting.map((n) => `${n}/${split.m.get(n)!.priority}`).join(', ')} waiting: ${split.m.get(split.waiting[0]!)!.detail}`);
      // Higher priorities got the room.
      const worstRunning = Math.max(...split.running.map((n) => PRIORITY_RANK[split.m.get(n)!.priority]!));
      const bestWaiting = Math.min(...split.waiting.map((n) => PRIORITY_RANK[split.m.get(n)!.priority]!));
      expect(worstRunning, 'the VMs restarted have priority at least that of the waiting ones').toBeLessThanOrEqual(bestWaiting);

      const polls = await holdFor('the waiting VMs stay waiting and off', 3000, async () => {
        const m = byName((await vmsVia(fx.v.lab, [fx.v.master]))?.vms ?? []);
        const counts = await countCopies(fx.v.dir, fx.v.names);
        for (const n of split.waiting) {
          if (counts.get(n) !== 0) return `${n} has ${counts.get(n)} processes`;
          if (m.get(n)?.state !== 'waiting') return `${n} is ${m.get(n)?.state}`;
        }
        for (const s of survivors) {
          const used = [...m.values()].filter((r) => r.host === s).length;
          if (used > SLOTS) return `${s} runs ${used} VMs, over its capacity`;
        }
        return null;
      });
      tl.mark(`held 3 s (${polls} polls): ${split.waiting.length} VMs wait, no process, no host over capacity`);

      const t1 = tl.mark(`powering ${victim} on again`);
      await startHosts(fx.v.lab, [victim]);
      const done = await waitFor(
        `the waiting VMs started on ${victim}`,
        async () => {
          const m = byName((await vmsVia(fx.v.lab, [fx.v.master]))?.vms ?? []);
          const counts = await countCopies(fx.v.dir, fx.v.names);
          return fx.v.names.every((n) => m.get(n)?.state === 'running' && counts.get(n) === 1) ? m : undefined;
        },
        { timeoutMs: 30_000 },
      );
      for (const n of split.waiting) tl.mark(`${n} running on ${done.get(n)!.host}`);
      tl.mark(`all ${fx.v.names.length} VMs running, ${Date.now() - t1} ms after ${victim} was powered on (${Date.now() - t0} ms after the cut)`);
      for (const n of split.waiting) expect(done.get(n)!.host, `${n} started on the returning host`).toBe(victim);

      await fx.watch!.stop();
      expect(fx.watch!.doubled(), 'no VM ever ran twice').toEqual([]);
      const counts = await countCopies(fx.v.dir, fx.v.names);
      for (const n of fx.v.names) expect(counts.get(n), `${n} runs exactly once`).toBe(1);
      tl.mark(`copy watch: ${fx.watch!.samples} samples, never twice; each VM runs once`);
      expect(strays, 'lab kill powered off the VM daemon and every VM of the host').toEqual([]);
    } finally {
      tl.print();
    }
  }, 90_000);
});
