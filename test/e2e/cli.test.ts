/**
 * The real `vigil` CLI as a child process: help, `config check` (exit 0 on a valid config, 2 with
 * the offending key named on stderr otherwise), exit codes of runtime failures (1) and of usage
 * errors (2), a closed stdout (`vigil ... | head`), and `lab up` on a port of its own: its
 * agents' start is checked, and `hosts` on a slave says whose view it is.
 */
import { spawn } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, VIGIL_BIN, labTempDir, runCli, waitPortsFree } from './helpers/lab.js';

/** A port for this file's labs, away from 8182 (the default lab and the other e2e tests). */
const LAB_PORT = 39000 + Math.floor(Math.random() * 900);

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
    // leaseTimeoutMs must be > selfFenceDeadlineMs + leaseSafetyMarginMs (fast: well above 1000).
    { name: 'unsafe lease timing', key: 'timing.leaseTimeoutMs', make: (c) => ({ ...c, timing: { profile: 'fast', leaseTimeoutMs: 1000 } }) },
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

  it('config check names the config file, not "config", when the secret is missing', async () => {
    const f = await writeConfig({ ...validConfig(), secretFile: join(dir, 'absent-secret') });
    const r = await runCli(['config', 'check', f]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`vigil: ${f}: invalid config:`);
    expect(r.stderr).toContain('secretFile: cannot read');
    expect(r.stderr).toContain('ENOENT: no such file');
    expect(r.stderr).not.toContain('ENOENT: ENOENT');
  });

  it('config check catches two spellings of one IPv6 address, and explains a bad host id', async () => {
    const dup = await writeConfig({ ...validConfig(), hosts: { 'host-1': { address: '::1' }, 'host-2': { address: '0:0:0:0:0:0:0:1' } } });
    const r = await runCli(['config', 'check', dup]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^\s+hosts\.host-2\.address: \[::1\]:8182 is also used by host-1/m);
    const bad = await writeConfig({ ...validConfig(), hosts: { server1: { address: '127.0.0.11' } } });
    const b = await runCli(['config', 'check', bad]);
    expect(b.code).toBe(2);
    expect(b.stderr).toContain('hosts.server1: invalid host id "server1": host ids have the form host-N');
    expect(b.stderr).not.toContain('Invalid key in record');
  });

  it('a reader that goes away (`vigil ... | head`) ends the command quietly with exit 0', async () => {
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [VIGIL_BIN, 'config', 'profiles'], { stdio: ['ignore', 'pipe', 'pipe'] });
      // Close the read end before the CLI writes anything: its writes then fail with EPIPE.
      child.stdout.destroy();
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stderr });
      });
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('lab kill and lab start of an unknown host exit 2', async () => {
    const labDir = join(dir, 'lab-unknown-host');
    const lab = new Lab(labDir);
    await lab.create({ dir: labDir, hosts: 2, port: LAB_PORT }); // no agent started
    try {
      for (const cmd of ['kill', 'start']) {
        const r = await runCli(['lab', cmd, 'host-9', '--dir', labDir]);
        expect(r.code, `lab ${cmd}: ${r.stderr}`).toBe(2);
        expect(r.stderr).toContain('unknown lab host host-9');
        expect(r.stdout).toBe('');
      }
    } finally {
      await lab.down({ purge: true });
    }
  });

  it('lab up exits 1 naming the agent that failed at start (EADDRINUSE)', async () => {
    const labDir = join(dir, 'lab-eaddrinuse');
    await waitPortsFree(['127.0.0.11', '127.0.0.12'], LAB_PORT);
    // Hold host-2's address and port, as another lab would.
    const squatter: Socket = createSocket({ type: 'udp4', reuseAddr: false });
    await new Promise<void>((resolve, reject) => {
      squatter.once('error', reject);
      squatter.bind({ address: '127.0.0.12', port: LAB_PORT, exclusive: true }, () => resolve());
    });
    try {
      const r = await runCli(['lab', 'up', '--hosts', '2', '--port', String(LAB_PORT), '--dir', labDir, '--no-wait'], { timeoutMs: 30_000 });
      expect(r.code, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(1);
      expect(r.stderr).toContain('the agent of host-2 exited at start');
      expect(r.stderr).toContain('EADDRINUSE');
      expect(r.stderr).toContain(`npx vigil lab down --dir ${labDir}`);
      expect(r.stderr).not.toContain('host-1 exited');
    } finally {
      squatter.close();
      await new Lab(labDir).down({ purge: true });
    }
  });

  it('lab up on its own port: hints say npx vigil; hosts on a slave is that host\'s own view, and says so', async () => {
    const labDir = join(dir, 'lab-up');
    const addresses = ['127.0.0.11', '127.0.0.12', '127.0.0.13'];
    await waitPortsFree(addresses, LAB_PORT);
    try {
      const up = await runCli(['lab', 'up', '--hosts', '3', '--port', String(LAB_PORT), '--dir', labDir], { timeoutMs: 40_000 });
      expect(up.code, `stdout: ${up.stdout}\nstderr: ${up.stderr}`).toBe(0);
      const master = /lab: (host-\d+) is master/.exec(up.stdout)?.[1];
      expect(master, up.stdout).toBeDefined();
      expect(up.stdout).toContain(`npx vigil lab status --dir ${labDir}`);
      expect(up.stdout).toContain(`npx vigil vm create --socket ${labDir}/hosts/host-1/vigil.sock --datastore ds1 --name web1 -- sleep 100000`);
      for (const line of up.stdout.split('\n').filter((l) => l.includes('vigil ') && !l.startsWith('lab:'))) {
        expect(line.trim(), 'every hint is runnable in a checkout').toMatch(/^npx vigil /);
      }

      const slave = ['host-1', 'host-2', 'host-3'].find((h) => h !== master)!;
      const sock = join(labDir, 'hosts', slave, 'vigil.sock');
      const human = await runCli(['hosts', '--socket', sock]);
      expect(human.code, human.stderr).toBe(0);
      expect(human.stderr).toMatch(new RegExp(`^note: ${slave} is a slave of ${master}: this is ${slave}'s own view, not the cluster's\\.`));
      expect(human.stderr).toContain(`Run \`vigil hosts\` on ${master} for the cluster's view.`);
      expect(human.stdout.split('\n')[0]).toMatch(/^HOST\s+ADDRESS\s+STATE\s.*\sMAINTENANCE$/);

      const json = await runCli(['hosts', '--json', '--socket', sock]);
      expect(json.code, json.stderr).toBe(0);
      expect(json.stderr).toBe('');
      const rows = JSON.parse(json.stdout) as { host: string; state: string }[];
      expect(rows.map((h) => h.host)).toEqual(['host-1', 'host-2', 'host-3']);

      const onMaster = await runCli(['hosts', '--socket', join(labDir, 'hosts', master!, 'vigil.sock')]);
      expect(onMaster.code, onMaster.stderr).toBe(0);
      expect(onMaster.stderr).toBe('');

      // VM commands work from a slave: forwarded to the master.
      const vms = await runCli(['vms', '--json', '--socket', sock]);
      expect(vms.code, vms.stderr).toBe(0);
      expect(JSON.parse(vms.stdout)).toEqual([]);
    } finally {
      const down = await runCli(['lab', 'down', '--purge', '--dir', labDir], { timeoutMs: 30_000 });
      expect(down.code, down.stderr).toBe(0);
    }
  });

  it('config profiles --json lists every timing field with the value of each profile', async () => {
    const r = await runCli(['config', 'profiles', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as { field: string; default: unknown; fdm: unknown; fast: unknown }[];
    const hostTimeout = rows.find((x) => x.field === 'hostTimeoutMs');
    expect(hostTimeout).toMatchObject({ default: 4000, fdm: 10_000, fast: 1000 });
  });
});
