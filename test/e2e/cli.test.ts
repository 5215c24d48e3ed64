/**
 * The real `vigil` CLI as a child process: help, `config check` (exit 0 on a valid config, 2 with
 * the offending key named on stderr otherwise), exit codes of runtime failures (1) and of usage
 * errors (2).
 */
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labTempDir, runCli } from './helpers/lab.js';

type Json = Record<string, unknown>;

describe('vigil CLI', () => {
  let dir = '';
  let secretFile = '';
  let validFile = '';

  const validConfig = (): Json => ({
    cluster: 'cli-test',
    secretFile,
    hosts: {
      'host-1': { address: '127.0.0.11' },
      'host-2': { address: '127.0.0.12', datastores: ['ds1'] },
    },
    datastores: { ds1: join(dir, 'ds1'), ds2: join(dir, 'ds2') },
    timing: { profile: 'fast' },
  });

  let n = 0;
  async function writeConfig(value: unknown): Promise<string> {
    const f = join(dir, `config-${++n}.json`);
    await writeFile(f, typeof value === 'string' ? value : JSON.stringify(value, null, 2));
    return f;
  }

  beforeAll(async () => {
    dir = await labTempDir('cli');
    secretFile = join(dir, 'secret');
    await writeFile(secretFile, 'a'.repeat(48) + '\n', { mode: 0o600 });
    validFile = await writeConfig(validConfig());
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('--help exits 0 and lists the commands', async () => {
    const r = await runCli(['--help']);
    expect(r.code, r.stderr).toBe(0);
    for (const cmd of ['agent', 'status', 'hosts', 'config', 'lab']) {
      expect(r.stdout).toMatch(new RegExp(`^\\s+${cmd}\\b`, 'm'));
    }
  });

  it('config check exits 0 on a valid config', async () => {
    const r = await runCli(['config', 'check', validFile]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('valid');
    expect(r.stdout).toContain('cli-test');
    expect(r.stderr).toBe('');

    const j = await runCli(['config', 'check', '--json', validFile]);
    expect(j.code, j.stderr).toBe(0);
    const resolved = JSON.parse(j.stdout) as { port: number; profile: string; hosts: Record<string, { datastores: string[] }> };
    expect(resolved.port).toBe(8182);
    expect(resolved.profile).toBe('fast');
    expect(resolved.hosts['host-1']!.datastores).toEqual(['ds1', 'ds2']);
  });

  const invalid: { name: string; key: string; make: (c: Json) => unknown }[] = [
    { name: 'unknown top-level key', key: 'colour', make: (c) => ({ ...c, colour: 'blue' }) },
    { name: 'unknown key inside timing (typo)', key: 'timing.hostTimeoutMS', make: (c) => ({ ...c, timing: { profile: 'fast', hostTimeoutMS: 1000 } }) },
    {
      name: 'bad address',
      key: 'hosts.host-1.address',
      make: (c) => ({ ...c, hosts: { ...(c.hosts as Json), 'host-1': { address: 'server1.example.com' } } }),
    },
    { name: 'host id not of the form host-N', key: 'hosts.server1', make: (c) => ({ ...c, hosts: { server1: { address: '127.0.0.11' } } }) },
    {
      name: 'unknown datastore in a host',
      key: 'hosts.host-1.datastores',
      make: (c) => ({ ...c, hosts: { ...(c.hosts as Json), 'host-1': { address: '127.0.0.11', datastores: ['ds1', 'ds9'] } } }),
    },
    // fast: selfFenceDeadlineMs 1000 + leaseSafetyMarginMs 300 = 1300, not < 1300.
    { name: 'unsafe lease timing', key: 'timing.leaseTimeoutMs', make: (c) => ({ ...c, timing: { profile: 'fast', leaseTimeoutMs: 1300 } }) },
    { name: 'missing secret file', key: 'secretFile', make: (c) => ({ ...c, secretFile: join(dir, 'no-such-secret') }) },
    { name: 'secret too short', key: 'secretFile', make: (c) => ({ ...c, secretFile: join(dir, 'short-secret') }) },
  ];

  for (const tc of invalid) {
    it(`config check exits 2 naming ${tc.key}: ${tc.name}`, async () => {
      await writeFile(join(dir, 'short-secret'), 'tooshort\n');
      const f = await writeConfig(tc.make(validConfig()));
      const r = await runCli(['config', 'check', f]);
      expect(r.code, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(2);
      expect(r.stdout).toBe('');
      // The problem is listed as "  <key>: <problem>" under the file name.
      expect(r.stderr).toContain(`${tc.key}`);
      expect(r.stderr).toMatch(new RegExp(`^\\s+${tc.key.replace(/[.]/g, '\\.')}[.:\\w-]*: \\S`, 'm'));
    });
  }

  it('config check exits 2 on a file that is not JSON', async () => {
    const f = await writeConfig('{ "cluster": "cli-test", ');
    const r = await runCli(['config', 'check', f]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(f);
    expect(r.stderr).toContain('not valid JSON');
  });

  it('config check exits 2 on a missing config file', async () => {
    const r = await runCli(['config', 'check', join(dir, 'absent.json')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('ENOENT');
  });

  it('status against a socket with no agent exits 1 with a clear message', async () => {
    const r = await runCli(['status', '--socket', '/nonexistent']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('cannot reach the agent on /nonexistent');
    expect(r.stderr).toContain('is the agent running?');
    expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(1); // a message, not a stack trace
  });

  it('an unknown command exits 2', async () => {
    const r = await runCli(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('frobnicate');
  });

  it('an unknown option exits 2', async () => {
    const r = await runCli(['status', '--bogus-option']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--bogus-option');
  });

  it('agent with a host that is not in the config exits 2 naming --host', async () => {
    const stateDir = join(dir, 'agent-state');
    const r = await runCli(['agent', '--config', validFile, '--host', 'host-99', '--state-dir', stateDir, '--socket', join(dir, 'agent.sock')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--host');
    expect(r.stderr).toContain('host-99');
    expect(existsSync(join(dir, 'agent.sock'))).toBe(false);
  });

  it('lab up --hosts 0 exits 2 and creates nothing', async () => {
    const labDir = join(dir, 'lab');
    const r = await runCli(['lab', 'up', '--hosts', '0', '--dir', labDir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--hosts');
    expect(existsSync(labDir)).toBe(false);
  });

  it('config profiles --json lists every timing field with both values', async () => {
    const r = await runCli(['config', 'profiles', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as { field: string; default: unknown; fast: unknown }[];
    const hostTimeout = rows.find((x) => x.field === 'hostTimeoutMs');
    expect(hostTimeout).toMatchObject({ default: 10_000, fast: 1000 });
  });
});
