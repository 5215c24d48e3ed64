/**
 * The libvirt driver with a real libvirtd and real QEMU domains (small diskless ones: no guest OS,
 * 64 MiB, TCG), in a temp dir: power on/off/shutdown under the VM lease, a crash (QEMU killed)
 * reported from libvirt's events, a second host refused while the first holds the lease,
 * self-fencing, the VM daemon's death (libvirtd destroys its domains: --autodestroy), domains of
 * an earlier life destroyed before anything starts, and guest watchdog resets that are not
 * crashes. Copies of a VM are counted as QEMU processes with the VM's UUID.
 *
 * Needs libvirtd answering on qemu:///system (scripts/libvirt-setup.sh, which .ci/run calls);
 * otherwise the libvirtd part is skipped with the reason (VIGIL_LIBVIRT_SKIP, set by .ci/run when
 * the setup failed, or what `virsh version` said). The file-format part always runs.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile, mkdir, readFile, rename } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  checkLibvirt,
  domainName,
  LibvirtDriver,
  parseDomainXml,
  parseEventLine,
  prepareDomainXml,
  readLibvirtVm,
  vmdId,
  vmdRequest,
  vmdVmsFile,
  type DriverEvent,
} from '@vigil/drivers';
import { clusterDir, parseLeaseRecord, vmFileName, vmLease, vmLeaseDir, type LeaseRecord } from '@vigil/datastore';
import { killVmds, until } from './helpers.js';

const URI = 'qemu:///system';
const skipReason = process.env.VIGIL_LIBVIRT_SKIP || checkLibvirt(URI);
if (skipReason) console.warn(`libvirt driver tests with libvirtd SKIPPED: ${skipReason}`);

const timing = { storageHeartbeatIntervalMs: 100, selfFenceDeadlineMs: 1300, storageCallTimeoutMs: 700, heartbeatIntervalMs: 100 };

let root: string;
let ds: string;
let tag: string;
let cluster: string;
const drivers: LibvirtDriver[] = [];

function virsh(...args: string[]): string {
  return execFileSync('virsh', ['-q', '-c', URI, ...args], { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
}

function stateDirOf(host: string): string {
  return join(root, host);
}

function driver(host = 'host-1'): LibvirtDriver {
  const d = new LibvirtDriver({ host, cluster, datastores: { ds1: ds }, stateDir: stateDirOf(host), timing, shutdownTimeoutMs: 1000, uri: URI });
  drivers.push(d);
  return d;
}

function recorder(d: LibvirtDriver): DriverEvent[] {
  const events: DriverEvent[] = [];
  d.onEvent((e) => events.push(e));
  return events;
}

const I6300ESB = "<watchdog model='i6300esb' action='reset'/>";

/** A diskless domain: 64 MiB, no guest OS, a watchdog (libvirt 9.0 takes one at most). */
function domainXml(name: string, uuid: string, watchdog = I6300ESB): string {
  return `<domain type='qemu'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <serial type='pty'/>
    ${watchdog}
  </devices>
</domain>
`;
}

/** A libvirt VM on ds1: `<name>-<tag>.json` naming `<name>-<tag>.xml`. */
async function vm(name: string, watchdog = I6300ESB): Promise<{ id: string; path: string; uuid: string; name: string }> {
  await mkdir(join(ds, 'vms'), { recursive: true });
  const unique = `${name}-${tag}`;
  const uuid = randomUUID();
  await writeFile(join(ds, 'vms', `${unique}.xml`), domainXml(`${name}-as-written`, uuid, watchdog));
  const path = join(ds, 'vms', `${unique}.json`);
  await writeFile(path, JSON.stringify({ name: unique, domainXml: `${unique}.xml`, restartPriority: 'high' }));
  return { id: `ds1:vms/${unique}.json`, path, uuid, name: unique };
}

/** Live QEMU processes whose command line carries this UUID: the copies of a VM on this machine, whichever host (domain name) runs them. */
function qemuCopies(uuid: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (!argv[0]?.includes('qemu-system') || argv[argv.indexOf('-uuid') + 1] !== uuid) continue;
      if (/^\d+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${e}/stat`, 'utf8'))) continue;
      out.push(Number(e));
    } catch {
      /* gone */
    }
  }
  return out.sort((a, b) => a - b);
}

/** Domains of this test (their names carry its tag). */
function testDomains(): string[] {
  return virsh('list', '--all', '--name')
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.includes(tag));
}

async function record(path: string): Promise<LeaseRecord> {
  const p = parseLeaseRecord(await readFile(path, 'utf8'));
  if (!p.ok) throw new Error(`${path}: ${p.error}`);
  return p.value;
}
const vmLeaseRecord = (id: string) => join(vmLeaseDir(ds, cluster), `${vmFileName(id)}.lease`);
const hostLeaseRecord = (host = 'host-1') => join(clusterDir(ds, cluster), `${host}-vm`);

async function daemonPid(stateDir: string): Promise<number> {
  return Number((await vmdRequest(stateDir, { op: 'list' })).pid);
}

describe.skipIf(!!skipReason)('libvirt driver with libvirtd and QEMU', () => {
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'vigil-lv-'));
    tag = root.slice(-6).replace(/[^A-Za-z0-9]/g, 'x').toLowerCase();
    cluster = `c-${tag}`;
    ds = join(root, 'ds1');
    await mkdir(join(ds, '.vigil-ha', cluster), { recursive: true });
  });

  afterEach(async () => {
    for (const d of drivers.splice(0)) await d.close();
    await killVmds(root);
    // Their domains die with their connections; anything else of this test goes now.
    for (const n of testDomains()) {
      try {
        virsh('destroy', n);
      } catch {
        /* not running */
      }
      try {
        virsh('undefine', n);
      } catch {
        /* transient */
      }
    }
    await rm(root, { recursive: true, force: true });
  });

  it('powers a domain on under its VM lease (transient, named for the host), never twice, lists it, powers it off and releases the lease', async () => {
    const d = driver();
    const events = recorder(d);
    const v = await vm('a');
    const spec = await d.loadSpec(v.id, v.path);
    expect(spec).toMatchObject({ id: v.id, name: v.name, datastore: 'ds1', memoryMB: 64, cpus: 1, restartPriority: 'high' });
    const t0 = Date.now();
    await Promise.all([d.powerOn(spec), d.powerOn(spec), d.powerOn(spec)]);
    const startMs = Date.now() - t0;
    const [r] = d.list();
    const name = domainName('host-1', cluster, vmdId(stateDirOf('host-1')), v.id, v.name);
    expect(r).toMatchObject({ id: v.id, power: 'on', domain: name, daemonPid: await daemonPid(stateDirOf('host-1')) });
    expect(name).toMatch(new RegExp(`^vigil-host-1-${v.name}-[0-9a-f]{8}$`));
    expect(qemuCopies(v.uuid)).toEqual([r!.pid]);
    expect(virsh('domstate', name).trim()).toBe('running');
    expect(virsh('dominfo', name)).toMatch(/Persistent:\s+no/);
    // Vigil's metadata names the VM, cluster, host and daemon.
    expect(parseDomainXml(virsh('dumpxml', name)).vigil).toEqual({ cluster, host: 'host-1', daemon: vmdId(stateDirOf('host-1')), vm: v.id });
    const host = await record(hostLeaseRecord());
    expect(await record(vmLeaseRecord(v.id))).toMatchObject({ host: 'host-1', state: 'held', counter: 0, hostLease: host.generation });
    const other = vmLease({ datastorePath: ds, cluster, vm: v.id, host: 'host-2', timeoutMs: 1000 });
    await expect(other.acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
    await d.powerOff(v.id);
    expect(events).toEqual([{ type: 'stopped', vm: v.id, reason: 'requested', detail: 'hard power off through Vigil' }]);
    expect(d.list()).toEqual([]);
    expect(qemuCopies(v.uuid)).toEqual([]);
    expect(testDomains()).toEqual([]); // transient: nothing stays defined
    expect(await record(vmLeaseRecord(v.id))).toMatchObject({ state: 'released' });
    await expect(other.acquire()).resolves.toBeTruthy();
    console.log(`libvirt: power-on of a diskless domain took ${startMs} ms`);
  });

  it('shuts a domain down, and forces it off after the timeout when the guest ignores ACPI (no guest OS)', async () => {
    const d = driver();
    const events = recorder(d);
    const v = await vm('s');
    await d.powerOn(await d.loadSpec(v.id, v.path));
    const t0 = Date.now();
    await d.shutdown(v.id, 500);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(480);
    expect(events).toEqual([{ type: 'stopped', vm: v.id, reason: 'requested', detail: 'graceful shutdown through Vigil; forced off after the timeout' }]);
    expect(qemuCopies(v.uuid)).toEqual([]);
    expect(await record(vmLeaseRecord(v.id))).toMatchObject({ state: 'released' });
    // Stopping what does not run is a no-op.
    await d.powerOff(v.id);
    expect(events).toHaveLength(1);
  });

  it('reports a crash (QEMU killed) from libvirt events within seconds, releases the lease, and powers it on again', async () => {
    const d = driver();
    const events = recorder(d);
    const v = await vm('k');
    const spec = await d.loadSpec(v.id, v.path);
    await d.powerOn(spec);
    const [pid] = qemuCopies(v.uuid);
    expect(d.list()[0]!.pid).toBe(pid);
    const t0 = Date.now();
    process.kill(pid!, 'SIGKILL');
    await until(() => events.length === 1, 8000, 'stop event');
    const ms = Date.now() - t0;
    // From the event stream (libvirt notices in about 1.5 s here), not from the 5 s poll.
    expect(events[0]).toEqual({ type: 'stopped', vm: v.id, reason: 'killed', detail: 'QEMU died (killed or crashed)' });
    expect(ms).toBeLessThan(5000);
    expect(d.list()).toEqual([]);
    expect(await record(vmLeaseRecord(v.id))).toMatchObject({ state: 'released' });
    // VM monitoring restarts it on the same host: one copy again.
    await d.powerOn(spec);
    expect(qemuCopies(v.uuid)).toHaveLength(1);
    console.log(`libvirt: QEMU killed -> stopped event after ${ms} ms`);
  });

  it("a second host's VM daemon cannot power on a domain whose lease host-1 holds (ELEASEHELD): one QEMU process", async () => {
    const d1 = driver('host-1');
    const d2 = driver('host-2');
    const v = await vm('two');
    await d1.powerOn(await d1.loadSpec(v.id, v.path));
    await expect(d2.powerOn(await d2.loadSpec(v.id, v.path))).rejects.toMatchObject({ code: 'ELEASEHELD' });
    expect(qemuCopies(v.uuid)).toHaveLength(1);
    expect(d2.list()).toEqual([]);
    expect(testDomains().filter((n) => n.startsWith('vigil-host-2-'))).toEqual([]);
    // Once host-1 powers it off, host-2 may.
    await d1.powerOff(v.id);
    await d2.powerOn(await d2.loadSpec(v.id, v.path));
    expect(qemuCopies(v.uuid)).toHaveLength(1);
    expect(d2.list()[0]!.domain).toMatch(/^vigil-host-2-/);
  });

  it('self-fences when the host VM lease is lost: every domain of the datastore destroyed at once, reason fenced, VM leases abandoned', async () => {
    const d = driver();
    const events = recorder(d);
    const a = await vm('fa');
    const b = await vm('fb');
    await d.powerOn(await d.loadSpec(a.id, a.path));
    await d.powerOn(await d.loadSpec(b.id, b.path));
    const cdir = clusterDir(ds, cluster);
    const t0 = Date.now();
    await rename(cdir, `${cdir}-away`);
    await until(() => qemuCopies(a.uuid).length === 0 && qemuCopies(b.uuid).length === 0, timing.selfFenceDeadlineMs, 'QEMU processes killed within the self-fence deadline');
    const ms = Date.now() - t0;
    await until(() => events.length === 2, 5000, 'fenced events');
    for (const e of events) expect(e).toMatchObject({ reason: 'fenced', detail: expect.stringMatching(/host VM lease on ds1 lost/) });
    expect(d.list()).toEqual([]);
    await until(() => testDomains().length === 0, 10_000, 'domains gone from libvirt');
    await rename(`${cdir}-away`, cdir);
    expect(await record(vmLeaseRecord(a.id))).toMatchObject({ state: 'held', counter: 0 });
    // Storage back: powered on again (its own lease records), one copy.
    await d.powerOn(await d.loadSpec(a.id, a.path));
    expect(qemuCopies(a.uuid)).toHaveLength(1);
    console.log(`libvirt: self-fence killed 2 domains ${ms} ms after the lease was lost`);
  });

  it('a VM daemon killed with SIGKILL takes its domains with it (libvirtd destroys them: --autodestroy); a new daemon runs the next power-on', async () => {
    const d = driver();
    const events = recorder(d);
    const a = await vm('da');
    const b = await vm('db');
    await d.powerOn(await d.loadSpec(a.id, a.path));
    await d.powerOn(await d.loadSpec(b.id, b.path));
    const old = await daemonPid(stateDirOf('host-1'));
    const hostGen = (await record(hostLeaseRecord())).generation;
    const t0 = Date.now();
    process.kill(old, 'SIGKILL');
    await until(() => qemuCopies(a.uuid).length === 0 && qemuCopies(b.uuid).length === 0, 10_000, 'domains destroyed after their daemon died');
    const ms = Date.now() - t0;
    await until(() => events.length === 2, 5000, 'stop events');
    for (const e of events) expect(e).toMatchObject({ reason: 'killed', detail: expect.stringMatching(/VM daemon .*died/) });
    await d.powerOn(await d.loadSpec(a.id, a.path));
    expect(d.list()[0]!.daemonPid).not.toBe(old);
    expect(qemuCopies(a.uuid)).toHaveLength(1);
    expect(qemuCopies(b.uuid)).toHaveLength(0);
    expect(await record(hostLeaseRecord())).toMatchObject({ generation: hostGen + 1 });
    expect(await record(vmLeaseRecord(a.id))).toMatchObject({ host: 'host-1', state: 'held', hostLease: hostGen + 1 });
    await until(() => d.list().length === 1, 2000);
    expect(events.map((e) => e.vm).sort()).toEqual([a.id, b.id].sort());
    console.log(`libvirt: VM daemon killed -> its domains gone after ${ms} ms`);
  });

  it('destroys domains of an earlier life of its daemon before anything starts; leaves other clusters\' domains alone', async () => {
    const stateDir = stateDirOf('host-1');
    await mkdir(stateDir, { recursive: true });
    const daemon = vmdId(stateDir);
    // An earlier life whose domains outlived it (libvirtd had restarted under it: no autodestroy any
    // more): `left` is listed in its vmd-vms.json, `defined` only in libvirt (persistent, off).
    const left = await vm('left');
    const defined = await vm('defined');
    const foreign = await vm('foreign');
    const make = async (v: typeof left, meta: Record<string, string>) => {
      const name = domainName('host-1', meta.cluster!, meta.daemon!, v.id, v.name);
      const file = join(root, `${name}.xml`);
      await writeFile(file, prepareDomainXml(await readFile(v.path.replace(/\.json$/, '.xml'), 'utf8'), name, meta));
      return { name, file };
    };
    const l = await make(left, { cluster, host: 'host-1', daemon, vm: left.id });
    virsh('create', l.file);
    const df = await make(defined, { cluster, host: 'host-1', daemon, vm: defined.id });
    virsh('define', df.file);
    const f = await make(foreign, { cluster: `other-${tag}`, host: 'host-1', daemon: 'f'.repeat(24), vm: foreign.id });
    virsh('create', f.file);
    const [leftPid] = qemuCopies(left.uuid);
    await writeFile(vmdVmsFile(stateDir), JSON.stringify([{ vm: left.id, pid: leftPid, startedAt: new Date().toISOString(), running: true, domain: l.name }]));

    const d = driver();
    // Known at once from vmd-vms.json (its QEMU process runs)...
    expect(d.list()).toEqual([{ id: left.id, power: 'on', pid: leftPid, domain: l.name }]);
    const events = recorder(d);
    // ...and the daemon the driver starts for it kills it (no lease holder) and says so.
    await until(() => events.length === 1, 10_000, 'stop event of the left-over domain');
    expect(events[0]).toMatchObject({ vm: left.id, reason: 'killed', detail: expect.stringMatching(/still running without its lease holder/) });
    expect(qemuCopies(left.uuid)).toEqual([]);
    // A power-on waits for the sweep: by then the persistent definition is gone too.
    const n = await vm('new');
    await d.powerOn(await d.loadSpec(n.id, n.path));
    expect(qemuCopies(n.uuid)).toHaveLength(1);
    const names = testDomains();
    expect(names).not.toContain(l.name);
    expect(names).not.toContain(df.name);
    expect(names).toContain(f.name);
    expect(qemuCopies(foreign.uuid)).toHaveLength(1);
    expect(readFileSync(join(stateDir, 'vmd.log'), 'utf8')).toMatch(/vmd\.libvirt-stale.*defined-.*was defined, not running: removed/);
  });

  it('a guest watchdog reset is not a crash: the domain keeps running under its lease; a watchdog power-off is a stop', async () => {
    const d = driver();
    const events = recorder(d);
    // ib700: an ISA watchdog that can be armed from the monitor (port 0x443; 0x0f = fire at
    // once), which stands in for a guest whose OS stopped feeding its watchdog.
    const r = await vm('wr', "<watchdog model='ib700' action='reset'/>");
    const p = await vm('wp', "<watchdog model='ib700' action='poweroff'/>");
    await d.powerOn(await d.loadSpec(r.id, r.path));
    await d.powerOn(await d.loadSpec(p.id, p.path));
    const [rPid] = qemuCopies(r.uuid);
    const rDomain = d.list().find((x) => x.id === r.id)!.domain!;
    const pDomain = d.list().find((x) => x.id === p.id)!.domain!;
    const lease = await record(vmLeaseRecord(r.id));
    const log = () => readFileSync(join(stateDirOf('host-1'), 'vmd.log'), 'utf8');
    virsh('qemu-monitor-command', rDomain, '--hmp', 'o /b 0x443 0x0f');
    await until(() => /vmd\.vm-watchdog.*action reset/.test(log()), 5000, 'watchdog event logged');
    await until(() => /vmd\.vm-reset/.test(log()), 5000, 'reset logged');
    await new Promise((res) => setTimeout(res, 2000));
    expect(events).toEqual([]);
    expect(d.list().map((x) => x.id)).toContain(r.id);
    expect(qemuCopies(r.uuid)).toEqual([rPid]);
    expect(await record(vmLeaseRecord(r.id))).toEqual(lease);
    // A watchdog whose action powers the guest off: a stop, which VM monitoring restarts.
    try {
      virsh('qemu-monitor-command', pDomain, '--hmp', 'o /b 0x443 0x0f');
    } catch (err) {
      // QEMU may power off before the monitor answers.
      expect(String(err)).toMatch(/monitor|Connection reset|not running/);
    }
    await until(() => events.length === 1, 8000, 'stop after the watchdog power-off');
    expect(events[0]).toMatchObject({ vm: p.id, reason: expect.stringMatching(/^(exited|killed)$/), detail: expect.stringMatching(/watchdog fired \(action poweroff\)/) });
    expect(qemuCopies(p.uuid)).toEqual([]);
    expect(await record(vmLeaseRecord(p.id))).toMatchObject({ state: 'released' });
  });

  it('refuses a libvirt VM whose XML libvirt rejects (EPOWERON) and frees the lease', async () => {
    const d = driver();
    const v = await vm('bad', "<watchdog model='no-such-model' action='reset'/>");
    await expect(d.powerOn(await d.loadSpec(v.id, v.path))).rejects.toMatchObject({ code: 'EPOWERON', message: expect.stringMatching(/cannot create domain/) });
    expect(d.list()).toEqual([]);
    expect(testDomains()).toEqual([]);
    expect(await record(vmLeaseRecord(v.id))).toMatchObject({ state: 'released' });
  });
});

describe('libvirt VM files and domain XML', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vigil-lvf-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads memory and vCPUs from the XML (units), priority and isolation response from the JSON', async () => {
    await writeFile(join(dir, 'web.xml'), domainXml('web', randomUUID()).replace("<memory unit='MiB'>64</memory>", "<memory unit='GiB'>2</memory>").replace('<vcpu>1</vcpu>', "<vcpu placement='static' current='2'>4</vcpu>"));
    await writeFile(join(dir, 'web.json'), JSON.stringify({ name: 'web', domainXml: 'web.xml', restartPriority: 'low', isolationResponse: 'shutdown' }));
    const v = await readLibvirtVm(join(dir, 'web.json'));
    expect(v.domain).toMatchObject({ type: 'qemu', name: 'web', memoryMB: 2048, cpus: 4, watchdogs: [{ model: 'i6300esb', action: 'reset' }], vigil: null });
    expect(v.config).toEqual({ name: 'web', domainXml: 'web.xml', restartPriority: 'low', isolationResponse: 'shutdown' });
    expect(parseDomainXml("<domain><name>x</name><memory>1048577</memory></domain>")).toMatchObject({ memoryMB: 1025, cpus: 1 }); // KiB by default, rounded up
  });

  it('refuses bad files with a message naming the problem', async () => {
    const write = async (json: object, xml?: string) => {
      await writeFile(join(dir, 'v.json'), JSON.stringify(json));
      if (xml !== undefined) await writeFile(join(dir, 'v.xml'), xml);
      return readLibvirtVm(join(dir, 'v.json'));
    };
    await expect(write({ name: 'v', command: 'sleep' })).rejects.toThrow(/command: this is a process VM/);
    await expect(write({ name: 'v', domainXml: '../v.xml' })).rejects.toThrow(/domainXml: must be the path/);
    await expect(write({ name: 'v', domainXml: '/etc/v.xml' })).rejects.toThrow(/domainXml: must be the path/);
    await expect(write({ name: 'v', domainXml: 'v.xml', memoryMB: 4 })).rejects.toThrow(/memoryMB: a libvirt VM takes its memory/);
    await expect(write({ name: 'v', domainXml: 'missing.xml' })).rejects.toThrow(/domainXml: cannot read/);
    await expect(write({ name: 'v', domainXml: 'v.xml' }, '<domain><name>v</name></domain>')).rejects.toThrow(/no <memory>/);
    await expect(write({ name: 'v', domainXml: 'v.xml' }, '<domain><name>v</name><memory unit="parsecs">1</memory></domain>')).rejects.toThrow(/unknown unit/);
    await expect(write({ name: 'v', domainXml: 'v.xml' }, '<domain><name>v</name><memory>64</memory>')).rejects.toThrow(/not closed/);
    await expect(write({ name: 'v', domainXml: 'v.xml' }, '<!DOCTYPE x [<!ENTITY a "b">]><domain/>')).rejects.toThrow(/DOCTYPE/);
    await expect(write({ name: 'v', domainXml: 'v.xml' }, '<vm><name>v</name></vm>')).rejects.toThrow(/not <domain>/);
  });

  it('rewrites only the name and adds Vigil metadata; refuses an XML that already carries it', () => {
    const src = `<?xml version="1.0"?>
<!-- kept -->
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>db &amp; co</name>
  <metadata><app:x xmlns:app="urn:app"><name>inner</name></app:x></metadata>
  <memory unit='MiB'>512</memory>
  <devices><disk type='file'><source file='/srv/ds1/db.qcow2'/></disk></devices>
</domain>
`;
    expect(parseDomainXml(src).name).toBe('db & co');
    const out = prepareDomainXml(src, 'vigil-host-1-db-0123abcd', { cluster: 'c', host: 'host-1', daemon: 'd'.repeat(24), vm: 'ds1:vms/db.json' });
    expect(out).toContain('<name>vigil-host-1-db-0123abcd</name>');
    expect(out).toContain('<name>inner</name>'); // not the domain's name: left alone
    expect(out).toContain("<source file='/srv/ds1/db.qcow2'/>");
    expect(out).toContain('<!-- kept -->');
    const info = parseDomainXml(out);
    expect(info).toMatchObject({ name: 'vigil-host-1-db-0123abcd', memoryMB: 512, vigil: { cluster: 'c', host: 'host-1', daemon: 'd'.repeat(24), vm: 'ds1:vms/db.json' } });
    expect(() => prepareDomainXml(out, 'x', {})).toThrow(/already carries Vigil's metadata/);
    // No <metadata>: one is added.
    expect(parseDomainXml(prepareDomainXml('<domain><name>a</name><memory>65536</memory></domain>', 'b', { vm: 'v' }))).toMatchObject({ name: 'b', vigil: { vm: 'v' } });
  });

  it('parses virsh event lines', () => {
    expect(parseEventLine("event 'lifecycle' for domain 'vigil-host-1-a-0badc0de': Stopped Failed")).toEqual({ type: 'lifecycle', domain: 'vigil-host-1-a-0badc0de', detail: 'Stopped Failed' });
    expect(parseEventLine("event 'watchdog' for domain 'x': reset")).toEqual({ type: 'watchdog', domain: 'x', detail: 'reset' });
    expect(parseEventLine("event 'reboot' for domain 'x'")).toEqual({ type: 'reboot', domain: 'x', detail: '' });
    expect(parseEventLine('events received: 3')).toBeNull();
  });
});
