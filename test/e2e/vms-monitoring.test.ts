/**
 * VM monitoring with real agents and VM processes (SPEC §3.5; issue 4): a protected VM whose
 * process is killed (not stopped through Vigil) is restarted, on the same host first; after
 * 3 resets within the monitoring window the next kill makes the master give up: `vms` reports it
 * `failed`, and it is not restarted. Shown for a VM on a slave (the slave reports the stop to
 * the master) and for a VM on the master's own host. `vm start` clears the failure.
 */
import { describe, expect, it } from 'vitest';
import { waitFor } from './helpers/lab.js';
import {
  Timeline,
  byName,
  countCopies,
  holdFor,
  logEvents,
  logOffsets,
  useVmLab,
  vmOpLater,
  vmPid,
  vmProcesses,
  vmsVia,
  type VmRow,
} from './helpers/vms.js';

const MAX_RESETS = 3;

describe('VM monitoring: a killed VM is restarted, until the reset limit', () => {
  const fx = useVmLab('monitoring', { hosts: 3, vms: 6 });

  async function row(name: string): Promise<VmRow | undefined> {
    const view = await vmsVia(fx.v.lab, [fx.v.master]);
    return view ? byName(view.vms).get(name) : undefined;
  }

  /** Kill `name`'s process MAX_RESETS times (each time it comes back on its host), then once more. */
  async function crashLoop(name: string, tl: Timeline): Promise<void> {
    const start = (await row(name))!;
    const host = start.host!;
    const offsets = logOffsets(fx.v.lab, fx.v.hosts);
    for (let i = 1; i <= MAX_RESETS; i++) {
      const pid = await vmPid(fx.v.dir, name);
      const t0 = tl.mark(`kill ${i}: SIGKILL ${name}'s process ${pid} on ${host}`);
      process.kill(pid, 'SIGKILL');
      const back = await waitFor(
        `${name} restarted after kill ${i}`,
        async () => {
          const r = await row(name);
          const p = (await vmProcesses(fx.v.dir)).get(name) ?? [];
          return r?.state === 'running' && p.length === 1 && p[0] !== pid && r.restarts >= start.restarts + i ? { r, pid: p[0]! } : undefined;
        },
        { timeoutMs: 15_000, intervalMs: 50 },
      );
      tl.mark(`${name} running again on ${back.r.host} as pid ${back.pid} (${Date.now() - t0} ms; restarts=${back.r.restarts})`);
      expect(back.r.host, 'restarted on the same host first').toBe(host);
      expect(back.r.protected).toBe(true);
    }
    const pid = await vmPid(fx.v.dir, name);
    tl.mark(`kill ${MAX_RESETS + 1}: SIGKILL ${name}'s process ${pid}`);
    process.kill(pid, 'SIGKILL');
    const failed = await waitFor(`${name} reported failed`, async () => ((await row(name))?.state === 'failed' ? (await row(name))! : undefined), {
      timeoutMs: 15_000,
      intervalMs: 50,
    });
    tl.mark(`${name} reported failed: ${failed.detail}`);
    const polls = await holdFor(`${name} is not restarted once failed`, 3000, async () => {
      const r = await row(name);
      const n = (await vmProcesses(fx.v.dir)).get(name)?.length ?? 0;
      if (n !== 0) return `${n} copies of ${name} run`;
      if (r?.state !== 'failed') return `${name} is ${r?.state}`;
      return null;
    });
    tl.mark(`held 3 s (${polls} polls): ${name} stays failed, no process`);
    const m = fx.v.master;
    const restarts = logEvents(fx.v.lab, m, 'vm.restarting', offsets[m]).filter((l) => String(l.vm).endsWith(`/${name}.json`));
    expect(restarts.length, `${MAX_RESETS} restarts in ${m}'s log`).toBe(MAX_RESETS);
    const gaveUp = logEvents(fx.v.lab, m, 'vm.failed', offsets[m]).filter((l) => String(l.vm).endsWith(`/${name}.json`));
    expect(gaveUp.length, `a vm.failed line in ${m}'s log`).toBe(1);
  }

  it('a VM on a slave: restarted on the same host 3 times, then failed', async () => {
    const tl = new Timeline('monitoring on a slave');
    try {
      const view = (await vmsVia(fx.v.lab, [fx.v.master]))!;
      const vm = view.vms.find((r) => r.host !== fx.v.master)!;
      await crashLoop(vm.name, tl);
    } finally {
      tl.print();
    }
  }, 90_000);

  it("a VM on the master's host: restarted on the same host 3 times, then failed; vm start clears it", async () => {
    const tl = new Timeline('monitoring on the master host');
    try {
      const view = (await vmsVia(fx.v.lab, [fx.v.master]))!;
      const vm = view.vms.find((r) => r.host === fx.v.master)!;
      expect(vm, 'a VM on the master host').toBeDefined();
      await crashLoop(vm.name, tl);

      // `vm start` clears the failure. Its answer is awaited at the end, so that the VM's state is
      // checked first even if the answer is slow or lost.
      const sent = tl.mark(`vm start ${vm.name}`);
      void sent;
      const answer = vmOpLater(fx.v.lab, fx.v.master, 'start', vm.name, 15_000);
      await waitFor(`${vm.name} running again after vm start`, async () => ((await row(vm.name))?.state === 'running' && (await countCopies(fx.v.dir, [vm.name])).get(vm.name) === 1 ? true : undefined), {
        timeoutMs: 15_000,
      });
      tl.mark(`${vm.name} running again, protected`);

      await fx.watch!.stop();
      expect(fx.watch!.doubled(), 'no VM ever ran twice').toEqual([]);
      const final = byName((await vmsVia(fx.v.lab, [fx.v.master]))!.vms);
      const counts = await countCopies(fx.v.dir, fx.v.names);
      for (const n of fx.v.names) {
        const want = final.get(n)?.state === 'failed' ? 0 : 1;
        expect(counts.get(n), `${n}: ${want} copies (${final.get(n)?.state})`).toBe(want);
      }
      tl.mark(`copy watch: ${fx.watch!.samples} samples, never twice; final counts: ${[...counts].map(([n, c]) => `${n}=${c}`).join(' ')}`);
      const a = await answer;
      tl.mark(`vm start ${vm.name} answered after ${a.after} ms: ${a.ok ? 'ok' : 'ERROR'}: ${a.msg}`);
      expect(a, `vm start of the failed (still protected) ${vm.name} answers with success`).toMatchObject({ ok: true });
    } finally {
      tl.print();
    }
  }, 90_000);
});
