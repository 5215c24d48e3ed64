/**
 * VM statistics in the agent, without I/O: the sampling arithmetic (StatsBook: CPU % of one core
 * from two samples of the same power-on, history reset on a restart or a counter going back, a
 * failed read changing nothing), validating another host's answer, merging the hosts' answers
 * into the master's VM rows, and the sampler's failure handling (logged once per streak).
 */
import { describe, expect, it } from 'vitest';
import { checkHostStats, hostsToAsk, mergeVmStats, StatsBook, StatsSampler, type HostAnswer, type HostStats, type Logger } from '@vigil/agent';
import { noCounters, type VmCounters, type VmRuntime } from '@vigil/drivers';

function counters(vm: string, incarnation: string, cpuMs: number, extra: Partial<VmCounters> = {}): VmCounters {
  return {
    vm,
    incarnation,
    cpuTimeNs: cpuMs * 1e6,
    memoryBytes: 50 << 20,
    diskReadBytes: 1000,
    diskWriteBytes: 2000,
    diskReadOps: null,
    diskWriteOps: null,
    netRxBytes: null,
    netTxBytes: null,
    ...extra,
  };
}

const T0 = Date.parse('2026-01-01T00:00:00Z');

describe('StatsBook', () => {
  it('CPU % of one core from the CPU time between two samples over the time between them; counters as the driver gave them', () => {
    const b = new StatsBook('host-1');
    b.record([counters('a', '10:1', 1000)], 1000, T0);
    expect(b.view(1500)).toEqual([
      {
        vm: 'a',
        host: 'host-1',
        sampledAt: '2026-01-01T00:00:00.000Z',
        ageMs: 500,
        cpuPercent: null, // one sample: unknown yet
        cpuWindowMs: null,
        cpuTimeMs: 1000,
        memoryBytes: 50 << 20,
        diskReadBytes: 1000,
        diskWriteBytes: 2000,
        diskReadOps: null,
        diskWriteOps: null,
        netRxBytes: null,
        netTxBytes: null,
        incarnation: '10:1',
        error: null,
      },
    ]);
    // 6 s later, 3 s of CPU more: 50 % of one core. 12 s of CPU in 6 s: 200 % (two cores).
    b.record([counters('a', '10:1', 4000), counters('b', '11:1', 0)], 7000, T0 + 6000);
    b.record([counters('a', '10:1', 16000), counters('b', '11:1', 123)], 13000, T0 + 12000);
    const [a, bb] = b.view(13000);
    expect(a).toMatchObject({ cpuPercent: 200, cpuWindowMs: 6000, cpuTimeMs: 16000, ageMs: 0, sampledAt: '2026-01-01T00:00:12.000Z' });
    expect(bb).toMatchObject({ vm: 'b', cpuPercent: 2.1, cpuTimeMs: 123 });
  });

  it('starts over when the VM restarted (new incarnation) or a counter went back; forgets VMs that no longer run here', () => {
    const b = new StatsBook('h');
    b.record([counters('a', '10:1', 5000), counters('b', '20:1', 100)], 0, T0);
    b.record([counters('a', '99:7', 50), counters('b', '20:1', 200, { diskWriteBytes: 10 })], 1000, T0 + 1000);
    const [a, bb] = b.view(1000);
    expect(a).toMatchObject({ cpuPercent: null, cpuTimeMs: 50, incarnation: '99:7' });
    expect(bb).toMatchObject({ cpuPercent: null, diskWriteBytes: 10 });
    // The next sample of the same power-on has a CPU figure again.
    b.record([counters('a', '99:7', 150)], 2000, T0 + 2000);
    expect(b.view(2000)).toEqual([expect.objectContaining({ vm: 'a', cpuPercent: 10 })]);
    expect(b.size()).toBe(1);
  });

  it('a failed read of a VM changes nothing: the last good sample stays, marked, and ages', () => {
    const b = new StatsBook('h');
    b.record([counters('a', '10:1', 1000)], 0, T0);
    b.record([counters('a', '10:1', 2000)], 1000, T0 + 1000);
    b.record([noCounters('a', 'its process 10 is gone')], 2000, T0 + 2000);
    expect(b.view(2500)).toEqual([expect.objectContaining({ cpuPercent: 100, cpuTimeMs: 2000, ageMs: 1500, error: 'latest read failed (its process 10 is gone); this is the last good sample' })]);
    // A VM never read: shown with nulls and the reason.
    b.record([noCounters('c', 'libvirtd reports no running domain x', 'x:1')], 3000, T0 + 3000);
    expect(b.view(3000)).toEqual([expect.objectContaining({ vm: 'c', cpuTimeMs: null, memoryBytes: null, error: 'libvirtd reports no running domain x' })]);
    b.keepOnly(new Set());
    expect(b.view(3000)).toEqual([]);
  });
});

function hostStats(host: string, vms: Partial<ReturnType<StatsBook['view']>[number]>[] = []): HostStats {
  const b = new StatsBook(host);
  b.record(vms.map((v) => counters(v.vm!, '1:1', 10)), 0, T0);
  return { host, intervalMs: 6000, error: null, vms: b.view(0) };
}

describe('answers across hosts', () => {
  it('accepts a well-formed answer and refuses anything else with a clear error', () => {
    const good = hostStats('host-2', [{ vm: 'ds1:vms/a.json' }]);
    expect(checkHostStats(JSON.parse(JSON.stringify(good)), 'host-2')).toEqual(good);
    expect(() => checkHostStats(null, 'host-2')).toThrow('host-2 answered something that is not VM statistics');
    expect(() => checkHostStats({ ...good, host: 'host-3' }, 'host-2')).toThrow('host-2 answered as host-3');
    expect(() => checkHostStats({ ...good, vms: [{ ...good.vms[0], cpuTimeMs: 'lots' }] }, 'host-2')).toThrow(/malformed VM sample \(cpuTimeMs of ds1:vms\/a.json\)/);
    expect(() => checkHostStats({ ...good, vms: [{ ...good.vms[0], ageMs: null }] }, 'host-2')).toThrow(/ageMs/);
    expect(() => checkHostStats({ ...good, vms: [42] }, 'host-2')).toThrow(/malformed VM sample$/);
  });

  it('merges the answers into the VM rows, saying why a VM has no figures', () => {
    const rows = [
      { id: 'ds1:vms/a.json', host: 'host-2', power: 'on' as const },
      { id: 'ds1:vms/b.json', host: 'host-3', power: 'on' as const },
      { id: 'ds1:vms/c.json', host: null, power: 'off' as const },
      { id: 'ds1:vms/d.json', host: 'host-2', power: 'on' as const },
      { id: 'ds1:vms/e.json', host: 'host-4', power: 'on' as const },
    ];
    expect(hostsToAsk(rows)).toEqual(['host-2', 'host-3', 'host-4']);
    const answers = new Map<string, HostAnswer>([
      ['host-2', { ok: true, stats: hostStats('host-2', [{ vm: 'ds1:vms/a.json' }]) }],
      ['host-3', { ok: false, error: 'no answer from 127.0.0.13:48182 within 3000 ms' }],
      ['host-4', { ok: true, stats: { ...hostStats('host-4'), error: 'virsh domstats did not answer' } }],
    ]);
    const m = mergeVmStats(rows, answers);
    expect(m[0]).toMatchObject({ id: 'ds1:vms/a.json', stats: { vm: 'ds1:vms/a.json', host: 'host-2', cpuTimeMs: 10 }, statsError: null });
    expect(m[1]).toMatchObject({ stats: null, statsError: 'host-3 did not answer: no answer from 127.0.0.13:48182 within 3000 ms' });
    expect(m[2]).toMatchObject({ stats: null, statsError: 'not running' });
    expect(m[3]).toMatchObject({ stats: null, statsError: 'host-2 has no sample of it yet (it samples every 6 s)' });
    expect(m[4]).toMatchObject({ stats: null, statsError: 'host-4 could not sample its VMs: virsh domstats did not answer' });
  });
});

describe('StatsSampler', () => {
  it('samples through the driver, logs a failure once per streak and its end, keeps the last samples of VMs still running, never rejects', async () => {
    const logs: { level: string; event: string; message: string }[] = [];
    const logger: Logger = { log: (level, event, message) => void logs.push({ level, event, message }), close: async () => {} };
    let now = 0;
    let mode: 'ok' | 'fail' | 'gone' = 'ok';
    let cpu = 0;
    let listed: VmRuntime[] = [{ id: 'a', power: 'on', pid: 10 }, { id: 'b', power: 'on', pid: 11 }];
    const driver = {
      list: () => listed,
      stats: async (): Promise<VmCounters[]> => {
        if (mode === 'fail') throw new Error('virsh domstats did not answer within 20000 ms (libvirtd hung?)');
        cpu += 500;
        return listed.map((v) => (mode === 'gone' && v.id === 'b' ? noCounters('b', 'its process 11 is gone') : counters(v.id, `${v.pid}:1`, cpu)));
      },
    };
    const s = new StatsSampler({ host: 'host-1', driver, logger, clock: { now: () => now }, intervalMs: 60_000, wallClock: () => T0 + now });
    await s.sample();
    now = 1000;
    await s.sample();
    expect(s.answer()).toMatchObject({ host: 'host-1', intervalMs: 60_000, error: null, vms: [{ vm: 'a', cpuPercent: 50 }, { vm: 'b', cpuPercent: 50 }] });
    mode = 'fail';
    for (let i = 0; i < 3; i++) {
      now += 1000;
      await s.sample();
    }
    expect(logs.filter((l) => l.event === 'stats.sample-failed')).toHaveLength(1);
    listed = [listed[0]!];
    now += 1000;
    await s.sample();
    // b stopped meanwhile: forgotten; a keeps its last sample, older now.
    expect(s.answer()).toMatchObject({ error: 'virsh domstats did not answer within 20000 ms (libvirtd hung?)', vms: [{ vm: 'a', cpuTimeMs: 1000, ageMs: 4000 }] });
    mode = 'gone';
    listed = [{ id: 'a', power: 'on', pid: 10 }, { id: 'b', power: 'on', pid: 11 }];
    now += 1000;
    await s.sample();
    now += 1000;
    await s.sample();
    expect(logs.map((l) => l.event)).toEqual(['stats.sample-failed', 'stats.sample-recovered', 'stats.vm-unreadable']);
    expect(logs[2]!.message).toBe('no statistics for b: its process 11 is gone');
    expect(s.answer()).toMatchObject({ error: null, vms: [{ vm: 'a', cpuTimeMs: 2000, cpuPercent: 50 }, { vm: 'b', cpuTimeMs: null, error: 'its process 11 is gone' }] });
    await s.stop();
  });

  it('overlapping calls share one driver query', async () => {
    let calls = 0;
    let release!: () => void;
    const driver = {
      list: () => [],
      stats: () => {
        calls++;
        return new Promise<VmCounters[]>((r) => (release = () => r([])));
      },
    };
    const logger: Logger = { log: () => {}, close: async () => {} };
    const s = new StatsSampler({ host: 'h', driver, logger, clock: { now: () => 0 }, intervalMs: 1000 });
    const p1 = s.sample();
    const p2 = s.sample();
    release();
    await Promise.all([p1, p2]);
    expect(calls).toBe(1);
    expect(s.samples).toBe(1);
  });
});
