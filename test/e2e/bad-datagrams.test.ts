/**
 * Hostile and broken datagrams against running agents: noise, truncated and oversized datagrams,
 * forged elections and master heartbeats (wrong key; right key from the wrong address), bad
 * headers. Every agent must stay up, keep its role and master, and log each kind of drop with
 * its reason, rate limited (far fewer log lines than datagrams).
 *
 * Replays cannot be produced from outside (they need the claimed sender's own address and port,
 * which its agent holds); ReplayGuard is covered by packages/protocol/test/replay.test.ts.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveKey, encode, MAX_DATAGRAM_BYTES } from '@vigil/protocol';
import { loadConfig, loadSecret, type ClusterConfig } from '@vigil/config';
import type { AgentStatus } from '@vigil/agent';
import {
  Lab,
  describeLab,
  fingerprint,
  labTempDir,
  logSize,
  readLog,
  startHosts,
  tick,
  waitAgreedOn,
  waitFor,
  waitPortsFree,
  type LogLine,
} from './helpers/lab.js';
import { bigIncarnation, buildRaw, noise, randomInt, randomSeq, Sender, TYPE } from './helpers/datagrams.js';

const HOSTS = ['host-1', 'host-2', 'host-3', 'host-4'];
const ADDRESSES = ['127.0.0.11', '127.0.0.12', '127.0.0.13', '127.0.0.14'];
const OUTSIDERS = ['127.0.0.200', '127.0.0.1'];
/** Every drop reason this test provokes on every agent. */
const EXPECTED_REASONS = [
  'oversized',
  'truncated',
  'badMagic',
  'badVersion',
  'unknownType',
  'malformed',
  'wrongCluster',
  'badSender',
  'unauthenticated',
  'unknownSender',
  'wrongSource',
];
/** Log events that would mean a role change. */
const ROLE_EVENTS = ['election.started', 'election.won', 'election.lost', 'election.joined', 'master.lost', 'master.abdicated', 'master.changed', 'agent.crashed', 'core.error'];

interface Kind {
  name: string;
  reason: string;
  /** A fresh datagram for `target` (random seq etc. each time). */
  make(target: string): Buffer;
}

describe('bad datagrams against a running lab', () => {
  let dir = '';
  let lab: Lab;
  let config: ClusterConfig;
  let goodKey: Buffer;
  let badKey: Buffer;
  let master = '';
  const senders: Sender[] = [];

  beforeAll(async () => {
    await waitPortsFree(ADDRESSES, 8182);
    dir = await labTempDir('baddgram');
    lab = new Lab(dir);
    await lab.create({ dir, hosts: HOSTS.length, datastores: 2, profile: 'fast' });
    config = loadConfig(lab.paths.config);
    // The lab's real key, the way the agents derive it; and a key of another secret.
    goodKey = deriveKey(loadSecret(config), config.cluster);
    expect(goodKey.equals(deriveKey(Buffer.from(readFileSync(lab.paths.secret, 'utf8').trim()), 'lab'))).toBe(true);
    badKey = deriveKey(Buffer.from('not-the-lab-secret-0123456789abcdef'), config.cluster);
    await startHosts(lab, HOSTS);
    master = 'host-4'; // every host mounts both datastores: the tie goes to the highest id
    await waitAgreedOn(lab, HOSTS, master, config.timing.electionWindowMs * 10);
  });

  afterAll(async () => {
    await Promise.all(senders.map((s) => s.close()));
    if (lab) await lab.down({ purge: true });
  });

  it('stays up, keeps its roles and logs rate-limited drops with reasons', async () => {
    const t = config.timing;
    const cluster = config.cluster;
    const other = (target: string) => (target === master ? 'host-3' : master);
    const winning = () => JSON.stringify({ datastores: 10_000, maintenance: false, generation: 2 ** 40 });
    const valid = (target: string, key: Buffer, sender = other(target)) =>
      encode({ cluster, sender, incarnation: Number(bigIncarnation()), seq: randomSeq(), msg: { type: 'masterHeartbeat', datastores: 10_000, maintenance: false, generation: 2 ** 40 } }, key);

    const kinds: Kind[] = [
      { name: 'random bytes', reason: 'badMagic', make: () => Buffer.concat([Buffer.from('XY'), noise(randomInt(1, 300))]) },
      { name: 'empty / tiny datagram', reason: 'truncated', make: () => noise(randomInt(0, 2)) },
      { name: 'truncated valid datagram', reason: 'truncated', make: (tg) => valid(tg, goodKey).subarray(0, randomInt(3, 80)) },
      { name: 'valid datagram minus its last byte', reason: 'truncated', make: (tg) => { const b = valid(tg, goodKey); return b.subarray(0, b.length - 1); } },
      { name: 'bad magic', reason: 'badMagic', make: (tg) => { const b = Buffer.from(valid(tg, goodKey)); b.write('VGX', 0, 'ascii'); return b; } },
      { name: 'bad version', reason: 'badVersion', make: (tg) => buildRaw({ version: 2, type: TYPE.masterHeartbeat, cluster, sender: other(tg), payload: winning(), key: goodKey, seq: randomSeq() }) },
      { name: 'unknown type', reason: 'unknownType', make: (tg) => buildRaw({ type: 99, cluster, sender: other(tg), payload: winning(), key: goodKey, seq: randomSeq() }) },
      { name: 'flags set', reason: 'malformed', make: (tg) => buildRaw({ flags: 1, type: TYPE.masterHeartbeat, cluster, sender: other(tg), payload: winning(), key: goodKey, seq: randomSeq() }) },
      { name: 'trailing bytes', reason: 'malformed', make: (tg) => Buffer.concat([valid(tg, goodKey), Buffer.from([0])]) },
      { name: 'right key, payload out of range', reason: 'malformed', make: (tg) => buildRaw({ type: TYPE.election, cluster, sender: other(tg), payload: '{"datastores":1e9}', key: goodKey, seq: randomSeq() }) },
      { name: 'other cluster', reason: 'wrongCluster', make: (tg) => buildRaw({ type: TYPE.masterHeartbeat, cluster: 'lab2', sender: other(tg), payload: winning(), key: deriveKey(loadSecret(config), 'lab2'), seq: randomSeq() }) },
      { name: 'sender not a host id', reason: 'badSender', make: () => buildRaw({ type: TYPE.masterHeartbeat, cluster, sender: 'server-1', payload: winning(), key: goodKey, seq: randomSeq() }) },
      // Forgeries that would win the election / displace the master if accepted.
      { name: 'wrong key: masterHeartbeat of an existing host', reason: 'unauthenticated', make: (tg) => valid(tg, badKey) },
      { name: 'wrong key: masterHeartbeat of host-9', reason: 'unauthenticated', make: (tg) => valid(tg, badKey, 'host-9') },
      {
        name: 'wrong key: election with 10000 datastores',
        reason: 'unauthenticated',
        make: (tg) => encode({ cluster, sender: other(tg), incarnation: Number(bigIncarnation()), seq: randomSeq(), msg: { type: 'election', datastores: 10_000, maintenance: false, generation: 2 ** 40 } }, badKey),
      },
      { name: 'right key, non-existent host-77', reason: 'unknownSender', make: (tg) => valid(tg, goodKey, 'host-77') },
      { name: 'right key, claims to be the receiver itself', reason: 'unknownSender', make: (tg) => valid(tg, goodKey, tg) },
      { name: 'right key, existing host, wrong source', reason: 'wrongSource', make: (tg) => valid(tg, goodKey) },
      {
        name: 'right key, abdicate from the master, wrong source',
        reason: 'wrongSource',
        make: (tg) => encode({ cluster, sender: master === tg ? 'host-3' : master, incarnation: Number(bigIncarnation()), seq: randomSeq(), msg: { type: 'abdicate', to: 'host-1' } }, goodKey),
      },
      { name: 'oversized noise', reason: 'oversized', make: () => noise(randomInt(MAX_DATAGRAM_BYTES + 1, 4000)) },
      {
        name: 'oversized, right key',
        reason: 'oversized',
        make: (tg) => buildRaw({ type: TYPE.masterHeartbeat, cluster, sender: other(tg), payload: JSON.stringify({ datastores: 10_000, maintenance: false, generation: 1, pad: 'x'.repeat(1500) }), key: goodKey, seq: randomSeq() }),
      },
    ];

    for (const a of OUTSIDERS) senders.push(await Sender.bind(a));
    // Impostors: the address of a real host but not its port. With the right key and that
    // host's id this is as close to a valid datagram as an outsider gets: still wrongSource.
    const impostors = new Map<string, Sender>();
    for (const [i, h] of HOSTS.entries()) {
      const s = await Sender.bind(ADDRESSES[i]!);
      senders.push(s);
      impostors.set(h, s);
    }
    const agentEndpoints = new Set(HOSTS.map((h) => `${config.hosts[h]!.address}:${config.hosts[h]!.port}`));

    // Baseline.
    const baseline = new Map<string, string>();
    for (const r of await lab.statusAll()) {
      if (!r.up) throw new Error(`${r.host} is down before the test:\n${await describeLab(lab)}`);
      baseline.set(r.host, fingerprint(r.status));
    }
    const offsets = new Map(HOSTS.map((h) => [h, logSize(lab.paths.log(h))]));
    const pids = (await lab.readState())!.pids;

    // Watch roles while the datagrams fly.
    const violations = new Set<string>();
    let watching = true;
    let watchPolls = 0;
    const check = async () => {
      for (const h of HOSTS) {
        if (!lab.alive(pids[h])) violations.add(`${h}: agent process ${pids[h]} died`);
      }
      for (const r of await lab.statusAll()) {
        watchPolls += 1;
        if (!r.up) violations.add(`${r.host}: not answering (${r.error})`);
        else if (fingerprint(r.status) !== baseline.get(r.host)) violations.add(`${r.host}: ${baseline.get(r.host)} -> ${fingerprint(r.status)}`);
      }
    };
    const watcher = (async () => {
      while (watching) {
        await check();
        await tick(100);
      }
    })();

    let sent = 0;
    const sendTo = async (from: Sender, target: string, data: Buffer) => {
      const h = config.hosts[target]!;
      await from.send(data, h.address, h.port);
      sent += 1;
    };

    // Every kind to every agent from every outside address once, then the impostors...
    for (const target of HOSTS) {
      for (const s of senders.slice(0, OUTSIDERS.length)) for (const k of kinds) await sendTo(s, target, k.make(target));
      for (const [claimed, s] of impostors) {
        if (claimed === target) continue;
        const forged = encode(
          { cluster, sender: claimed, incarnation: Number(bigIncarnation()), seq: randomSeq(), msg: { type: 'masterHeartbeat', datastores: 10_000, maintenance: false, generation: 2 ** 40 } },
          goodKey,
        );
        await sendTo(s, target, forged);
      }
    }
    // ...then a random mix for about two seconds.
    const until = Date.now() + 2000;
    while (Date.now() < until) {
      for (const target of HOSTS) {
        const s = senders[randomInt(0, senders.length - 1)]!;
        await sendTo(s, target, kinds[randomInt(0, kinds.length - 1)]!.make(target));
      }
      await tick(10);
    }
    const sendErrors = senders.flatMap((s) => s.errors);
    expect(sendErrors).toEqual([]);
    expect(sent).toBeGreaterThanOrEqual(300);

    // After the flood: still the same for longer than a host timeout (a slave would have
    // re-elected by then had its master's heartbeats been disturbed).
    const calmUntil = Date.now() + Math.max(1500, 1.5 * t.hostTimeoutMs);
    await waitFor('the calm period to pass', () => Date.now() >= calmUntil, { timeoutMs: 10_000, intervalMs: 100 });
    watching = false;
    await watcher;
    await check();
    expect([...violations], await describeLab(lab)).toEqual([]);
    expect(watchPolls).toBeGreaterThan(HOSTS.length * 5);

    // Each agent logged every reason, as parsed JSON lines with the documented fields.
    const drops = new Map<string, LogLine[]>();
    await waitFor(
      'every agent to log every drop reason',
      () => {
        for (const h of HOSTS) drops.set(h, readLog(lab.paths.log(h), offsets.get(h)).filter((l) => l.event === 'datagram.dropped'));
        return HOSTS.every((h) => EXPECTED_REASONS.every((r) => drops.get(h)!.some((l) => l.reason === r)));
      },
      {
        timeoutMs: 5000,
        describe: () => HOSTS.map((h) => `${h}: ${[...new Set(drops.get(h)?.map((l) => l.reason))].sort().join(', ')}`).join('\n'),
      },
    );
    let totalLines = 0;
    for (const h of HOSTS) {
      const lines = drops.get(h)!;
      totalLines += lines.length;
      const perReason = new Map<string, number>();
      for (const l of lines) {
        expect(l.level).toBe('warn');
        expect(l.host).toBe(h);
        expect(typeof l.reason).toBe('string');
        perReason.set(l.reason!, (perReason.get(l.reason!) ?? 0) + 1);
        if (typeof l['from'] === 'string') {
          // Dropped datagrams all came from us, never from another agent's endpoint.
          expect(agentEndpoints.has(l['from']), `${h} dropped a datagram of an agent: ${JSON.stringify(l)}`).toBe(false);
          expect(typeof l['detail']).toBe('string');
          expect(typeof l['bytes']).toBe('number');
        }
      }
      // Rate limited: at most a couple of lines per reason in these few seconds.
      for (const [reason, n] of perReason) expect(n, `${h} ${reason}`).toBeLessThanOrEqual(2);
      const wrongSource = lines.find((l) => l.reason === 'wrongSource')!;
      expect(wrongSource['detail']).toMatch(/^claims host-\d+ \(127\.0\.0\.1\d:8182\) but came from 127\.0\.0\.\d+:\d+$/);
      // No role change, no crash, no core error in the log while under fire.
      const roleEvents = readLog(lab.paths.log(h), offsets.get(h)).filter((l) => ROLE_EVENTS.includes(l.event ?? ''));
      expect(roleEvents, h).toEqual([]);
    }
    expect(totalLines).toBeLessThan(sent / 10);
  });
});
