/**
 * The agent's VmRuntime with `driver: {type: 'libvirt'}`: it refuses to start without a libvirtd
 * that answers, and its catalog scan reads libvirt VM files (memory and vCPUs from the domain
 * XML, priority from the JSON), so that restarts and placement work. No domain is started here
 * (packages/drivers/test/libvirt-driver.test.ts does that).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '@vigil/config';
import { VmRuntime } from '@vigil/agent';
import { checkLibvirt } from '@vigil/drivers';
import type { CoreEvent } from '@vigil/core';

const skipReason = process.env.VIGIL_LIBVIRT_SKIP || checkLibvirt('qemu:///system');

let dir: string;
const logs: { level: string; event: string; message: string }[] = [];

function runtime(uri: string, events: CoreEvent[] = []): VmRuntime {
  const config = validateConfig({
    cluster: 'c',
    secretFile: '/nonexistent/secret',
    hosts: { 'host-1': { address: '127.0.0.1', datastores: ['ds1'] } },
    datastores: { ds1: join(dir, 'ds1') },
    driver: { type: 'libvirt', uri },
  });
  return new VmRuntime({
    config,
    host: 'host-1',
    stateDir: join(dir, 'state'),
    logger: { log: (level, event, message) => void logs.push({ level, event, message }), close: async () => {} },
    clock: { now: () => 0 },
    feed: (ev) => events.push(ev),
    accessible: () => ['ds1'],
  });
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vigil-vmrt-'));
  logs.length = 0;
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('VmRuntime with the libvirt driver', () => {
  it('refuses to start when libvirtd does not answer on the URI', () => {
    expect(() => runtime('qemu:///nonexistent')).toThrow(/^driver libvirt: (virsh is not installed|libvirtd does not answer on qemu:\/\/\/nonexistent)/);
  });

  it.skipIf(!!skipReason)('scans libvirt VM files into the catalog, creates one with vm create (refusing a command), and rewrites the priority', async () => {
    const vms = join(dir, 'ds1', 'vms');
    await mkdir(vms, { recursive: true });
    await writeFile(join(vms, 'db.xml'), "<domain type='kvm'><name>db</name><memory unit='GiB'>4</memory><vcpu>2</vcpu><devices><watchdog model='i6300esb' action='reset'/></devices></domain>\n");
    await writeFile(join(vms, 'db.json'), JSON.stringify({ name: 'db', domainXml: 'db.xml', restartPriority: 'high' }));
    await writeFile(join(vms, 'proc.json'), JSON.stringify({ name: 'proc', command: 'sleep' }));
    const events: CoreEvent[] = [];
    const rt = runtime('qemu:///system', events);
    expect(rt.driver.type).toBe('libvirt');
    await rt.scanCatalog('ds1');
    expect(events).toEqual([{ type: 'vmCatalog', now: 0, datastore: 'ds1', vms: [{ id: 'ds1:vms/db.json', name: 'db', memoryMB: 4096, cpus: 2, priority: 'high' }] }]);
    expect(logs).toContainEqual(expect.objectContaining({ event: 'vm.config-invalid', message: expect.stringMatching(/proc\.json.*command: this is a process VM/) }));
    await expect(rt.create({ datastore: 'ds1', name: 'x', command: 'sleep' })).rejects.toThrow(/libvirt driver: a VM is a domain XML, not a command.*docs\/libvirt\.md/);
    // Without a command: a diskless domain and its JSON, which the next scan reads.
    expect(await rt.create({ datastore: 'ds1', name: 'small', memoryMB: 32, domainType: 'qemu' })).toBe('ds1:vms/small.json');
    events.length = 0;
    await rt.scanCatalog('ds1');
    expect(events).toEqual([{ type: 'vmCatalog', now: 0, datastore: 'ds1', vms: [
      { id: 'ds1:vms/db.json', name: 'db', memoryMB: 4096, cpus: 2, priority: 'high' },
      { id: 'ds1:vms/small.json', name: 'small', memoryMB: 32, cpus: 1, priority: 'medium' },
    ] }]);
    await rt.setPriority('ds1:vms/db.json', 'lowest');
    expect(JSON.parse(await readFile(join(vms, 'db.json'), 'utf8'))).toEqual({ name: 'db', domainXml: 'db.xml', restartPriority: 'lowest' });
    await rt.stop();
  });
});
