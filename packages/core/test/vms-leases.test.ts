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
