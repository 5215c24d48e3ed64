/**
 * An intentional stop (SPEC §3.5, §5.4; issue 4): `vm stop` (sent to a slave, forwarded to the
 * master) powers the VM off and unprotects it. It then stays off through a power cut of the host
 * it ran on and a power cut of the master (a new master reads the protectedlist from disk):
 * zero copies all along, and `vms` shows it unprotected. `vm start` brings it back, protected.
 */
import { describe, expect, it } from 'vitest';
import { waitFor } from './helpers/lab.js';
import {
  CopyWatch,
  Timeline,
  byName,
  countCopies,
  holdFor,
  logEvents,
  logOffsets,
  powerCut,
  useVmLab,
  vmOp,
  vmOpLater,
  vmsVia,
  waitRunningElsewhere,
  type VmRow,
} from './helpers/vms.js';

describe('vm stop: a stopped VM stays stopped through failures and master changes', () => {
  const fx = useVmLab('stop', { hosts: 4, vms: 8 }, { watch: false });

  it('stop, power cut of its host, power cut of the master: zero copies, unprotected; vm start brings it back', async () => {
    const tl = new Timeline('vm stop through failures');
    const down: string[] = [];
    const alive = () => fx.v.hosts.filter((h) => !down.includes(h));
    try {
      const view = (await vmsVia(fx.v.lab, [fx.v.master]))!;
      // A slave running at least two VMs: one is stopped, the other must be restarted after the cut.
      const x = fx.v.hosts.find((h) => h !== fx.v.master && view.vms.filter((r) => r.host === h).length >= 2)!;
      expect(x, 'a slave with two VMs').toBeDefined();
      const target = view.vms.find((r) => r.host === x)!;
      const name = target.name;
      const via = fx.v.hosts.find((h) => h !== fx.v.master && h !== x)!;

      const t0 = tl.mark(`vm stop ${name} (on ${x}) through ${via}`);
      // The answer is awaited at the end: the VM's state is what this test is about.
      void t0;
      const answer = vmOpLater(fx.v.lab, via, 'stop', name, 15_000);
      const isOff = async () => {
        const r = byName((await vmsVia(fx.v.lab, [fx.v.master]))?.vms ?? []).get(name);
        const n = (await countCopies(fx.v.dir, [name])).get(name);
        return r && !r.protected && r.power === 'off' && r.state === 'stopped' && n === 0 ? r : undefined;
      };
      let offInTime = true;
      let stopped: VmRow;
      try {
        stopped = await waitFor(`${name} off and unprotected`, isOff, { timeoutMs: 5000 });
      } catch (err) {
        // Not off in time: record it, and stop it again (now unprotected) to test the rest.
        offInTime = false;
        tl.mark(`!! ${name} not off 5 s after vm stop: ${(err as Error).message.split('\n')[0]}`);
        const again = await vmOpLater(fx.v.lab, via, 'stop', name, 15_000);
        tl.mark(`vm stop ${name} again: ${again.ok ? 'ok' : 'ERROR'} after ${again.after} ms: ${again.msg}`);
        stopped = await waitFor(`${name} off and unprotected`, isOff, { timeoutMs: 10_000 });
      }
      tl.mark(`${name}: power ${stopped.power}, protected ${stopped.protected}, state ${stopped.state}, 0 processes`);
      fx.watch = new CopyWatch(fx.v.dir).start();

      const stillStopped = async (m: string): Promise<string | null> => {
        const r = byName((await vmsVia(fx.v.lab, [m]))?.vms ?? []).get(name);
        const n = (await countCopies(fx.v.dir, [name])).get(name);
        if (n !== 0) return `${name} has ${n} processes`;
        if (!r) return `${m} does not list ${name}`;
        if (r.protected || r.power !== 'off' || r.state !== 'stopped') return `${name} is protected=${r.protected} power=${r.power} state=${r.state}`;
        return null;
      };

      // Power cut of the host it ran on: its other VMs come back, the stopped one does not.
      const lostX = view.vms.filter((r) => r.host === x && r.name !== name).map((r) => r.name);
      const offsets = logOffsets(fx.v.lab, fx.v.hosts);
      const t1 = tl.mark(`power cut of ${x} (its other VMs: ${lostX.join(', ')})`);
      const strays = await powerCut(fx.v.lab, fx.v.dir, x);
      down.push(x);
      await waitRunningElsewhere(fx.v, alive, lostX, down, t1, tl);
      expect(await stillStopped(fx.v.master)).toBeNull();
      tl.mark(`${name} still stopped and unprotected after ${x}'s VMs came back`);

      // Power cut of the master: a new master reads the protectedlists from disk.
      const before = (await vmsVia(fx.v.lab, [fx.v.master]))!;
      const lostM = before.vms.filter((r: VmRow) => r.host === fx.v.master).map((r) => r.name);
      const t2 = tl.mark(`power cut of master ${fx.v.master} (its VMs: ${lostM.join(', ')})`);
      strays.push(...(await powerCut(fx.v.lab, fx.v.dir, fx.v.master)));
      down.push(fx.v.master);
      const m = await waitFor('a new master', () => fx.v.lab.waitConverged(1000, alive()), { timeoutMs: 30_000 });
      tl.mark(`${m} is the new master`);
      await waitRunningElsewhere(fx.v, alive, lostM, down, t2, tl);
      const polls = await holdFor(`${name} stays stopped under the new master`, 2000, () => stillStopped(m));
      tl.mark(`${name} still stopped and unprotected under ${m} (held 2 s, ${polls} polls)`);
      for (const h of alive()) {
        const tried = [...logEvents(fx.v.lab, h, 'vm.restarting', offsets[h]), ...logEvents(fx.v.lab, h, 'vm.powered-on', offsets[h])].filter((l) => String(l.vm).endsWith(`/${name}.json`));
        expect(tried.map((l) => l.message), `${h} never tried to start ${name}`).toEqual([]);
      }
      await fx.watch.stop();
      expect(fx.watch.maxCopies(name), `${name} never ran while stopped`).toBe(0);
      expect(fx.watch.doubled(), 'no VM ever ran twice').toEqual([]);

      // vm start brings it back, protected.
      const t3 = tl.mark(`vm start ${name} through ${m}`);
      const msg2 = await vmOp(fx.v.lab, m, 'start', name);
      tl.mark(`answer after ${Date.now() - t3} ms: ${msg2}`);
      const back = await waitFor(
        `${name} running and protected`,
        async () => {
          const r = byName((await vmsVia(fx.v.lab, [m]))?.vms ?? []).get(name);
          const n = (await countCopies(fx.v.dir, [name])).get(name);
          return r && r.protected && r.state === 'running' && r.host && !down.includes(r.host) && n === 1 ? r : undefined;
        },
        { timeoutMs: 15_000 },
      );
      tl.mark(`${name} running on ${back.host}, protected`);
      const counts = await countCopies(fx.v.dir, fx.v.names);
      for (const n of fx.v.names) expect(counts.get(n), `${n} runs exactly once`).toBe(1);
      tl.mark(`all ${fx.v.names.length} VMs run exactly once`);
      expect(strays, 'lab kill powered off the VM daemon and every VM of the host').toEqual([]);
      const a = await answer;
      tl.mark(`the first vm stop answered after ${a.after} ms: ${a.ok ? 'ok' : 'ERROR'}: ${a.msg}`);
      expect(offInTime, `vm stop powered ${name} off within 5 s`).toBe(true);
      expect(a, 'vm stop answers with success').toMatchObject({ ok: true });
    } finally {
      tl.print();
    }
  }, 90_000);
});
