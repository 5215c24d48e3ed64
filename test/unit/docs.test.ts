/**
 * The documentation must not drift from the code:
 * - the timing table in docs/configuration.md is what scripts/gen-config-docs.mjs generates;
 * - every safety inequality listed in docs/configuration.md is still enforced;
 * - examples/cluster.json is a valid config;
 * - every CLI command and option is in docs/cli.md, and every top-level command in README.md;
 * - every field of the documented --json outputs is in docs/cli.md, and every value of the
 *   `state` fields of `hosts --json` and `vms --json` (read from the source of the types);
 * - every config key (top level and per host) is in docs/configuration.md.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { Command } from 'commander';
import { ConfigError, FAST_TIMING, configSchema, hostSchema, validateConfig, type ClusterConfig } from '@vigil/config';
import { VmManager } from '@vigil/core';
import { Agent, type Datagram, type Logger, type Transport } from '@vigil/agent';
import { buildProgram } from '@vigil/cli';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const read = (rel: string) => readFileSync(join(ROOT, rel), 'utf8');
const CLI_BIN = join(ROOT, 'packages/cli/bin/vigil.cjs');

const tmp = mkdtempSync(join(tmpdir(), 'vigil-docs-test-'));
afterAll(async () => {
  // The agent's storage writes may still be settling just after stop(): retry the removal.
  for (let i = 0; i < 20; i++) {
    rmSync(tmp, { recursive: true, force: true });
    await new Promise((r) => setTimeout(r, 50));
    try {
      readFileSync(tmp);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    }
  }
});

/** The part of a markdown document under `heading` (a full heading line), up to the next heading. */
function section(doc: string, heading: string): string {
  const start = doc.split('\n').findIndex((l) => l.trim() === heading);
  if (start < 0) throw new Error(`heading not found: ${heading}`);
  const rest = doc.split('\n').slice(start + 1);
  const end = rest.findIndex((l) => /^#{1,6} /.test(l));
  return (end < 0 ? rest : rest.slice(0, end)).join('\n');
}

/** Fields documented as table rows: | `name` | ... */
function documentedFields(text: string): Set<string> {
  return new Set([...text.matchAll(/^\| `([A-Za-z]+)` \|/gm)].map((m) => m[1]!));
}

function missing(keys: Iterable<string>, documented: Set<string>): string[] {
  return [...keys].filter((k) => !documented.has(k));
}

describe('docs/configuration.md', () => {
  it('has an up-to-date timing table (node scripts/gen-config-docs.mjs --check)', () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'scripts/gen-config-docs.mjs'), '--check'], { encoding: 'utf8' });
    expect(r.status, `gen-config-docs --check failed:\n${r.stdout}${r.stderr}`).toBe(0);
  });

  // One violating override per inequality of the "Safety inequalities" table, on the fast
  // profile. Each is computed from the profile's values, just past the limit, so the test
  // follows the profile when its values are tuned.
  const F = FAST_TIMING;
  const inequalities: { key: string; timing: Record<string, unknown>; problem: RegExp }[] = [
    { key: 'timing.leaseTimeoutMs', timing: { leaseSafetyMarginMs: F.leaseTimeoutMs - F.selfFenceDeadlineMs }, problem: /selfFenceDeadlineMs .* leaseSafetyMarginMs/ },
    { key: 'timing.selfFenceDeadlineMs', timing: { storageCallTimeoutMs: F.selfFenceDeadlineMs - F.storageHeartbeatIntervalMs }, problem: /storageHeartbeatIntervalMs .* storageCallTimeoutMs/ },
    { key: 'timing.leaseTimeoutMs', timing: { storageHeartbeatIntervalMs: Math.floor(F.leaseTimeoutMs / 2) + 1 }, problem: /2 x storageHeartbeatIntervalMs/ },
    { key: 'timing.hostTimeoutMs', timing: { heartbeatIntervalMs: Math.floor(F.hostTimeoutMs / 3) + 1 }, problem: /3 x heartbeatIntervalMs/ },
    { key: 'timing.electionWindowMs', timing: { electionWindowMs: 2 * F.heartbeatIntervalMs - 1 }, problem: /2 x heartbeatIntervalMs/ },
    { key: 'timing.storageWatchAfterMs', timing: { storageWatchAfterMs: F.hostTimeoutMs }, problem: /< hostTimeoutMs/ },
    { key: 'timing.deadMs', timing: { deadMs: F.storageWatchAfterMs + F.leaseTimeoutMs - 1 }, problem: /storageWatchAfterMs \+ leaseTimeoutMs/ },
    { key: 'timing.deadMs', timing: { icmpPingTimeoutMs: F.deadMs - F.hostTimeoutMs + 1 }, problem: /hostTimeoutMs \+ icmpPingTimeoutMs/ },
    { key: 'timing.deadNoHeartbeatDatastoreMs', timing: { deadNoHeartbeatDatastoreMs: F.hostTimeoutMs + F.icmpPingTimeoutMs - 1 }, problem: /hostTimeoutMs \+ icmpPingTimeoutMs/ },
    { key: 'timing.storageCallTimeoutMs', timing: { storageCallTimeoutMs: F.selfFenceDeadlineMs }, problem: /< selfFenceDeadlineMs/ },
    { key: 'timing.masterIsolationMs', timing: { masterIsolationMs: 2 * F.heartbeatIntervalMs - 1 }, problem: /2 x heartbeatIntervalMs/ },
    { key: 'timing.slaveIsolationMs', timing: { slaveIsolationMs: F.hostTimeoutMs }, problem: /> hostTimeoutMs/ },
    { key: 'restart.maxAttempts', timing: { restartRetryDelaysMs: [1000] }, problem: /retry delays/ },
  ];

  it('lists exactly the inequalities that the validator enforces', () => {
    const table = section(read('docs/configuration.md'), '### Safety inequalities');
    const rows = table.split('\n').filter((l) => /^\| `(timing|restart)\./.test(l));
    expect(rows.map((r) => r.match(/^\| `([^`]+)`/)![1])).toEqual(inequalities.map((i) => i.key));
  });

  it.each(inequalities)('enforces the rule reported under $key ($problem)', ({ key, timing, problem }) => {
    let err: unknown;
    try {
      validateConfig({
        cluster: 'docs',
        secretFile: '/etc/vigil/secret',
        hosts: { 'host-1': { address: '10.0.0.1' } },
        datastores: {},
        timing: { profile: 'fast', ...timing },
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems;
    expect(problems.some((p) => p.key === key && problem.test(p.problem)), JSON.stringify(problems, null, 2)).toBe(true);
  });
});

/** The string literals of a union type member, e.g. `state: 'a' | 'b';`, read from a source file. */
function unionLiterals(source: string, pattern: RegExp): string[] {
  const m = pattern.exec(source);
  if (!m) throw new Error(`type not found: ${pattern}`);
  return [...m[1]!.matchAll(/'([A-Za-z]+)'/g)].map((x) => x[1]!);
}

describe('docs/configuration.md keys', () => {
  const doc = read('docs/configuration.md');

  it('documents every top-level key of the config', () => {
    const table = documentedFields(section(doc, '### Top level'));
    expect(missing(Object.keys(configSchema.shape), table)).toEqual([]);
  });

  it('documents every key of hosts.<host-id>', () => {
    const table = documentedFields(section(doc, '### `hosts.<host-id>`'));
    expect(missing(Object.keys(hostSchema.shape), table)).toEqual([]);
  });
});

describe('examples/cluster.json', () => {
  it('is a valid config (the secret file itself is not checked here)', () => {
    const cfg = validateConfig(JSON.parse(read('examples/cluster.json')), 'examples/cluster.json');
    expect(cfg.cluster).toBe('prod-a');
    expect(cfg.port).toBe(8182);
  });

  it('documents every key of the resolved config printed by `vigil config check --json`', () => {
    const secret = join(tmp, 'secret');
    writeFileSync(secret, 'a'.repeat(64) + '\n', { mode: 0o600 });
    const cfgFile = join(tmp, 'cluster.json');
    writeFileSync(cfgFile, read('examples/cluster.json').replace('/etc/vigil/secret', secret));
    const r = spawnSync(process.execPath, [CLI_BIN, 'config', 'check', '--json', cfgFile], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const resolved = JSON.parse(r.stdout) as ClusterConfig;
    const doc = documentedFields(section(read('docs/cli.md'), '### `config check --json` fields'));
    expect(missing(Object.keys(resolved), doc)).toEqual([]);
    const hostText = section(read('docs/cli.md'), '### `config check --json` fields');
    for (const k of Object.keys(resolved.hosts['host-12']!)) expect(hostText).toContain(`\`${k}\``);
  });
});

describe('docs/cli.md and README.md', () => {
  function leaves(cmd: Command, path: string[] = []): { path: string[]; cmd: Command }[] {
    const subs = cmd.commands.filter((c) => c.name() !== 'help');
    if (subs.length === 0) return [{ path, cmd }];
    return subs.flatMap((c) => leaves(c, [...path, c.name()]));
  }

  it('documents every command and option', () => {
    const cli = read('docs/cli.md');
    const problems: string[] = [];
    for (const { path, cmd } of leaves(buildProgram())) {
      const name = `vigil ${path.join(' ')}`;
      if (!cli.includes(`## \`${name}\``)) problems.push(`no "## \`${name}\`" heading`);
      for (const o of cmd.options) {
        if (o.long && !cli.includes(o.long)) problems.push(`${name}: option ${o.long} not mentioned`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('README lists every top-level command', () => {
    const readme = read('README.md');
    const names = buildProgram()
      .commands.map((c) => c.name())
      .filter((n) => n !== 'help');
    expect(names.filter((n) => !readme.includes(`vigil ${n}`))).toEqual([]);
  });

  it('documents every field of `config profiles --json`', () => {
    const r = spawnSync(process.execPath, [CLI_BIN, 'config', 'profiles', '--json'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as Record<string, unknown>[];
    expect(rows.length).toBeGreaterThan(0);
    const doc = documentedFields(section(read('docs/cli.md'), '### `config profiles --json` fields'));
    expect(missing(Object.keys(rows[0]!), doc)).toEqual([]);
  });

  it('documents every field of `vms --json`, and every VM state', () => {
    const vms = new VmManager({ self: 'host-1', timing: { ...FAST_TIMING }, maxConcurrentPerHost: 32, maxAttempts: 5 });
    vms.setCatalog('ds1', [{ id: 'ds1:vms/web1.json', name: 'web1', memoryMB: 128, cpus: 1, priority: 'medium' }]);
    const rows = vms.view(0);
    expect(rows.length).toBe(1);
    const cli = read('docs/cli.md');
    const text = section(cli, '### `vms --json` fields');
    expect(missing(Object.keys(rows[0]!), documentedFields(text)), 'VmView fields missing from docs/cli.md').toEqual([]);
    const states = unionLiterals(read('packages/core/src/vms.ts'), /interface VmView \{[^}]*?\n\s*state: ([^;]+);/s);
    expect(states.length).toBeGreaterThan(3);
    expect(states.filter((st) => !text.includes(`"${st}"`) || !text.includes(`| \`${st}\` |`))).toEqual([]);
  });

  it('documents every host state of `hosts --json`', () => {
    const states = unionLiterals(read('packages/core/src/hostview.ts'), /export type HostState =([^;]+);/s);
    expect(states).toContain('agentUnreachable');
    const cli = read('docs/cli.md');
    const fields = section(cli, '### `hosts --json` fields');
    const how = section(cli, '### How `state` is decided');
    expect(states.filter((st) => !fields.includes(`"${st}"`) || !how.includes(`\`${st}\``))).toEqual([]);
  });

  it('documents every field of `status --json` and `hosts --json`', async () => {
    const ds = join(tmp, 'ds1');
    mkdirSync(ds, { recursive: true });
    const config = validateConfig({
      cluster: 'docs',
      secretFile: '/unused',
      hosts: { 'host-1': { address: '127.0.0.1' }, 'host-2': { address: '127.0.0.2' } },
      datastores: { ds1: ds },
      timing: { profile: 'fast' },
    });
    // No sockets: a transport that drops everything, and a logger that discards.
    const transport: Transport = {
      send: () => {},
      onDatagram: (_h: (d: Datagram) => void) => {},
      close: async () => {},
    };
    const logger: Logger = { log: () => {}, close: async () => {} };
    const agent = new Agent({
      config,
      host: 'host-1',
      secret: Buffer.from('0123456789abcdef0123456789abcdef'),
      logger,
      stateDir: join(tmp, 'state'),
      socketPath: join(tmp, 'agent.sock'),
      transport,
    });
    await agent.start();
    try {
      // Let the first storage heartbeat settle, so stop() does not race its acquisition.
      for (let i = 0; i < 100 && agent.status().heartbeatsHeld.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      const cli = read('docs/cli.md');
      const statusDoc = documentedFields(section(cli, '### `status --json` fields'));
      expect(missing(Object.keys(agent.status()), statusDoc), 'AgentStatus fields missing from docs/cli.md').toEqual([]);
      const hostsDoc = documentedFields(section(cli, '### `hosts --json` fields'));
      const rows = agent.hosts();
      expect(rows.length).toBe(2);
      expect(missing(Object.keys(rows[0]!), hostsDoc), 'HostRow fields missing from docs/cli.md').toEqual([]);
    } finally {
      await agent.stop('test done');
    }
    await new Promise((r) => setTimeout(r, 200));
  });
});
