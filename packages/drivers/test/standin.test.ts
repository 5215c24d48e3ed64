/**
 * The benchmark stand-in VM (`benchmarkStandin: true`, scripts/bench-scale.mjs): the VM daemon
 * takes, keeps and releases its real leases like any process VM's, but starts no process; it is
 * refused unless the daemon runs with VIGIL_BENCH_STANDIN=1.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProcessDriver, validateProcessVm, type DriverEvent } from '@vigil/drivers';
import { clusterDir, parseLeaseRecord, vmFileName, vmLease, vmLeaseDir, type LeaseRecord } from '@vigil/datastore';
import { until, vmdProcesses } from './helpers.js';

let root: string;
let ds: string;
const drivers: ProcessDriver[] = [];
const timing = { storageHeartbeatIntervalMs: 100, selfFenceDeadlineMs: 1300, storageCallTimeoutMs: 700, heartbeatIntervalMs: 100 };

/** A driver whose VM daemon gets VIGIL_BENCH_STANDIN=1 (the daemon inherits this process's environment) or not. */
function driver(host: string, standins: boolean): ProcessDriver {
  const before = process.env.VIGIL_BENCH_STANDIN;
  if (standins) process.env.VIGIL_BENCH_STANDIN = '1';
  else delete process.env.VIGIL_BENCH_STANDIN;
  const d = new ProcessDriver({ host, cluster: 'c', datastores: { ds1: ds }, stateDir: join(root, host), timing, shutdownTimeoutMs: 1000 });
  drivers.push(d);
  return Object.assign(d, {
    restoreEnv: () => (before === undefined ? delete process.env.VIGIL_BENCH_STANDIN : (process.env.VIGIL_BENCH_STANDIN = before)),
  });
}

async function standin(name: string) {
  await mkdir(join(ds, 'vms'), { recursive: true });
  const path = join(ds, 'vms', `${name}.json`);
  await writeFile(path, JSON.stringify({ name, command: 'benchmark-standin', memoryMB: 64, benchmarkStandin: true }));
  return { id: `ds1:vms/${name}.json`, path };
}

async function record(path: string): Promise<LeaseRecord> {
  const p = parseLeaseRecord(await readFile(path, 'utf8'));
  if (!p.ok) throw new Error(`${path}: ${p.error}`);
  return p.value;
}

const leaseOf = (id: string) => join(vmLeaseDir(ds, 'c'), `${vmFileName(id)}.lease`);

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'vigil-standin-'));
  ds = join(root, 'ds1');
  await mkdir(join(ds, '.vigil-ha', 'c'), { recursive: true });
});

afterEach(async () => {
  for (const d of drivers.splice(0)) {
    (d as ProcessDriver & { restoreEnv?: () => void }).restoreEnv?.();
    await d.close();
  }
  for (const p of vmdProcesses(root)) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await until(() => vmdProcesses(root).length === 0);
  await rm(root, { recursive: true, force: true });
});

describe('benchmark stand-in VMs', () => {
  it('validates the key: true or absent', () => {
    expect(validateProcessVm({ name: 'a', command: 'x', benchmarkStandin: true }, 'f')).toMatchObject({ benchmarkStandin: true });
    expect(validateProcessVm({ name: 'a', command: 'x' }, 'f')).not.toHaveProperty('benchmarkStandin');
    expect(() => validateProcessVm({ name: 'a', command: 'x', benchmarkStandin: 'yes' }, 'f')).toThrow(/benchmarkStandin/);
  });

  it('is refused by a VM daemon without VIGIL_BENCH_STANDIN=1, and takes no lease', async () => {
    const d = driver('host-1', false);
    const v = await standin('standin-1');
    await expect(d.powerOn(await d.loadSpec(v.id, v.path))).rejects.toThrow(/benchmark stand-in/);
    expect(d.list()).toEqual([]);
    await expect(readFile(leaseOf(v.id), 'utf8')).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('holds a real lease while "running" (no process), releases it on power off, and is fenced with its host VM lease', async () => {
    const d = driver('host-1', true);
    const events: DriverEvent[] = [];
    d.onEvent((e) => events.push(e));
    const a = await standin('standin-a');
    const b = await standin('standin-b');
    await d.powerOn(await d.loadSpec(a.id, a.path));
    await d.powerOn(await d.loadSpec(b.id, b.path));
    expect(d.list().map((r) => [r.id, r.pid])).toEqual([
      [a.id, 0],
      [b.id, 0],
    ]);
    expect(await record(leaseOf(a.id))).toMatchObject({ host: 'host-1', state: 'held' });
    // The lease is real: another host cannot take it.
    const other = vmLease({ datastorePath: ds, cluster: 'c', vm: a.id, host: 'host-2', timeoutMs: 1000 });
    await expect(other.acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
    // A second power-on is the same VM, never a second copy.
    await d.powerOn(await d.loadSpec(a.id, a.path));
    expect(d.list()).toHaveLength(2);
    await d.powerOff(a.id);
    expect(events).toEqual([{ type: 'stopped', vm: a.id, reason: 'requested', detail: 'hard power off through Vigil' }]);
    expect(await record(leaseOf(a.id))).toMatchObject({ state: 'released' });
    // Host VM lease lost: the stand-in is fenced like a VM process would be.
    const cdir = clusterDir(ds, 'c');
    await rename(cdir, `${cdir}-away`);
    await until(() => events.length === 2, timing.selfFenceDeadlineMs + 2000);
    expect(events[1]).toMatchObject({ vm: b.id, reason: 'fenced' });
    expect(d.list()).toEqual([]);
  });
});
