/**
 * The process driver and its VM daemon (vmd), with real processes and real files in a temp dir:
 * power on/off/shutdown, re-adoption by a new driver, stop events, leases held elsewhere, the
 * daemon's death (pdeathsig), self-fencing on the host VM lease, and storage writes that do not
 * grow with the number of VMs. Every daemon is killed in afterEach.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile, mkdir, readFile, rename, stat } from 'node:fs/promises';
import { readdirSync, readFileSync, watch } from 'node:fs';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProcessDriver, vmdRequest, vmdSocketName, vmdVmsFile, type DriverEvent } from '@vigil/drivers';
import { clusterDir, hostVmLease, parseLeaseRecord, vmFileName, vmLease, vmLeaseDir, type LeaseRecord } from '@vigil/datastore';
import { alive, until, vmdProcesses } from './helpers.js';

let root: string;
let ds: string;
let tag: string;
const drivers: ProcessDriver[] = [];
const stateDirs = new Set<string>();
const timing = { storageHeartbeatIntervalMs: 100, selfFenceDeadlineMs: 1300, storageCallTimeoutMs: 700, heartbeatIntervalMs: 100 };

function stateDirOf(host: string): string {
  return join(root, host);
}

function driver(host = 'host-1'): ProcessDriver {
  const stateDir = stateDirOf(host);
  stateDirs.add(stateDir);
  const d = new ProcessDriver({ host, cluster: 'c', datastores: { ds1: ds }, stateDir, timing, shutdownTimeoutMs: 1000 });
  drivers.push(d);
  return d;
}

function recorder(d: ProcessDriver): DriverEvent[] {
  const events: DriverEvent[] = [];
  d.onEvent((e) => events.push(e));
  return events;
}

/** A VM config; its name gets this test's tag, so that VM ids (and vmCopies) are unique on the machine. */
async function vm(name: string, command = 'sleep', args = ['1000']) {
  await mkdir(join(ds, 'vms'), { recursive: true });
  const unique = `${name}-${tag}`;
  const path = join(ds, 'vms', `${unique}.json`);
  await writeFile(path, JSON.stringify({ name: unique, command, args, memoryMB: 64 }));
  return { id: `ds1:vms/${unique}.json`, path };
}

/**
 * Live processes whose environment says VIGIL_VM=<vm> (the copies of a VM on this machine): the
 * union of three scans 20 ms apart, as a process in the middle of an exec (setpriv -> the VM's
 * command) shows an empty environment for an instant.
 */
async function vmCopies(vmId: string): Promise<number[]> {
  const needle = Buffer.from(`\0VIGIL_VM=${vmId}\0`);
  const out = new Set<number>();
  for (let scan = 0; scan < 3; scan++) {
    if (scan > 0) await new Promise((r) => setTimeout(r, 20));
    for (const e of readdirSync('/proc')) {
      if (!/^[0-9]+$/.test(e)) continue;
      try {
        if (Buffer.concat([Buffer.from([0]), readFileSync(`/proc/${e}/environ`)]).includes(needle)) out.add(Number(e));
      } catch {
        /* gone */
      }
    }
  }
  return [...out].filter(alive).sort((a, b) => a - b);
}

async function record(path: string): Promise<LeaseRecord> {
  const p = parseLeaseRecord(await readFile(path, 'utf8'));
  if (!p.ok) throw new Error(`${path}: ${p.error}`);
  return p.value;
}

const vmLeaseRecord = (id: string) => join(vmLeaseDir(ds, 'c'), `${vmFileName(id)}.lease`);
const hostLeaseRecord = (host = 'host-1') => join(clusterDir(ds, 'c'), `${host}-vm`);

async function daemonPid(stateDir: string): Promise<number> {
  return Number((await vmdRequest(stateDir, { op: 'list' })).pid);
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'vigil-drv-'));
  tag = root.slice(-6).replace(/[^A-Za-z0-9]/g, 'x');
  ds = join(root, 'ds1');
  // An initialized datastore (the agent's probe creates this): leases never build it themselves.
  await mkdir(join(ds, '.vigil-ha', 'c'), { recursive: true });
});

afterEach(async () => {
  for (const d of drivers.splice(0)) await d.close();
  // Kill every daemon of this test (its VMs die with it) and, in case pdeathsig is missing, the
  // VMs too. Daemons are found by their command line, so even one still starting (it would bind
  // once the others are gone and live on) is killed.
  const pids: number[] = [];
  for (const dir of stateDirs) {
    const r = await vmdRequest(dir, { op: 'list' }).catch(() => null);
    if (r) pids.push(...(r.vms as { pid: number }[]).map((v) => v.pid));
  }
  pids.push(...vmdProcesses(root));
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await until(() => pids.every((p) => !alive(p)) && vmdProcesses(root).length === 0, 5000, 'daemons and VMs gone');
  stateDirs.clear();
  await rm(root, { recursive: true, force: true });
});


/** Power on two VMs, a and b, through `d`; their pids. */
async function twoRunning(d: ProcessDriver): Promise<{ a: { id: string; path: string }; b: { id: string; path: string }; pids: number[] }> {
  const a = await vm('a');
  const b = await vm('b');
  await d.powerOn(await d.loadSpec(a.id, a.path));
  await d.powerOn(await d.loadSpec(b.id, b.path));
  return { a, b, pids: d.list().map((r) => r.pid!) };
}

describe('process driver and VM daemon', () => {
  it('powers a VM on under its lease (never renewed, naming the host VM lease), lists it, powers it off and releases the lease', async () => {
    const d = driver();
    const events = recorder(d);
    const v = await vm('a');
    const spec = await d.loadSpec(v.id, v.path);
    expect(spec).toMatchObject({ name: `a-${tag}`, datastore: 'ds1', memoryMB: 64, cpus: 1, restartPriority: 'medium' });
    await d.powerOn(spec);
    const [r] = d.list();
    expect(r).toMatchObject({ id: v.id, power: 'on', daemonPid: await daemonPid(stateDirOf('host-1')) });
    expect(alive(r!.pid!)).toBe(true);
    expect(await vmCopies(v.id)).toEqual([r!.pid]);
    const host = await record(hostLeaseRecord());
    expect(host).toMatchObject({ host: 'host-1', state: 'held' });
    expect(await record(vmLeaseRecord(v.id))).toMatchObject({ host: 'host-1', counter: 0, state: 'held', hostLease: host.generation });
    // Another host cannot take the lease while it runs.
    const other = vmLease({ datastorePath: ds, cluster: 'c', vm: v.id, host: 'host-2', timeoutMs: 1000 });
    await expect(other.acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
    await d.powerOff(v.id);
    expect(events).toEqual([{ type: 'stopped', vm: v.id, reason: 'requested', detail: 'hard power off through Vigil' }]);
    expect(d.list()).toEqual([]);
    expect(alive(r!.pid!)).toBe(false);
    expect(await record(vmLeaseRecord(v.id))).toMatchObject({ state: 'released' });
    await expect(other.acquire()).resolves.toMatchObject({ generation: 2 });
  });

  it('shuts a VM down gracefully, and forces off one that ignores SIGTERM after the timeout', async () => {
    const d = driver();
    const events = recorder(d);
    const a = await vm('a');
    const ready = join(root, 'stubborn-ignores-term');
    const stubborn = await vm('stubborn', 'sh', ['-c', `trap "" TERM; touch ${ready}; while :; do sleep 0.05; done`]);
    await d.powerOn(await d.loadSpec(a.id, a.path));
    await d.powerOn(await d.loadSpec(stubborn.id, stubborn.path));
    await until(() => stat(ready).then(() => true, () => false), 5000, 'stubborn VM ignoring SIGTERM');
    await d.shutdown(a.id, 5000);
    expect(events).toEqual([{ type: 'stopped', vm: a.id, reason: 'requested', detail: 'graceful shutdown through Vigil' }]);
    const t0 = Date.now();
    await d.shutdown(stubborn.id, 300);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(280);
    expect(events[1]).toEqual({ type: 'stopped', vm: stubborn.id, reason: 'requested', detail: 'graceful shutdown through Vigil; forced off after the timeout' });
    expect(d.list()).toEqual([]);
    // Stopping a VM that does not run here is a no-op.
    await d.powerOff(a.id);
    expect(events).toHaveLength(2);
  });

  it('refuses to start a VM whose lease is held elsewhere (ELEASEHELD)', async () => {
    const d = driver();
    const v = await vm('b');
    await vmLease({ datastorePath: ds, cluster: 'c', vm: v.id, host: 'host-2', timeoutMs: 1000 }).acquire();
    await expect(d.powerOn(await d.loadSpec(v.id, v.path))).rejects.toMatchObject({ code: 'ELEASEHELD' });
    expect(d.list()).toEqual([]);
    expect(await vmCopies(v.id)).toEqual([]);
  });

  it("a second host's VM daemon cannot power on a VM whose lease host-1 holds", async () => {
    const d1 = driver('host-1');
    const d2 = driver('host-2');
    const v = await vm('b2');
    await d1.powerOn(await d1.loadSpec(v.id, v.path));
    await expect(d2.powerOn(await d2.loadSpec(v.id, v.path))).rejects.toMatchObject({ code: 'ELEASEHELD' });
    expect(await daemonPid(stateDirOf('host-2'))).not.toBe(await daemonPid(stateDirOf('host-1')));
    expect(await vmCopies(v.id)).toHaveLength(1);
    expect(d2.list()).toEqual([]);
  });

  it('takes a lease over only in the exact state the master judged dead, host VM lease included', async () => {
    const d = driver();
    const v = await vm('t');
    // host-2 held the VM under its host VM lease, and died.
    const h2 = hostVmLease({ datastorePath: ds, cluster: 'c', host: 'host-2', timeoutMs: 1000 });
    const hg = await h2.acquire();
    const vl = vmLease({ datastorePath: ds, cluster: 'c', vm: v.id, host: 'host-2', timeoutMs: 1000, hostLease: hg.generation });
    const g = await vl.acquire();
    const judged = `host-2:${g.generation}:${g.token}:${g.counter}:${g.generation}`;
    const spec = await d.loadSpec(v.id, v.path);
    // Wrong record, or the holder's host lease renewed since it was judged: not taken over.
    await expect(d.powerOn(spec, `host-2:${g.generation}:${g.token}:${g.counter + 1}:${g.generation}`)).rejects.toMatchObject({ code: 'ELEASEHELD' });
    const judgedHost = `${hg.generation}:${hg.token}:${hg.counter}`;
    await h2.renew();
    await expect(d.powerOn(spec, `${judged}/${judgedHost}`)).rejects.toMatchObject({ code: 'ELEASEHELD' });
    // As judged (host lease unchanged since): taken over.
    const h = await record(hostLeaseRecord('host-2'));
    await d.powerOn(spec, `${judged}/${h.generation}:${h.token}:${h.counter}`);
    expect(await record(vmLeaseRecord(v.id))).toMatchObject({ host: 'host-1', generation: g.generation + 1, hostLease: (await record(hostLeaseRecord())).generation });
    expect(await vmCopies(v.id)).toHaveLength(1);
  });

  it('never starts a second copy: concurrent power-ons, and a new driver right after construction', async () => {
    const d1 = driver();
    const v = await vm('c');
    const spec = await d1.loadSpec(v.id, v.path);
    await Promise.all([d1.powerOn(spec), d1.powerOn(spec), d1.powerOn(spec)]);
    const [pid] = await vmCopies(v.id);
    expect(await vmCopies(v.id)).toEqual([pid]);
    await d1.close();
    const d2 = driver();
    await d2.powerOn(spec); // before its first list reply, maybe: the daemon answers "already runs"
    expect(await vmCopies(v.id)).toEqual([pid]);
    expect(d2.list()).toEqual([expect.objectContaining({ id: v.id, pid })]);
  });

  it('keeps VMs running when the driver is closed; a new driver re-adopts them at once and through list', async () => {
    const d1 = driver();
    const v = await vm('e');
    await d1.powerOn(await d1.loadSpec(v.id, v.path));
    const pid = d1.list()[0]!.pid!;
    const dpid = await daemonPid(stateDirOf('host-1'));
    await until(() => readFileSync(vmdVmsFile(stateDirOf('host-1')), 'utf8').includes(`"pid":${pid},`), 5000, 'vmd-vms.json written');
    await d1.close();
    expect(alive(pid)).toBe(true);
    const d2 = driver();
    const events = recorder(d2);
    // Synchronously, from vmd-vms.json (the process is still there)...
    expect(d2.list()).toEqual([{ id: v.id, power: 'on', pid }]);
    // ...then from the daemon's list reply.
    await until(() => d2.list()[0]?.daemonPid === dpid, 5000, 'list reply');
    expect(d2.list()).toEqual([{ id: v.id, power: 'on', pid, daemonPid: dpid }]);
    expect(events).toEqual([]);
  });

  it('reports a VM killed from outside (killed) or exiting on its own (exited), and releases its lease', async () => {
    const d = driver();
    const events = recorder(d);
    const c = await vm('c');
    const x = await vm('x', 'sh', ['-c', 'sleep 0.2; exit 3']);
    await d.powerOn(await d.loadSpec(c.id, c.path));
    await d.powerOn(await d.loadSpec(x.id, x.path));
    process.kill(d.list().find((r) => r.id === c.id)!.pid!, 'SIGKILL');
    await until(() => events.length === 2, 5000, 'two stop events');
    expect(events).toEqual(
      expect.arrayContaining([
        { type: 'stopped', vm: c.id, reason: 'killed', detail: 'killed by SIGKILL' },
        { type: 'stopped', vm: x.id, reason: 'exited', detail: 'exited with code 3' },
      ]),
    );
    expect(d.list()).toEqual([]);
    expect(await record(vmLeaseRecord(c.id))).toMatchObject({ state: 'released' });
    expect(await record(vmLeaseRecord(x.id))).toMatchObject({ state: 'released' });
  });

  it('keeps stop events while no driver is connected, for the next one', async () => {
    const d1 = driver();
    const v = await vm('q');
    await d1.powerOn(await d1.loadSpec(v.id, v.path));
    const pid = d1.list()[0]!.pid!;
    await d1.close();
    process.kill(pid, 'SIGKILL');
    await until(() => !alive(pid));
    const d2 = driver();
    const events = recorder(d2);
    await until(() => events.length > 0, 5000, 'queued stop event');
    expect(events).toEqual([{ type: 'stopped', vm: v.id, reason: 'killed', detail: 'killed by SIGKILL' }]);
    expect(d2.list()).toEqual([]);
  });

  it('fails a power-on whose command cannot run (EPOWERON) and frees the lease', async () => {
    const d = driver();
    const v = await vm('bad', '/nonexistent/vm-binary');
    await expect(d.powerOn(await d.loadSpec(v.id, v.path))).rejects.toMatchObject({ code: 'EPOWERON', message: expect.stringMatching(/cannot start/) });
    expect(d.list()).toEqual([]);
    await expect(vmLease({ datastorePath: ds, cluster: 'c', vm: v.id, host: 'host-2', timeoutMs: 1000 }).acquire()).resolves.toBeTruthy();
  });

  it('a VM daemon killed with SIGKILL takes its VMs with it; the driver reports them once and starts a new daemon', async () => {
    const d = driver();
    const events = recorder(d);
    const { a, b, pids } = await twoRunning(d);
    const old = await daemonPid(stateDirOf('host-1'));
    const hostGen = (await record(hostLeaseRecord())).generation;
    process.kill(old, 'SIGKILL');
    // pdeathsig: the VMs die with their lease holder (or, if it died before a VM's setpriv had set
    // the death signal, the new daemon the driver starts kills that VM at once).
    await until(() => pids.every((p) => !alive(p)), 5000, 'VMs dead after their daemon').catch((err: Error) => {
      const st = pids.map((p) => { try { return readFileSync(`/proc/${p}/status`, 'utf8').split('\n').filter((l) => /^(Name|State|PPid)/.test(l)).join(' '); } catch { return `${p} gone`; } });
      throw new Error(`${err.message}: ${st.join(' | ')} ${readFileSync(join(stateDirOf('host-1'), 'vmd.log'), 'utf8')}`);
    });
    await until(() => events.length === 2, 5000, 'stop events');
    for (const e of events) expect(e).toMatchObject({ reason: 'killed', detail: expect.stringMatching(/VM daemon .*died/) });
    expect(d.list()).toEqual([]);
    // A new daemon serves the next power-on; its host VM lease is the next generation (its own
    // earlier record, taken over at once), and so is the VM's lease (its own held record).
    await d.powerOn(await d.loadSpec(a.id, a.path));
    const [r] = d.list();
    expect(r!.daemonPid).toBeDefined();
    expect(r!.daemonPid).not.toBe(old);
    expect(await record(hostLeaseRecord())).toMatchObject({ generation: hostGen + 1 });
    expect(await record(vmLeaseRecord(a.id))).toMatchObject({ host: 'host-1', generation: 2, hostLease: hostGen + 1 });
    // The new daemon's own report of the dead daemon's VMs was not passed on a second time.
    await until(() => d.list().length === 1 && d.list()[0]!.daemonPid === r!.daemonPid);
    expect(events.map((e) => e.vm).sort()).toEqual([a.id, b.id].sort());
  });

  it('a new VM daemon kills the VMs its dead predecessor left running (no pdeathsig) and reports them', async () => {
    const v = await vm('orphan');
    // What a daemon without setpriv leaves behind when it dies: its VM, and vmd-vms.json naming it.
    const orphan = spawn('sleep', ['1000'], { env: { ...process.env, VIGIL_VM: v.id }, detached: true, stdio: 'ignore' });
    orphan.unref();
    const pid = orphan.pid!;
    await until(async () => (await vmCopies(v.id)).length === 1);
    const stateDir = stateDirOf('host-1');
    await mkdir(stateDir, { recursive: true });
    await writeFile(vmdVmsFile(stateDir), JSON.stringify([{ vm: v.id, pid, startedAt: new Date().toISOString(), running: true }]));
    const d = driver();
    // The driver knows it at once (the process is there)...
    expect(d.list()).toEqual([{ id: v.id, power: 'on', pid }]);
    const events = recorder(d);
    // ...and the daemon it starts kills it (its lease holder is gone) and says so.
    await until(() => events.length === 1, 5000, 'stop event');
    expect(events[0]).toMatchObject({ vm: v.id, reason: 'killed', detail: expect.stringMatching(/had died.*was killed/) });
    await until(() => !alive(pid), 2000, 'orphan killed');
    expect(d.list()).toEqual([]);
  });

  it('self-fences when the host VM lease is lost (cluster directory renamed away): every VM of the datastore killed, reason fenced', async () => {
    const d = driver();
    const events = recorder(d);
    const { a, b, pids } = await twoRunning(d);
    const cdir = clusterDir(ds, 'c');
    const t0 = Date.now();
    await rename(cdir, `${cdir}-away`);
    await until(() => pids.every((p) => !alive(p)), timing.selfFenceDeadlineMs, 'VMs killed within the self-fence deadline');
    expect(Date.now() - t0).toBeLessThan(timing.selfFenceDeadlineMs);
    await until(() => events.length === 2);
    for (const e of events) expect(e).toMatchObject({ reason: 'fenced', detail: expect.stringMatching(/host VM lease on ds1 lost/) });
    expect(d.list()).toEqual([]);
    // The VM leases were abandoned, not released: they die with the host lease generation.
    await rename(`${cdir}-away`, cdir);
    expect(await record(vmLeaseRecord(a.id))).toMatchObject({ state: 'held', counter: 0 });
    // Storage back: a power-on acquires the host VM lease again (its own record) and runs.
    await d.powerOn(await d.loadSpec(a.id, a.path));
    expect(await vmCopies(a.id)).toHaveLength(1);
  });

  it('self-fences when renewals of the host VM lease fail until the deadline', async () => {
    const d = driver();
    const events = recorder(d);
    const a = await vm('a');
    await d.powerOn(await d.loadSpec(a.id, a.path));
    const pid = d.list()[0]!.pid!;
    // Break renewals (not the lease itself): the record path becomes a non-empty directory.
    const rec = hostLeaseRecord();
    const t0 = Date.now();
    // (A renewal may put the file back between rm and mkdir: retry until the directory is there.)
    await until(async () => {
      await rm(rec, { recursive: true, force: true });
      return mkdir(rec).then(
        () => true,
        () => false,
      );
    });
    await writeFile(join(rec, 'x'), '');
    await until(() => !alive(pid), timing.selfFenceDeadlineMs + 500, 'VM killed');
    // Killed one check period before the deadline, counted from the start of the last good renewal (before t0).
    expect(Date.now() - t0).toBeLessThan(timing.selfFenceDeadlineMs + 100);
    await until(() => events.length === 1);
    expect(events[0]).toMatchObject({ vm: a.id, reason: 'fenced', detail: expect.stringMatching(/self-fence deadline/) });
    expect(await record(vmLeaseRecord(a.id))).toMatchObject({ state: 'held', counter: 0 });
  });

  it('storage writes do not grow with the number of VMs: one host VM lease renewal per interval, VM leases never rewritten', async () => {
    const d = driver();
    const specs = [];
    for (let i = 1; i <= 20; i++) {
      const v = await vm(`w${i}`);
      specs.push(await d.loadSpec(v.id, v.path));
    }
    /** Over ~10 renewal intervals: host VM lease renewals, and writes seen in the VM lease directory. */
    const measure = async (n: number) => {
      const leaseDir = vmLeaseDir(ds, 'c');
      const before = await Promise.all(specs.slice(0, n).map(async (s) => [await readFile(vmLeaseRecord(s.id), 'utf8'), (await stat(vmLeaseRecord(s.id))).mtimeMs]));
      let vmLeaseWrites = 0;
      const w = watch(leaseDir, () => vmLeaseWrites++);
      const c0 = (await record(hostLeaseRecord())).counter;
      const t0 = Date.now();
      await until(async () => (await record(hostLeaseRecord())).counter >= c0 + 10, 5000, 'ten renewals');
      const ms = Date.now() - t0;
      w.close();
      const after = await Promise.all(specs.slice(0, n).map(async (s) => [await readFile(vmLeaseRecord(s.id), 'utf8'), (await stat(vmLeaseRecord(s.id))).mtimeMs]));
      return { ms, vmLeaseWrites, unchanged: JSON.stringify(after) === JSON.stringify(before) };
    };
    await d.powerOn(specs[0]!);
    const one = await measure(1);
    for (const s of specs.slice(1)) await d.powerOn(s);
    expect(d.list()).toHaveLength(20);
    const twenty = await measure(20);
    for (const m of [one, twenty]) {
      expect(m.vmLeaseWrites).toBe(0);
      expect(m.unchanged).toBe(true);
      // Ten renewals take about ten intervals, whatever the number of VMs (never one per VM).
      expect(m.ms).toBeGreaterThanOrEqual(9 * timing.storageHeartbeatIntervalMs - 50);
    }
    for (const s of specs) expect(await record(vmLeaseRecord(s.id))).toMatchObject({ counter: 0, state: 'held' });
  });

  it('answers malformed requests with errors and keeps serving', async () => {
    const d = driver();
    const v = await vm('m');
    await d.powerOn(await d.loadSpec(v.id, v.path));
    const stateDir = stateDirOf('host-1');
    const replies: Record<string, unknown>[] = [];
    const sock = connect({ path: vmdSocketName(stateDir) });
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (c: string) => {
      buf += c;
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) replies.push(JSON.parse(l) as Record<string, unknown>);
    });
    await new Promise((r) => sock.once('connect', r));
    sock.write('{"id":1,"op":"list"}\n'); // no hello yet
    sock.write('not json\n');
    sock.write(`{"id":2,"op":"hello","token":"${readFileSync(join(stateDir, 'vmd.token'), 'utf8').trim()}"}\n`);
    sock.write('{"id":3,"op":"reboot"}\n');
    sock.write('{"id":4,"op":"powerOn","vm":"../x","specPath":"/x","datastore":"ds1","takeover":""}\n');
    sock.write('x'.repeat(2 * 1024 * 1024) + '\n');
    sock.write('[1,2]\n');
    sock.write('{"id":5,"op":"list"}\n');
    await until(() => replies.some((r) => r.id === 5), 5000, 'list reply');
    sock.destroy();
    expect(replies.find((r) => r.id === 1)).toMatchObject({ ok: false, code: 'EPERM' });
    expect(replies.find((r) => r.id === 2)).toMatchObject({ ok: true, host: 'host-1', cluster: 'c' });
    expect(replies.find((r) => r.id === 3)).toMatchObject({ ok: false, code: 'EPROTO' });
    expect(replies.find((r) => r.id === 4)).toMatchObject({ ok: false, code: 'EPROTO' });
    expect(replies.filter((r) => r.id === null && r.code === 'EPROTO')).toHaveLength(3); // not JSON, too long, not an object
    expect(replies.find((r) => r.id === 5)).toMatchObject({ ok: true, vms: [expect.objectContaining({ vm: v.id })] });
    // A wrong token is refused.
    await expect(
      new Promise((res, rej) => {
        const s = connect({ path: vmdSocketName(stateDir) }, () => s.write('{"id":1,"op":"hello","token":"00"}\n'));
        s.setEncoding('utf8');
        s.on('data', (c: string) => (JSON.parse(c.split('\n')[0]!).ok ? res('accepted') : rej(new Error('refused'))));
      }),
    ).rejects.toThrow('refused');
    expect(d.list()).toHaveLength(1);
  });

  it('exits on request only when no VM runs, releasing its host VM leases', async () => {
    const d = driver();
    const v = await vm('x');
    await d.powerOn(await d.loadSpec(v.id, v.path));
    const stateDir = stateDirOf('host-1');
    const pid = await daemonPid(stateDir);
    await expect(vmdRequest(stateDir, { op: 'exit' })).rejects.toMatchObject({ code: 'EBUSY' });
    await d.powerOff(v.id);
    await d.close();
    await expect(vmdRequest(stateDir, { op: 'exit' })).resolves.toMatchObject({ ok: true });
    await until(() => !alive(pid), 5000, 'daemon gone');
    expect(await record(hostLeaseRecord())).toMatchObject({ state: 'released' });
  });

  it('starts no VM daemon for a host that runs no VM, until a power-on needs one', async () => {
    const d = driver();
    const v = await vm('lazy');
    // Stopping what does not run needs no daemon: the driver finds none and answers at once.
    await d.powerOff(v.id);
    await d.shutdown(v.id, 1000);
    expect(vmdProcesses(stateDirOf('host-1'))).toEqual([]);
    expect(d.list()).toEqual([]);
    await d.powerOn(await d.loadSpec(v.id, v.path));
    expect(vmdProcesses(stateDirOf('host-1'))).toHaveLength(1);
  });

  it('runs one VM daemon per state directory, however many drivers start at once', async () => {
    const ds1 = [driver(), driver(), driver()];
    const v = await vm('one');
    await Promise.all(ds1.map(async (d) => d.powerOn(await d.loadSpec(v.id, v.path))));
    const pids = new Set(ds1.map((d) => d.list()[0]!.daemonPid));
    await until(() => ds1.every((d) => d.list()[0]?.daemonPid !== undefined));
    expect(new Set(ds1.map((d) => d.list()[0]!.daemonPid)).size).toBe(1);
    expect(pids.size).toBe(1);
    // The extra daemons the drivers may have started found the socket taken and exited.
    await until(() => vmdProcesses(stateDirOf('host-1')).length === 1, 5000, 'a single daemon');
    expect(await vmCopies(v.id)).toHaveLength(1);
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
