import { describe, expect, it } from 'vitest';
import { Ownership, StorageView, type CoreAction, type LeaseRecordView } from '@vigil/core';

const rec = (host: string, counter: number, state: 'held' | 'released' = 'held', generation = 1): LeaseRecordView => ({ host, generation, counter, token: 'abcdef0123', state });
const acquires = (out: CoreAction[]) => out.filter((a) => a.type === 'acquireProtectedlist');

describe('Ownership (master side of protectedlist locking)', () => {
  it('takes free datastores on becoming master, waits on live holders, takes over dead ones only after the lease timeout', () => {
    const o = new Ownership({ self: 'host-2', leaseTimeoutMs: 1500, retryMs: 500 });
    o.setAccessible(['ds1', 'ds2']);
    o.step({ type: 'protectedlistSample', now: 0, datastore: 'ds1', record: null, lockExists: false, maxClaim: 0 });
    o.step({ type: 'protectedlistSample', now: 0, datastore: 'ds2', record: rec('host-9', 1), lockExists: true, maxClaim: 1 });
    const out = o.setWanted(true, 0, 'became master');
    expect(acquires(out)).toEqual([{ type: 'acquireProtectedlist', datastore: 'ds1', takeover: null }]);
    // ds2's holder keeps renewing: never taken.
    for (let t = 250; t <= 5000; t += 250) {
      o.step({ type: 'protectedlistSample', now: t, datastore: 'ds2', record: rec('host-9', 1 + t / 250), lockExists: true, maxClaim: 1 });
      expect(acquires(o.step({ type: 'tick', now: t }))).toEqual([]);
    }
    // It stops renewing at t=5000: still not taken at 6499, taken over at 6500.
    for (let t = 5250; t < 6500; t += 250) {
      o.step({ type: 'protectedlistSample', now: t, datastore: 'ds2', record: rec('host-9', 21), lockExists: true, maxClaim: 1 });
      expect(acquires(o.step({ type: 'tick', now: t })), `t=${t}`).toEqual([]);
    }
    o.step({ type: 'protectedlistSample', now: 6500, datastore: 'ds2', record: rec('host-9', 21), lockExists: true, maxClaim: 1 });
    expect(acquires(o.step({ type: 'tick', now: 6500 }))).toEqual([{ type: 'acquireProtectedlist', datastore: 'ds2', takeover: { ...rec('host-9', 21), maxClaim: 1 } }]);
  });

  it('learns the protected VMs from the list on disk, rewrites it with its own header, and releases everything when no longer master', () => {
    const o = new Ownership({ self: 'host-2', leaseTimeoutMs: 1500, retryMs: 500 });
    o.setAccessible(['ds1']);
    o.step({ type: 'protectedlistSample', now: 0, datastore: 'ds1', record: rec('host-1', 4, 'released'), lockExists: false, maxClaim: 1 });
    o.setWanted(true, 0, 'became master');
    const out = o.step({ type: 'protectedlistAcquired', now: 10, datastore: 'ds1', generation: 2, vms: ['ds1:vms/a.json', 'ds1:vms/b.json'] });
    expect(out).toContainEqual({ type: 'writeProtectedlist', datastore: 'ds1', vms: ['ds1:vms/a.json', 'ds1:vms/b.json'] });
    expect(o.protectedVms().get('ds1')).toEqual(['ds1:vms/a.json', 'ds1:vms/b.json']);
    // Damage on disk: rewritten from memory, not from the damaged file.
    expect(o.step({ type: 'protectedlistDamaged', now: 20, datastore: 'ds1', problem: 'garbage' })).toContainEqual({
      type: 'writeProtectedlist',
      datastore: 'ds1',
      vms: ['ds1:vms/a.json', 'ds1:vms/b.json'],
    });
    expect(o.setWanted(false, 30, 'abdicated')).toContainEqual({ type: 'releaseProtectedlist', datastore: 'ds1' });
    expect(o.owned()).toEqual([]);
  });

  it('never writes a protectedlist it does not hold', () => {
    const o = new Ownership({ self: 'host-2', leaseTimeoutMs: 1500, retryMs: 500 });
    expect(o.setProtected('ds1', 'ds1:vms/a.json', true)).toEqual([]);
    o.setAccessible(['ds1']);
    o.step({ type: 'protectedlistSample', now: 0, datastore: 'ds1', record: null, lockExists: false, maxClaim: 0 });
    o.setWanted(true, 0, 'became master');
    o.step({ type: 'protectedlistAcquired', now: 1, datastore: 'ds1', generation: 1, vms: null });
    o.step({ type: 'protectedlistLost', now: 2, datastore: 'ds1', reason: 'self-fence' });
    expect(o.setProtected('ds1', 'ds1:vms/a.json', true)).toEqual([]);
  });

  it('takes over its own record from an earlier life at once, and an orphaned lock only after the lease timeout', () => {
    const o = new Ownership({ self: 'host-2', leaseTimeoutMs: 1500, retryMs: 100 });
    o.setAccessible(['ds1', 'ds2']);
    o.step({ type: 'protectedlistSample', now: 0, datastore: 'ds1', record: rec('host-2', 7), lockExists: true, maxClaim: 1 });
    o.step({ type: 'protectedlistSample', now: 0, datastore: 'ds2', record: null, lockExists: true, maxClaim: 0 });
    expect(acquires(o.setWanted(true, 0, 'became master'))).toEqual([{ type: 'acquireProtectedlist', datastore: 'ds1', takeover: { ...rec('host-2', 7), maxClaim: 1 } }]);
    o.step({ type: 'protectedlistSample', now: 1400, datastore: 'ds2', record: null, lockExists: true, maxClaim: 0 });
    expect(acquires(o.step({ type: 'tick', now: 1400 }))).toEqual([]);
    o.step({ type: 'protectedlistSample', now: 1500, datastore: 'ds2', record: null, lockExists: true, maxClaim: 0 });
    expect(acquires(o.step({ type: 'tick', now: 1500 }))).toEqual([{ type: 'acquireProtectedlist', datastore: 'ds2', takeover: 'orphan' }]);
  });
});

describe('StorageView (master view of storage heartbeats)', () => {
  it('calls a heartbeat dead only after no change for the lease timeout, on every datastore', () => {
    const v = new StorageView(1500);
    const hb = (now: number, ds: string, counter: number) => v.step({ type: 'heartbeatSample', now, host: 'host-1', datastore: ds, record: rec('host-1', counter) });
    hb(0, 'ds1', 1);
    hb(0, 'ds2', 1);
    expect(v.host('host-1', 0).storageHeartbeat).toBe('unknown');
    hb(500, 'ds1', 2);
    hb(500, 'ds2', 2);
    expect(v.host('host-1', 500).storageHeartbeat).toBe('alive');
    // ds2 keeps changing, ds1 stops: still alive.
    for (let t = 1000; t <= 4000; t += 500) {
      hb(t, 'ds1', 2);
      hb(t, 'ds2', t);
    }
    expect(v.host('host-1', 4000)).toMatchObject({ storageHeartbeat: 'alive', heartbeats: { ds1: 'dead', ds2: 'alive' } });
    hb(5499, 'ds2', 4000);
    expect(v.host('host-1', 5499).storageHeartbeat).toBe('alive');
    hb(5500, 'ds2', 4000);
    expect(v.host('host-1', 5500).storageHeartbeat).toBe('dead');
  });

  it('logs a corrupt poweron file once, keeps the last good content, and notes the repair', () => {
    const v = new StorageView(1500);
    v.step({ type: 'poweronSample', now: 0, host: 'host-1', datastore: 'ds1', isolated: false, vms: ['ds1:a'] });
    const bad = { type: 'poweronSample' as const, now: 1, host: 'host-1', datastore: 'ds1', isolated: null, vms: null, error: 'truncated' };
    expect(v.step(bad).filter((a) => a.type === 'log')).toHaveLength(1);
    expect(v.step({ ...bad, now: 2 })).toEqual([]);
    expect(v.host('host-1', 2)).toMatchObject({ isolated: false, vms: ['ds1:a'] });
    const fixed = v.step({ type: 'poweronSample', now: 3, host: 'host-1', datastore: 'ds1', isolated: true, vms: [] });
    expect(fixed.map((a) => (a.type === 'log' ? a.event : a.type))).toEqual(['storage.repaired', 'host.isolation-bit']);
  });
});
