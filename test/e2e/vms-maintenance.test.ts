/**
 * Maintenance mode (issue 4 item 8): entering is refused while protected VMs run on the host
 * unless --evacuate; evacuated VMs run again elsewhere, once each; a host in maintenance gets
 * no restarts; a master entering maintenance hands over through an election; exit undoes it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '@vigil/agent';
import { waitFor, type Lab } from './helpers/lab.js';
import { CopyWatch, Timeline, countCopies, hostsOf, powerCut, startVmLab, teardownVmLab, vmsVia, type VmLab } from './helpers/vms.js';

async function maintenance(lab: Lab, via: string, host: string, enter: boolean, evacuate = false): Promise<{ ok: boolean; msg: string }> {
  try {
    const r = (await controlRequest(lab.paths.socket(via), { cmd: 'maintenance', host, enter, evacuate }, 60_000)) as { message: string };
    return { ok: true, msg: r.message };
  } catch (err) {
    return { ok: false, msg: (err as Error).message };
  }
}

describe('maintenance mode', () => {
  let v: VmLab;
  let lab: Lab | undefined;
  let dir: string | undefined;
  let watch: CopyWatch | undefined;

  beforeAll(async () => {
    const tl = new Timeline('setup');
    try {
      v = await startVmLab('maint', { hosts: 4, vms: 8, timeline: tl }, (l, d) => {
        lab = l;
        dir = d;
      });
      watch = new CopyWatch(v.dir).start();
    } finally {
      tl.print();
    }
  }, 120_000);

  afterAll(async () => {
    await watch?.stop();
    await teardownVmLab(lab, dir);
  }, 60_000);

  it('refuses without --evacuate, evacuates with it, and places nothing on the host afterwards', async () => {
    const tl = new Timeline('maintenance of a slave');
    try {
      const all = (await vmsVia(v.lab, v.hosts))!.vms;
      const slave = v.hosts.filter((h) => h !== v.master).find((h) => all.some((x) => x.host === h && x.protected))!;
      const onIt = all.filter((x) => x.host === slave && x.protected).map((x) => x.name);
      const via = v.hosts.find((h) => h !== v.master && h !== slave)!;

      const refused = await maintenance(v.lab, via, slave, true);
      tl.mark(`enter ${slave} without --evacuate: ${refused.msg}`);
      expect(refused.ok).toBe(false);
      expect(refused.msg).toMatch(/--evacuate/);

      const done = await maintenance(v.lab, via, slave, true, true);
      tl.mark(`enter ${slave} --evacuate: ${done.msg}`);
      expect(done.ok, done.msg).toBe(true);
      await waitFor(
        `${onIt.join(', ')} running off ${slave}, once each`,
        async () => {
          const now = (await vmsVia(v.lab, v.hosts))?.vms ?? [];
          const moved = onIt.every((n) => now.some((x) => x.name === n && x.state === 'running' && x.host && x.host !== slave));
          const counts = await countCopies(v.dir, onIt);
          return moved && onIt.every((n) => counts.get(n) === 1) ? true : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      tl.mark(`${onIt.length} VMs evacuated from ${slave}`);
      const view = await hostsOf(v.lab, v.master);
      expect((view.hosts.find((h) => h.host === slave) as unknown as { maintenance: boolean }).maintenance).toBe(true);

      // A power cut elsewhere: its VMs go anywhere but the host in maintenance.
      const victim = v.hosts.find((h) => h !== v.master && h !== slave && h !== via)!;
      const lost = (await vmsVia(v.lab, v.hosts))!.vms.filter((x) => x.host === victim && x.protected).map((x) => x.name);
      await powerCut(v.lab, v.dir, victim);
      tl.mark(`power cut of ${victim} (${lost.join(', ')})`);
      await waitFor(
        `${lost.join(', ')} running again, not on ${slave}`,
        async () => {
          const now = (await vmsVia(v.lab, v.hosts.filter((h) => h !== victim)))?.vms ?? [];
          return lost.every((n) => now.some((x) => x.name === n && x.state === 'running' && x.host !== victim)) ? now : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      const after = (await vmsVia(v.lab, v.hosts.filter((h) => h !== victim)))!.vms;
      expect(after.filter((x) => x.host === slave).map((x) => x.name)).toEqual([]);
      expect(watch!.doubled()).toEqual([]);
      await v.lab.start(victim);

      const out = await maintenance(v.lab, via, slave, false);
      tl.mark(`exit ${slave}: ${out.msg}`);
      expect(out.ok).toBe(true);
    } finally {
      tl.print();
    }
  }, 120_000);

  it('a master entering maintenance hands the role over through an election', async () => {
    const tl = new Timeline('maintenance of the master');
    try {
      await v.lab.waitConverged(30_000);
      const master = (await hostsOf(v.lab, v.hosts[0]!)).master!;
      const via = v.hosts.find((h) => h !== master)!;
      const res = await maintenance(v.lab, via, master, true, true);
      tl.mark(`enter ${master} --evacuate: ${res.msg}`);
      expect(res.ok, res.msg).toBe(true);
      const next = await waitFor(
        `a master other than ${master}`,
        async () => {
          const m = await v.lab.waitConverged(5_000);
          return m && m !== master ? m : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      tl.mark(`${next} is master; ${master} is its slave`);
      await waitFor(
        `every VM running once, none on ${master}`,
        async () => {
          const now = (await vmsVia(v.lab, [next]))?.vms ?? [];
          const counts = await countCopies(v.dir, v.names);
          return now.length === v.names.length && now.every((x) => x.state === 'running' && x.host !== master) && v.names.every((n) => counts.get(n) === 1) ? true : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      expect(watch!.doubled()).toEqual([]);
      const out = await maintenance(v.lab, via, master, false);
      expect(out.ok).toBe(true);
    } finally {
      tl.print();
    }
  }, 120_000);
});
