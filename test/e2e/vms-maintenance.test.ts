/**
 * Maintenance mode (issue 4 item 8): entering is refused while protected VMs run on the host
 * unless --evacuate; evacuated VMs run again elsewhere, once each; a host in maintenance gets
 * no restarts; a master entering maintenance hands over through an election; exit undoes it.
 */
import { describe, expect, it } from 'vitest';
import { controlRequest } from '@vigil/agent';
import { waitFor, type Lab } from './helpers/lab.js';
import { Timeline, countCopies, hostsOf, powerCut, useVmLab, vmsVia } from './helpers/vms.js';

async function maintenance(lab: Lab, via: string, host: string, enter: boolean, evacuate = false): Promise<{ ok: boolean; msg: string }> {
  try {
    const r = (await controlRequest(lab.paths.socket(via), { cmd: 'maintenance', host, enter, evacuate }, 60_000)) as { message: string };
    return { ok: true, msg: r.message };
  } catch (err) {
    return { ok: false, msg: (err as Error).message };
  }
}

describe('maintenance mode', () => {
  const fx = useVmLab('maint', { hosts: 4, vms: 8 });

  it('refuses without --evacuate, evacuates with it, and places nothing on the host afterwards', async () => {
    const tl = new Timeline('maintenance of a slave');
    try {
      const all = (await vmsVia(fx.v.lab, fx.v.hosts))!.vms;
      const slave = fx.v.hosts.filter((h) => h !== fx.v.master).find((h) => all.some((x) => x.host === h && x.protected))!;
      const onIt = all.filter((x) => x.host === slave && x.protected).map((x) => x.name);
      const via = fx.v.hosts.find((h) => h !== fx.v.master && h !== slave)!;

      const refused = await maintenance(fx.v.lab, via, slave, true);
      tl.mark(`enter ${slave} without --evacuate: ${refused.msg}`);
      expect(refused.ok).toBe(false);
      expect(refused.msg).toMatch(/--evacuate/);

      const done = await maintenance(fx.v.lab, via, slave, true, true);
      tl.mark(`enter ${slave} --evacuate: ${done.msg}`);
      expect(done.ok, done.msg).toBe(true);
      await waitFor(
        `${onIt.join(', ')} running off ${slave}, once each`,
        async () => {
          const now = (await vmsVia(fx.v.lab, fx.v.hosts))?.vms ?? [];
          const moved = onIt.every((n) => now.some((x) => x.name === n && x.state === 'running' && x.host && x.host !== slave));
          const counts = await countCopies(fx.v.dir, onIt);
          return moved && onIt.every((n) => counts.get(n) === 1) ? true : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      tl.mark(`${onIt.length} VMs evacuated from ${slave}`);
      const view = await hostsOf(fx.v.lab, fx.v.master);
      expect((view.hosts.find((h) => h.host === slave) as unknown as { maintenance: boolean }).maintenance).toBe(true);

      // A power cut elsewhere: its VMs go anywhere but the host in maintenance.
      const victim = fx.v.hosts.find((h) => h !== fx.v.master && h !== slave && h !== via)!;
      const lost = (await vmsVia(fx.v.lab, fx.v.hosts))!.vms.filter((x) => x.host === victim && x.protected).map((x) => x.name);
      await powerCut(fx.v.lab, fx.v.dir, victim);
      tl.mark(`power cut of ${victim} (${lost.join(', ')})`);
      await waitFor(
        `${lost.join(', ')} running again, not on ${slave}`,
        async () => {
          const now = (await vmsVia(fx.v.lab, fx.v.hosts.filter((h) => h !== victim)))?.vms ?? [];
          return lost.every((n) => now.some((x) => x.name === n && x.state === 'running' && x.host !== victim)) ? now : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      const after = (await vmsVia(fx.v.lab, fx.v.hosts.filter((h) => h !== victim)))!.vms;
      expect(after.filter((x) => x.host === slave).map((x) => x.name)).toEqual([]);
      expect(fx.watch!.doubled()).toEqual([]);
      await fx.v.lab.start(victim);

      const out = await maintenance(fx.v.lab, via, slave, false);
      tl.mark(`exit ${slave}: ${out.msg}`);
      expect(out.ok).toBe(true);
    } finally {
      tl.print();
    }
  }, 120_000);

  it('a master entering maintenance hands the role over through an election', async () => {
    const tl = new Timeline('maintenance of the master');
    try {
      await fx.v.lab.waitConverged(30_000);
      const master = (await hostsOf(fx.v.lab, fx.v.hosts[0]!)).master!;
      const via = fx.v.hosts.find((h) => h !== master)!;
      const res = await maintenance(fx.v.lab, via, master, true, true);
      tl.mark(`enter ${master} --evacuate: ${res.msg}`);
      expect(res.ok, res.msg).toBe(true);
      const next = await waitFor(
        `a master other than ${master}`,
        async () => {
          const m = await fx.v.lab.waitConverged(5_000);
          return m && m !== master ? m : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      tl.mark(`${next} is master; ${master} is its slave`);
      await waitFor(
        `every VM running once, none on ${master}`,
        async () => {
          const now = (await vmsVia(fx.v.lab, [next]))?.vms ?? [];
          const counts = await countCopies(fx.v.dir, fx.v.names);
          return now.length === fx.v.names.length && now.every((x) => x.state === 'running' && x.host !== master) && fx.v.names.every((n) => counts.get(n) === 1) ? true : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      expect(fx.watch!.doubled()).toEqual([]);
      const out = await maintenance(fx.v.lab, via, master, false);
      expect(out.ok).toBe(true);
    } finally {
      tl.print();
    }
  }, 120_000);
});
