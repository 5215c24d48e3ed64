/**
 * Statistics of process VMs with a real VM daemon and a real busy VM: its CPU time and disk
 * writes move between two samples, memory is its RSS, network is null (a process VM shares the
 * host's network), the counters belong to this power-on (a restart is a new incarnation), and a
 * stopped VM has no statistics. Every daemon is killed in afterEach.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProcessDriver, type VmCounters } from '@vigil/drivers';
import { killVmds, until, vmdProcesses } from './helpers.js';

let root: string;
let ds: string;
const drivers: ProcessDriver[] = [];
const timing = { storageHeartbeatIntervalMs: 100, selfFenceDeadlineMs: 1300, storageCallTimeoutMs: 700, heartbeatIntervalMs: 100 };

function driver(): ProcessDriver {
  const d = new ProcessDriver({ host: 'host-1', cluster: 'c', datastores: { ds1: ds }, stateDir: join(root, 'host-1'), timing, shutdownTimeoutMs: 1000 });
  drivers.push(d);
  return d;
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'vigil-pstats-'));
  ds = join(root, 'ds1');
  await mkdir(join(ds, '.vigil-ha', 'c'), { recursive: true });
});

afterEach(async () => {
  for (const d of drivers.splice(0)) await d.close();
  await killVmds(root);
  await rm(root, { recursive: true, force: true });
});

describe('process driver statistics', () => {
  it('a busy VM: CPU time and disk writes move, memory is its RSS, no network counters; a restart is a new incarnation', async () => {
    const d = driver();
    // A VM that counts in the shell (its own CPU time) and writes 256 KiB with dd (a child it
    // reaps: its CPU time and writes land in the VM's counters) about five times a second.
    const out = join(root, 'vm-output');
    const script = `while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; dd if=/dev/zero of=${out} bs=64k count=4 2>/dev/null; sleep 0.2; done`;
    await mkdir(join(ds, 'vms'), { recursive: true });
    const path = join(ds, 'vms', 'busy.json');
    await writeFile(path, JSON.stringify({ name: 'busy', command: 'sh', args: ['-c', script], memoryMB: 64 }));
    const id = 'ds1:vms/busy.json';
    const spec = await d.loadSpec(id, path);
    await d.powerOn(spec);
    const pid = d.list()[0]!.pid!;

    const [first] = await d.stats();
    expect(first).toMatchObject({ vm: id, diskReadOps: null, diskWriteOps: null, netRxBytes: null, netTxBytes: null });
    expect(first!.incarnation).toMatch(new RegExp(`^${pid}:[0-9]+$`));
    expect(first!.error).toBeUndefined();
    // RSS of a shell: some hundreds of KiB at least, far less than a GiB.
    expect(first!.memoryBytes).toBeGreaterThan(100 * 1024);
    expect(first!.memoryBytes).toBeLessThan(1 << 30);

    const later = await until(
      async () => {
        const [s] = await d.stats();
        return s && s.cpuTimeNs! >= first!.cpuTimeNs! + 30e6 && s.diskWriteBytes! >= first!.diskWriteBytes! + 256 * 1024 ? s : undefined;
      },
      15_000,
      'CPU time +30 ms and disk writes +256 KiB',
    );
    expect(later.incarnation).toBe(first!.incarnation);

    // Power it off: no statistics; on again: a new power-on, with counters of its own.
    await d.powerOff(id);
    expect(await d.stats()).toEqual([]);
    await d.powerOn(spec);
    const [again] = (await d.stats()) as [VmCounters];
    expect(again.incarnation).not.toBe(first!.incarnation);
    expect(again.cpuTimeNs).toBeLessThan(later.cpuTimeNs!);
    await d.powerOff(id);
  });

  it('no VM: no statistics, and no daemon started for them', async () => {
    const d = driver();
    expect(await d.stats()).toEqual([]);
    expect(vmdProcesses(root)).toEqual([]);
  });
});
