/**
 * Hung storage (SPEC §3.3, §3.6; reference/environment.md §4, §6). host-1's agent runs in its own
 * mount namespace, where ds1 is an sshfs mount (caching off) of the very same directory through a
 * private sshd on 127.0.0.1; every other host, and the test, use the plain directory. Then the
 * server stops answering (SIGSTOP of the sshd session and sftp-server processes): host-1's
 * storage calls on ds1 hang, with no error at all.
 * - host-1's self-fence fires (heartbeat.lost naming the self-fence deadline) within
 *   selfFenceDeadlineMs of its last successful renewal (plus scheduling slack), strictly before
 *   last renewal + leaseTimeoutMs, i.e. before anyone may treat its lease as expired;
 * - its host-1-hb on ds1 stops changing (as seen by everyone else), the agent keeps running and
 *   answering;
 * - a hang on ds1 must not cost host-1 its heartbeat on ds2 (a healthy datastore);
 * - once the server answers again, host-1 holds its ds1 heartbeat again.
 * Skipped (with the reason printed) when FUSE, sshfs or sshd are not available.
 */
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { Cleanup, RecordSampler, StorageLab, T, alive, waitFor } from './helpers/storage-harness.js';
import { LoopbackSshd, NamespacedSshfs, sshfsUnavailable } from './helpers/storage-sshfs.js';

const DSS = ['ds1', 'ds2'];
const VICTIM = 'host-1';
const HUNG_DS = 'ds1';
const EVENTS = /^(agent\.started|election\.(won|joined)|ownership\.|heartbeat\.|datastore\.|datastores$|storage\.|lease\.)/;
/** Timer and event-loop slack allowed on top of the self-fence deadline. */
const SLACK_MS = 150;

describe('storage: hung sshfs storage on one host', () => {
  const cleanup = new Cleanup();
  let s: StorageLab;
  let sshd: LoopbackSshd | null = null;
  let mount: NamespacedSshfs | null = null;
  let pids = new Map<string, number>();
  let master = '';
  let victimPid = 0;
  let skip: string | null = null;

  beforeAll(async () => {
    skip = await sshfsUnavailable();
    if (skip) return;
    sshd = await LoopbackSshd.start();
    cleanup.add('stop sshd', () => sshd?.stop());
    s = await StorageLab.create({ name: 'storage-hung', hosts: 3 });
    cleanup.add('lab down', () => s.down());
    victimPid = await s.start(VICTIM, { prefix: ['unshare', '-m', '--propagation', 'private'] });
    pids.set(VICTIM, victimPid);
    // sshfs over ds1 inside host-1's namespace, pointing at the same directory through sshd.
    mount = await NamespacedSshfs.mount(sshd, victimPid, s.dsPath(HUNG_DS), s.dsPath(HUNG_DS));
    // Cleanup order (last in, first out): let the server answer again, unmount, then the rest.
    cleanup.add('unmount sshfs', () => mount?.unmount());
    cleanup.add('thaw sshd', () => sshd?.thaw());
    s.mark(`sshfs mounted over ${HUNG_DS} in ${VICTIM}'s mount namespace (sshd on 127.0.0.1:${sshd.port}, sshfs pid ${mount.daemon.pid})`);
    for (const h of s.hosts.filter((h) => h !== VICTIM)) pids.set(h, await s.start(h));
    master = await s.waitConverged();
    await s.waitSteady(master, DSS);
  });

  afterAll(async () => {
    await cleanup.run();
  });

  it('the holder fences itself before its lease can expire, and keeps its healthy datastore', async (ctx) => {
    if (skip) {
      console.log(`SKIPPED: ${skip}`);
      ctx.skip();
    }
    expect(master).not.toBe(VICTIM);
    const hungHb = s.file(HUNG_DS, `${VICTIM}-hb`);
    const okHb = s.file('ds2', `${VICTIM}-hb`);
    const sampler = new RecordSampler([hungHb, okHb], 10).start();
    cleanup.add('sampler', () => sampler.stop());
    // host-1 renews through sshfs (the test reads the plain directory).
    await waitFor(`${VICTIM} to renew ${HUNG_DS} through sshfs`, () => (sampler.changes.get(hungHb)?.length ?? 0) >= 4, { timeoutMs: 10_000, intervalMs: 50 });
    expect((await s.status(VICTIM)).heartbeatsHeld).toEqual(DSS);

    const frozen = sshd!.freeze();
    const frozenAt = s.mark(`SIGSTOP the sshd session and sftp-server (${frozen.map((p) => `${p.pid} ${p.cmd.split(' ')[0]}`).join(', ')})`);
    onTestFailed(() => s.printTimeline(`FAILED: ${HUNG_DS} hung on ${VICTIM}`, EVENTS, { from: frozenAt - 1500 }));
    expect(frozen.some((p) => p.cmd.includes('sftp-server')), 'an sftp-server was serving the mount').toBe(true);

    const lost = await waitFor(
      `${VICTIM} to report its ${HUNG_DS} heartbeat lost`,
      () => s.events(VICTIM, 'heartbeat.lost', (l) => l.datastore === HUNG_DS && s.timeOf(l) >= frozenAt - 50)[0],
      { timeoutMs: T.leaseTimeoutMs + 5000, intervalMs: 10 },
    );
    const lostAt = s.timeOf(lost);
    // The last renewal that landed: the last change of the record before the freeze took effect.
    const lastRenewal = sampler.changesSince(hungHb, 0).filter((c) => c.at <= lostAt).pop()!.at;
    const sinceRenewal = lostAt - lastRenewal;
    console.log(
      `${VICTIM}: last renewal through sshfs seen ${frozenAt - lastRenewal} ms before the freeze; heartbeat.lost ${lostAt - frozenAt} ms after the freeze, ${sinceRenewal} ms after the last renewal (self-fence deadline ${T.selfFenceDeadlineMs} ms, lease timeout ${T.leaseTimeoutMs} ms); reason: ${lost.reason}`,
    );
    // Reported lost either by the self-fence deadline or, earlier, because the probe found the datastore gone.
    expect(String(lost.reason)).toMatch(/self-fence deadline|no longer accessible/);
    expect(sinceRenewal).toBeLessThanOrEqual(T.selfFenceDeadlineMs + SLACK_MS);
    expect(sinceRenewal).toBeLessThan(T.leaseTimeoutMs);
    expect(sampler.changesSince(hungHb, lostAt), `${hungHb} changed after the fence`).toEqual([]);

    // Keep it hung for a lease timeout and more: the record stays frozen for everyone, the agent
    // keeps answering, and its heartbeat on ds2 (healthy) must stay held.
    const ds2Held: string[] = [];
    await waitFor(
      'a lease timeout and a half to pass with the storage hung',
      async () => {
        const st = await s.status(VICTIM);
        ds2Held.push(`+${Date.now() - frozenAt} ms: held ${st.heartbeatsHeld.join(',') || 'none'}, accessible ${st.datastores.join(',') || 'none'}`);
        return Date.now() - frozenAt >= T.leaseTimeoutMs * 1.5 + T.selfFenceDeadlineMs ? true : undefined;
      },
      { timeoutMs: T.leaseTimeoutMs * 3 + 10_000, intervalMs: 200 },
    );
    expect(alive(victimPid)).toBe(true);
    expect(sampler.changesSince(hungHb, lostAt)).toEqual([]);
    const ds2Changes = sampler.changesSince(okHb, frozenAt + T.selfFenceDeadlineMs);
    const ds2Lost = s.events(VICTIM, 'heartbeat.lost', (l) => l.datastore === 'ds2' && s.timeOf(l) >= frozenAt);
    console.log(
      `${VICTIM} while ${HUNG_DS} hangs: ${ds2Held[0]} ... ${ds2Held[ds2Held.length - 1]}; ${okHb.slice(s.dir.length + 1)} renewed ${ds2Changes.length} times after the first second`,
    );
    s.printTimeline(`${HUNG_DS} hung on ${VICTIM}`, EVENTS, { from: frozenAt - 1500 });

    // The server answers again: host-1 must get its ds1 heartbeat back.
    const thawedAt = s.mark('SIGCONT the sshd session and sftp-server');
    sshd!.thaw();
    let recovered = false;
    try {
      await waitFor(
        `${VICTIM} to hold both heartbeats again`,
        async () => {
          const st = await s.status(VICTIM);
          return st.heartbeatsHeld.length === 2 ? true : undefined;
        },
        { timeoutMs: 15_000, intervalMs: 100 },
      );
      recovered = true;
    } finally {
      s.printTimeline('after the server answers again', EVENTS, { from: thawedAt - 10 });
      console.log(`${VICTIM} ${recovered ? 'recovered' : 'did NOT recover'} after the thaw`);
    }
    s.assertNoCrash(pids);
    expect(ds2Lost.map((l) => `${l.timestamp} ${l.message}`), `${VICTIM} lost its healthy ds2 heartbeat because ${HUNG_DS} hung`).toEqual([]);
    expect(ds2Changes.length, `${okHb} renewals while ${HUNG_DS} hung`).toBeGreaterThan(0);
  });
});
