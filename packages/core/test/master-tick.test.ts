/**
 * The master's tick judges a host's storage heartbeat and VM leases only once it has been silent
 * for hostTimeoutMs (the failure detector ignores them before): a heard host costs no
 * O(its VMs) work per tick. The verdicts are unchanged: a silent host is still judged on them.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FAST_TIMING } from '@vigil/config';
import { HostCore, VmManager, type CoreAction } from '@vigil/core';

const T = FAST_TIMING;
const hosts = {
  'host-1': { address: '10.0.0.11', datastores: ['ds1'], heartbeatDatastores: ['ds1'] },
  'host-2': { address: '10.0.0.12', datastores: ['ds1'], heartbeatDatastores: ['ds1'] },
};

afterEach(() => vi.restoreAllMocks());

describe('master tick', () => {
  it('reads the VM leases of a slave only once it is silent for hostTimeoutMs', () => {
    // host-2 ranks above host-1 ("host-2" > "host-1"), so host-2 is the one that becomes master here.
    const core = new HostCore({ self: 'host-2', hosts, timing: T });
    const spy = vi.spyOn(VmManager.prototype, 'hostLeases');
    const actions: CoreAction[] = [];
    let now = 0;
    const step = (ev: Parameters<HostCore['step']>[0]) => actions.push(...core.step(ev));
    step({ type: 'datastores', now, accessible: ['ds1'] });
    const heardUntil = 5000;
    let lastBeat = -Infinity;
    while (now < 5000 + T.hostTimeoutMs + 500) {
      now += 25;
      if (now <= heardUntil && now % T.heartbeatIntervalMs === 0) {
        lastBeat = now;
        const msg = core.status().role === 'master' ? { type: 'slaveHeartbeat' as const, datastores: 1, master: 'host-2', memoryMB: 1024, cpus: 4 } : { type: 'election' as const, datastores: 1, maintenance: false, generation: 0 };
        step({ type: 'message', now, from: 'host-1', msg });
      }
      const before = spy.mock.calls.length;
      step({ type: 'tick', now });
      const called = spy.mock.calls.slice(before).some(([h]) => h === 'host-1');
      if (core.status().role === 'master') expect(called, `at ${now} ms (last heard ${lastBeat})`).toBe(now - lastBeat >= T.hostTimeoutMs);
    }
    expect(core.status().role).toBe('master');
    expect(spy.mock.calls.some(([h]) => h === 'host-1')).toBe(true);
    // Silent since 5000: declared unreachable at hostTimeoutMs, as before.
    expect(actions.some((a) => a.type === 'log' && a.event === 'host.unreachable')).toBe(true);
  });
});
