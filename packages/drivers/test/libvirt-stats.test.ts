/**
 * Statistics of libvirt VMs with a real libvirtd and a real diskless QEMU domain (64 MiB, no
 * guest OS, TCG): one `virsh domstats` gives its CPU time, which moves while the guest runs,
 * QEMU's resident memory, and zero disk and network traffic (it has neither); the agent's
 * StatsBook turns two samples into a CPU percentage; the counters name the QEMU process (a new
 * power-on is a new incarnation); a stopped domain has no statistics.
 *
 * Needs libvirtd answering on qemu:///system (scripts/libvirt-setup.sh, which .ci/run calls);
 * otherwise skipped with the reason (VIGIL_LIBVIRT_SKIP, or what `virsh version` said).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkLibvirt, LibvirtDriver, type VmCounters } from '@vigil/drivers';
import { StatsBook } from '@vigil/agent';
import { killVmds, until } from './helpers.js';

const URI = 'qemu:///system';
const skipReason = process.env.VIGIL_LIBVIRT_SKIP || checkLibvirt(URI);
if (skipReason) console.warn(`libvirt statistics tests with libvirtd SKIPPED: ${skipReason}`);

const timing = { storageHeartbeatIntervalMs: 100, selfFenceDeadlineMs: 1300, storageCallTimeoutMs: 700, heartbeatIntervalMs: 100 };

let root: string;
let ds: string;
let tag: string;
let cluster: string;
const drivers: LibvirtDriver[] = [];

function virsh(...args: string[]): string {
  return execFileSync('virsh', ['-q', '-c', URI, ...args], { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
}

function testDomains(): string[] {
  return virsh('list', '--all', '--name')
    .split('\n')
    .map((l) => l.trim())
    .filter((n) => n.includes(tag));
}

describe.skipIf(!!skipReason)('libvirt driver statistics with libvirtd and QEMU', () => {
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'vigil-lvstats-'));
    tag = root.slice(-6).replace(/[^A-Za-z0-9]/g, 'x').toLowerCase();
    cluster = `c-${tag}`;
    ds = join(root, 'ds1');
    await mkdir(join(ds, '.vigil-ha', cluster), { recursive: true });
  });

  afterEach(async () => {
    for (const d of drivers.splice(0)) await d.close();
    await killVmds(root);
    for (const n of testDomains()) {
      try {
        virsh('destroy', n);
      } catch {
        /* not running */
      }
    }
    await rm(root, { recursive: true, force: true });
  });

  it('CPU time moves while a diskless guest runs; memory is QEMU\'s RSS; no disk or network traffic; a CPU percentage from two samples', async () => {
    const d = new LibvirtDriver({ host: 'host-1', cluster, datastores: { ds1: ds }, stateDir: join(root, 'host-1'), timing, shutdownTimeoutMs: 1000, uri: URI });
    drivers.push(d);
    expect(await d.stats()).toEqual([]); // no VM: not even a virsh call
    const name = `st-${tag}`;
    await mkdir(join(ds, 'vms'), { recursive: true });
    await writeFile(
      join(ds, 'vms', `${name}.xml`),
      `<domain type='qemu'><name>${name}</name><uuid>${randomUUID()}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices><serial type='pty'/></devices></domain>\n`,
    );
    const path = join(ds, 'vms', `${name}.json`);
    await writeFile(path, JSON.stringify({ name, domainXml: `${name}.xml`, restartPriority: 'high' }));
    const id = `ds1:vms/${name}.json`;
    const spec = await d.loadSpec(id, path);
    await d.powerOn(spec);
    const [vm] = d.list();
    expect(vm?.domain).toBeTruthy();
    expect(vm?.pid).toBeGreaterThan(1);

    const book = new StatsBook('host-1');
    const t0 = performance.now();
    const [first] = (await d.stats()) as [VmCounters];
    book.record([first], t0, Date.now());
    expect(first).toMatchObject({ vm: id, diskReadBytes: 0, diskWriteBytes: 0, diskReadOps: 0, diskWriteOps: 0, netRxBytes: 0, netTxBytes: 0 });
    expect(first.error).toBeUndefined();
    expect(first.incarnation).toMatch(new RegExp(`^${vm!.pid}:[0-9]+$`));
    expect(first.cpuTimeNs).toBeGreaterThan(0);
    // QEMU with a 64 MiB guest: more than 10 MiB resident, less than 1 GiB.
    expect(first.memoryBytes).toBeGreaterThan(10 << 20);
    expect(first.memoryBytes).toBeLessThan(1 << 30);
    // What libvirt itself says, read separately, is of the same domain.
    expect(virsh('domstats', '--cpu-total', '--raw', vm!.domain!)).toMatch(/cpu\.time=\d+/);

    const second = await until(
      async () => {
        const [s] = await d.stats();
        return s && s.cpuTimeNs! > first.cpuTimeNs! ? s : undefined;
      },
      15_000,
      'the guest\'s CPU time to move',
    );
    book.record([second], performance.now(), Date.now());
    const [view] = book.view(performance.now());
    expect(second.incarnation).toBe(first.incarnation);
    expect(view!.cpuPercent).toBeGreaterThan(0);
    expect(view!.cpuTimeMs).toBe(Math.round(second.cpuTimeNs! / 1e6));
    console.log(`libvirt statistics: ${view!.cpuPercent} % of one core over ${view!.cpuWindowMs} ms, RSS ${Math.round(second.memoryBytes! / 1048576)} MiB`);

    await d.powerOff(id);
    expect(await d.stats()).toEqual([]);
    await d.powerOn(spec);
    const [again] = (await d.stats()) as [VmCounters];
    expect(again.incarnation).not.toBe(first.incarnation);
    await d.powerOff(id);
  });
});
