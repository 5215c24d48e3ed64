import { describe, expect, it } from 'vitest';
import { VmManager, type LeaseRecordView } from '@vigil/core';
import { FAST_TIMING } from '@vigil/config';

const rec = (host: string, counter: number, generation = 1): LeaseRecordView => ({ host, generation, counter, token: 'abcdef0123', state: 'held' });

describe('VmManager.hostLeases (what the VM leases of a silent host say about it)', () => {
  const vm = 'ds1:vms/vm-1.json';
  const mk = () => {
    const m = new VmManager({ self: 'host-1', timing: FAST_TIMING, maxConcurrentPerHost: 32, maxAttempts: 5 });
    m.setHostVms('host-2', [vm]);
    return m;
  };

  it('a holder that keeps renewing is alive; one that stopped is not, after the lease timeout', () => {
    const m = mk();
    let t = 0;
    for (let c = 1; c <= 5; c++, t += 250) m.leaseSample(vm, rec('host-2', c), true, 1, t);
    expect(m.hostLeases('host-2', t).alive).toBe(true);
    for (; t < 250 * 5 + FAST_TIMING.leaseTimeoutMs + 250; t += 250) m.leaseSample(vm, rec('host-2', 5), true, 1, t);
    expect(m.hostLeases('host-2', t)).toEqual({ alive: false, unjudged: false });
  });

  it('a takeover claim by another host (claim counter bumped, record still naming the old holder) is no sign of life of the old holder', () => {
    const m = mk();
    let t = 0;
    m.leaseSample(vm, rec('host-2', 5), true, 1, t);
    m.leaseSample(vm, rec('host-2', 6), true, 1, (t += 250));
    for (t += 250; t < 500 + FAST_TIMING.leaseTimeoutMs + 250; t += 250) m.leaseSample(vm, rec('host-2', 6), true, 1, t);
    expect(m.hostLeases('host-2', t).alive).toBe(false);
    // host-3 claims generation 2: the lease shows activity, but host-2 did not renew it.
    m.leaseSample(vm, rec('host-2', 6), true, 2, (t += 250));
    expect(m.leaseState(vm, t)).toBe('alive');
    expect(m.hostLeases('host-2', t).alive).toBe(false);
    // host-3 writes its record: the lease is host-3's, still nothing about host-2.
    m.leaseSample(vm, rec('host-3', 1, 2), true, 2, (t += 250));
    expect(m.hostLeases('host-2', t).alive).toBe(false);
  });
});

describe('VM leases held under a host VM lease (sanlock style)', () => {
  const vm = 'ds1:vms/vm-1.json';
  const vrec = (host: string, hostLease: number): LeaseRecordView => ({ ...rec(host, 0), hostLease });
  const hrec = (host: string, counter: number, generation = 3): LeaseRecordView => ({ host, generation, counter, token: '00aa11bb22cc', state: 'held' });
  const L = FAST_TIMING.leaseTimeoutMs;

  it('a VM lease never renewed itself lives while its holder renews the host VM lease with its generation', () => {
    const m = new VmManager({ self: 'host-1', timing: FAST_TIMING, maxConcurrentPerHost: 32, maxAttempts: 5 });
    let t = 0;
    for (let c = 1; t <= 4 * L; c++, t += 100) {
      m.hostVmLeaseSample('host-2', 'ds1', hrec('host-2', c), t);
      m.leaseSample(vm, vrec('host-2', 3), true, 1, t);
    }
    expect(m.leaseState(vm, t)).toBe('alive');
  });

  it('a host VM lease seen unchanged for the lease timeout kills the VM leases under its generation at once, even ones first read now', () => {
    const m = new VmManager({ self: 'host-1', timing: FAST_TIMING, maxConcurrentPerHost: 32, maxAttempts: 5 });
    // Watched as a slave watches its master: renewed, then silent.
    let t = 0;
    for (let c = 1; c <= 5; c++, t += 100) m.hostVmLeaseSample('host-2', 'ds1', hrec('host-2', c), t);
    const silentFrom = t;
    for (; t < silentFrom + L; t += 100) m.hostVmLeaseSample('host-2', 'ds1', hrec('host-2', 5), t);
    m.hostVmLeaseSample('host-2', 'ds1', hrec('host-2', 5), t);
    // The VM lease is read for the first time only now.
    m.leaseSample(vm, vrec('host-2', 3), true, 1, t);
    expect(m.leaseState(vm, t)).toBe('dead');
    // A VM lease under another generation of host-2's host lease is judged by itself (not yet).
    const other = 'ds1:vms/vm-2.json';
    m.leaseSample(other, vrec('host-2', 2), true, 1, t);
    expect(m.leaseState(other, t)).toBe('unknown');
  });

  it('reads that stop (failed, hung, not made) never turn a lease dead: only reads that still see it unchanged do', () => {
    const m = new VmManager({ self: 'host-1', timing: FAST_TIMING, maxConcurrentPerHost: 32, maxAttempts: 5 });
    m.hostVmLeaseSample('host-2', 'ds1', hrec('host-2', 1), 0);
    m.hostVmLeaseSample('host-2', 'ds1', hrec('host-2', 2), 100);
    m.leaseSample(vm, vrec('host-2', 3), true, 1, 100);
    // No read for ten lease timeouts: nothing was seen, nothing is concluded.
    expect(m.leaseState(vm, 100 + 10 * L)).not.toBe('dead');
    // One read that still returns the same record settles it.
    m.hostVmLeaseSample('host-2', 'ds1', hrec('host-2', 2), 100 + 10 * L);
    expect(m.leaseState(vm, 100 + 10 * L)).toBe('dead');
  });
});
