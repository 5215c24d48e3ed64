/**
 * @vigil/config: defaults, timing profiles and overrides (re-checked against the lease
 * inequalities), cross-reference checks, loading from disk, and the choice of heartbeat
 * datastores.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Timing } from '@vigil/core';
import {
  ConfigError,
  DEFAULT_TIMING,
  canonicalAddress,
  FAST_TIMING,
  PROFILES,
  checkTiming,
  heartbeatDatastoresFor,
  loadConfig,
  loadSecret,
  validateConfig,
  type ClusterConfig,
} from '@vigil/config';

type Json = Record<string, unknown>;

function minimal(extra: Json = {}): Json {
  return {
    cluster: 'prod-1',
    secretFile: '/etc/vigil/secret',
    hosts: { 'host-1': { address: '10.0.0.1' }, 'host-2': { address: '10.0.0.2' } },
    datastores: { ds1: '/mnt/ds1', ds2: '/mnt/ds2' },
    ...extra,
  };
}

/** The problems of an invalid config (fails the test if it is accepted). */
function problems(input: unknown): { key: string; problem: string }[] {
  try {
    validateConfig(input, 'test');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error(`config was accepted: ${JSON.stringify(input)}`);
}

const keysOf = (input: unknown) => problems(input).map((p) => p.key);

describe('validateConfig defaults', () => {
  it('fills in port, isolation response, driver, log, restart and the default (FDM) profile', () => {
    const c = validateConfig(minimal());
    expect(c.port).toBe(8182);
    expect(c.hosts['host-1']!.port).toBe(8182);
    expect(c.isolationResponse).toBe('leavePoweredOn');
    expect(c.driver).toEqual({ type: 'process' });
    expect(c.profile).toBe('default');
    expect(c.log).toEqual({ level: 'info', format: 'json' });
    expect(c.restart).toEqual({ maxConcurrentPerHost: 32, maxAttempts: 5, nextPriorityWhen: 'allocated' });
    expect(c.heartbeatDatastores).toBeNull();
    expect(c.isolationAddresses).toEqual([]);
    expect(c.hosts['host-1']!.datastores).toEqual(['ds1', 'ds2']); // every datastore when not listed
    expect(c.hosts['host-1']!.isolationAddresses).toEqual([]);
  });

  it('the default profile is the shipped DEFAULT_TIMING; fdm carries FDM values', () => {
    const t = validateConfig(minimal()).timing;
    expect(t).toEqual(DEFAULT_TIMING);
    expect(PROFILES.default).toBe(DEFAULT_TIMING);
    expect(t.hostTimeoutMs).toBe(4000);
    expect(t.deadMs).toBe(6500);
    const f = validateConfig(minimal({ timing: { profile: 'fdm' } })).timing;
    expect(f).toEqual(PROFILES.fdm);
    expect(f.hostTimeoutMs).toBe(10_000);
    expect(f.electionWindowMs).toBe(15_000);
    expect(f.heartbeatIntervalMs).toBe(1000);
    expect(f.storageHeartbeatIntervalMs).toBe(5000);
    expect(f.deadMs).toBe(18_000);
  });

  it('default differs from fdm only in detection and lease timings; isolation keeps FDM values', () => {
    const changed = (Object.keys(PROFILES.fdm) as (keyof Timing)[]).filter((k) => JSON.stringify(PROFILES.fdm[k]) !== JSON.stringify(DEFAULT_TIMING[k]));
    for (const k of ['slaveIsolationMs', 'masterIsolationMs', 'isolationResponseDelayMs', 'isolationShutdownTimeoutMs', 'heartbeatIntervalMs'] as const) expect(changed).not.toContain(k);
    // The margin between the self-fence deadline and the lease timeout, in absolute terms.
    expect(DEFAULT_TIMING.leaseTimeoutMs - DEFAULT_TIMING.selfFenceDeadlineMs).toBeGreaterThanOrEqual(1500);
  });

  it('the resolved timing is a copy: changing it does not change the shipped profile', () => {
    const c = validateConfig(minimal({ timing: { profile: 'fast' } }));
    c.timing.restartRetryDelaysMs.push(1);
    c.timing.hostTimeoutMs = 1;
    expect(FAST_TIMING.restartRetryDelaysMs).toHaveLength(4);
    expect(FAST_TIMING.hostTimeoutMs).toBe(1000);
    expect(validateConfig(minimal({ timing: { profile: 'fast' } })).timing).toEqual(FAST_TIMING);
  });

  it('a per-host port overrides the cluster port', () => {
    const c = validateConfig(minimal({ port: 9000, hosts: { 'host-1': { address: '10.0.0.1' }, 'host-2': { address: '10.0.0.2', port: 9001 } } }));
    expect(c.port).toBe(9000);
    expect(c.hosts['host-1']!.port).toBe(9000);
    expect(c.hosts['host-2']!.port).toBe(9001);
  });
});

describe('timing profiles', () => {
  it('fast is about 1/10 of fdm', () => {
    const c = validateConfig(minimal({ timing: { profile: 'fast' } }));
    expect(c.profile).toBe('fast');
    expect(c.timing).toEqual(FAST_TIMING);
    // The network timings are exactly 1/10; the storage ones keep a little more margin.
    for (const k of ['hostTimeoutMs', 'electionWindowMs', 'heartbeatIntervalMs', 'storageHeartbeatIntervalMs'] as const) {
      expect(FAST_TIMING[k] * 10, k).toBe(PROFILES.fdm[k]);
    }
    for (const k of Object.keys(PROFILES.fdm) as (keyof Timing)[]) {
      const d = PROFILES.fdm[k];
      const f = FAST_TIMING[k];
      const pairs: [number, number][] = Array.isArray(d) ? d.map((v, i) => [v, (f as number[])[i]!]) : [[d, f as number]];
      for (const [dv, fv] of pairs) {
        expect(fv / dv, k).toBeGreaterThanOrEqual(1 / 25);
        expect(fv / dv, k).toBeLessThanOrEqual(1 / 5);
      }
    }
  });

  it('every shipped profile passes checkTiming', () => {
    expect(checkTiming(PROFILES.default)).toEqual([]);
    expect(checkTiming(PROFILES.fdm)).toEqual([]);
    expect(checkTiming(PROFILES.fast)).toEqual([]);
  });

  it('a per-field override applies on top of the profile', () => {
    const c = validateConfig(minimal({ timing: { profile: 'fast', heartbeatIntervalMs: 200 } }));
    expect(c.timing.heartbeatIntervalMs).toBe(200);
    expect({ ...c.timing, heartbeatIntervalMs: FAST_TIMING.heartbeatIntervalMs }).toEqual(FAST_TIMING);
    const d = validateConfig(minimal({ timing: { electionWindowMs: 20_000 } }));
    expect(d.profile).toBe('default');
    expect(d.timing.electionWindowMs).toBe(20_000);
    expect(d.timing.hostTimeoutMs).toBe(DEFAULT_TIMING.hostTimeoutMs);
  });

  it('an override that breaks the lease inequality is refused, naming timing.leaseTimeoutMs', () => {
    // leaseTimeoutMs must be > selfFenceDeadlineMs + leaseSafetyMarginMs.
    const limit = FAST_TIMING.selfFenceDeadlineMs + FAST_TIMING.leaseSafetyMarginMs;
    const p = problems(minimal({ timing: { profile: 'fast', leaseTimeoutMs: limit } }));
    expect(p.map((x) => x.key)).toEqual(['timing.leaseTimeoutMs']);
    expect(p[0]!.problem).toMatch(/unsafe/);
    expect(validateConfig(minimal({ timing: { profile: 'fast', leaseTimeoutMs: limit + 1 } })).timing.leaseTimeoutMs).toBe(limit + 1);
    // Raising another field of the inequality is re-checked too.
    expect(keysOf(minimal({ timing: { selfFenceDeadlineMs: 12_000 } }))).toEqual(['timing.leaseTimeoutMs']);
    expect(keysOf(minimal({ timing: { leaseSafetyMarginMs: 5000 } }))).toEqual(['timing.leaseTimeoutMs']);
  });

  it('checkTiming names each broken inequality by its key', () => {
    const with_ = (o: Partial<Timing>) => checkTiming({ ...FAST_TIMING, ...o }).map((p) => p.key);
    expect(with_({ hostTimeoutMs: 250 })).toContain('timing.hostTimeoutMs');
    expect(with_({ electionWindowMs: 150 })).toEqual(['timing.electionWindowMs']);
    expect(with_({ storageCallTimeoutMs: FAST_TIMING.selfFenceDeadlineMs })).toContain('timing.storageCallTimeoutMs');
    expect(with_({ slaveIsolationMs: 1000 })).toEqual(['timing.slaveIsolationMs']);
    expect(checkTiming({ ...FAST_TIMING, leaseTimeoutMs: 1 }, 'x').every((p) => p.key.startsWith('x.'))).toBe(true);
  });

  it('an unknown timing key (typo) is refused rather than ignored', () => {
    expect(keysOf(minimal({ timing: { profile: 'fast', hostTimeoutMS: 1000 } }))).toEqual(['timing.hostTimeoutMS']);
    expect(keysOf(minimal({ timing: { profile: 'slow' } }))).toEqual(['timing.profile']);
  });

  it('too few retry delays for maxAttempts is refused', () => {
    expect(keysOf(minimal({ timing: { restartRetryDelaysMs: [1000] } }))).toEqual(['restart.maxAttempts']);
    expect(validateConfig(minimal({ timing: { restartRetryDelaysMs: [1000] }, restart: { maxAttempts: 2 } })).timing.restartRetryDelaysMs).toEqual([1000]);
  });
});

describe('validateConfig refusals', () => {
  it('a duplicate address:port is refused', () => {
    const dup = minimal({ hosts: { 'host-1': { address: '10.0.0.1' }, 'host-2': { address: '10.0.0.1' } } });
    const p = problems(dup);
    expect(p.map((x) => x.key)).toEqual(['hosts.host-2.address']);
    expect(p[0]!.problem).toContain('10.0.0.1:8182');
    expect(p[0]!.problem).toContain('host-1');
    // Same address, different ports: fine. Explicit port equal to the cluster port: a duplicate.
    expect(() => validateConfig(minimal({ hosts: { 'host-1': { address: '10.0.0.1' }, 'host-2': { address: '10.0.0.1', port: 8183 } } }))).not.toThrow();
    expect(keysOf(minimal({ hosts: { 'host-1': { address: '10.0.0.1' }, 'host-2': { address: '10.0.0.1', port: 8182 } } }))).toEqual(['hosts.host-2.address']);
  });

  it('names each offending key', () => {
    expect(keysOf(minimal({ colour: 'red' }))).toEqual(['colour']);
    expect(keysOf(minimal({ hosts: { 'host-1': { address: 'db1.example.com' } } }))).toEqual(['hosts.host-1.address']);
    expect(keysOf(minimal({ hosts: { server1: { address: '10.0.0.1' } } }))).toEqual(['hosts.server1']);
    expect(keysOf(minimal({ hosts: { 'host-1': { address: '10.0.0.1', datastores: ['ds1', 'ds7'] } } }))).toEqual(['hosts.host-1.datastores.1']);
    expect(keysOf(minimal({ hosts: { 'host-1': { address: '10.0.0.1', datastores: ['ds1', 'ds1'] } } }))).toEqual(['hosts.host-1.datastores']);
    expect(keysOf(minimal({ heartbeatDatastores: ['ds3'] }))).toEqual(['heartbeatDatastores.0']);
    expect(keysOf(minimal({ secretFile: 'relative/secret' }))).toEqual(['secretFile']);
    expect(keysOf(minimal({ hosts: {} }))).toEqual(['hosts']);
    expect(keysOf(minimal({ isolationResponse: 'reboot' }))).toEqual(['isolationResponse']);
  });

  it('lists every problem at once', () => {
    const input = minimal({ colour: 'red', timing: { profile: 'fast', hostTimeoutMS: 1 }, hosts: { 'host-1': { address: 'nope' } } });
    expect(keysOf(input).sort()).toEqual(['colour', 'hosts.host-1.address', 'timing.hostTimeoutMS']);
    let msg = '';
    try {
      validateConfig(input, 'cluster.json');
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg).toMatch(/^cluster\.json: invalid config:/);
    for (const k of ['colour', 'hosts.host-1.address', 'timing.hostTimeoutMS']) expect(msg).toContain(`  ${k}: `);
  });
});

describe('addresses: one canonical form', () => {
  it('canonicalAddress: IPv4 unchanged, IPv6 in RFC 5952 form, IPv4-mapped IPv6 to its IPv4', () => {
    expect(canonicalAddress('10.0.0.1')).toBe('10.0.0.1');
    expect(canonicalAddress('::1')).toBe('::1');
    expect(canonicalAddress('0:0:0:0:0:0:0:1')).toBe('::1');
    expect(canonicalAddress('FE80:0000:0:0::0001')).toBe('fe80::1');
    expect(canonicalAddress('2001:DB8:0:0:1:0:0:1')).toBe('2001:db8::1:0:0:1');
    // What a dual-stack socket reports for an IPv4 sender, in either spelling.
    expect(canonicalAddress('::ffff:10.0.0.1')).toBe('10.0.0.1');
    expect(canonicalAddress('::FFFF:a00:1')).toBe('10.0.0.1');
    expect(canonicalAddress('fe80::0001%eth0')).toBe('fe80::1%eth0');
    expect(canonicalAddress('not an address')).toBe('not an address');
  });

  it('host and isolation addresses are stored canonically', () => {
    const c = validateConfig(
      minimal({
        isolationAddresses: ['2001:DB8::0:1', '10.0.0.254'],
        hosts: { 'host-1': { address: '0:0:0:0:0:0:0:1', isolationAddresses: ['FE80::1'] }, 'host-2': { address: '10.0.0.2' } },
      }),
    );
    expect(c.hosts['host-1']!.address).toBe('::1');
    expect(c.hosts['host-1']!.isolationAddresses).toEqual(['fe80::1']);
    expect(c.hosts['host-2']!.address).toBe('10.0.0.2');
    expect(c.isolationAddresses).toEqual(['2001:db8::1', '10.0.0.254']);
  });

  it('the duplicate check sees through different spellings of one IPv6 address', () => {
    const p = problems(minimal({ hosts: { 'host-1': { address: '::1' }, 'host-2': { address: '0:0:0:0:0:0:0:1' } } }));
    expect(p.map((x) => x.key)).toEqual(['hosts.host-2.address']);
    expect(p[0]!.problem).toContain('host-1');
    expect(keysOf(minimal({ hosts: { 'host-1': { address: '2001:db8::1' }, 'host-2': { address: '2001:DB8:0::0:1' } } }))).toEqual(['hosts.host-2.address']);
  });

  it('IPv4-mapped IPv6 addresses are refused, naming the IPv4 form', () => {
    const p = problems(minimal({ isolationAddresses: ['::ffff:10.0.0.254'], hosts: { 'host-1': { address: '::ffff:10.0.0.1' }, 'host-2': { address: '10.0.0.2' } } }));
    expect(p.map((x) => x.key).sort()).toEqual(['hosts.host-1.address', 'isolationAddresses.0']);
    expect(p.find((x) => x.key === 'hosts.host-1.address')!.problem).toContain('10.0.0.1');
  });
});

describe('problems with record keys', () => {
  it('a bad host id or datastore name reports the rule and the key, not "Invalid key in record"', () => {
    const p = problems(minimal({ hosts: { server1: { address: '10.0.0.1' } }, datastores: { 'bad name': '/mnt/x' } }));
    expect(p.map((x) => x.key).sort()).toEqual(['datastores.bad name', 'hosts.server1']);
    const host = p.find((x) => x.key === 'hosts.server1')!.problem;
    expect(host).toContain('"server1"');
    expect(host).toContain('host ids have the form host-N');
    const ds = p.find((x) => x.key === 'datastores.bad name')!.problem;
    expect(ds).toContain('"bad name"');
    expect(ds).toContain('datastore names are 1-64');
    for (const x of p) expect(x.problem).not.toMatch(/Invalid key in record/);
  });
});

describe('loadConfig and loadSecret', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vigil-unit-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('loads and validates a file', () => {
    const f = join(dir, 'ok.json');
    writeFileSync(f, JSON.stringify(minimal({ secretFile: join(dir, 'secret'), timing: { profile: 'fast' } })));
    const c = loadConfig(f);
    expect(c.cluster).toBe('prod-1');
    expect(c.timing).toEqual(FAST_TIMING);
  });

  it('refuses a file that is not JSON, and a missing file, with the file name', () => {
    const f = join(dir, 'bad.json');
    writeFileSync(f, '{ "cluster": ');
    expect(() => loadConfig(f)).toThrow(ConfigError);
    expect(() => loadConfig(f)).toThrow(/not valid JSON/);
    expect(() => loadConfig(f)).toThrow(f);
    expect(() => loadConfig(join(dir, 'absent.json'))).toThrow(/ENOENT/);
    expect(() => loadConfig(join(dir, 'absent.json'))).not.toThrow(/ENOENT: ENOENT/);
    expect(() => loadConfig(dir)).toThrow(/not a regular file/);
  });

  it('secret problems are reported under the config file that names the secret', () => {
    const f = join(dir, 'no-secret.json');
    const missing = join(dir, 'no-such-secret');
    writeFileSync(f, JSON.stringify(minimal({ secretFile: missing })));
    const c = loadConfig(f);
    let msg = '';
    try {
      loadSecret(c);
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg).toMatch(new RegExp(`^${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: invalid config:`));
    expect(msg).toContain(`secretFile: cannot read ${missing}: ENOENT: no such file`);
    expect(msg).not.toContain('ENOENT: ENOENT');
    // An explicit source wins; a bare object falls back to "config".
    expect(() => loadSecret(c, 'elsewhere.json')).toThrow(/^elsewhere\.json: invalid config/);
    expect(() => loadSecret({ secretFile: missing })).toThrow(/^config: invalid config/);
  });

  it('the timing override in the header of profiles.ts is valid', () => {
    // "timing": { "profile": "fast", "electionWindowMs": 3000 }
    expect(validateConfig(minimal({ timing: { profile: 'fast', electionWindowMs: 3000 } })).timing.electionWindowMs).toBe(3000);
  });

  it('reads the secret (trimmed), refusing a missing or short one under the key secretFile', () => {
    const s = join(dir, 'secret');
    writeFileSync(s, 'x'.repeat(32) + '\n');
    expect(loadSecret({ secretFile: s }).toString()).toBe('x'.repeat(32));
    const short = join(dir, 'short');
    writeFileSync(short, 'abc\n');
    for (const file of [short, join(dir, 'missing')]) {
      try {
        loadSecret({ secretFile: file });
        throw new Error('accepted');
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as ConfigError).problems.map((p) => p.key)).toEqual(['secretFile']);
      }
    }
  });
});

describe('heartbeatDatastoresFor', () => {
  // Mounted by: a 2 hosts, b 4, c 3, d 3, e 3.
  const cfg: ClusterConfig = validateConfig({
    cluster: 'c',
    secretFile: '/s',
    hosts: {
      'host-1': { address: '10.0.0.1', datastores: ['a', 'b', 'c', 'd'] },
      'host-2': { address: '10.0.0.2', datastores: ['d', 'c', 'b'] },
      'host-3': { address: '10.0.0.3', datastores: ['e', 'd', 'c'] },
      'host-4': { address: '10.0.0.4', datastores: ['e'] },
      'host-5': { address: '10.0.0.5', datastores: ['a', 'b'] },
      'host-6': { address: '10.0.0.6', datastores: ['e', 'b'] },
    },
    datastores: { a: '/a', b: '/b', c: '/c', d: '/d', e: '/e' },
  });

  it('picks the 2 datastores most hosts mount, ties by name, among the host\'s own', () => {
    expect(heartbeatDatastoresFor(cfg, 'host-1')).toEqual(['b', 'c']); // b 4; c, d 3: c by name
    expect(heartbeatDatastoresFor(cfg, 'host-2')).toEqual(['b', 'c']);
    expect(heartbeatDatastoresFor(cfg, 'host-3')).toEqual(['c', 'd']); // c, d, e all 3
    expect(heartbeatDatastoresFor(cfg, 'host-4')).toEqual(['e']); // it mounts only one
    expect(heartbeatDatastoresFor(cfg, 'host-5')).toEqual(['b', 'a']); // most-mounted first
    expect(heartbeatDatastoresFor(cfg, 'host-6')).toEqual(['b', 'e']);
    expect(heartbeatDatastoresFor(cfg, 'host-99')).toEqual([]);
  });

  it('with every host mounting everything: the first two names', () => {
    const all = validateConfig(minimal({ datastores: { z: '/z', ds2: '/2', ds10: '/10' } }));
    expect(heartbeatDatastoresFor(all, 'host-1')).toEqual(['ds10', 'ds2']); // string order
  });

  it('configured heartbeat datastores are restricted to the host\'s own', () => {
    const c = { ...cfg, heartbeatDatastores: ['a', 'e'] };
    expect(heartbeatDatastoresFor(c, 'host-1')).toEqual(['a']);
    expect(heartbeatDatastoresFor(c, 'host-2')).toEqual([]);
    expect(heartbeatDatastoresFor(c, 'host-3')).toEqual(['e']);
    expect(heartbeatDatastoresFor(c, 'host-5')).toEqual(['a']);
    expect(heartbeatDatastoresFor(c, 'host-6')).toEqual(['e']);
    // Through validateConfig as well.
    const v = validateConfig(minimal({ heartbeatDatastores: ['ds2'], hosts: { 'host-1': { address: '10.0.0.1', datastores: ['ds1'] }, 'host-2': { address: '10.0.0.2' } } }));
    expect(v.heartbeatDatastores).toEqual(['ds2']);
    expect(heartbeatDatastoresFor(v, 'host-1')).toEqual([]);
    expect(heartbeatDatastoresFor(v, 'host-2')).toEqual(['ds2']);
  });
});
