import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile, mkdir, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChangeTracker } from '@vigil/core';
import { LeaseError, LeaseFile, LeaseKeeper, parseLeaseRecord, sampleOf, type KeeperEvent } from '@vigil/datastore';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vigil-lease-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const lease = (host: string, name = 'protectedlist') => new LeaseFile({ dir, name, recordName: `${name}.owner`, host, timeoutMs: 2000 });

describe('LeaseFile', () => {
  it('acquires a free lease, renews it, and another host cannot take it while held', async () => {
    const a = lease('host-1');
    const h = await a.acquire();
    expect(h.generation).toBe(1);
    expect((await a.renew()).counter).toBe(1);
    const rec = parseLeaseRecord(await readFile(join(dir, 'protectedlist.owner'), 'utf8'));
    expect(rec).toEqual({ ok: true, value: expect.objectContaining({ host: 'host-1', generation: 1, counter: 1, state: 'held' }) });
    await expect(lease('host-2').acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
  });

  it('hands over cleanly after a release, with a higher generation', async () => {
    const a = lease('host-1');
    await a.acquire();
    await a.release();
    const b = lease('host-2');
    expect((await b.acquire()).generation).toBe(2);
    await expect(a.renew()).rejects.toMatchObject({ code: 'ELOST' });
  });

  it('takes over a dead holder only with the exact record observed, and the old holder learns it lost', async () => {
    const a = lease('host-1');
    await a.acquire();
    const snap = await lease('host-2').read();
    await a.renew(); // the holder is alive after all: the observed record is outdated
    await expect(lease('host-2').acquire(snap.record!)).rejects.toMatchObject({ code: 'ECHANGED' });
    const fresh = await lease('host-2').read();
    const b = lease('host-2');
    expect((await b.acquire(fresh.record!)).generation).toBe(2);
    await expect(a.renew()).rejects.toBeInstanceOf(LeaseError);
    expect(a.held).toBeNull();
    expect((await b.renew()).counter).toBe(1);
  });

  it('lets exactly one of many contenders win a stale takeover (no rmdir/mkdir double win)', async () => {
    for (let round = 0; round < 30; round++) {
      const d = join(dir, `r${round}`);
      await mkdir(d);
      const old = new LeaseFile({ dir: d, name: 'protectedlist', recordName: 'protectedlist.owner', host: 'host-9', timeoutMs: 2000 });
      await old.acquire();
      old.abandon(); // the holder died
      const stale = (await old.read()).record!;
      const contenders = Array.from({ length: 6 }, (_, i) => new LeaseFile({ dir: d, name: 'protectedlist', recordName: 'protectedlist.owner', host: `host-${i + 1}`, timeoutMs: 2000 }));
      const results = await Promise.allSettled(contenders.map((c) => c.acquire(stale)));
      const winners = results.filter((r) => r.status === 'fulfilled');
      expect(winners.length, `round ${round}`).toBe(1);
      // Everybody else failed cleanly, and the winner really holds it.
      for (const r of results) if (r.status === 'rejected') expect(['ELOCKED', 'ECHANGED']).toContain((r.reason as LeaseError).code);
      const holders = contenders.filter((c) => c.held);
      expect(holders.length).toBe(1);
      await holders[0]!.renew();
      const rec = (await holders[0]!.read()).record!;
      expect(rec.generation).toBe(2);
    }
  });

  it('judges liveness by change: a record that keeps changing is alive whatever its timestamps', async () => {
    const a = lease('host-1', 'host-1-hb');
    await a.acquire();
    const tracker = new ChangeTracker(1500);
    const obs = lease('host-2', 'host-1-hb');
    let t = 0;
    tracker.observe('hb', sampleOf(await obs.read()), t);
    expect(tracker.state('hb', t)).toBe('unknown');
    for (let i = 0; i < 5; i++) {
      await a.renew();
      t += 500;
      tracker.observe('hb', sampleOf(await obs.read()), t);
      expect(tracker.state('hb', t)).toBe('alive');
    }
    // The holder stops renewing: dead exactly when the lease timeout has passed without change.
    t += 1000;
    tracker.observe('hb', sampleOf(await obs.read()), t);
    expect(tracker.state('hb', t)).toBe('alive');
    t += 500;
    tracker.observe('hb', sampleOf(await obs.read()), t);
    expect(tracker.state('hb', t)).toBe('dead');
    await a.release();
    tracker.observe('hb', sampleOf(await obs.read()), t + 1);
    expect(tracker.state('hb', t + 1)).toBe('released');
  });

  it('reports a corrupt record without throwing, and refuses to take over what it cannot read', async () => {
    await writeFile(join(dir, 'protectedlist.owner'), 'garbage{');
    await mkdir(join(dir, 'protectedlist.lock'));
    const snap = await lease('host-1').read();
    expect(snap.record).toBeNull();
    expect(snap.error).toMatch(/protectedlist.owner/);
    await expect(lease('host-1').acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
  });

  it('treats a record that says held as held even without its lock directory (a crashed holder); takeover only of the observed record, by one contender', async () => {
    const a = lease('host-1');
    await a.acquire();
    a.abandon();
    await rm(join(dir, 'protectedlist.lock'), { recursive: true });
    await expect(lease('host-2').acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
    const seen = (await lease('host-2').read()).record!;
    const [x, y] = await Promise.allSettled([lease('host-2').acquire(seen), lease('host-3').acquire(seen)]);
    expect([x, y].filter((r) => r.status === 'fulfilled').length).toBe(1);
    expect((await readdir(join(dir, 'protectedlist.claims'))).sort()).toEqual(['1', '2']);
  });

  it('never builds the cluster directory itself (storage replaced by an empty mount)', async () => {
    const gone = new LeaseFile({ dir: join(dir, 'not-initialized', 'cluster'), name: 'host-1-hb', host: 'host-1', timeoutMs: 2000 });
    await expect(gone.acquire()).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('survives an abnormal exit of its holder: the lease stays held (proper-lockfile must not free it)', async () => {
    const { execFileSync } = await import('node:child_process');
    const script = `import { LeaseFile } from '@vigil/datastore';
      const l = new LeaseFile({ dir: ${JSON.stringify(dir)}, name: 'protectedlist', recordName: 'protectedlist.owner', host: 'host-7', timeoutMs: 2000 });
      await l.acquire(); process.exit(70);`;
    try {
      execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: process.cwd(), stdio: 'pipe' });
    } catch (err) {
      expect((err as { status: number }).status).toBe(70);
    }
    const snap = await lease('host-1').read();
    expect(snap.lockExists).toBe(true);
    expect(snap.record).toMatchObject({ host: 'host-7', state: 'held' });
    await expect(lease('host-1').acquire()).rejects.toMatchObject({ code: 'ELOCKED' });
  });
});

async function until(f: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('LeaseKeeper', () => {
  it('renews on its interval and reports lost before the self-fence deadline when renewals fail', async () => {
    const a = lease('host-1', 'host-1-hb');
    let now = 0;
    const events: KeeperEvent[] = [];
    const keeper = new LeaseKeeper({ intervalMs: 1_000_000, selfFenceDeadlineMs: 1000, now: () => now, onEvent: (e) => events.push(e) });
    await a.acquire();
    keeper.add('hb', a, 0);
    keeper.renewAll();
    await until(() => events.length > 0);
    expect(events).toContainEqual({ type: 'renewed', key: 'hb', counter: 1 });
    expect(keeper.valid('hb')).toBe(true);
    // Storage broken: the record path became a directory, so every renewal write fails (EISDIR).
    await rm(join(dir, 'host-1-hb.owner'));
    await mkdir(join(dir, 'host-1-hb.owner'));
    now = 500;
    keeper.renewAll();
    await until(() => events.length > 1);
    expect(events.filter((e) => e.type === 'renewFailed').length).toBe(1);
    expect(events.some((e) => e.type === 'lost')).toBe(false);
    now = 1000 - keeper.checkMs - 1;
    keeper.checkDeadlines();
    expect(keeper.valid('hb')).toBe(true);
    expect(events.some((e) => e.type === 'lost')).toBe(false);
    // One check period before the deadline: reported lost (fenced), and no longer valid.
    now = 1000 - keeper.checkMs;
    keeper.checkDeadlines();
    const lost = events.find((e) => e.type === 'lost');
    expect(lost).toMatchObject({ type: 'lost', key: 'hb', fenced: true });
    expect(keeper.valid('hb')).toBe(false);
    expect(now).toBeLessThan(1000);
  });
});
