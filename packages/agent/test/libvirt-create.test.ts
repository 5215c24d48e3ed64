/**
 * `vigil vm create` in a libvirt cluster (libvirt-create.ts): the two files it writes are what the
 * libvirt driver reads back (readLibvirtVm), an operator's XML is copied as given, and bad input
 * is refused with a clear message and writes nothing. No libvirtd needed: the domain type is
 * given, except in the one check of the default, which only asserts kvm or qemu.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readLibvirtVm, libvirtSpecOf } from '@vigil/drivers';
import { createLibvirtVm, defaultDomainType, disklessDomainXml } from '../src/libvirt-create.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vigil-lvcreate-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const create = (req: Record<string, unknown>) => createLibvirtVm(req, 'ds1', dir, 'qemu:///nonexistent', 'vms');

const OPERATOR_XML = `<!-- mine -->
<domain type='kvm'>
  <name>whatever</name>
  <memory unit='GiB'>2</memory>
  <vcpu placement='static'>3</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><disk type='file' device='disk'><source file='/srv/ds1/images/db.qcow2'/><target dev='vda' bus='virtio'/></disk></devices>
</domain>
`;

describe('vm create with the libvirt driver', () => {
  it('writes a diskless domain and its JSON, which the driver reads back', async () => {
    const r = await create({ name: 'web-1', memoryMB: 48, cpus: 2, priority: 'high', isolationResponse: 'powerOff', domainType: 'qemu' });
    expect(r.id).toBe('ds1:vms/web-1.json');
    expect(JSON.parse(await readFile(join(dir, 'vms', 'web-1.json'), 'utf8'))).toEqual({ name: 'web-1', domainXml: 'web-1.xml', restartPriority: 'high', isolationResponse: 'powerOff' });
    const vm = await readLibvirtVm(r.file);
    expect(vm.domain).toMatchObject({ type: 'qemu', name: 'web-1', memoryMB: 48, cpus: 2, watchdogs: [], vigil: null });
    expect(vm.domain.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(vm.xml).not.toMatch(/<disk|<interface/);
    expect(libvirtSpecOf(r.id, r.file, vm)).toMatchObject({ memoryMB: 48, cpus: 2, restartPriority: 'high', isolationResponse: 'powerOff', datastore: 'ds1' });
  });

  it('defaults: 64 MiB, 1 vCPU, medium, the type libvirtd offers (qemu when it cannot tell)', async () => {
    const r = await create({ name: 'd' });
    const vm = await readLibvirtVm(r.file);
    expect(vm.config).toEqual({ name: 'd', domainXml: 'd.xml', restartPriority: 'medium' });
    expect(vm.domain).toMatchObject({ memoryMB: 64, cpus: 1, type: 'qemu' });
    expect(['kvm', 'qemu']).toContain(await defaultDomainType('qemu:///system'));
  });

  it('copies an operator\'s domain XML byte for byte; memory and vCPUs come from it', async () => {
    const r = await create({ name: 'db', domainXml: OPERATOR_XML, priority: 'low' });
    expect(await readFile(join(dir, 'vms', 'db.xml'), 'utf8')).toBe(OPERATOR_XML);
    const vm = await readLibvirtVm(r.file);
    expect(vm.domain).toMatchObject({ memoryMB: 2048, cpus: 3, type: 'kvm' });
    expect(vm.config.restartPriority).toBe('low');
  });

  const bad: [string, Record<string, unknown>, RegExp][] = [
    ['a command', { name: 'p', command: 'sleep', args: ['1'] }, /libvirt driver: a VM is a domain XML, not a command/],
    ['--memory with --domain-xml', { name: 'p', domainXml: OPERATOR_XML, memoryMB: 64 }, /--memory and --cpus do not go with --domain-xml/],
    ['--domain-type with --domain-xml', { name: 'p', domainXml: OPERATOR_XML, domainType: 'kvm' }, /--domain-type is for the generated diskless domain/],
    ['XML that does not parse', { name: 'p', domainXml: '<domain>\n<name>x</name>\n<memory>1</memory>\n</domian>' }, /--domain-xml: line 4: <\/domian> does not close <domain>/],
    ['XML without <memory>', { name: 'p', domainXml: '<domain><name>x</name></domain>' }, /--domain-xml: no <memory>/],
    ['XML of a running Vigil domain', { name: 'p', domainXml: "<domain><name>x</name><memory>65536</memory><metadata><vigil:vm xmlns:vigil='urn:x-vigil:libvirt:vm:1' vm='ds1:vms/x.json'/></metadata></domain>" }, /carries Vigil's metadata/],
    ['a bad name', { name: '../x' }, /vm create: name: must be/],
    ['a bad priority', { name: 'p', priority: 'urgent' }, /restartPriority: must be one of/],
    ['a bad isolation response', { name: 'p', isolationResponse: 'reboot' }, /isolationResponse: must be/],
    ['too little memory', { name: 'p', memoryMB: 8 }, /--memory: a diskless domain takes from 16/],
    ['a bad domain type', { name: 'p', domainType: 'xen' }, /--domain-type must be kvm or qemu/],
  ];
  for (const [what, req, msg] of bad) {
    it(`refuses ${what} and writes nothing`, async () => {
      await expect(create(req)).rejects.toThrow(msg);
      expect(await readdir(join(dir, 'vms')).catch(() => [])).toEqual([]);
    });
  }

  it('never writes over an existing VM or XML', async () => {
    await create({ name: 'a', domainType: 'qemu' });
    const before = await readFile(join(dir, 'vms', 'a.xml'), 'utf8');
    await expect(create({ name: 'a', domainType: 'kvm' })).rejects.toThrow(/a VM named a already exists on ds1/);
    expect(await readFile(join(dir, 'vms', 'a.xml'), 'utf8')).toBe(before);
    await mkdir(join(dir, 'vms'), { recursive: true });
    await writeFile(join(dir, 'vms', 'b.xml'), 'mine');
    await expect(create({ name: 'b', domainType: 'qemu' })).rejects.toThrow(/b\.xml already exists on ds1: not written over/);
    expect(await readFile(join(dir, 'vms', 'b.xml'), 'utf8')).toBe('mine');
    expect((await readdir(join(dir, 'vms'))).sort()).toEqual(['a.json', 'a.xml', 'b.xml']);
  });

  it('the diskless XML has no disk, network or display', () => {
    const x = disklessDomainXml({ name: 'n', uuid: '00000000-0000-4000-8000-000000000000', memoryMB: 32, cpus: 1, type: 'kvm' });
    expect(x).toContain("<domain type='kvm'>");
    expect(x).toContain("<memory unit='MiB'>32</memory>");
    expect(x).not.toMatch(/<disk|<interface|<graphics/);
  });
});
