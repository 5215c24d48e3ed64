/**
 * A lease on a datastore: `host-N-hb`, `protectedlist`, and the per-VM leases build on this.
 *
 * Files, for a lease named X in `.vigil-ha/<cluster>/`:
 *   X.lock/        the lock: a directory made with proper-lockfile (atomic mkdir)
 *   <record>       the renewal record beside it: holder, generation, counter, token, state
 *                  (X itself for heartbeats, X.owner for protectedlist)
 *   X.claims/<g>   one file per generation, created with O_EXCL by whoever takes generation g
 *
 * Why the claims: proper-lockfile judges staleness by comparing the holder's mtime with the
 * checker's clock (a skewed host steals live locks), and its stale takeover is rmdir + mkdir,
 * which two contenders can both win. Here proper-lockfile's own staleness is disabled; the
 * caller decides that a holder is dead by observing its record unchanged for the lease timeout
 * (ChangeTracker), and a takeover first creates claim g+1 with O_EXCL: exactly one contender
 * wins it, and only the winner touches the lock directory. The holder checks at each renewal
 * that no claim g+1 exists and that its lock directory is still there; if either fails, it has
 * lost the lease. A race between a release and an acquisition can at worst leave no holder for
 * one renewal period, never two.
 *
 * Every storage call runs under a timeout (hung NFS/sshfs never answers).
 */
import { mkdir, readdir, readFile, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import { resolve as resolvePath } from 'node:path';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import lockfile from 'proper-lockfile';
// The registry of locks lives in the library's inner module (not re-exported by its index).
import lockfileInternals from 'proper-lockfile/lib/lockfile.js';
import { writeFileAtomic } from './atomic.js';
import { formatLeaseRecord, parseLeaseRecord, type LeaseRecord } from './records.js';
import { describeError, storageKeyOf, withTimeout } from './timeout.js';

/**
 * proper-lockfile keeps every lock it made in a registry, refreshes their mtime in the
 * background and, on process exit, removes their directories. Both are wrong here: a lease
 * this process abandoned (lost, fenced) may already belong to another host, and a holder that
 * exits abnormally must leave its lease to expire, not free it at once. So a lock is taken out
 * of the registry as soon as it is made; this module removes lock directories itself.
 */
function detachFromProperLockfile(recordPath: string): void {
  const registry = (lockfileInternals as unknown as { getLocks?: () => Record<string, { updateTimeout?: NodeJS.Timeout | null }> }).getLocks?.();
  if (!registry) throw new Error('proper-lockfile has no lock registry to detach from (unsupported version)');
  const key = resolvePath(recordPath);
  const entry = registry[key];
  if (entry?.updateTimeout) clearTimeout(entry.updateTimeout);
  delete registry[key];
}

/** proper-lockfile's clock-based staleness is never used: its stale threshold is set out of reach. */
const NEVER_STALE_MS = 1_000_000_000;

export class LeaseError extends Error {
  constructor(
    message: string,
    readonly code: 'ELOCKED' | 'ECHANGED' | 'ELOST' | 'ECORRUPT' | 'EIO',
  ) {
    super(message);
    this.name = 'LeaseError';
  }
}

export interface LeaseFileOptions {
  /** The cluster directory on the datastore. */
  dir: string;
  /** Lease name X (e.g. `host-3-hb`, `protectedlist`). */
  name: string;
  /** Record file name, default X. */
  recordName?: string;
  host: string;
  timeoutMs: number;
  /** VM leases: the holder's host VM lease generation, written into every record (see records.ts). */
  hostLease?: number;
  /** Called if proper-lockfile ever reports the lock compromised (never throws). */
  onCompromised?: (err: Error) => void;
}

export interface LeaseSnapshot {
  /** The record, or null if absent. */
  record: LeaseRecord | null;
  /** Why the record could not be used, if it exists but is corrupt. */
  error?: string;
  lockExists: boolean;
  /** Highest claimed generation (0 if none). */
  maxClaim: number;
}

export interface Holding {
  generation: number;
  token: string;
  counter: number;
}

export class LeaseFile {
  readonly lockPath: string;
  readonly recordPath: string;
  readonly claimsDir: string;
  private holding: Holding | null = null;

  constructor(private readonly opts: LeaseFileOptions) {
    this.lockPath = join(opts.dir, `${opts.name}.lock`);
    this.recordPath = join(opts.dir, opts.recordName ?? opts.name);
    this.claimsDir = join(opts.dir, `${opts.name}.claims`);
  }

  private extra(): { hostLease?: number } {
    return this.opts.hostLease !== undefined ? { hostLease: this.opts.hostLease } : {};
  }

  get held(): Holding | null {
    return this.holding ? { ...this.holding } : null;
  }

  private t<T>(what: string, op: () => Promise<T>): Promise<T> {
    return withTimeout(`${what} (${this.opts.name})`, this.opts.timeoutMs, op, storageKeyOf(this.opts.dir));
  }

  /** Read the record, whether the lock exists, and the highest claim. Never throws on corrupt data. */
  async read(): Promise<LeaseSnapshot> {
    return this.t('read lease', async () => {
      let record: LeaseRecord | null = null;
      let error: string | undefined;
      try {
        const text = await readFile(this.recordPath, 'utf8');
        const p = parseLeaseRecord(text);
        if (p.ok) record = p.value;
        else error = `${this.recordPath}: ${p.error}`;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT') error = `${this.recordPath}: ${describeError(err)}`;
      }
      const lockExists = await stat(this.lockPath).then(
        (s) => s.isDirectory(),
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return false;
          throw err;
        },
      );
      const maxClaim = await this.maxClaim();
      return error === undefined ? { record, lockExists, maxClaim } : { record, error, lockExists, maxClaim };
    });
  }

  private async maxClaim(): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.claimsDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
    let max = 0;
    for (const n of names) if (/^[0-9]{1,15}$/.test(n)) max = Math.max(max, Number(n));
    return max;
  }

  /**
   * Acquire the lease.
   * - Without `takeover`: only if it is free (no lock directory, or a record in state released).
   * - With `takeover`: the caller observed this exact record unchanged for the lease timeout (or
   *   it is this host's own record from an earlier life); the lease is taken over if the record
   *   is still exactly that one.
   * - With 'orphan': the caller saw the lock directory without a readable record for the lease
   *   timeout; taken over if there is still no readable record.
   * Throws LeaseError ELOCKED (held by someone), ECHANGED (the record moved on: not stale), or EIO.
   */
  async acquire(takeover?: (LeaseRecord & { maxClaim?: number }) | 'orphan'): Promise<Holding> {
    if (this.holding) return { ...this.holding };
    const snap = await this.read();
    const rec = snap.record;
    // The generation to claim is always the one right after the highest claim in the state the
    // caller judged: every contender that judged the same state claims the same number, and
    // O_EXCL lets exactly one of them have it. A contender whose view is older finds the state
    // moved on and stops. (Claiming "one more than whatever is there now" would let a late
    // contender claim g+2 while the winner of g+1 is still writing its record: two holders.)
    let base: number;
    if (takeover === 'orphan') {
      // A lock directory whose record was missing or unreadable for the whole lease timeout.
      if (rec) throw new LeaseError(`${this.opts.name}: a record appeared since the lock was judged orphaned; not taking over`, 'ECHANGED');
      base = snap.maxClaim;
    } else if (takeover) {
      if (!rec || rec.host !== takeover.host || rec.generation !== takeover.generation || rec.token !== takeover.token || rec.counter !== takeover.counter) {
        throw new LeaseError(`${this.opts.name}: the record changed since it was judged dead; not taking over`, 'ECHANGED');
      }
      const judged = takeover.maxClaim ?? rec.generation;
      if (snap.maxClaim !== judged) {
        throw new LeaseError(`${this.opts.name}: generation ${snap.maxClaim} was claimed since it was judged dead; not taking over`, 'ECHANGED');
      }
      base = judged;
    } else {
      if ((rec && rec.state === 'held') || (snap.lockExists && !(rec && rec.state === 'released'))) {
        // A record that says held is held, lock directory or not (its holder may have died
        // without cleaning up): only an observer that saw it unchanged for the lease timeout
        // may take it over.
        throw new LeaseError(`${this.opts.name} is held by ${rec?.host ?? 'an unknown holder'}${snap.error ? ` (${snap.error})` : ''}`, 'ELOCKED');
      }
      if (snap.maxClaim !== (rec?.generation ?? 0)) {
        throw new LeaseError(`${this.opts.name}: generation ${snap.maxClaim} is being acquired by another host`, 'ELOCKED');
      }
      base = snap.maxClaim;
    }
    const generation = base + 1;
    const token = randomBytes(8).toString('hex');
    // The claim: exactly one contender creates generation g+1.
    await this.t('claim', async () => {
      // Never recursive: if the cluster directory is gone (storage lost, something mounted over
      // it), this must fail rather than build a fresh tree on whatever is there now.
      for (const d of [this.opts.dir, this.claimsDir]) {
        await mkdir(d).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'EEXIST') throw err;
        });
      }
      const claim = join(this.claimsDir, String(generation));
      try {
        await writeFile(claim, `${this.opts.host} ${token}\n`, { flag: 'wx' });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
          throw new LeaseError(`${this.opts.name}: another host claimed generation ${generation} first`, 'ELOCKED');
        }
        // Created but not written (ENOSPC...): give the generation back.
        await unlink(claim).catch(() => {});
        throw err;
      }
    });
    // Only the claim winner removes a stale or released lock directory.
    if (snap.lockExists) {
      await this.t('remove stale lock', () =>
        rmdir(this.lockPath).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        }),
      );
    }
    await this.t('lock', () =>
      lockfile.lock(this.recordPath, {
        lockfilePath: this.lockPath,
        realpath: false,
        stale: NEVER_STALE_MS,
        update: NEVER_STALE_MS / 2,
        retries: 0,
        onCompromised: (err: Error) => this.opts.onCompromised?.(err),
      }).then(
        () => detachFromProperLockfile(this.recordPath),
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ELOCKED') throw new LeaseError(`${this.opts.name}: lock directory reappeared during acquisition`, 'ELOCKED');
          throw err;
        },
      ),
    );
    const holding: Holding = { generation, token, counter: 0 };
    await writeFileAtomic(this.recordPath, formatLeaseRecord({ host: this.opts.host, generation, counter: 0, token, state: 'held', ...this.extra() }), this.opts.timeoutMs);
    this.holding = holding;
    return { ...holding };
  }

  /**
   * Renew: check nobody claimed a later generation and our lock directory is still there, then
   * bump the counter. Throws LeaseError ELOST when the lease was taken over (holding dropped),
   * or another error (timeout, EIO) when storage failed (holding kept: the caller's self-fence
   * deadline decides).
   */
  async renew(): Promise<Holding> {
    const h = this.holding;
    if (!h) throw new LeaseError(`${this.opts.name} is not held`, 'ELOST');
    const lost = await this.t('check claims', async () => {
      const next = await stat(join(this.claimsDir, String(h.generation + 1))).then(
        () => true,
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return false;
          throw err;
        },
      );
      if (next) return `generation ${h.generation + 1} was claimed by another holder`;
      const lockThere = await stat(this.lockPath).then(
        () => true,
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return false;
          throw err;
        },
      );
      return lockThere ? null : 'lock directory is gone';
    });
    if (lost) {
      this.holding = null;
      throw new LeaseError(`${this.opts.name}: lease lost: ${lost}`, 'ELOST');
    }
    const counter = h.counter + 1;
    await writeFileAtomic(
      this.recordPath,
      formatLeaseRecord({ host: this.opts.host, generation: h.generation, counter, token: h.token, state: 'held', ...this.extra() }),
      this.opts.timeoutMs,
    );
    h.counter = counter;
    return { ...h };
  }

  /** Release: mark the record released, then remove the lock directory. Best effort. */
  async release(): Promise<void> {
    const h = this.holding;
    if (!h) return;
    this.holding = null;
    const superseded = await this.t('check claims', () =>
      stat(join(this.claimsDir, String(h.generation + 1))).then(
        () => true,
        () => false,
      ),
    ).catch(() => true);
    if (superseded) return;
    await writeFileAtomic(
      this.recordPath,
      formatLeaseRecord({ host: this.opts.host, generation: h.generation, counter: h.counter + 1, token: h.token, state: 'released', ...this.extra() }),
      this.opts.timeoutMs,
    ).catch(() => {});
    await this.t('unlock', () => rmdir(this.lockPath)).catch(() => {});
  }

  /** Forget the holding without touching storage (after a self-fence or a crash-equivalent). */
  abandon(): void {
    this.holding = null;
  }

  /** Remove claim files far below the current generation (they only need to outlive races). */
  async pruneClaims(keep = 16): Promise<void> {
    const h = this.holding;
    if (!h) return;
    await this.t('prune claims', async () => {
      const names = await readdir(this.claimsDir);
      for (const n of names) if (/^[0-9]{1,15}$/.test(n) && Number(n) < h.generation - keep) await unlink(join(this.claimsDir, n)).catch(() => {});
    });
  }
}

/** A comparable value for ChangeTracker: changes whenever the holder renews, re-acquires or releases. */
export function sampleOf(snap: LeaseSnapshot): { value: string | null; released: boolean } {
  const r = snap.record;
  // No record but a lock or a claim: an acquisition in progress, or one that died half-way.
  if (!r) return { value: snap.lockExists || snap.maxClaim > 0 ? `lock-without-record:${snap.maxClaim}` : null, released: false };
  // The highest claim is part of the state: a claim in progress is a change (not a dead holder).
  return { value: `${r.host}:${r.generation}:${r.token}:${r.counter}:${snap.maxClaim}`, released: r.state === 'released' && snap.maxClaim === r.generation };
}
