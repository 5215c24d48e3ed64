/**
 * The master's catalog rescan re-reads only VM config files that changed (inode, size, mtime or
 * ctime): unchanged ones cost a stat. Changes, new files, bad files and removals are still seen.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, mkdir, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '@vigil/config';
import { VmRuntime } from '@vigil/agent';
import type { CoreEvent } from '@vigil/core';

let dir: string;
let runtime: VmRuntime | null = null;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vigil-catalog-'));
  await mkdir(join(dir, 'ds1', 'vms'), { recursive: true });
});
afterEach(async () => {
  await runtime?.stop();
  runtime = null;
  await rm(dir, { recursive: true, force: true });
});

const vmFile = (name: string) => join(dir, 'ds1', 'vms', `${name}.json`);
const write = (name: string, priority: string, memoryMB = 64) => writeFile(vmFile(name), JSON.stringify({ name, command: 'sleep', args: ['1'], memoryMB, restartPriority: priority }));

describe('catalog rescan', () => {
  it('reports every VM at each scan, re-reading changed files only', async () => {
    const events: CoreEvent[] = [];
    const config = validateConfig({ cluster: 'c', secretFile: '/nonexistent/secret', hosts: { 'host-1': { address: '127.0.0.1', datastores: ['ds1'] } }, datastores: { ds1: join(dir, 'ds1') } });
    const logs: string[] = [];
    runtime = new VmRuntime({ config, host: 'host-1', stateDir: join(dir, 'state'), logger: { log: (_l, event) => void logs.push(event), close: async () => {} }, clock: { now: () => 0 }, feed: (ev) => events.push(ev), accessible: () => ['ds1'] });
    const scan = async () => {
      await runtime!.scanCatalog('ds1');
      const ev = events.at(-1);
      if (ev?.type !== 'vmCatalog') throw new Error('no catalog');
      return Object.fromEntries(ev.vms.map((v) => [v.name, `${v.priority}/${v.memoryMB}`]));
    };
    await write('a', 'high');
    await write('b', 'low');
    expect(await scan()).toEqual({ a: 'high/64', b: 'low/64' });
    expect(await scan()).toEqual({ a: 'high/64', b: 'low/64' });
    // Rewritten in place (same size: the mtime and ctime tell), and replaced by a rename.
    await write('a', 'lowest');
    const tmp = join(dir, 'ds1', 'b.tmp');
    await writeFile(tmp, JSON.stringify({ name: 'b', command: 'sleep', memoryMB: 128, restartPriority: 'medium' }));
    await rename(tmp, vmFile('b'));
    expect(await scan()).toEqual({ a: 'lowest/64', b: 'medium/128' });
    // A file turned bad drops out (and is logged); a removed one too; a new one appears.
    await writeFile(vmFile('a'), '{"name": "a", "comand": "x"}');
    await unlink(vmFile('b'));
    await write('c', 'high');
    expect(await scan()).toEqual({ c: 'high/64' });
    expect(logs).toContain('vm.config-invalid');
    await write('a', 'high');
    expect(await scan()).toEqual({ a: 'high/64', c: 'high/64' });
  });
});

describe('catalog rescan of libvirt VMs', () => {
  it('a change to the domain XML alone (its memory) is seen at the next scan', async () => {
    const events: CoreEvent[] = [];
    const config = validateConfig({ cluster: 'c', secretFile: '/nonexistent/secret', driver: { type: 'libvirt' }, hosts: { 'host-1': { address: '127.0.0.1', datastores: ['ds1'] } }, datastores: { ds1: join(dir, 'ds1') } });
    runtime = new VmRuntime({ config, host: 'host-1', stateDir: join(dir, 'state'), logger: { log: () => {}, close: async () => {} }, clock: { now: () => 0 }, feed: (ev) => events.push(ev), accessible: () => ['ds1'] });
    const xml = (mib: number) => `<domain type='qemu'><name>web</name><memory unit='MiB'>${mib}</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>`;
    const scan = async () => {
      await runtime!.scanCatalog('ds1');
      const ev = events.at(-1);
      if (ev?.type !== 'vmCatalog') throw new Error('no catalog');
      return ev.vms.map((v) => `${v.name}/${v.memoryMB}`);
    };
    await writeFile(join(dir, 'ds1', 'vms', 'web.xml'), xml(64));
    await writeFile(vmFile('web'), JSON.stringify({ name: 'web', domainXml: 'web.xml' }));
    expect(await scan()).toEqual(['web/64']);
    await writeFile(join(dir, 'ds1', 'vms', 'web.xml'), xml(256));
    expect(await scan()).toEqual(['web/256']);
  });
});
