import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProcessDriver, type DriverEvent } from '@vigil/drivers';
import { vmLease, vmLeaseDir, vmFileName } from '@vigil/datastore';

let root: string;
let ds: string;
const drivers: ProcessDriver[] = [];
const timing = { storageHeartbeatIntervalMs: 100, selfFenceDeadlineMs: 400, storageCallTimeoutMs: 200, heartbeatIntervalMs: 100 };

function driver(host = 'host-1'): ProcessDriver {
  const d = new ProcessDriver({ host, cluster: 'c', datastores: { ds1: ds }, stateDir: join(root, host), timing, shutdownTimeoutMs: 1000 });
  drivers.push(d);
  return d;
}

async function vm(name: string, command = 'sleep', args = ['1000']) {
  await mkdir(join(ds, 'vms'), { recursive: true });
  const path = join(ds, 'vms', `${name}.json`);
  await writeFile(path, JSON.stringify({ name, command, args, memoryMB: 64 }));
  return { id: `ds1:vms/${name}.json`, path };
}

async function until<T>(f: () => T | undefined | false, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'vigil-drv-'));
  ds = join(root, 'ds1');
  // An initialized datastore (the agent's probe creates this): leases never build it themselves.
  await mkdir(join(ds, '.vigil-ha', 'c'), { recursive: true });
});
afterEach(async () => {
  for (const d of drivers.splice(0)) {
    for (const v of d.list()) await d.powerOff(v.id).catch(() => {});
    await d.close();
  }
  await rm(root, { recursive: true, force: true });
});

describe('process driver', () => {
  it('powers a VM on under its lease, lists it, powers it off (requested) and releases the lease', async () => {
    const d = driver();
    const events: DriverEvent[] = [];
    d.onEvent((e) => events.push(e));
    const v = await vm('a');
    const spec = await d.loadSpec(v.id, v.path);
    expect(spec).toMatchObject({ name: 'a', datastore: 'ds1', memoryMB: 64, cpus: 1, restartPriority: 'medium' });
    await d.powerOn(spec);
    const [r] = d.list();
    expect(r).toMatchObject({ id: v.id, power: 'on' });
    expect(() => process.kill(r!.pid!, 0)).not.toThrow();
    // Another host cannot take the lease while it runs.
    const other = vmLease({ datastorePath: ds, cluster: 'c', vm: v.id, host: 'host-2', timeoutMs: 1000 });
    await expect(other.acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
    await d.powerOff(v.id);
    await until(() => events.find((e) => e.vm === v.id));
    expect(events[0]).toMatchObject({ reason: 'requested' });
    expect(d.list()).toEqual([]);
    await expect(other.acquire()).resolves.toMatchObject({ generation: 2 });
  });

  it('refuses to start a VM whose lease is held elsewhere', async () => {
    const d = driver();
    const v = await vm('b');
    await vmLease({ datastorePath: ds, cluster: 'c', vm: v.id, host: 'host-2', timeoutMs: 1000 }).acquire();
    await expect(d.powerOn(await d.loadSpec(v.id, v.path))).rejects.toMatchObject({ code: 'ELEASEHELD' });
    expect(d.list()).toEqual([]);
  });

  it('reports a VM that dies on its own (crash) as an unexpected stop', async () => {
    const d = driver();
    const events: DriverEvent[] = [];
    d.onEvent((e) => events.push(e));
    const v = await vm('c');
    await d.powerOn(await d.loadSpec(v.id, v.path));
    process.kill(d.list()[0]!.pid!, 'SIGKILL');
    const ev = await until(() => events.find((e) => e.vm === v.id));
    expect(ev.reason).toBe('killed');
  });

  it('kills the VM when its lease cannot be renewed before the self-fence deadline', async () => {
    const d = driver();
    const events: DriverEvent[] = [];
    d.onEvent((e) => events.push(e));
    const v = await vm('d');
    await d.powerOn(await d.loadSpec(v.id, v.path));
    const pid = d.list()[0]!.pid!;
    // Break renewals: the lease record path becomes a non-empty directory.
    const rec = join(vmLeaseDir(ds, 'c'), `${vmFileName(v.id)}.lease`);
    await rm(rec);
    await mkdir(rec);
    await writeFile(join(rec, 'x'), '');
    const ev = await until(() => events.find((e) => e.vm === v.id), 5000);
    expect(ev.reason).toBe('fenced');
    expect(() => process.kill(pid, 0)).toThrow();
  });

  it('lets a restarted agent re-adopt running VMs', async () => {
    const d1 = driver();
    const v = await vm('e');
    await d1.powerOn(await d1.loadSpec(v.id, v.path));
    const pid = d1.list()[0]!.pid;
    await d1.close();
    const d2 = driver();
    expect(d2.list()).toEqual([expect.objectContaining({ id: v.id, power: 'on', pid })]);
  });

  it('never starts a second copy next to a live supervisor whose state file was lost', async () => {
    const d1 = driver();
    const v = await vm('f');
    await d1.powerOn(await d1.loadSpec(v.id, v.path));
    const pid = d1.list()[0]!.pid!;
    await d1.close();
    await rm(join(root, 'host-1', 'vms', `${vmFileName(v.id)}.json`));
    const d2 = driver();
    expect(d2.list()).toEqual([]);
    await expect(d2.powerOn(await d2.loadSpec(v.id, v.path))).rejects.toMatchObject({ code: 'ELEASEHELD' });
    expect(() => process.kill(pid, 0)).not.toThrow();
    process.kill(pid, 'SIGKILL');
  });

  it('refuses a bad VM config with a message naming the key', async () => {
    const d = driver();
    await mkdir(join(ds, 'vms'), { recursive: true });
    const path = join(ds, 'vms', 'bad.json');
    await writeFile(path, JSON.stringify({ name: 'bad', command: 'sleep', memoryMB: -1 }));
    await expect(d.loadSpec('ds1:vms/bad.json', path)).rejects.toThrow(/memoryMB/);
    await writeFile(path, '{"name": "bad", "comand": "x"}');
    await expect(d.loadSpec('ds1:vms/bad.json', path)).rejects.toThrow(/comand: unknown key/);
  });
});
