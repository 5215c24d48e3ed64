/**
 * The storage half of the runtime (SPEC §3.3): this host's heartbeat leases and poweron file,
 * the master's protectedlist leases, and the reads that feed the core (protectedlist records on
 * every host; other hosts' heartbeats and poweron files on the master, followed with fs.watch
 * plus a periodic rescan). Decisions stay in the core; this class performs and observes.
 */
import { readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { watch as fsWatch, type FSWatcher } from 'node:fs';
import type { CoreEvent, CoreAction, HostId, LeaseRecordView, Role } from '@vigil/core';
import type { ClusterConfig } from '@vigil/config';
import { heartbeatDatastoresFor } from '@vigil/config';
import {
  clusterDir,
  describeError,
  formatPoweron,
  formatProtectedList,
  listPoweredOff,
  poweredoffDir,
  removePoweredOff,
  LeaseError,
  LeaseFile,
  LeaseKeeper,
  hostVmLeaseName,
  isVmId,
  parsePoweron,
  parseProtectedList,
  withTimeout,
  storageKeyOf,
  writeFileAtomic,
  type KeeperEvent,
} from '@vigil/datastore';
import type { Logger } from './logger.js';
import type { Clock } from './clock.js';

export interface StorageOptions {
  config: ClusterConfig;
  host: HostId;
  logger: Logger;
  clock: Clock;
  /** Feed an event to the core (the agent performs the resulting actions). */
  feed: (ev: CoreEvent) => void;
}

/**
 * Lease reads one sampling round keeps in flight at once. A round is one read per host and
 * datastore (two on the master: heartbeat and host VM lease): issued all at once on a master of
 * 128 hosts that is 500 reads, which queue in libuv's thread pool behind each other, outlast
 * storageCallTimeoutMs, and make the datastore look hung (withTimeout) to the calls that matter:
 * the renewals of this host's own leases. Bounded, a round takes longer than its period when
 * storage is slow, and the next round starts late (samples further apart only delay a verdict of
 * "dead": liveness is judged by change, never earlier than the holder really stopped).
 */
export const SAMPLE_CONCURRENCY = 8;

/** Run `tasks` with at most `limit` in flight; resolves when all have settled. */
export async function runLimited(tasks: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const t = tasks[next++]!;
      await t().catch(() => {});
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

const hbKey = (ds: string) => `hb:${ds}`;
const plKey = (ds: string) => `pl:${ds}`;

export class StorageRuntime {
  private readonly config: ClusterConfig;
  private readonly host: HostId;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly keeper: LeaseKeeper;
  private readonly hbDatastores: string[];
  private readonly hbLeases = new Map<string, LeaseFile>();
  private readonly plLeases = new Map<string, LeaseFile>();
  private readonly acquiringHb = new Set<string>();
  private readonly poweronOnDisk = new Map<string, string>();
  private readonly sampleErrors = new Map<string, string>();
  private poweron: string | null = null;
  private accessible: string[] = [];
  private role: Role = 'uninitialized';
  private masterHost: HostId | null = null;
  private watcher: { close(): Promise<void> } | null = null;
  private readonly watchedPoweredOff = new Set<string>();
  /** Set while watching: (re)start watching a datastore's poweredoff/ (created after the start). */
  private rewatchPoweredOff: ((ds: string) => void) | null = null;
  private timers: NodeJS.Timeout[] = [];
  private sampling = false;
  private stopped = false;

  constructor(private readonly opts: StorageOptions) {
    this.config = opts.config;
    this.host = opts.host;
    this.logger = opts.logger;
    this.clock = opts.clock;
    this.hbDatastores = heartbeatDatastoresFor(this.config, this.host);
    const t = this.config.timing;
    this.keeper = new LeaseKeeper({
      intervalMs: t.storageHeartbeatIntervalMs,
      selfFenceDeadlineMs: t.selfFenceDeadlineMs,
      now: () => this.clock.now(),
      onEvent: (ev) => this.onKeeperEvent(ev),
    });
  }

  private dir(ds: string): string {
    return clusterDir(this.config.datastores[ds]!, this.config.cluster);
  }

  private lease(ds: string, name: string, recordName?: string): LeaseFile {
    return new LeaseFile({
      dir: this.dir(ds),
      name,
      ...(recordName ? { recordName } : {}),
      host: this.host,
      timeoutMs: this.config.timing.storageCallTimeoutMs,
      onCompromised: (err) => this.logger.log('warn', 'lease.compromised', `proper-lockfile reported ${name} on ${ds} compromised: ${err.message}`, { datastore: ds, lease: name }),
    });
  }

  start(): void {
    const t = this.config.timing;
    this.keeper.start();
    this.timers.push(setInterval(() => void this.sample(), Math.max(50, Math.floor(t.storageHeartbeatIntervalMs / 2))));
    this.timers.push(setInterval(() => void this.ensureHeartbeats(), t.storageHeartbeatIntervalMs));
    this.timers.push(setInterval(() => void this.rescan(), t.rescanIntervalMs));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    await this.watcher?.close().catch(() => {});
    this.watcher = null;
    this.rewatchPoweredOff = null;
    await this.keeper.stop(true);
  }

  /**
   * Datastores accessible right now (from the prober). Leases on a datastore that is no longer
   * accessible are given up at once (reported lost), not kept until their renewals fail.
   */
  setAccessible(accessible: string[]): void {
    const gone = this.accessible.filter((d) => !accessible.includes(d));
    this.accessible = accessible;
    for (const ds of gone) {
      const hb = this.hbLeases.get(ds);
      if (hb && this.keeper.has(hbKey(ds))) {
        this.keeper.forget(hbKey(ds));
        this.onKeeperEvent({ type: 'lost', key: hbKey(ds), reason: `datastore ${ds} is no longer accessible`, fenced: true });
      }
      const pl = this.plLeases.get(ds);
      if (pl && this.keeper.has(plKey(ds))) {
        this.keeper.forget(plKey(ds));
        this.onKeeperEvent({ type: 'lost', key: plKey(ds), reason: `datastore ${ds} is no longer accessible`, fenced: true });
      }
    }
    void this.ensureHeartbeats();
  }

  setRole(role: Role, master: HostId | null = null): void {
    this.masterHost = master;
    const was = this.role;
    this.role = role;
    if (role === 'master' && was !== 'master') this.startWatching();
    if (role !== 'master' && was === 'master') {
      void this.watcher?.close().catch(() => {});
      this.watcher = null;
      this.rewatchPoweredOff = null;
    }
  }

  heldHeartbeats(): string[] {
    return this.hbDatastores.filter((d) => this.keeper.valid(hbKey(d)));
  }

  // ---- actions from the core ------------------------------------------------------------------

  perform(a: CoreAction): boolean {
    switch (a.type) {
      case 'acquireProtectedlist':
        void this.acquireProtectedlist(a.datastore, a.takeover);
        return true;
      case 'releaseProtectedlist':
        void this.releaseProtectedlist(a.datastore);
        return true;
      case 'writeProtectedlist':
        this.queueProtectedlist(a.datastore, a.vms);
        return true;
      case 'removePoweredOff': {
        const ds = a.vm.slice(0, a.vm.indexOf(':'));
        const base = this.config.datastores[ds];
        if (base) {
          void removePoweredOff(poweredoffDir(base, this.config.cluster), a.vm, this.config.timing.storageCallTimeoutMs).catch((err) =>
            this.noteError(`poweredoff-rm:${a.vm}`, `cannot remove poweredoff/ entry of ${a.vm}: ${describeError(err)}`),
          );
        }
        return true;
      }
      case 'writeMaintenance':
        for (const ds of this.plLeases.keys()) void this.writeMaintenance(ds, a.hosts, a.seq ?? 0);
        return true;
      case 'writeRestartQueue':
        void this.writeRestartQueue(a.datastore, a.entries);
        return true;
      case 'writePoweron':
        this.poweron = formatPoweron({ isolated: a.isolated, vms: a.vms });
        void this.writePoweron();
        return true;
      default:
        return false;
    }
  }

  private async acquireProtectedlist(ds: string, takeover: LeaseRecordView | 'orphan' | null): Promise<void> {
    const lease = this.lease(ds, 'protectedlist', 'protectedlist.owner');
    const started = this.clock.now();
    try {
      const h = await lease.acquire(takeover ?? undefined);
      if (this.stopped) return void (await lease.release());
      this.plLeases.set(ds, lease);
      this.keeper.add(plKey(ds), lease, started);
      void lease.pruneClaims().catch(() => {});
      let vms: string[] | null = null;
      let error: string | undefined;
      const file = join(this.dir(ds), 'protectedlist');
      try {
        const text = await withTimeout(`read ${file}`, this.config.timing.storageCallTimeoutMs, () => readFile(file, 'utf8'), storageKeyOf(file));
        const p = parseProtectedList(text);
        if (p.ok) vms = p.value.vms;
        else error = `${file}: ${p.error}`;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          // Not knowing what is protected is not the same as nothing being protected: an
          // unreadable list (timeout, I/O error) must not be rewritten empty. Give the lease back
          // and try again later. (A list read and found corrupt is rewritten, below.)
          this.plLeases.delete(ds);
          await this.keeper.release(plKey(ds)).catch(() => {});
          this.opts.feed({ type: 'protectedlistAcquireFailed', now: this.clock.now(), datastore: ds, error: `cannot read ${file}: ${describeError(err)}` });
          return;
        }
      }
      if (error) this.logger.log('error', 'storage.corrupt', `cannot use ${file}: ${error}; it will be rewritten`, { file, datastore: ds });
      // The self-fence deadline may have passed while the list was read (slow storage): the loss
      // was reported then, so the core must not be told now that it holds the lease.
      if (this.plLeases.get(ds) !== lease || !this.keeper.valid(plKey(ds))) {
        this.opts.feed({ type: 'protectedlistAcquireFailed', now: this.clock.now(), datastore: ds, error: `lost the protectedlist of ${ds} again while reading it (storage too slow)` });
        return;
      }
      this.opts.feed({ type: 'protectedlistAcquired', now: this.clock.now(), datastore: ds, generation: h.generation, vms, ...(error ? { error } : {}) });
      await this.readRestartQueue(ds);
    } catch (err) {
      const msg = err instanceof LeaseError ? err.message : describeError(err);
      this.opts.feed({ type: 'protectedlistAcquireFailed', now: this.clock.now(), datastore: ds, error: msg });
    }
  }

  private async releaseProtectedlist(ds: string): Promise<void> {
    this.plLeases.delete(ds);
    await this.keeper.release(plKey(ds)).catch((err) =>
      this.logger.log('warn', 'ownership.release-failed', `could not release the protectedlist of ${ds}: ${describeError(err)}`, { datastore: ds }),
    );
  }

  /**
   * One protectedlist write in flight per datastore; later requests coalesce into the newest
   * set. (Concurrent writes could land in any order and leave an older list on disk while a
   * newer one was reported committed.)
   */
  private readonly plWriting = new Set<string>();
  private readonly plNext = new Map<string, string[]>();

  private queueProtectedlist(ds: string, vms: string[]): void {
    this.plNext.set(ds, vms);
    if (this.plWriting.has(ds)) return;
    this.plWriting.add(ds);
    void (async () => {
      try {
        for (let next = this.plNext.get(ds); next; next = this.plNext.get(ds)) {
          this.plNext.delete(ds);
          await this.writeProtectedlist(ds, next);
        }
      } finally {
        this.plWriting.delete(ds);
      }
    })();
  }

  private async writeProtectedlist(ds: string, vms: string[]): Promise<void> {
    const lease = this.plLeases.get(ds);
    const held = lease?.held;
    // Never write a protectedlist this host does not hold (or whose self-fence deadline passed).
    if (!lease || !held || !this.keeper.valid(plKey(ds))) {
      this.logger.log('warn', 'ownership.write-refused', `not writing the protectedlist of ${ds}: this host does not hold it`, { datastore: ds });
      return;
    }
    const file = join(this.dir(ds), 'protectedlist');
    try {
      const text = formatProtectedList({ owner: this.host, generation: held.generation, vms });
      try {
        await writeFileAtomic(file, text, this.config.timing.storageCallTimeoutMs);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EISDIR' && code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
        // Something (not a file) sits where the list must be: this master holds the lease, so
        // move it aside, keep it for the admin, and write the list.
        const aside = `${file}.damaged-${Date.now()}`;
        await withTimeout(`move ${file} aside`, this.config.timing.storageCallTimeoutMs, () => rename(file, aside), storageKeyOf(file));
        this.logger.log('warn', 'storage.repaired', `${file} was not a file (${code}); moved it to ${aside} and rewrote the list`, { file, aside, datastore: ds });
        await writeFileAtomic(file, text, this.config.timing.storageCallTimeoutMs);
      }
      this.opts.feed({ type: 'protectedlistWritten', now: this.clock.now(), datastore: ds, vms });
    } catch (err) {
      this.logger.log('error', 'storage.write-failed', `could not write ${file}: ${describeError(err)}`, { file, datastore: ds });
      this.opts.feed({ type: 'protectedlistWritten', now: this.clock.now(), datastore: ds, vms, error: describeError(err) });
    }
  }

  /** The restart state, persisted so that a new master continues it (`restartqueue`). */
  private async writeRestartQueue(ds: string, entries: { vm: string; attempts: number; failed: boolean }[]): Promise<void> {
    if (!this.plLeases.get(ds)?.held || !this.keeper.valid(plKey(ds))) return;
    const file = join(this.dir(ds), 'restartqueue');
    const text = ['# vigil restart queue: vm attempts failed', ...entries.map((e) => `${e.vm} ${e.attempts} ${e.failed ? 1 : 0}`)].join('\n') + '\n';
    await writeFileAtomic(file, text, this.config.timing.storageCallTimeoutMs).catch((err) =>
      this.noteError(`queue:${ds}`, `could not write ${file}: ${describeError(err)}`),
    );
  }

  private async readRestartQueue(ds: string): Promise<void> {
    const file = join(this.dir(ds), 'restartqueue');
    const text = await withTimeout(`read ${file}`, this.config.timing.storageCallTimeoutMs, () => readFile(file, 'utf8'), storageKeyOf(file)).catch(() => null);
    if (text === null) return;
    const entries: { vm: string; attempts: number; failed: boolean }[] = [];
    for (const line of text.split('\n')) {
      const m = /^(\S+) ([0-9]{1,3}) ([01])$/.exec(line);
      if (m && isVmId(m[1]!)) entries.push({ vm: m[1]!, attempts: Number(m[2]), failed: m[3] === '1' });
    }
    this.opts.feed({ type: 'restartQueue', now: this.clock.now(), datastore: ds, entries });
  }

  /** The hosts in maintenance mode, one per line (`maintenance`), on every datastore this master owns. */
  private async writeMaintenance(ds: string, hosts: string[], seq: number): Promise<void> {
    if (!this.plLeases.get(ds)?.held || !this.keeper.valid(plKey(ds))) return;
    const file = join(this.dir(ds), 'maintenance');
    await writeFileAtomic(file, [`# vigil hosts in maintenance mode seq=${seq}`, ...hosts].join('\n') + '\n', this.config.timing.storageCallTimeoutMs).catch((err) =>
      this.noteError(`maintenance:${ds}`, `could not write ${file}: ${describeError(err)}`),
    );
  }

  /** Read the maintenance files of every accessible datastore; the newest copy (highest seq) wins. */
  private async readMaintenance(): Promise<void> {
    let best: { seq: number; hosts: string[] } | null = null;
    for (const ds of [...this.accessible].sort()) {
      const file = join(this.dir(ds), 'maintenance');
      const text = await withTimeout(`read ${file}`, this.config.timing.storageCallTimeoutMs, () => readFile(file, 'utf8'), storageKeyOf(file)).catch(() => null);
      if (text === null) continue;
      const m = /^# vigil hosts in maintenance mode seq=([0-9]{1,15})\n/.exec(text);
      if (!m || !text.endsWith('\n')) continue; // damaged: another copy or the next write fixes it
      const seq = Number(m[1]);
      const hosts = text.split('\n').slice(1).filter((l) => /^host-[0-9]{1,9}$/.test(l));
      if (!best || seq > best.seq) best = { seq, hosts };
    }
    this.opts.feed({ type: 'maintenanceSample', now: this.clock.now(), hosts: best?.hosts ?? [], seq: best?.seq ?? 0 });
  }

  /** Read everything the master follows, now. */
  async rescanAll(): Promise<void> {
    await this.rescan();
  }

  // ---- own heartbeat and poweron ----------------------------------------------------------------

  private async ensureHeartbeats(): Promise<void> {
    if (this.stopped) return;
    for (const ds of this.hbDatastores) {
      if (this.keeper.has(hbKey(ds)) || this.acquiringHb.has(ds) || !this.accessible.includes(ds)) continue;
      this.acquiringHb.add(ds);
      const lease = this.lease(ds, `${this.host}-hb`);
      const started = this.clock.now();
      try {
        const snap = await lease.read();
        // Only this host ever holds host-N-hb: a record of ours is from an earlier life (or a
        // holding this process abandoned after a self-fence), so take it over at once.
        // Only this host ever holds host-N-hb: whatever is there (a record of an earlier life,
        // a claim or lock left half-way by a crash) is its own, so it is taken over at once.
        const r = snap.record;
        const h =
          r && r.host === this.host
            ? await lease.acquire({ ...r, maxClaim: snap.maxClaim })
            : !r && (snap.lockExists || snap.maxClaim > 0)
              ? await lease.acquire('orphan')
              : await lease.acquire();
        if (this.stopped) {
          await lease.release();
          return;
        }
        this.hbLeases.set(ds, lease);
        this.keeper.add(hbKey(ds), lease, started);
        void lease.pruneClaims().catch(() => {});
        this.logger.log('info', 'heartbeat.acquired', `holding storage heartbeat ${this.host}-hb on ${ds} (generation ${h.generation})`, { datastore: ds, generation: h.generation });
        this.poweronOnDisk.delete(ds);
        void this.writePoweron();
      } catch (err) {
        this.noteError(`hb-acquire:${ds}`, `cannot take storage heartbeat ${this.host}-hb on ${ds}: ${describeError(err)}`);
      } finally {
        this.acquiringHb.delete(ds);
      }
    }
  }

  private async writePoweron(): Promise<void> {
    const content = this.poweron;
    if (content === null || this.stopped) return;
    for (const ds of this.hbDatastores) {
      if (!this.accessible.includes(ds) || this.poweronOnDisk.get(ds) === content) continue;
      const file = join(this.dir(ds), `${this.host}-poweron`);
      try {
        await writeFileAtomic(file, content, this.config.timing.storageCallTimeoutMs);
        this.poweronOnDisk.set(ds, content);
      } catch (err) {
        this.poweronOnDisk.delete(ds);
        this.noteError(`poweron-write:${ds}`, `could not write ${file}: ${describeError(err)}`);
      }
    }
  }

  private onKeeperEvent(ev: KeeperEvent): void {
    const [kind, ds] = ev.key.split(':') as ['hb' | 'pl', string];
    if (ev.type === 'renewed') {
      this.clearError(`renew:${ev.key}`);
      return;
    }
    if (ev.type === 'renewFailed') {
      this.noteError(`renew:${ev.key}`, `renewal of ${kind === 'hb' ? `${this.host}-hb` : 'protectedlist'} on ${ds} failed: ${ev.error}`);
      return;
    }
    // Lost: taken over, or the self-fence deadline passed.
    if (kind === 'hb') {
      this.hbLeases.delete(ds);
      this.poweronOnDisk.delete(ds);
      this.opts.feed({ type: 'heartbeatLost', now: this.clock.now(), datastore: ds, reason: ev.reason });
    } else {
      this.plLeases.delete(ds);
      this.opts.feed({ type: 'protectedlistLost', now: this.clock.now(), datastore: ds, reason: ev.reason });
    }
  }

  // ---- observation ------------------------------------------------------------------------------

  /** Read protectedlist records (every host) and other hosts' heartbeats (master). */
  private async sample(): Promise<void> {
    if (this.sampling || this.stopped) return;
    this.sampling = true;
    try {
      const reads: (() => Promise<void>)[] = [];
      for (const ds of this.accessible) {
        reads.push(() =>
          this.lease(ds, 'protectedlist', 'protectedlist.owner')
            .read()
            .then((snap) => {
              this.noteSampleError(`pl:${ds}`, snap.error);
              this.opts.feed({
                type: 'protectedlistSample',
                now: this.clock.now(),
                datastore: ds,
                record: snap.record,
                lockExists: snap.lockExists,
                maxClaim: snap.maxClaim,
                ...(snap.error ? { error: snap.error } : {}),
              });
            })
            .catch((err) => this.noteError(`pl-read:${ds}`, `cannot read the protectedlist lease on ${ds}: ${describeError(err)}`)),
        );
        // The master watches everyone's storage heartbeat; a slave watches its master's, so
        // that if it becomes master it already knows how long the old one has been silent.
        if (this.role !== 'master' && this.role !== 'slave') continue;
        for (const [host, h] of Object.entries(this.config.hosts)) {
          if (!h.datastores.includes(ds)) continue;
          // The master also reads its own host VM lease: the VM leases of VMs fenced on this very
          // host live by it, and are judged (and taken over) through it like any other host's.
          if (host === this.host && this.role !== 'master') continue;
          if (this.role === 'slave' && host !== this.masterHost) continue;
          // Its VM daemon's host VM lease: what its VM leases live by (sanlock's design).
          reads.push(() =>
            this.lease(ds, hostVmLeaseName(host))
              .read()
              .then((snap) => {
                this.opts.feed({ type: 'hostVmLeaseSample', now: this.clock.now(), host, datastore: ds, record: snap.record });
              })
              .catch(() => {}),
          );
          if (host === this.host || !heartbeatDatastoresFor(this.config, host).includes(ds)) continue;
          reads.push(() =>
            this.lease(ds, `${host}-hb`)
              .read()
              .then((snap) => {
                this.opts.feed({
                  type: 'heartbeatSample',
                  now: this.clock.now(),
                  host,
                  datastore: ds,
                  record: snap.record,
                  ...(snap.error ? { error: snap.error } : {}),
                });
              })
              .catch(() => {}),
          );
        }
      }
      await runLimited(reads, SAMPLE_CONCURRENCY);
    } finally {
      this.sampling = false;
    }
  }

  /** Master: follow poweron and poweredoff changes as they happen (FDM polls every 30 s). */
  /**
   * Master: follow poweron and poweredoff changes as they happen (FDM polls every 30 s; the
   * periodic rescan stays as the safety net, and is all there is on filesystems without inotify,
   * such as NFS seen from another client). Plain fs.watch on the cluster directories and their
   * poweredoff/, non-recursive: the names in the events are filtered here, nothing is stat'ed,
   * so the heartbeat, lease and probe files that change all the time cost nothing.
   */
  private startWatching(): void {
    if (this.watcher) return;
    const watchers: FSWatcher[] = [];
    const onError = (err: unknown) => this.noteError('watch', `file watcher: ${describeError(err)}`);
    const watchPoweredOff = (ds: string) => {
      const dir = poweredoffDir(this.config.datastores[ds]!, this.config.cluster);
      if (this.watchedPoweredOff.has(dir)) return;
      try {
        const w = fsWatch(dir, () => void this.readPoweredOff(ds));
        w.on('error', (err) => {
          this.watchedPoweredOff.delete(dir);
          onError(err);
        });
        watchers.push(w);
        this.watchedPoweredOff.add(dir);
      } catch {
        /* not there yet: the cluster directory's watcher or the rescan sets it up */
      }
    };
    for (const ds of Object.keys(this.config.datastores).filter((d) => this.config.hosts[this.host]!.datastores.includes(d))) {
      const dir = this.dir(ds);
      try {
        const w = fsWatch(dir, (_event, name) => {
          const file = typeof name === 'string' ? name : '';
          const m = /^(host-[0-9]+)-poweron$/.exec(file);
          if (m) return void this.readPoweron(m[1]!, join(dir, file));
          if (file === 'poweredoff') {
            watchPoweredOff(ds);
            void this.readPoweredOff(ds);
          }
        });
        w.on('error', onError);
        watchers.push(w);
      } catch (err) {
        onError(err);
      }
      watchPoweredOff(ds);
    }
    this.watcher = {
      close: async () => {
        for (const w of watchers) w.close();
        this.watchedPoweredOff.clear();
      },
    };
    this.rewatchPoweredOff = watchPoweredOff;
    void this.rescan();
  }

  private dsOfPath(path: string): string | null {
    for (const d of Object.keys(this.config.datastores)) if (path.startsWith(this.dir(d) + '/')) return d;
    return null;
  }

  private async readPoweron(host: string, path: string): Promise<void> {
    const ds = this.dsOfPath(path);
    if (!ds || host === this.host || !this.config.hosts[host]) return;
    const base = { type: 'poweronSample' as const, host, datastore: ds };
    try {
      const text = await withTimeout(`read ${path}`, this.config.timing.storageCallTimeoutMs, () => readFile(path, 'utf8'), storageKeyOf(path));
      const p = parsePoweron(text);
      if (p.ok) this.opts.feed({ ...base, now: this.clock.now(), isolated: p.value.isolated, vms: p.value.vms });
      else this.opts.feed({ ...base, now: this.clock.now(), isolated: null, vms: null, error: `${path}: ${p.error}` });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      this.opts.feed({ ...base, now: this.clock.now(), isolated: null, vms: null, error: `${path}: ${describeError(err)}` });
    }
  }

  private async readPoweredOff(ds: string): Promise<void> {
    try {
      const { vms, invalid } = await listPoweredOff(poweredoffDir(this.config.datastores[ds]!, this.config.cluster), this.config.timing.storageCallTimeoutMs);
      if (invalid.length > 0) this.noteError(`poweredoff:${ds}`, `poweredoff/ on ${ds} holds names that are not VM ids: ${invalid.slice(0, 5).join(', ')}`);
      this.opts.feed({ type: 'poweredoffSample', now: this.clock.now(), datastore: ds, vms });
    } catch (err) {
      this.noteError(`poweredoff-read:${ds}`, `cannot list poweredoff/ on ${ds}: ${describeError(err)}`);
    }
  }

  /** Fallback for filesystems that drop change events, and repair of what this host owns. */
  private async rescan(): Promise<void> {
    if (this.stopped) return;
    await this.readMaintenance();
    // Own poweron files: rewrite any copy that is missing, corrupt or different.
    for (const ds of this.hbDatastores) {
      if (!this.accessible.includes(ds) || this.poweron === null) continue;
      const file = join(this.dir(ds), `${this.host}-poweron`);
      const text = await withTimeout(`read ${file}`, this.config.timing.storageCallTimeoutMs, () => readFile(file, 'utf8'), storageKeyOf(file)).catch((err) => `!${describeError(err)}`);
      if (text !== this.poweron) {
        if (this.poweronOnDisk.has(ds)) {
          this.logger.log('warn', 'storage.repaired', `${file} did not hold what this host wrote (${text.startsWith('!') ? text.slice(1) : 'different or corrupt content'}); rewriting it`, { file, datastore: ds });
        }
        this.poweronOnDisk.delete(ds);
      }
    }
    void this.writePoweron();
    if (this.role !== 'master') return;
    // Protectedlists this master holds: rewrite if someone damaged them.
    for (const [ds, lease] of this.plLeases) {
      const held = lease.held;
      if (!held) continue;
      const file = join(this.dir(ds), 'protectedlist');
      const text = await withTimeout(`read ${file}`, this.config.timing.storageCallTimeoutMs, () => readFile(file, 'utf8'), storageKeyOf(file)).catch(() => null);
      const p = text === null ? null : parseProtectedList(text);
      const problem = !p ? 'missing or unreadable' : !p.ok ? p.error : p.value.owner !== this.host || p.value.generation !== held.generation ? `owner ${p.value.owner} generation ${p.value.generation}, not ours` : null;
      if (problem) this.opts.feed({ type: 'protectedlistDamaged', now: this.clock.now(), datastore: ds, problem: `${file}: ${problem}` });
    }
    // Other hosts' poweron files, and poweredoff/ (watched from now on if it appeared).
    for (const ds of this.accessible) {
      this.rewatchPoweredOff?.(ds);
      await this.readPoweredOff(ds);
      for (const host of Object.keys(this.config.hosts)) {
        if (host !== this.host) await this.readPoweron(host, join(this.dir(ds), `${host}-poweron`));
      }
    }
  }

  // ---- rate-limited problem logging -----------------------------------------------------------

  private noteError(key: string, message: string): void {
    if (this.sampleErrors.get(key) === message) return;
    this.sampleErrors.set(key, message);
    this.logger.log('warn', 'storage.error', message, { key });
  }

  private clearError(key: string): void {
    if (this.sampleErrors.delete(key)) this.logger.log('info', 'storage.recovered', `recovered: ${key}`, { key });
  }

  private noteSampleError(key: string, error: string | undefined): void {
    if (error) this.noteError(`sample:${key}`, `corrupt file: ${error}`);
    else this.clearError(`sample:${key}`);
  }
}
