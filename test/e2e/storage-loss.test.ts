/**
 * Losing one datastore on one host (SPEC §3.3, §3.6), with real agents: host-1's agent runs in
 * its own mount namespace (`unshare -m --propagation private`), and a tmpfs mounted over ds1
 * inside that namespace hides ds1 from host-1 only (everyone else, and the test, still see the
 * real directory).
 * - host-1 logs ds1 inaccessible and stops counting it (status.datastores shrinks to [ds2]);
 * - it reports its heartbeat on ds1 lost (heartbeat.lost) before its self-fence deadline, and never
 *   "re-acquires" it on whatever is mounted there while ds1 is hidden;
 * - its host-1-hb record on the real ds1 stops changing, so the master's view of it dies there,
 *   while its heartbeat on ds2 keeps it alive in the aggregate; nothing crashes;
 * - after `umount`, ds1 is accessible again and host-1 re-acquires its heartbeat there.
 */
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { Cleanup, RecordSampler, StorageLab, T, alive, readRecord, run, runOk, secs, waitFor, which } from './helpers/storage-harness.js';

const DSS = ['ds1', 'ds2'];
const EVENTS = /^(agent\.started|election\.(won|joined)|ownership\.|heartbeat\.|datastore\.|datastores$|storage\.|lease\.)/;
const VICTIM = 'host-1';
const LOST_DS = 'ds1';

describe('storage: one datastore hidden from one host by a mount namespace', () => {
  const cleanup = new Cleanup();
  let s: StorageLab;
  let pids: Map<string, number>;
  let master = '';
  let victimPid = 0;
  let mounted = false;
  let missing: string | null = null;

  beforeAll(async () => {
    for (const tool of ['unshare', 'nsenter', 'mount', 'umount']) if (!(await which(tool))) missing = tool;
    if (missing) return;
    s = await StorageLab.create({ name: 'storage-loss', hosts: 3 });
    cleanup.add('lab down', () => s.down());
    pids = new Map();
    victimPid = await s.start(VICTIM, { prefix: ['unshare', '-m', '--propagation', 'private'] });
    pids.set(VICTIM, victimPid);
    // Killing the agent ends its namespace and with it the tmpfs; unmount anyway if it still runs.
    cleanup.add('umount the tmpfs in the namespace', async () => {
      if (mounted && alive(victimPid)) await runOk('nsenter', ['-t', String(victimPid), '-m', 'umount', s.dsPath(LOST_DS)]);
    });
    for (const h of s.hosts.filter((h) => h !== VICTIM)) pids.set(h, await s.start(h));
    master = await s.waitConverged();
    await s.waitSteady(master, DSS);
  });

  afterAll(async () => {
    await cleanup.run();
  });

  it('the host logs the loss, fences its heartbeat in time, and recovers after umount', async (ctx) => {
    if (missing) {
      console.log(`SKIPPED: ${missing} is not installed`);
      ctx.skip();
    }
    expect(master).not.toBe(VICTIM);
    const realHb = s.file(LOST_DS, `${VICTIM}-hb`);
    const sampler = new RecordSampler([realHb, s.file('ds2', `${VICTIM}-hb`)], 20).start();
    cleanup.add('sampler', () => sampler.stop());
    await waitFor('the sampler to see host-1 renew on ds1', () => (sampler.changes.get(realHb)?.length ?? 0) >= 2, { timeoutMs: 5000 });
    const genBefore = sampler.last(realHb)!.record!.generation;

    // Hide ds1 from host-1 only.
    const mountedAt = s.mark(`mount tmpfs over ${LOST_DS} inside ${VICTIM}'s mount namespace`);
    await runOk('nsenter', ['-t', String(victimPid), '-m', 'mount', '-t', 'tmpfs', 'tmpfs', s.dsPath(LOST_DS)]);
    mounted = true;
    onTestFailed(() => s.printTimeline('FAILED: ds1 hidden from host-1', EVENTS, { from: mountedAt - 1000 }));
    // Sanity: the test (outside the namespace) still sees the real directory.
    expect((await readRecord(realHb)).kind).toBe('ok');

    const lost = await waitFor(
      `${VICTIM} to log heartbeat.lost on ${LOST_DS}`,
      () => s.events(VICTIM, 'heartbeat.lost', (l) => l.datastore === LOST_DS && s.timeOf(l) >= mountedAt - 50)[0],
      { timeoutMs: T.selfFenceDeadlineMs + 5000, intervalMs: 25 },
    );
    const lostAt = s.timeOf(lost);
    await waitFor(
      `${VICTIM} to log ${LOST_DS} inaccessible`,
      () => s.events(VICTIM, 'datastore.inaccessible', (l) => l.datastore === LOST_DS && s.timeOf(l) >= mountedAt - 50)[0],
      { timeoutMs: 5000, intervalMs: 25 },
    );
    const st = await waitFor(
      `${VICTIM}'s status to count only ds2`,
      async () => {
        const st = await s.status(VICTIM);
        return st.datastores.length === 1 && st.datastores[0] === 'ds2' ? st : undefined;
      },
      { timeoutMs: 5000, intervalMs: 50 },
    );

    // The last renewal that reached ds1 was before the mount; the loss is reported before that
    // renewal's start + selfFenceDeadlineMs (we only see when it landed, which is later than its start).
    const lastRenewal = sampler.changesSince(realHb, 0).filter((c) => c.at <= mountedAt + 20).pop()!.at;
    console.log(
      `${VICTIM}: last renewal seen on ${LOST_DS} ${mountedAt - lastRenewal} ms before the mount; heartbeat.lost ${lostAt - mountedAt} ms after the mount, ${lostAt - lastRenewal} ms after that renewal (self-fence deadline ${T.selfFenceDeadlineMs} ms); reason: ${lost.reason}`,
    );
    expect(lostAt - mountedAt).toBeLessThanOrEqual(T.selfFenceDeadlineMs + 1000);
    expect(lostAt - lastRenewal).toBeLessThan(T.selfFenceDeadlineMs + 100);

    // While hidden: the real record stays frozen, host-1 does not claim a heartbeat on ds1, and
    // its ds2 heartbeat keeps it alive in the master's view. Watch for a lease timeout and more.
    const frozenFrom = Date.now();
    const violations: string[] = [];
    await waitFor(
      'a lease timeout and a half to pass with ds1 hidden',
      async () => {
        const vst = await s.status(VICTIM);
        if (vst.heartbeatsHeld.includes(LOST_DS)) violations.push(`+${Date.now() - mountedAt} ms: ${VICTIM} says it holds its heartbeat on ${LOST_DS}: ${vst.heartbeatsHeld.join(',')}`);
        if (!vst.heartbeatsHeld.includes('ds2')) violations.push(`+${Date.now() - mountedAt} ms: ${VICTIM} lost its ds2 heartbeat`);
        const view = await s.hostsView(master);
        const row = view.hosts.find((r) => r.host === VICTIM);
        if (row?.storageHeartbeat !== 'alive') violations.push(`+${Date.now() - mountedAt} ms: ${master} sees ${VICTIM}'s storage heartbeat ${row?.storageHeartbeat}`);
        return Date.now() - frozenFrom >= T.leaseTimeoutMs * 1.5 ? true : undefined;
      },
      { timeoutMs: T.leaseTimeoutMs * 1.5 + 5000, intervalMs: 100 },
    );
    const reacquiredWhileHidden = s.events(VICTIM, 'heartbeat.acquired', (l) => l.datastore === LOST_DS && s.timeOf(l) >= mountedAt);
    expect(sampler.changesSince(realHb, mountedAt + T.storageCallTimeoutMs), `${realHb} changed while hidden`).toEqual([]);
    expect(violations, `${VICTIM} while ${LOST_DS} is hidden (the stale-probe test below reproduces this deterministically)`).toEqual([]);
    expect(reacquiredWhileHidden.map((l) => l.message), 'heartbeat "acquired" on the tmpfs that hides ds1').toEqual([]);
    s.assertNoCrash(pids);
    s.mark(`${VICTIM}'s host-1-hb on ${LOST_DS} unchanged for ${secs(Date.now() - mountedAt)} while hidden; status.datastores ${JSON.stringify(st.datastores)}`);

    // Bring ds1 back.
    const umountedAt = s.mark(`umount inside ${VICTIM}'s namespace`);
    await runOk('nsenter', ['-t', String(victimPid), '-m', 'umount', s.dsPath(LOST_DS)]);
    mounted = false;
    await waitFor(
      `${VICTIM} to log ${LOST_DS} accessible again`,
      () => s.events(VICTIM, 'datastore.accessible', (l) => l.datastore === LOST_DS && s.timeOf(l) >= umountedAt - 50)[0],
      { timeoutMs: 5000, intervalMs: 25 },
    );
    await waitFor(
      `${VICTIM} to re-acquire its heartbeat on ${LOST_DS}`,
      () => s.events(VICTIM, 'heartbeat.acquired', (l) => l.datastore === LOST_DS && s.timeOf(l) >= umountedAt - 50)[0],
      { timeoutMs: 5000, intervalMs: 25 },
    );
    await waitFor(
      `${VICTIM}'s status to count both datastores and hold both heartbeats`,
      async () => {
        const st = await s.status(VICTIM);
        return st.datastores.length === 2 && st.heartbeatsHeld.length === 2 ? true : undefined;
      },
      { timeoutMs: 5000, intervalMs: 50 },
    );
    // The real record moves again, under a new generation (a takeover of its own earlier holding).
    const moving = await waitFor(
      `${realHb} to be renewed again`,
      () => {
        const c = sampler.changesSince(realHb, umountedAt);
        return c.length >= 3 ? c : undefined;
      },
      { timeoutMs: 5000, intervalMs: 50 },
    );
    sampler.stop();
    expect(moving[moving.length - 1]!.record!.generation).toBeGreaterThan(genBefore);
    expect(sampler.bad).toEqual([]);
    s.assertNoCrash(pids);
    s.printTimeline('ds1 hidden from host-1 and back', EVENTS, { from: mountedAt - 1000 });
  });
});

/**
 * The same loss, made deterministic for one race: the agent acquires its heartbeat whenever the
 * LAST probe said the datastore was accessible, and LeaseFile.acquire creates the whole
 * `.vigil-ha/<cluster>/` tree (mkdir recursive) on whatever is mounted there. With the probe
 * running every 4 s and the tmpfs mounted just after a probe, the renewal notices the loss within
 * 500 ms and the next heartbeat attempt comes long before the next probe. The agent must not take
 * (and then keep renewing) its heartbeat on the tmpfs that hides the datastore.
 */
describe('storage: a hidden datastore is not mistaken for storage while the last probe is stale', () => {
  const cleanup = new Cleanup();
  let s: StorageLab;
  let victimPid = 0;
  let mounted = false;
  let missing: string | null = null;
  const PROBE_MS = 4000;

  beforeAll(async () => {
    for (const tool of ['unshare', 'nsenter', 'mount', 'umount']) if (!(await which(tool))) missing = tool;
    if (missing) return;
    s = await StorageLab.create({ name: 'storage-loss-stale', hosts: 2, timing: { datastoreProbeIntervalMs: PROBE_MS } });
    cleanup.add('lab down', () => s.down());
    victimPid = await s.start(VICTIM, { prefix: ['unshare', '-m', '--propagation', 'private'] });
    cleanup.add('umount the tmpfs in the namespace', async () => {
      if (mounted && alive(victimPid)) await runOk('nsenter', ['-t', String(victimPid), '-m', 'umount', s.dsPath(LOST_DS)]);
    });
    await s.start('host-2');
    const master = await s.waitConverged();
    await s.waitSteady(master, DSS);
  });

  afterAll(async () => {
    await cleanup.run();
  });

  it('never holds its heartbeat on the tmpfs mounted over the datastore', async (ctx) => {
    if (missing) {
      console.log(`SKIPPED: ${missing} is not installed`);
      ctx.skip();
    }
    // host-1's probe rewrites probe/host-1 on every datastore each time it runs: wait for one
    // (seen on ds2, which stays visible), then hide ds1 at once.
    const probeFile = s.file('ds2', 'probe/host-1');
    const first = await readFile(probeFile, 'utf8');
    await waitFor('host-1 to run its datastore probe', async () => ((await readFile(probeFile, 'utf8')) !== first ? true : undefined), {
      timeoutMs: PROBE_MS * 3,
      intervalMs: 5,
    });
    const mountedAt = s.mark(`probe just ran; mount tmpfs over ${LOST_DS} inside ${VICTIM}'s namespace (next probe in ~${PROBE_MS} ms)`);
    await runOk('nsenter', ['-t', String(victimPid), '-m', 'mount', '-t', 'tmpfs', 'tmpfs', s.dsPath(LOST_DS)]);
    mounted = true;
    await waitFor(
      `${VICTIM} to log heartbeat.lost on ${LOST_DS}`,
      () => s.events(VICTIM, 'heartbeat.lost', (l) => l.datastore === LOST_DS && s.timeOf(l) >= mountedAt - 50)[0],
      { timeoutMs: T.selfFenceDeadlineMs + 3000, intervalMs: 25 },
    );
    // Watch until the next probe has certainly run and a little more.
    const heldAt: string[] = [];
    await waitFor(
      'the next probe and a lease timeout to pass',
      async () => {
        const st = await s.status(VICTIM);
        if (st.heartbeatsHeld.includes(LOST_DS)) heldAt.push(`+${Date.now() - mountedAt} ms (datastores ${st.datastores.join(',')})`);
        return Date.now() - mountedAt >= PROBE_MS + T.leaseTimeoutMs ? true : undefined;
      },
      { timeoutMs: PROBE_MS + T.leaseTimeoutMs + 5000, intervalMs: 100 },
    );
    const acquired = s.events(VICTIM, 'heartbeat.acquired', (l) => l.datastore === LOST_DS && s.timeOf(l) >= mountedAt);
    const onTmpfs = await run('nsenter', ['-t', String(victimPid), '-m', 'ls', '-A', join(s.dsPath(LOST_DS), '.vigil-ha', 'lab')]);
    s.printTimeline('stale probe while ds1 is hidden', EVENTS, { from: mountedAt - 500 });
    console.log(`inside host-1's namespace, ${LOST_DS}/.vigil-ha/lab holds: ${onTmpfs.code === 0 ? onTmpfs.stdout.trim().split('\n').join(' ') || '(empty)' : onTmpfs.stderr.trim()}`);
    expect(acquired.map((l) => `${l.timestamp} ${l.message}`), `${VICTIM} took its heartbeat on the tmpfs hiding ${LOST_DS}`).toEqual([]);
    expect(heldAt, `${VICTIM}'s status claims its ${LOST_DS} heartbeat while ${LOST_DS} is hidden`).toEqual([]);
  });
});
