import { describe, expect, it } from 'vitest';
import { DEFAULT_TIMING, FAST_TIMING } from '@vigil/config';
import { HostCore, IsolationMonitor, type CoreAction, type CoreEvent, type LeaseRecordView } from '@vigil/core';

const T = FAST_TIMING;
const hosts = {
  'host-1': { address: '10.0.0.11', datastores: ['ds1', 'ds2'], heartbeatDatastores: ['ds1', 'ds2'] },
  'host-2': { address: '10.0.0.12', datastores: ['ds1', 'ds2'], heartbeatDatastores: ['ds1', 'ds2'] },
  'host-3': { address: '10.0.0.13', datastores: ['ds1', 'ds2'], heartbeatDatastores: ['ds1', 'ds2'] },
};
const plRecord = (host: string, counter: number): LeaseRecordView => ({ host, generation: 1, counter, token: 'abcdef0123', state: 'held' });

/**
 * One host's core, driven by hand: ticks every 25 ms; answers its isolation pings with `pingReply`;
 * hears `host-2` (the master) while `connected` is true.
 */
class Harness {
  readonly core: HostCore;
  now = 0;
  connected = true;
  pingReply = false;
  plCounter = 0;
  /** Another host renews the protectedlists (a master visibly owns them). */
  ownerAlive = true;
  readonly actions: { at: number; a: CoreAction }[] = [];
  private pendingPing: number | null = null;

  constructor(opts: { response?: 'leavePoweredOn' | 'powerOff' | 'shutdown'; self?: string } = {}) {
    this.core = new HostCore({ self: opts.self ?? 'host-1', hosts, timing: T, isolationResponse: opts.response ?? 'powerOff' });
    this.feed({ type: 'datastores', now: 0, accessible: ['ds1', 'ds2'] });
  }

  feed(ev: CoreEvent): CoreAction[] {
    const out = this.core.step(ev);
    for (const a of out) {
      this.actions.push({ at: ev.now, a });
      if (a.type === 'pingIsolation') this.pendingPing = ev.now + 100;
    }
    return out;
  }

  run(until: number): void {
    while (this.now < until) {
      this.now += 25;
      if (this.connected && this.now % T.heartbeatIntervalMs === 0) {
        this.feed({ type: 'message', now: this.now, from: 'host-2', msg: { type: 'masterHeartbeat', datastores: 2, maintenance: false, generation: 1 } });
      }
      if (this.now % 250 === 0) {
        if (this.ownerAlive) this.plCounter++;
        for (const ds of ['ds1', 'ds2']) this.feed({ type: 'protectedlistSample', now: this.now, datastore: ds, record: plRecord('host-2', this.plCounter), lockExists: true, maxClaim: 1 });
      }
      if (this.pendingPing !== null && this.now >= this.pendingPing) {
        this.pendingPing = null;
        this.feed({ type: 'isolationPingResult', now: this.now, replied: this.pingReply });
      }
      this.feed({ type: 'tick', now: this.now });
    }
  }

  role(): string {
    return this.core.status().role;
  }

  firstAt(pred: (a: CoreAction) => boolean): number | null {
    return this.actions.find((x) => pred(x.a))?.at ?? null;
  }
}

describe('isolation (SPEC §3.4)', () => {
  it('a slave that hears nothing and whose isolation addresses do not answer is isolated at T+slaveIsolationMs, sets its isolation bit, and rejoins on traffic', () => {
    const h = new Harness({ response: 'leavePoweredOn' });
    h.run(1000);
    expect(h.role()).toBe('slave');
    const cut = h.now;
    h.connected = false;
    h.run(cut + T.slaveIsolationMs + 1000);
    expect(h.role()).toBe('isolated');
    const at = h.firstAt((a) => a.type === 'role' && a.role === 'isolated')!;
    // Isolated at the threshold, counted from the last heartbeat heard (not before).
    expect(at - (cut - (cut % T.heartbeatIntervalMs))).toBeGreaterThanOrEqual(T.slaveIsolationMs);
    expect(at - cut).toBeLessThan(T.slaveIsolationMs + 200);
    expect(h.firstAt((a) => a.type === 'pingIsolation')).toBeLessThan(at);
    expect(h.actions.some((x) => x.a.type === 'writePoweron' && x.a.isolated)).toBe(true);
    // Traffic again: isolation ends, the host joins the master and clears its bit.
    h.connected = true;
    h.run(h.now + 500);
    expect(h.role()).toBe('slave');
    const last = [...h.actions].reverse().find((x) => x.a.type === 'writePoweron')!.a;
    expect(last).toMatchObject({ isolated: false });
  });

  it('a host whose isolation address answers is never isolated, however long the silence', () => {
    const h = new Harness();
    h.run(1000);
    h.connected = false;
    h.pingReply = true;
    h.run(h.now + 5 * T.slaveIsolationMs);
    expect(h.actions.some((x) => x.a.type === 'role' && x.a.role === 'isolated')).toBe(false);
    expect(h.actions.some((x) => x.a.type === 'pingIsolation')).toBe(true);
  });

  it('one ping reply ends an isolation', () => {
    const h = new Harness({ response: 'leavePoweredOn' });
    h.run(1000);
    h.connected = false;
    h.run(h.now + T.slaveIsolationMs + 500);
    expect(h.role()).toBe('isolated');
    h.pingReply = true;
    h.run(h.now + 2 * T.icmpPingTimeoutMs + 200);
    expect(h.role()).not.toBe('isolated');
    expect(h.actions.some((x) => x.a.type === 'log' && x.a.event === 'isolation.ended')).toBe(true);
  });

  it('powerOff response: only after isolationResponseDelayMs, and only while a master visibly owns the datastore', () => {
    const h = new Harness({ response: 'powerOff' });
    h.feed({ type: 'localVms', now: 0, vms: ['ds1:vms/a.json', 'ds2:vms/b.json', 'ds2:vms/keep.json'], responses: { 'ds2:vms/keep.json': 'leavePoweredOn' } });
    h.run(1000);
    h.connected = false;
    h.run(h.now + T.slaveIsolationMs + 200);
    const isolatedAt = h.firstAt((a) => a.type === 'role' && a.role === 'isolated')!;
    expect(isolatedAt).not.toBeNull();
    h.run(isolatedAt + T.isolationResponseDelayMs + 200);
    const stops = h.actions.filter((x) => x.a.type === 'isolationStop');
    expect(stops.map((x) => (x.a as { vm: string }).vm).sort()).toEqual(['ds1:vms/a.json', 'ds2:vms/b.json']);
    for (const s of stops) expect(s.at - isolatedAt).toBeGreaterThanOrEqual(T.isolationResponseDelayMs);
    expect(stops[0]!.a).toMatchObject({ graceful: false });
    // Once each.
    h.run(h.now + 1000);
    expect(h.actions.filter((x) => x.a.type === 'isolationStop')).toHaveLength(2);
  });

  it('the safety gate: no master visibly owns the datastore -> the VM keeps running; the host lost the datastore -> it is stopped', () => {
    const h = new Harness({ response: 'shutdown' });
    h.feed({ type: 'localVms', now: 0, vms: ['ds1:vms/a.json', 'ds2:vms/b.json'] });
    h.run(1000);
    h.ownerAlive = false; // the protectedlist records stop changing
    h.connected = false;
    h.run(h.now + T.slaveIsolationMs + T.isolationResponseDelayMs + T.leaseTimeoutMs + 500);
    expect(h.role()).toBe('isolated');
    expect(h.actions.filter((x) => x.a.type === 'isolationStop')).toEqual([]);
    expect(h.actions.some((x) => x.a.type === 'log' && x.a.event === 'isolation.response-waiting')).toBe(true);
    // ds2 disappears from this host: its VM is stopped (gracefully: shutdown).
    h.feed({ type: 'datastores', now: h.now, accessible: ['ds1'] });
    h.run(h.now + 200);
    const stops = h.actions.filter((x) => x.a.type === 'isolationStop').map((x) => x.a);
    expect(stops).toEqual([{ type: 'isolationStop', vm: 'ds2:vms/b.json', graceful: true, timeoutMs: T.isolationShutdownTimeoutMs }]);
  });

  it('a master that hears no slave and no isolation address is isolated at T+masterIsolationMs and releases its protectedlists', () => {
    const h = new Harness({ self: 'host-3', response: 'leavePoweredOn' });
    h.connected = false;
    // host-3 wins the election alone (a partition of one, pings answered), then takes ds1/ds2.
    h.pingReply = true;
    h.run(T.electionWindowMs + 500);
    expect(h.role()).toBe('master');
    for (const ds of ['ds1', 'ds2']) h.feed({ type: 'protectedlistAcquired', now: h.now, datastore: ds, generation: 2, vms: [] });
    // A slave talks to it for a while, then everything goes silent and pings fail.
    for (let i = 0; i < 5; i++) {
      h.run(h.now + 200);
      h.feed({ type: 'message', now: h.now, from: 'host-1', msg: { type: 'slaveHeartbeat', datastores: 2, master: 'host-3', memoryMB: 0, cpus: 0 } });
    }
    const last = h.now;
    h.pingReply = false;
    h.run(last + T.masterIsolationMs + 600);
    const at = h.firstAt((a) => a.type === 'role' && a.role === 'isolated');
    expect(at).not.toBeNull();
    expect(at! - last).toBeGreaterThanOrEqual(T.masterIsolationMs);
    expect(at! - last).toBeLessThan(T.masterIsolationMs + 2 * T.icmpPingTimeoutMs + 100);
    const released = h.actions.filter((x) => x.a.type === 'releaseProtectedlist' && x.at >= at!).map((x) => (x.a as { datastore: string }).datastore);
    expect(released.sort()).toEqual(['ds1', 'ds2']);
  });
});

describe('isolation pings cost nothing while traffic flows', () => {
  it('a master that hears its slaves never pings its isolation addresses (even with masterIsolationMs <= icmpPingTimeoutMs)', () => {
    expect(T.masterIsolationMs).toBeLessThanOrEqual(T.icmpPingTimeoutMs); // the case that once pinged forever
    const h = new Harness({ self: 'host-3', response: 'leavePoweredOn' });
    h.connected = false;
    h.pingReply = true;
    h.run(T.electionWindowMs + 500);
    expect(h.role()).toBe('master');
    const from = h.now;
    for (let i = 0; i < 100; i++) {
      h.run(h.now + T.heartbeatIntervalMs);
      h.feed({ type: 'message', now: h.now, from: 'host-1', msg: { type: 'slaveHeartbeat', datastores: 2, master: 'host-3', memoryMB: 0, cpus: 0 } });
    }
    expect(h.actions.filter((x) => x.a.type === 'pingIsolation' && x.at > from)).toEqual([]);
  });
});

describe('FDM timeline under the default profile (IsolationMonitor alone)', () => {
  /** Silence from t=0 (last traffic); every ping round ends with no reply after its timeout. */
  function isolatedAt(role: 'master' | 'slave'): number | null {
    const m = new IsolationMonitor({ clusterSize: 4, hasAddresses: true, timing: DEFAULT_TIMING });
    if (role === 'master') m.role('master', -60_000);
    m.heard(0, 'host-2');
    let pingEndsAt: number | null = null;
    for (let now = 0; now <= 60_000; now += 250) {
      if (pingEndsAt !== null && now >= pingEndsAt) {
        pingEndsAt = null;
        m.pingResult(now, false);
      }
      for (const o of m.tick(now, role)) {
        if (o.type === 'pingIsolation') pingEndsAt = now + o.timeoutMs;
        if (o.type === 'isolate') return now;
      }
    }
    return null;
  }

  it('a slave is isolated at T+30 s, a master at T+5 s', () => {
    expect(isolatedAt('slave')).toBe(DEFAULT_TIMING.slaveIsolationMs);
    expect(isolatedAt('master')).toBe(DEFAULT_TIMING.masterIsolationMs);
  });
});
