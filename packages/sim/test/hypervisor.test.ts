/**
 * The simulated VM daemon keeps the process driver's lease rules (packages/drivers/src/process/
 * vmd.ts): a VM lease is taken over only as judged, through its holder's host VM lease; and a
 * released record left behind a stray claim is taken over as judged (regression: it was refused
 * for as long as its old holder's host VM lease lived, and the VM never started again).
 */
import { describe, expect, it } from 'vitest';
import { FAST_TIMING } from '@vigil/config';
import { HostClock, Process, ProcessClock, Rng, Scheduler, SimHypervisor, SimStorage, type SimVmConfig } from '@vigil/sim';

const VM = 'ds1:vms/web.json';
const CONFIG: SimVmConfig = { id: VM, name: 'web', memoryMB: 512, cpus: 1, priority: 'medium', powerOnMs: 10, shutdownMs: 10 };

function setup() {
  const sched = new Scheduler();
  const storage = new SimStorage(sched, new Rng(3), { minLatencyMs: 1, maxLatencyMs: 3, slowCallChance: 0 });
  storage.mount('host-1', ['ds1']);
  storage.mount('host-2', ['ds1']);
  const d = storage.datastores.get('ds1')!;
  d.vmConfigs.set(VM, { ...CONFIG });
  const rng = new Rng(5);
  const up: string[] = [];
  const hypervisor = (host: string) =>
    new SimHypervisor({
      host,
      proc: new Process(host, 'vmd', new ProcessClock(new HostClock(0, 0), 0), sched, storage, (_p, err) => {
        throw err;
      }),
      timing: FAST_TIMING,
      capacity: { memoryMB: 4096, cpus: 4 },
      token: () => rng.token(),
      vmUp: (vm) => up.push(`${host}:${vm}`),
      vmDown: () => {},
      post: (fn) => sched.after(0, fn),
      log: () => {},
    });
  const powerOn = (hv: SimHypervisor, takeover: string) => {
    const out: { done: boolean; error?: unknown } = { done: false };
    hv.request(hv.powerOn(VM, 'ds1', takeover), (err) => {
      out.done = true;
      if (err) out.error = err;
    });
    return out;
  };
  return { sched, d, hypervisor, powerOn, up };
}

describe('simulated VM daemon', () => {
  it('refuses a VM lease whose holder renews its host VM lease, and takes over one judged dead', () => {
    const { sched, d, hypervisor, powerOn, up } = setup();
    const h1 = hypervisor('host-1');
    h1.start([]);
    const first = powerOn(h1, '');
    sched.run(500);
    expect(first).toEqual({ done: true });
    const rec = d.lease(`vms/${VM}`).record!;
    const hostLease = d.lease('host-1-vm').record!;
    const h2 = hypervisor('host-2');
    h2.start([]);
    // Judged with the host VM lease as it was: host-1 has renewed it since.
    sched.run(2000);
    const stale = `${rec.host}:${rec.generation}:${rec.token}:${rec.counter}:1/${hostLease.generation}:${hostLease.token}:${hostLease.counter}`;
    const refused = powerOn(h2, stale);
    sched.run(3000);
    expect((refused.error as { code?: string }).code).toBe('ELEASEHELD');
    // host-1 loses power: its host VM lease stops changing; judged as it is now, it is taken over.
    h1.kill();
    const now = d.lease('host-1-vm').record!;
    const judged = `${rec.host}:${rec.generation}:${rec.token}:${rec.counter}:1/${now.generation}:${now.token}:${now.counter}`;
    const taken = powerOn(h2, judged);
    sched.run(4000);
    expect(taken).toEqual({ done: true });
    expect(up).toEqual([`host-1:${VM}`, `host-2:${VM}`]);
  });

  it('takes over a released VM lease left behind a stray claim, while its old holder lives', () => {
    const { sched, d, hypervisor, powerOn } = setup();
    const h1 = hypervisor('host-1');
    h1.start([]);
    powerOn(h1, '');
    sched.run(500);
    // The VM stops (its lease is released), then an acquisition claims the next generation and
    // dies before its lock: a stray claim above a released record.
    const stop = { done: false };
    h1.request(h1.stop(VM, 'hard', 0), () => (stop.done = true));
    sched.run(1000);
    expect(stop.done).toBe(true);
    const lease = d.lease(`vms/${VM}`);
    expect(lease.record!.state).toBe('released');
    lease.claims.add(lease.record!.generation + 1);
    const rec = lease.record!;
    const h2 = hypervisor('host-2');
    h2.start([]);
    // A plain acquisition is refused (an acquisition is in progress, as far as anyone can tell)...
    const plain = powerOn(h2, '');
    sched.run(1500);
    expect((plain.error as { code?: string }).code).toBe('ELEASEHELD');
    // ...and the takeover of the state judged dead goes through, although host-1's VM daemon
    // still renews its host VM lease (the master sends '/-': the record is no longer held).
    const judged = `${rec.host}:${rec.generation}:${rec.token}:${rec.counter}:${rec.generation + 1}/-`;
    const taken = powerOn(h2, judged);
    sched.run(2500);
    expect(taken).toEqual({ done: true });
  });
});
