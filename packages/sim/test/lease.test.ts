/**
 * The simulated storage keeps LeaseFile's semantics (packages/datastore/src/lease.ts): O_EXCL
 * claims decide races, a renewal sees a later claim or a lost lock, a release frees the lease,
 * and hung, lost or replaced paths behave as the real ones do.
 */
import { describe, expect, it } from 'vitest';
import { FAST_TIMING } from '@vigil/config';
import { HostClock, LeaseError, Process, ProcessClock, Rng, Scheduler, SimLeaseFile, SimStorage, attempt, type Proc } from '@vigil/sim';

function setup(hosts = ['host-1', 'host-2', 'host-3']) {
  const sched = new Scheduler();
  const storage = new SimStorage(sched, new Rng(7), { minLatencyMs: 1, maxLatencyMs: 5, slowCallChance: 0 });
  for (const h of hosts) storage.mount(h, ['ds1']);
  const rng = new Rng(9);
  const proc = (host: string) => new Process(host, 'agent', new ProcessClock(new HostClock(0, 0), 0), sched, storage, (_p, err) => {
    throw err;
  });
  const lease = (host: string, name = 'protectedlist') => new SimLeaseFile({ ds: 'ds1', name, host, timeoutMs: FAST_TIMING.storageCallTimeoutMs, token: () => rng.token() });
  const run = <T>(p: Process, gen: Proc<T>): { done: boolean; value?: T; error?: unknown } => {
    const out: { done: boolean; value?: T; error?: unknown } = { done: false };
    p.spawn(gen, (err, v) => {
      out.done = true;
      if (err) out.error = err;
      else out.value = v;
    });
    return out;
  };
  return { sched, storage, proc, lease, run };
}

describe('simulated leases (LeaseFile semantics)', () => {
  it('acquires a free lease, refuses a held one, and frees it on release', () => {
    const { sched, proc, lease, run } = setup();
    const a = lease('host-1');
    const r1 = run(proc('host-1'), a.acquire());
    sched.run(1000);
    expect(r1.value).toMatchObject({ generation: 1, counter: 0 });
    const r2 = run(proc('host-2'), lease('host-2').acquire());
    sched.run(2000);
    expect((r2.error as LeaseError).code).toBe('ELOCKED');
    run(proc('host-1'), a.release());
    sched.run(3000);
    const r3 = run(proc('host-2'), lease('host-2').acquire());
    sched.run(4000);
    expect(r3.value).toMatchObject({ generation: 2 });
  });

  it('lets exactly one of many contenders take over the same judged state', () => {
    const { sched, proc, lease, run, storage } = setup(['host-1', 'host-2', 'host-3', 'host-4', 'host-5']);
    run(proc('host-1'), lease('host-1').acquire());
    sched.run(1000);
    const judged = { ...storage.datastores.get('ds1')!.lease('protectedlist').record!, maxClaim: 1 };
    const tries = ['host-2', 'host-3', 'host-4', 'host-5'].map((h) => run(proc(h), lease(h).acquire(judged)));
    sched.run(2000);
    expect(tries.filter((t) => t.value).length).toBe(1);
    expect(tries.filter((t) => t.error).every((t) => ['ELOCKED', 'ECHANGED'].includes((t.error as LeaseError).code))).toBe(true);
  });

  it("makes the old holder's renewal fail with ELOST once a takeover claimed the next generation", () => {
    const { sched, proc, lease, run, storage } = setup();
    const old = lease('host-1');
    const p1 = proc('host-1');
    run(p1, old.acquire());
    sched.run(1000);
    const judged = { ...storage.datastores.get('ds1')!.lease('protectedlist').record!, maxClaim: 1 };
    run(proc('host-2'), lease('host-2').acquire(judged));
    sched.run(2000);
    const renewal = run(p1, old.renew());
    sched.run(3000);
    expect((renewal.error as LeaseError).code).toBe('ELOST');
    expect(old.held).toBeNull();
  });

  it('refuses a takeover of a state that changed since it was judged (a renewal happened)', () => {
    const { sched, proc, lease, run, storage } = setup();
    const old = lease('host-1');
    const p1 = proc('host-1');
    run(p1, old.acquire());
    sched.run(1000);
    const judged = { ...storage.datastores.get('ds1')!.lease('protectedlist').record!, maxClaim: 1 };
    run(p1, old.renew());
    sched.run(2000);
    const t = run(proc('host-2'), lease('host-2').acquire(judged));
    sched.run(3000);
    expect((t.error as LeaseError).code).toBe('ECHANGED');
  });

  it('times out on a hung path, and the hung call lands when the path comes back', () => {
    const { sched, proc, lease, run, storage } = setup();
    storage.setAccess('host-1', 'ds1', 'hung');
    const p1 = proc('host-1');
    const r = run(p1, lease('host-1').acquire());
    sched.run(FAST_TIMING.storageCallTimeoutMs + 10);
    expect((r.error as { code?: string }).code).toBe('ETIMEDOUT');
    expect(p1.hanging.get('ds1')).toBe(1);
    storage.setAccess('host-1', 'ds1', 'ok');
    sched.run(sched.now + 100);
    expect(p1.hanging.get('ds1')).toBeUndefined();
  });

  it('fails at once on a lost path (EIO), and finds nothing on what is mounted in its place', () => {
    const { sched, proc, lease, run, storage } = setup();
    run(proc('host-1'), lease('host-1').acquire());
    sched.run(1000);
    storage.setAccess('host-2', 'ds1', 'lost');
    const lost = run(proc('host-2'), lease('host-2').read());
    storage.setAccess('host-3', 'ds1', 'replaced');
    const empty = run(proc('host-3'), lease('host-3').read());
    const write = run(proc('host-3'), attempt(lease('host-3', 'other').acquire()));
    sched.run(2000);
    expect((lost.error as { code?: string }).code).toBe('EIO');
    expect(empty.value).toEqual({ record: null, lockExists: false, maxClaim: 0 });
    expect(write.value).toMatchObject({ ok: false });
  });
});
