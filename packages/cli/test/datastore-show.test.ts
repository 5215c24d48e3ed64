import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  clusterDir,
  formatPoweron,
  formatProtectedList,
  LeaseFile,
  poweredoffDir,
  vmLease,
  writeFileAtomic,
  writePoweredOff,
} from '@vigil/datastore';
import { VIGIL_BIN } from '@vigil/cli';
import {
  DatastoreUnreadableError,
  formatReport,
  resolveDatastore,
  sampleDatastore,
  type DatastoreReport,
  type ResolvedDatastore,
} from '../src/datastore-report.js';

let root: string;
let ds: string;
let dir: string;
const CLUSTER = 'c';
const timers: NodeJS.Timeout[] = [];

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'vigil-dsshow-'));
  ds = join(root, 'ds1');
  dir = clusterDir(ds, CLUSTER);
  await mkdir(dir, { recursive: true });
});
afterEach(async () => {
  for (const t of timers.splice(0)) clearInterval(t);
  await rm(root, { recursive: true, force: true });
});

const lease = (name: string, host: string, recordName?: string) =>
  new LeaseFile({ dir, name, host, timeoutMs: 2000, ...(recordName ? { recordName } : {}) });

function target(over: Partial<ResolvedDatastore> = {}): ResolvedDatastore {
  return {
    name: 'ds1',
    path: ds,
    cluster: CLUSTER,
    clusterDir: dir,
    configFile: null,
    leaseTimeoutMs: 400,
    leaseTimeoutSource: 'config',
    storageHeartbeatIntervalMs: 100,
    callTimeoutMs: 2000,
    heartbeatHosts: null,
    notes: [],
    ...over,
  };
}

/** A datastore in every state `show` must handle. Returns the leases renewed by a timer. */
async function populate(): Promise<void> {
  // host-1: alive (renewed by a timer); also holds protectedlist.
  const hb1 = lease('host-1-hb', 'host-1');
  await hb1.acquire();
  const pl = lease('protectedlist', 'host-1', 'protectedlist.owner');
  await pl.acquire();
  timers.push(setInterval(() => void hb1.renew().catch(() => {}), 40));
  timers.push(setInterval(() => void pl.renew().catch(() => {}), 40));
  // host-2: held, then never renewed again (crashed holder).
  const hb2 = lease('host-2-hb', 'host-2');
  await hb2.acquire();
  await hb2.renew();
  hb2.abandon();
  // host-4: stopped cleanly.
  const hb4 = lease('host-4-hb', 'host-4');
  await hb4.acquire();
  await hb4.release();

  await writeFileAtomic(join(dir, 'host-1-poweron'), formatPoweron({ isolated: false, vms: ['ds1:vms/b.json', 'ds1:vms/a.json'] }), 2000);
  await writeFile(join(dir, 'host-2-poweron'), '1\nds1:vms/c.json'); // truncated: no final newline
  await mkdir(join(dir, 'host-3-poweron')); // a directory where a file should be
  await writeFileAtomic(join(dir, 'host-4-poweron'), formatPoweron({ isolated: true, vms: [] }), 2000);
  await writeFile(join(dir, 'protectedlist'), '\u0000\u0001garbage\n');
  await writeFile(join(dir, 'datastore-id'), 'ds1 0e1f2d3c\n');

  const po = poweredoffDir(ds, CLUSTER);
  await writePoweredOff(po, { vm: 'ds1:vms/c.json', host: 'host-2' }, 2000);
  await writeFile(join(po, 'not-a-vm-id'), 'junk\n');
  await writeFile(join(po, '.ds1%3Avms%2Fd.json.123.abcd.tmp'), ''); // mid-write: never read

  const vl = vmLease({ datastorePath: ds, cluster: CLUSTER, vm: 'ds1:vms/a.json', host: 'host-1', timeoutMs: 2000 });
  await vl.acquire();
}

const hostOf = (rep: DatastoreReport, h: string) => rep.hosts.find((x) => x.host === h);

describe('vigil datastore show: the report', () => {
  it('judges heartbeats by change and reports every corrupt file without failing', async () => {
    await populate();
    const rep = await sampleDatastore(target({ heartbeatHosts: ['host-1', 'host-2', 'host-3', 'host-5'] }), { windowMs: 600 });

    expect(rep).toMatchObject({ datastore: 'ds1', path: ds, cluster: CLUSTER, windowMs: 600, leaseTimeoutMs: 400, datastoreId: 'ds1 0e1f2d3c', timedOut: false });
    expect(rep.observedMs).toBeGreaterThanOrEqual(600);
    expect(rep.samples).toBeGreaterThan(2);

    expect(rep.protectedlist).toMatchObject({ owner: 'host-1', generation: 1, alive: true, lease: 'alive', state: 'held', lock: true, vms: [] });
    expect(rep.protectedlist.error).toMatch(/protectedlist: missing or bad header line/);

    expect(rep.hosts.map((h) => h.host)).toEqual(['host-1', 'host-2', 'host-3', 'host-4', 'host-5']);
    expect(hostOf(rep, 'host-1')).toMatchObject({ heartbeat: 'alive', released: false, generation: 1, isolated: false, vms: ['ds1:vms/a.json', 'ds1:vms/b.json'] });
    expect(hostOf(rep, 'host-1')!.error).toBeUndefined();
    // Unchanged for a window >= the lease timeout: dead. Its poweron is truncated.
    expect(hostOf(rep, 'host-2')).toMatchObject({ heartbeat: 'dead', released: false, generation: 1, isolated: null, vms: [] });
    expect(hostOf(rep, 'host-2')!.error).toMatch(/host-2-poweron: truncated/);
    // No heartbeat record but configured to heartbeat here: dead. Its poweron is a directory.
    expect(hostOf(rep, 'host-3')).toMatchObject({ heartbeat: 'dead', generation: null, isolated: null, vms: [], heartbeatDatastore: true });
    expect(hostOf(rep, 'host-3')!.error).toMatch(/host-3-poweron: EISDIR/);
    // Released: dead, flagged released. Not configured here (found by its files).
    expect(hostOf(rep, 'host-4')).toMatchObject({ heartbeat: 'dead', released: true, isolated: true, vms: [], heartbeatDatastore: false });
    // Configured, no file at all: dead.
    expect(hostOf(rep, 'host-5')).toMatchObject({ heartbeat: 'dead', generation: null, isolated: null, vms: [] });

    expect(rep.poweredoff).toEqual(['ds1:vms/c.json']);
    expect(rep.invalid).toEqual(['poweredoff/not-a-vm-id']);
    expect(rep.vmLeases).toEqual(['ds1:vms/a.json']);
    expect(rep.errors.map((e) => e.file).sort()).toEqual(['host-2-poweron', 'host-3-poweron', 'protectedlist']);

    const text = formatReport(rep);
    expect(text).toMatch(/protectedlist +owned by host-1, generation 1: alive/);
    expect(text).toMatch(/^host-4 +dead \(released\)/m);
    expect(text).toMatch(/^ {2}host-3-poweron: EISDIR/m);
    expect(text).toMatch(/^ {2}poweredoff\/not-a-vm-id: not a valid name/m);
    // JSON-serializable as is.
    expect(JSON.parse(JSON.stringify(rep))).toEqual(rep);
  });

  it('calls an unchanged record unknown, not dead, when the window is shorter than the lease timeout', async () => {
    await populate();
    const rep = await sampleDatastore(target({ leaseTimeoutMs: 5000 }), { windowMs: 300 });
    expect(hostOf(rep, 'host-1')!.heartbeat).toBe('alive');
    expect(hostOf(rep, 'host-2')!.heartbeat).toBe('unknown');
    expect(hostOf(rep, 'host-4')).toMatchObject({ heartbeat: 'dead', released: true });
    // Not configured anywhere (no config): a host with only a poweron file is not judged.
    expect(hostOf(rep, 'host-3')).toMatchObject({ heartbeat: 'unknown', heartbeatDatastore: null });
    expect(hostOf(rep, 'host-5')).toBeUndefined();
    expect(rep.notes.join('\n')).toMatch(/window 300 ms < lease timeout 5000 ms/);
  });

  it('shows a valid protectedlist, its owner release, and the first 20 protected VMs', async () => {
    const pl = lease('protectedlist', 'host-7', 'protectedlist.owner');
    const h = await pl.acquire();
    const vms = Array.from({ length: 25 }, (_, i) => `ds1:vms/vm-${String(i).padStart(2, '0')}.json`);
    await writeFileAtomic(join(dir, 'protectedlist'), formatProtectedList({ owner: 'host-7', generation: h.generation, vms }), 2000);
    await pl.release();
    const rep = await sampleDatastore(target(), { windowMs: 100 });
    expect(rep.protectedlist).toMatchObject({ owner: null, generation: 1, alive: false, lease: 'released', state: 'released', lock: false, listOwner: 'host-7', listGeneration: 1 });
    expect(rep.protectedlist.vms).toEqual(vms);
    expect(rep.protectedlist.error).toBeUndefined();
    expect(rep.hosts).toEqual([]);
    const text = formatReport(rep);
    expect(text).toMatch(/no owner \(released/);
    expect(text).toContain('ds1:vms/vm-19.json');
    expect(text).not.toContain('ds1:vms/vm-20.json');
    expect(text).toMatch(/\.\.\. and 5 more/);
  });

  it('reports a read that never answers as a timeout instead of hanging', async () => {
    const fifo = join(dir, 'host-6-poweron');
    execFileSync('mkfifo', [fifo]); // reading a FIFO without a writer blocks, like a hung mount
    try {
      const started = Date.now();
      const rep = await sampleDatastore(target({ callTimeoutMs: 200 }), { windowMs: 0 });
      expect(Date.now() - started).toBeLessThan(2000);
      expect(rep.timedOut).toBe(true);
      expect(hostOf(rep, 'host-6')!.error).toMatch(/host-6-poweron: timeout/);
      expect(rep.errors).toContainEqual({ file: 'host-6-poweron', error: expect.stringMatching(/^timeout/) });
    } finally {
      // Unblock the libuv thread still waiting in open(2).
      try {
        closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        /* no reader left */
      }
    }
  });

  it('fails (exit 1) only when the datastore directory itself cannot be read', async () => {
    const t = target({ clusterDir: join(ds, '.vigil-ha', 'absent'), cluster: 'absent' });
    await expect(sampleDatastore(t, { windowMs: 0 })).rejects.toBeInstanceOf(DatastoreUnreadableError);
    await expect(sampleDatastore(t, { windowMs: 0 })).rejects.toMatchObject({ exitCode: 1 });
  });
});

describe('vigil datastore show: resolving NAME|PATH', () => {
  const noDefault = { defaultConfigFile: '/nonexistent/vigil/cluster.json' };

  async function writeConfig(datastores: Record<string, string>): Promise<string> {
    const file = join(root, 'cluster.json');
    await writeFile(
      file,
      JSON.stringify({
        cluster: CLUSTER,
        secretFile: join(root, 'secret'),
        hosts: { 'host-1': { address: '127.0.0.11' }, 'host-2': { address: '127.0.0.12', datastores: ['other'] } },
        datastores,
        timing: { profile: 'fast' },
      }),
    );
    return file;
  }

  it('by path: finds the only cluster, and refuses to guess among several', async () => {
    const r = await resolveDatastore(ds, noDefault);
    expect(r).toMatchObject({ name: null, path: ds, cluster: CLUSTER, clusterDir: dir, leaseTimeoutSource: 'assumed', heartbeatHosts: null });
    await mkdir(clusterDir(ds, 'other-cluster'));
    await expect(resolveDatastore(ds, noDefault)).rejects.toMatchObject({ exitCode: 2, message: expect.stringMatching(/several clusters \(c, other-cluster\).*--cluster/) });
    expect((await resolveDatastore(ds, { ...noDefault, cluster: 'other-cluster' })).cluster).toBe('other-cluster');
    await expect(resolveDatastore(ds, { ...noDefault, cluster: 'nope' })).rejects.toMatchObject({ exitCode: 2, message: expect.stringMatching(/clusters on this datastore: c, other-cluster/) });
  });

  it('by path: a missing path, a file, or a directory without .vigil-ha is a usage error', async () => {
    await expect(resolveDatastore(join(root, 'missing'), noDefault)).rejects.toMatchObject({ exitCode: 2, message: expect.stringMatching(/no such directory/) });
    await writeFile(join(root, 'file'), 'x');
    await expect(resolveDatastore(join(root, 'file'), noDefault)).rejects.toMatchObject({ exitCode: 2, message: expect.stringMatching(/not a directory/) });
    await expect(resolveDatastore(root, noDefault)).rejects.toMatchObject({ exitCode: 2, message: expect.stringMatching(/no \.vigil-ha\/ directory/) });
  });

  it('by name with a config: cluster, timing and heartbeat hosts come from it', async () => {
    const cfg = await writeConfig({ ds1: ds, other: join(root, 'other') });
    const r = await resolveDatastore('ds1', { config: cfg });
    expect(r).toMatchObject({ name: 'ds1', path: ds, cluster: CLUSTER, configFile: cfg, leaseTimeoutMs: 1700, leaseTimeoutSource: 'config', storageHeartbeatIntervalMs: 500 });
    expect(r.heartbeatHosts).toEqual(['host-1']);
    // A path that is a configured datastore gets its name.
    expect((await resolveDatastore(ds, { config: cfg })).name).toBe('ds1');
    await expect(resolveDatastore('nope', { config: cfg })).rejects.toMatchObject({ exitCode: 2, message: expect.stringMatching(/"nope" is neither a datastore of .* \(ds1, other\)/) });
    // The default config is used when it exists.
    expect((await resolveDatastore('ds1', { defaultConfigFile: cfg })).name).toBe('ds1');
    // A configured datastore whose cluster directory is missing: resolution works, reading fails with exit 1.
    await mkdir(join(root, 'other'));
    const other = await resolveDatastore('other', { config: cfg });
    await expect(sampleDatastore(other, { windowMs: 0 })).rejects.toMatchObject({ exitCode: 1, message: expect.stringMatching(/not mounted/) });
  });
});

describe('vigil datastore show: the command', () => {
  // Asynchronous: the renewal timers of this process must keep running while the CLI samples.
  const run = (...args: string[]) =>
    new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [VIGIL_BIN, 'datastore', 'show', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.on('error', reject);
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });

  it('prints parseable JSON for a path (exit 0) and refuses an unknown name (exit 2)', async () => {
    await populate();
    const ok = await run(ds, '--json', '--window', '200');
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    const rep = JSON.parse(ok.stdout) as DatastoreReport;
    expect(rep).toMatchObject({ datastore: null, path: ds, cluster: CLUSTER, windowMs: 200 });
    expect(rep.protectedlist.owner).toBe('host-1');
    expect(rep.hosts.map((h) => [h.host, h.heartbeat])).toEqual([
      ['host-1', 'alive'],
      ['host-2', 'unknown'],
      ['host-3', 'unknown'],
      ['host-4', 'dead'],
    ]);
    expect(rep.errors.length).toBe(3);

    const human = await run(ds, '--window', '100');
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(/^HOST +HEARTBEAT +GENERATION +ISOLATED +VMS/m);

    const cfg = join(root, 'cluster.json');
    await writeFile(cfg, JSON.stringify({ cluster: CLUSTER, secretFile: '/x', hosts: { 'host-1': { address: '127.0.0.11' } }, datastores: { ds1: ds } }));
    const bad = await run('nope', '--config', cfg);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/"nope" is neither a datastore/);
    expect((await run(join(root, 'missing'))).status).toBe(2);
    expect((await run(ds, '--window', 'soon')).status).toBe(2);
  });

  it('exits promptly when a read hangs, reporting a timeout', async () => {
    const cfg = join(root, 'cluster.json');
    await writeFile(
      cfg,
      JSON.stringify({ cluster: CLUSTER, secretFile: '/x', hosts: { 'host-1': { address: '127.0.0.11' } }, datastores: { ds1: ds }, timing: { profile: 'fast' } }),
    );
    await writeFile(join(dir, 'host-1-poweron'), '0\n');
    execFileSync('mkfifo', [join(dir, 'host-2-poweron')]);
    const started = Date.now();
    const res = await run('ds1', '--config', cfg, '--json', '--window', '100');
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(res.status).toBe(0);
    const rep = JSON.parse(res.stdout) as DatastoreReport;
    expect(rep.timedOut).toBe(true);
    expect(rep.errors).toContainEqual({ file: 'host-2-poweron', error: expect.stringMatching(/^timeout/) });
  });
});
