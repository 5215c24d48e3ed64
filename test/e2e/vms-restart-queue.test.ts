/**
 * The restart queue lives on shared storage (SPEC §3.5; issue 4 item 5): a VM whose restart
 * fails is retried on the schedule, its attempt count is written to `restartqueue` on its
 * datastore by the master, and a new master continues the count instead of starting over.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { waitFor, type Lab } from './helpers/lab.js';
import { Timeline, powerCut, startVmLab, teardownVmLab, vmsVia, type VmLab } from './helpers/vms.js';

describe('restart queue on shared storage', () => {
  let v: VmLab;
  let lab: Lab | undefined;
  let dir: string | undefined;

  beforeAll(async () => {
    v = await startVmLab('queue', { hosts: 4, vms: 4 }, (l, d) => {
      lab = l;
      dir = d;
    });
  }, 120_000);

  afterAll(async () => {
    await teardownVmLab(lab, dir);
  }, 60_000);

  it('records failed restart attempts on the datastore, and a new master continues them', async () => {
    const tl = new Timeline('restart queue');
    try {
      const all = (await vmsVia(v.lab, v.hosts))!.vms;
      // A VM on a slave whose config now names a command that does not exist: every restart fails.
      const target = all.find((x) => x.host && x.host !== v.master && x.protected)!;
      const [ds, rel] = [target.id.slice(0, target.id.indexOf(':')), target.id.slice(target.id.indexOf(':') + 1)];
      const cfgFile = join(v.dir, 'datastores', ds, rel);
      const cfg = JSON.parse(await readFile(cfgFile, 'utf8')) as Record<string, unknown>;
      await writeFile(cfgFile, JSON.stringify({ ...cfg, command: '/nonexistent/vigil-test-command', args: [] }));
      await powerCut(v.lab, v.dir, target.host!);
      tl.mark(`${target.name} now names a missing command; power cut of ${target.host}`);
      const alive = v.hosts.filter((h) => h !== target.host);

      const queueFile = join(v.dir, 'datastores', ds, '.vigil-ha', 'lab', 'restartqueue');
      const line = await waitFor(
        `${queueFile} to record a failed attempt of ${target.id}`,
        async () => {
          const text = await readFile(queueFile, 'utf8').catch(() => '');
          return text.split('\n').find((l) => l.startsWith(`${target.id} `) && Number(l.split(' ')[1]) >= 1);
        },
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      tl.mark(`restartqueue: ${line}`);
      const before = Number(line.split(' ')[1]);

      // The master dies: the new one must continue the count, not start over at 0.
      await powerCut(v.lab, v.dir, v.master);
      tl.mark(`power cut of the master ${v.master}`);
      const rest = alive.filter((h) => h !== v.master);
      const row = await waitFor(
        `a new master that knows ${target.name} has had attempts`,
        async () => {
          const r = await vmsVia(v.lab, rest);
          const vm = r?.vms.find((x) => x.id === target.id);
          return r && r.master !== v.master && vm && vm.attempts >= before ? { master: r.master, vm } : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 200 },
      );
      tl.mark(`${row.master} shows ${target.name}: attempts ${row.vm.attempts}, state ${row.vm.state}`);
      expect(row.vm.attempts).toBeGreaterThanOrEqual(before);
      // It cannot run anywhere: its command is missing.
      expect(row.vm.state).not.toBe('running');
    } finally {
      tl.print();
    }
  }, 120_000);
});
