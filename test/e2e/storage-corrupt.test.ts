/**
 * Damaged files on a datastore (SPEC §5.5: bad input never crashes an agent or changes cluster
 * state; it gets a clear log line and nothing is lost), with three real agents. While the lab runs:
 * - garbage in a slave's host-N-poweron, and another slave's poweron truncated to nothing: the
 *   master logs the file as corrupt (naming it), the owner rewrites its own poweron
 *   (storage.repaired naming the file) and the master sees it readable again;
 * - garbage in protectedlist.owner: the agents log the file as corrupt (naming it), the master
 *   keeps its ownership (same generation, no takeover, no loss) and its next renewal rewrites
 *   the record;
 * - garbage in both heartbeat records of a live slave: the master logs them as corrupt, the
 *   slave's renewals rewrite them, and the slave is never reported dead for it;
 * - protectedlist replaced by a directory: the master logs the damage (ownership.repair naming the
 *   file) and makes protectedlist a valid file again.
 * Every agent keeps running throughout, and the master stays master.
 */
import { mkdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { parseProtectedList } from '@vigil/datastore';
import { Cleanup, StorageLab, T, readPoweron, readRecord, waitFor, type LogLine } from './helpers/storage-harness.js';

const DSS = ['ds1', 'ds2'];
const EVENTS = /^(ownership\.|heartbeat\.|storage\.|datastore\.|lease\.|agent\.crashed|core\.error)/;
const GARBAGE = 'garbage \u0000\u00ff not a record\n';
/** Rescans (own poweron repair, protectedlist repair) run every rescanIntervalMs; allow a few. */
const REPAIR_MS = 3 * T.rescanIntervalMs + 3000;

describe('storage: corrupt, truncated and misplaced files on a datastore', () => {
  const cleanup = new Cleanup();
  let s: StorageLab;
  let pids: Map<string, number>;
  let master = '';
  let generations: Record<string, number> = {};

  beforeAll(async () => {
    s = await StorageLab.create({ name: 'storage-corrupt', hosts: 3 });
    cleanup.add('lab down', () => s.down());
    pids = await s.startAll();
    master = await s.waitConverged();
    await s.waitSteady(master, DSS);
    for (const ds of DSS) {
      const r = await readRecord(s.file(ds, 'protectedlist.owner'));
      if (r.kind !== 'ok') throw new Error(`${ds} protectedlist.owner: ${JSON.stringify(r)}`);
      generations[ds] = r.record.generation;
    }
  });

  afterAll(async () => {
    await cleanup.run();
  });

  /** Master unchanged, still owning both datastores under the same generations; nobody crashed. */
  async function assertUndisturbed(): Promise<void> {
    s.assertNoCrash(pids);
    expect(await s.lab.waitConverged(5000)).toBe(master);
    const st = await s.status(master);
    expect(st.ownedDatastores).toEqual(DSS);
    for (const ds of DSS) {
      const r = await readRecord(s.file(ds, 'protectedlist.owner'));
      expect(r.kind === 'ok' && `${r.record.host} generation ${r.record.generation}`, `${ds} protectedlist.owner`).toBe(`${master} generation ${generations[ds]}`);
    }
    const bad = s.eventsAll(/^(ownership\.(takeover|lost|released)|master\.(lost|abdicated))$/);
    expect(bad.map((l) => `${l.host} ${l.event}: ${l.message}`)).toEqual([]);
    for (const h of s.hosts) expect(s.events(h, 'election.started').length, `elections started by ${h}`).toBe(1);
  }

  const mentions = (file: string) => (l: LogLine) => JSON.stringify(l).includes(file);

  it('a garbage poweron and a truncated poweron: logged by the master, rewritten by their owners', async () => {
    const garbled = s.file('ds1', 'host-1-poweron');
    const truncated = s.file('ds2', 'host-2-poweron');
    const at = s.mark('write garbage into ds1/host-1-poweron, truncate ds2/host-2-poweron to 0 bytes');
    onTestFailed(() => s.printTimeline('FAILED: corrupt poweron files', EVENTS, { from: at - 200 }));
    await writeFile(garbled, GARBAGE);
    await truncate(truncated, 0);

    for (const [file, owner] of [
      [garbled, 'host-1'],
      [truncated, 'host-2'],
    ] as const) {
      const corrupt = await waitFor(
        `${master} to log ${file} as corrupt`,
        () => s.events(master, 'storage.corrupt', (l) => s.timeOf(l) >= at && mentions(file)(l))[0],
        { timeoutMs: REPAIR_MS, intervalMs: 50 },
      );
      console.log(`${master}: ${corrupt.message}`);
      const repaired = await waitFor(
        `${owner} to log that it rewrites ${file}`,
        () => s.events(owner, 'storage.repaired', (l) => s.timeOf(l) >= at && mentions(file)(l))[0],
        { timeoutMs: REPAIR_MS, intervalMs: 50 },
      );
      console.log(`${owner}: ${repaired.message}`);
      await waitFor(
        `${file} to read "0\\n" again`,
        async () => {
          const p = await readPoweron(file);
          return p.kind === 'ok' && p.raw === '0\n' ? true : undefined;
        },
        { timeoutMs: REPAIR_MS, intervalMs: 50 },
      );
      await waitFor(
        `${master} to log ${owner}'s poweron on ${file.includes('/ds1/') ? 'ds1' : 'ds2'} readable again`,
        () => s.events(master, 'storage.repaired', (l) => s.timeOf(l) >= at && String(l.message).includes(`poweron file of ${owner}`))[0],
        { timeoutMs: REPAIR_MS, intervalMs: 50 },
      );
    }
    await assertUndisturbed();
    s.printTimeline('corrupt poweron files', EVENTS, { from: at - 200 });
  });

  it('garbage in protectedlist.owner: logged, ownership kept, record rewritten by the next renewal', async () => {
    const file = s.file('ds2', 'protectedlist.owner');
    const at = s.mark('write garbage into ds2/protectedlist.owner (again until someone reads it before the master renews)');
    onTestFailed(() => s.printTimeline('FAILED: corrupt protectedlist.owner', EVENTS, { from: at - 200 }));
    // The master's renewal rewrites the record every 500 ms: re-inject until an agent has read
    // the garbage (each host samples protectedlist.owner every 250 ms).
    let injections = 0;
    const seen = await waitFor(
      `an agent to log ${file} as corrupt`,
      async () => {
        const hit = s.eventsAll(/^storage\.(error|corrupt)$/, (l) => s.timeOf(l) >= at && mentions(file)(l))[0];
        if (hit) return hit;
        injections++;
        await writeFile(file, GARBAGE);
        return undefined;
      },
      { timeoutMs: 15_000, intervalMs: 300 },
    );
    console.log(`after ${injections} injection(s): ${seen.host} ${seen.event}: ${seen.message}`);
    await waitFor(
      `${file} to hold a valid record of ${master} again`,
      async () => {
        const r = await readRecord(file);
        return r.kind === 'ok' && r.record.host === master ? true : undefined;
      },
      { timeoutMs: 5000, intervalMs: 50 },
    );
    await waitFor(
      `${seen.host} to log that it recovered`,
      () => s.events(String(seen.host), /^storage\.(recovered|repaired)$/, (l) => s.timeOf(l) >= s.timeOf(seen))[0],
      { timeoutMs: 5000, intervalMs: 50 },
    );
    await assertUndisturbed();
    s.printTimeline('corrupt protectedlist.owner', EVENTS, { from: at - 200 });
  });

  it('garbage in a live slave\'s heartbeat records: logged, rewritten, and the slave is never reported dead', async () => {
    const victim = 'host-1';
    const files = DSS.map((ds) => s.file(ds, `${victim}-hb`));
    const at = s.mark(`write garbage into ${victim}-hb on both datastores (again until the master reads it)`);
    const states: string[] = [];
    let injections = 0;
    let poll = true;
    const watcher = (async () => {
      while (poll) {
        const row = (await s.hostsView(master)).hosts.find((r) => r.host === victim);
        states.push(`+${Date.now() - at} ms ${row?.storageHeartbeat}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    try {
      await waitFor(
        `${master} to log ${victim}'s heartbeat record as corrupt`,
        async () => {
          const hit = s.events(master, 'storage.corrupt', (l) => s.timeOf(l) >= at && String(l.message).includes(`heartbeat of ${victim}`))[0];
          if (hit) return hit;
          injections++;
          await Promise.all(files.map((f) => writeFile(f, GARBAGE)));
          return undefined;
        },
        { timeoutMs: 15_000, intervalMs: 300 },
      );
      // Keep watching for a lease timeout after the last injection.
      const until = Date.now() + T.leaseTimeoutMs;
      await waitFor('a lease timeout to pass', () => Date.now() >= until, { timeoutMs: T.leaseTimeoutMs + 2000, intervalMs: 50 });
    } finally {
      poll = false;
      await watcher;
    }
    for (const f of files) {
      const r = await readRecord(f);
      expect(r.kind === 'ok' && r.record.host, f).toBe(victim);
    }
    const notAlive = states.filter((x) => !x.endsWith(' alive'));
    console.log(`${injections} injection(s); ${states.length} samples of ${master}'s view of ${victim}; not alive: ${notAlive.length ? notAlive.join(', ') : 'never'}`);
    s.printTimeline(`corrupt ${victim}-hb`, EVENTS, { from: at - 200 });
    expect(notAlive, `${master}'s view of ${victim} while its heartbeat records were garbage`).toEqual([]);
    await assertUndisturbed();
  });

  it('protectedlist replaced by a directory: the master logs it and makes it a valid file again', async () => {
    const file = s.file('ds1', 'protectedlist');
    const at = s.mark('replace ds1/protectedlist (held by the master) with a directory');
    await rm(file, { force: true });
    await mkdir(file);
    const repair = await waitFor(
      `${master} to log the damaged protectedlist`,
      () => s.events(master, /^(ownership\.repair|storage\.(corrupt|error|write-failed))$/, (l) => s.timeOf(l) >= at && mentions(file)(l))[0],
      { timeoutMs: REPAIR_MS, intervalMs: 50 },
    );
    console.log(`${master} ${repair.event}: ${repair.message}`);
    let fixed = false;
    try {
      await waitFor(
        `${file} to be a valid protectedlist of ${master} again`,
        async () => {
          if (!(await stat(file)).isFile()) return undefined;
          const p = parseProtectedList(await readFile(file, 'utf8'));
          return p.ok && p.value.owner === master ? true : undefined;
        },
        { timeoutMs: REPAIR_MS, intervalMs: 100 },
      );
      fixed = true;
    } finally {
      s.printTimeline('protectedlist replaced by a directory', EVENTS, { from: at - 200 });
      if (!fixed) {
        const writeFailed = s.events(master, 'storage.write-failed', (l) => s.timeOf(l) >= at && mentions(file)(l));
        console.log(`NOT REPAIRED: ${file} is still a directory; ${master} logged ${writeFailed.length} storage.write-failed lines, e.g. ${writeFailed[0]?.message}`);
        // Put a valid file back by hand so that the rest of the lab (and its cleanup) is not affected.
        await rm(file, { recursive: true, force: true });
      }
    }
    await assertUndisturbed();
  });
});
