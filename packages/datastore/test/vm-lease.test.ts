import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listPoweredOff, poweredoffDir, removePoweredOff, vmLease, writePoweredOff, writeFileAtomic, parsePoweron, formatPoweron } from '@vigil/datastore';

let ds: string;
beforeEach(async () => {
  ds = await mkdtemp(join(tmpdir(), 'vigil-ds-'));
  await mkdir(join(ds, '.vigil-ha', 'c'), { recursive: true });
});
afterEach(async () => {
  await rm(ds, { recursive: true, force: true });
});

describe('per-VM leases', () => {
  it('acquire, renew, release; a second host cannot take a held VM lease', async () => {
    const vm = 'ds1:vms/web-1.json';
    const a = vmLease({ datastorePath: ds, cluster: 'c', vm, host: 'host-1', timeoutMs: 2000 });
    const b = vmLease({ datastorePath: ds, cluster: 'c', vm, host: 'host-2', timeoutMs: 2000 });
    await a.acquire();
    await a.renew();
    await expect(b.acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
    const files = await readdir(join(ds, '.vigil-ha', 'c', 'vms'));
    expect(files).toContain('ds1%3Avms%2Fweb-1.json.lease');
    await a.release();
    expect((await b.acquire()).generation).toBe(2);
  });
});

describe('poweredoff files', () => {
  it('round-trips VM ids through file names and ignores temp files; reports foreign names', async () => {
    const dir = poweredoffDir(ds, 'c');
    await writePoweredOff(dir, { vm: 'ds1:vms/a.json', host: 'host-3' }, 2000);
    await expect(writePoweredOff(dir, { vm: 'ds1:../../etc/passwd', host: 'host-3' }, 2000)).rejects.toThrow(/not a VM id/);
    await writeFile(join(dir, 'not-a-vm-id'), 'junk');
    await writeFile(join(dir, '.tmpfile.tmp'), '');
    const listed = await listPoweredOff(dir, 2000);
    expect(listed).toEqual({ vms: ['ds1:vms/a.json'], invalid: ['not-a-vm-id'] });
    expect(await readFile(join(dir, 'ds1%3Avms%2Fa.json'), 'utf8')).toMatch(/powered off by host-3/);
    await removePoweredOff(dir, 'ds1:vms/a.json', 2000);
    await removePoweredOff(dir, 'ds1:vms/a.json', 2000); // idempotent
    expect((await listPoweredOff(dir, 2000)).vms).toEqual([]);
  });

  it('lists nothing when the directory does not exist', async () => {
    expect(await listPoweredOff(join(ds, 'nope'), 2000)).toEqual({ vms: [], invalid: [] });
  });
});

describe('atomic writes', () => {
  it('never leaves a half-written file: a failed write keeps the old content and no temp file', async () => {
    const file = join(ds, 'host-1-poweron');
    await writeFileAtomic(file, formatPoweron({ isolated: false, vms: ['ds1:a'] }), 2000);
    // Make the rename fail: the target's directory entry is replaced by a non-empty directory.
    await rm(file);
    await mkdir(file);
    await writeFile(join(file, 'x'), '');
    await expect(writeFileAtomic(file, formatPoweron({ isolated: true, vms: [] }), 2000)).rejects.toThrow();
    expect((await readdir(ds)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('parses what it formats, and refuses truncated or garbage poweron files', () => {
    const text = formatPoweron({ isolated: true, vms: ['ds2:vms/b.json', 'ds1:vms/a.json'] });
    expect(text).toBe('1\nds1:vms/a.json\nds2:vms/b.json\n');
    expect(parsePoweron(text)).toEqual({ ok: true, value: { isolated: true, vms: ['ds1:vms/a.json', 'ds2:vms/b.json'] } });
    expect(parsePoweron(text.slice(0, -3)).ok).toBe(false);
    expect(parsePoweron('2\n').ok).toBe(false);
    expect(parsePoweron('\u0000\u0001garbage').ok).toBe(false);
    expect(parsePoweron('0\n../../etc/passwd\n').ok).toBe(false);
  });
});
