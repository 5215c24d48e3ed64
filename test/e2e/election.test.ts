/**
 * Master election with real agents (five processes on 127.0.0.11..15:8182, `fast` timings):
 * the rule "most accessible datastores wins; ties to the highest host id as a string" decides,
 * a SIGKILLed master is replaced by the next one under the same rule, and a restarted former
 * master joins the running master as a slave instead of displacing it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { best } from '@vigil/core';
import { loadConfig, type ClusterConfig } from '@vigil/config';
import type { AgentStatus, HostRow } from '@vigil/agent';
import {
  Lab,
  describeLab,
  fingerprint,
  isUp,
  labTempDir,
  readLog,
  runCli,
  startHosts,
  tick,
  waitAgreedOn,
  waitFor,
  waitPortsFree,
} from './helpers/lab.js';

const HOSTS = ['host-1', 'host-2', 'host-3', 'host-4', 'host-5'];
const ADDRESSES = ['127.0.0.11', '127.0.0.12', '127.0.0.13', '127.0.0.14', '127.0.0.15'];

/**
 * host-2 and host-4 both mount all three datastores; the others fewer. So host-4 wins (tie on 3,
 * "host-4" > "host-2"), not host-5 (the highest id, only 2 datastores), and once host-4 is gone
 * host-2 wins, again not host-5.
 */
const SUBSETS: Record<string, string[]> = {
  'host-1': ['ds1'],
  'host-2': ['ds1', 'ds2', 'ds3'],
  'host-3': ['ds2'],
  'host-4': ['ds3', 'ds1', 'ds2'],
  'host-5': ['ds1', 'ds2'],
};

/** The election rule applied to the config: what each host can access is its configured subset. */
function predict(config: ClusterConfig, alive: string[]): string {
  const winner = best(alive.map((h) => ({ host: h, datastores: config.hosts[h]!.datastores.length })));
  if (!winner) throw new Error('no candidates');
  return winner.host;
}

describe('election with five real agents', () => {
  let dir = '';
  let lab: Lab;
  let config: ClusterConfig;
  let first = '';
  let second = '';

  beforeAll(async () => {
    await waitPortsFree(ADDRESSES, 8182);
    dir = await labTempDir('election');
    lab = new Lab(dir);
    const ids = await lab.create({ dir, hosts: 5, datastores: 3, hostDatastores: SUBSETS, profile: 'fast' });
    expect(ids).toEqual(HOSTS);
    config = loadConfig(lab.paths.config);
    expect(config.profile).toBe('fast');
    for (const [i, h] of HOSTS.entries()) {
      expect(config.hosts[h]!.address).toBe(ADDRESSES[i]);
      expect(config.hosts[h]!.port).toBe(8182);
    }
    await startHosts(lab, HOSTS);
  });

  afterAll(async () => {
    if (lab) await lab.down({ purge: true });
  });

  it('predicts a master that is not simply the highest host id', () => {
    first = predict(config, HOSTS);
    expect(first).toBe('host-4');
    second = predict(
      config,
      HOSTS.filter((h) => h !== first),
    );
    expect(second).toBe('host-2');
  });

  it('all five agree on the predicted master', async () => {
    const t = config.timing;
    const reports = await waitAgreedOn(lab, HOSTS, first, t.electionWindowMs * 10);
    for (const r of reports) {
      // Each agent accesses exactly its configured subset (that is what it sent in the election).
      expect(r.status.datastores, r.host).toEqual([...SUBSETS[r.host]!].sort());
      expect(r.status.profile).toBe('fast');
      expect(r.status.cluster).toBe('lab');
    }
    // The winner logged why it won, with every host as a candidate.
    const won = readLog(lab.paths.log(first)).filter((l) => l.event === 'election.won');
    expect(won).toHaveLength(1);
    expect(won[0]!['candidates']).toEqual(expect.arrayContaining(HOSTS.map((h) => `${h}:${SUBSETS[h]!.length}`)));
  });

  it('after SIGKILL of the master the other four agree on the next one under the rule', async () => {
    const t = config.timing;
    const rest = HOSTS.filter((h) => h !== first);
    expect(await lab.kill(first)).toBe(true);
    await waitFor('the killed master to stop answering', async () => !(await lab.status(first)).up, { timeoutMs: 5000 });
    const reports = await waitAgreedOn(lab, rest, second, t.hostTimeoutMs + t.electionWindowMs * 10);
    const master = reports.find((r) => r.host === second)!.status;
    expect(master.generation).toBeGreaterThanOrEqual(2); // a new master term, above the dead master's
    // The survivors noticed the loss of the old master (not some other cause of re-election).
    const lost = rest.flatMap((h) => readLog(lab.paths.log(h)).filter((l) => l.event === 'master.lost'));
    expect(lost.length).toBeGreaterThan(0);
    expect(lost.every((l) => l['master'] === first)).toBe(true);
  });

  it('the restarted former master joins as a slave and the new master stays master', async () => {
    const t = config.timing;
    const before = (await lab.status(second)) as { up: true; status: AgentStatus };
    expect(before.up).toBe(true);
    await startHosts(lab, [first]);
    await waitAgreedOn(lab, HOSTS, second, t.electionWindowMs * 10);
    const joined = readLog(lab.paths.log(first)).filter((l) => l.event === 'election.joined');
    expect(joined.at(-1)?.['master']).toBe(second);

    // Stability: over 20 heartbeat intervals (twice the host timeout) nothing changes: same
    // master process, same generation, every host its slave.
    const watchMs = Math.max(20 * t.heartbeatIntervalMs, 2 * t.hostTimeoutMs);
    const deadline = Date.now() + watchMs;
    let polls = 0;
    while (Date.now() < deadline) {
      const reports = await lab.statusAll();
      const bad = reports.filter(
        (r) =>
          !isUp(r) ||
          (r.host === second
            ? r.status.role !== 'master' || r.status.pid !== before.status.pid || r.status.generation !== before.status.generation
            : r.status.role !== 'slave' || r.status.master !== second),
      );
      if (bad.length > 0) throw new Error(`the cluster changed after ${first} rejoined:\n${await describeLab(lab)}`);
      polls += 1;
      await tick(t.heartbeatIntervalMs / 2);
    }
    expect(polls).toBeGreaterThanOrEqual(5);
    // Nobody re-elected meanwhile.
    const newMaster = readLog(lab.paths.log(second)).filter((l) => l.event === 'election.won' || l.event === 'master.abdicated');
    expect(newMaster.map((l) => l.event)).toEqual(['election.won']);
  });

  it('`vigil hosts --json` on the master lists all five hosts', async () => {
    const t = config.timing;
    const socket = lab.paths.socket(second);
    // Poll: the rejoined host counts as connected once its first slave heartbeats arrived.
    const rows = await waitFor(
      'the master to see every other host connected',
      async () => {
        const res = await runCli(['hosts', '--json', '--socket', socket]);
        if (res.code !== 0) throw new Error(`vigil hosts exited ${res.code}: ${res.stderr}`);
        const parsed = JSON.parse(res.stdout) as HostRow[];
        return parsed.every((r) => r.state === (r.host === second ? 'master' : 'connected')) ? parsed : undefined;
      },
      { timeoutMs: 15_000, intervalMs: 200 },
    );
    expect(rows.map((r) => r.host).sort()).toEqual(HOSTS);
    for (const r of rows) {
      expect(Object.keys(r)).toEqual(expect.arrayContaining(['host', 'address', 'state', 'lastHeartbeatMs']));
      expect(r.address).toBe(config.hosts[r.host]!.address);
      expect(r.datastores).toBe(SUBSETS[r.host]!.length);
      if (r.host === second) {
        expect(r.lastHeartbeatMs).toBeNull();
      } else {
        expect(typeof r.lastHeartbeatMs).toBe('number');
        expect(r.lastHeartbeatMs!).toBeGreaterThanOrEqual(0);
        expect(r.lastHeartbeatMs!).toBeLessThan(t.hostTimeoutMs);
      }
    }
  });

  it('`vigil status --json` reports host, cluster, role, master, datastores', async () => {
    const res = await runCli(['status', '--json', '--socket', lab.paths.socket(second)]);
    expect(res.code, res.stderr).toBe(0);
    const st = JSON.parse(res.stdout) as AgentStatus;
    expect(st).toMatchObject({ host: second, cluster: 'lab', role: 'master', master: second, datastores: ['ds1', 'ds2', 'ds3'] });

    const slave = await runCli(['status', '--json', '--socket', lab.paths.socket(first)]);
    expect(slave.code, slave.stderr).toBe(0);
    expect(JSON.parse(slave.stdout)).toMatchObject({ host: first, cluster: 'lab', role: 'slave', master: second, datastores: ['ds1', 'ds2', 'ds3'] });

    // The human form names the same facts.
    const human = await runCli(['status', '--socket', lab.paths.socket(second)]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/role\s+master/);
    expect(human.stdout).toContain(`${second} (${config.hosts[second]!.address}:8182)`);
    expect(fingerprint(st)).toContain(`role=master master=${second}`);
  });
});
