/**
 * The restart queue lives on shared storage (SPEC §3.5; issue 4 item 5): a VM whose restart
 * fails is retried on the schedule, its attempt count is written to `restartqueue` on its
 * datastore by the master, and a new master continues the count instead of starting over.
 */
import { describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { waitFor } from './helpers/lab.js';
import { Timeline, powerCut, useVmLab, vmsVia } from './helpers/vms.js';

describe('restart queue on shared storage', () => {
  const fx = useVmLab('queue', { hosts: 4, vms: 4 }, { watch: false });

  it('records failed restart attempts on the datastore, and a new master continues them', async () => {
    const tl = new Timeline('restart queue');
    try {
      const all = (await vmsVia(fx.v.lab, fx.v.hosts))!.vms;
      // A VM on a slave whose config now names a command that does not exist: every restart fails.
      const target = all.find((x) => x.host && x.host !== fx.v.master && x.protected)!;
      const [ds, rel] = [target.id.slice(0, target.id.indexOf(':')), target.id.slice(target.id.indexOf(':') + 1)];
      const cfgFile = join(fx.v.dir, 'datastores', ds, rel);
      const cfg = JSON.parse(await readFile(cfgFile, 'utf8')) as Record<string, unknown>;
      await writeFile(cfgFile, JSON.stringify({ ...cfg, command: '/nonexistent/vigil-test-command', args: [] }));
      await powerCut(fx.v.lab, fx.v.dir, target.host!);
      tl.mark(`${target.name} now names a missing command; power cut of ${target.host}`);
      const alive = fx.v.hosts.filter((h) => h !== target.host);

      const queueFile = join(fx.v.dir, 'datastores', ds, '.vigil-ha', 'lab', 'restartqueue');
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
      await powerCut(fx.v.lab, fx.v.dir, fx.v.master);
      tl.mark(`power cut of the master ${fx.v.master}`);
      const rest = alive.filter((h) => h !== fx.v.master);
      const row = await waitFor(
        `a new master that knows ${target.name} has had attempts`,
        async () => {
          const r = await vmsVia(fx.v.lab, rest);
          const vm = r?.vms.find((x) => x.id === target.id);
          return r && r.master !== fx.v.master && vm && vm.attempts >= before ? { master: r.master, vm } : undefined;
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
