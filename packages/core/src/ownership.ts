/**
 * Datastore ownership by the master (SPEC §3.3, FDM's protectedlist locking). A master takes
 * the protectedlist lease of every datastore it can reach and keeps retrying the others; it
 * releases them all on abdication, isolation or shutdown. A lease held by another host is taken
 * over only once it has been seen unchanged for the lease timeout (ChangeTracker) or released;
 * this host's own record from an earlier life is taken over at once (one agent per host).
 * A new master learns what is protected from the protectedlist it finds on disk.
 */
import type { HostId } from './ids.js';
import type { CoreAction, CoreEvent, LeaseRecordView, LogLevel } from './events.js';
import { ChangeTracker } from './liveness.js';
import { isVmId } from './ids.js';

type DsState =
  | { kind: 'free' }
  | { kind: 'acquiring'; since: number }
  | { kind: 'held'; generation: number; vms: Set<string>; written: string | null; committed: string[] }
  | { kind: 'releasing' };

export interface OwnershipOptions {
  self: HostId;
  leaseTimeoutMs: number;
  /** Minimum wait between two acquisition attempts of one datastore. */
  retryMs: number;
}

export class Ownership {
  private readonly ds = new Map<string, DsState>();
  private readonly lastRecord = new Map<string, LeaseRecordView | null>();
  private readonly lastAttempt = new Map<string, number>();
  private readonly waitingLogged = new Map<string, string>();
  private readonly tracker: ChangeTracker;
  private want = false;
  private accessible = new Set<string>();
  private out: CoreAction[] = [];

  constructor(private readonly opts: OwnershipOptions) {
    this.tracker = new ChangeTracker(opts.leaseTimeoutMs);
  }

  /** Datastores whose protectedlist this host holds. */
  owned(): string[] {
    return [...this.ds].filter(([, s]) => s.kind === 'held').map(([d]) => d).sort();
  }

  /**
   * The master that visibly owns a datastore: another host whose protectedlist lease on it this
   * host sees renewed (alive by change). The isolation response's safety gate.
   */
  visibleOwner(datastore: string, now: number): HostId | null {
    const r = this.lastRecord.get(datastore);
    if (!r || r.state !== 'held' || r.host === this.opts.self) return null;
    return this.tracker.state(datastore, now) === 'alive' ? r.host : null;
  }

  /** Protected VMs: what is committed on disk in the protectedlists this host holds. */
  protectedVms(): Map<string, string[]> {
    const m = new Map<string, string[]>();
    for (const [d, s] of this.ds) if (s.kind === 'held') m.set(d, [...s.committed]);
    return m;
  }

  /** Called by HostCore when the role changes: a master wants every datastore, others none. */
  setWanted(want: boolean, now: number, why: string): CoreAction[] {
    this.out = [];
    this.want = want;
    if (!want) {
      for (const [d, s] of this.ds) {
        if (s.kind === 'held' || s.kind === 'acquiring') {
          this.log('info', 'ownership.released', `releasing protectedlist of ${d}: ${why}`, { datastore: d, reason: why });
          this.out.push({ type: 'releaseProtectedlist', datastore: d });
          this.ds.set(d, { kind: 'free' });
        }
      }
    } else {
      this.tryAcquire(now);
    }
    return this.out;
  }

  setAccessible(accessible: readonly string[]): void {
    this.accessible = new Set(accessible);
  }

  step(ev: CoreEvent): CoreAction[] {
    this.out = [];
    switch (ev.type) {
      case 'protectedlistSample': {
        this.lastRecord.set(ev.datastore, ev.record ? { ...ev.record, maxClaim: ev.maxClaim } : null);
        // The highest claim is part of the state: a claim in progress is a change, not death.
        const value = ev.record
          ? `${ev.record.host}:${ev.record.generation}:${ev.record.token}:${ev.record.counter}:${ev.maxClaim}`
          : ev.lockExists || ev.maxClaim > 0
            ? `lock-without-record:${ev.maxClaim}`
            : null;
        this.tracker.observe(ev.datastore, { value, released: ev.record?.state === 'released' && ev.maxClaim === ev.record.generation }, ev.now);
        break;
      }
      case 'protectedlistAcquired': {
        const vms = new Set(ev.vms ?? []);
        this.ds.set(ev.datastore, { kind: 'held', generation: ev.generation, vms, written: null, committed: [...vms].sort() });
        this.waitingLogged.delete(ev.datastore);
        this.log('info', 'ownership.acquired', `took the protectedlist of ${ev.datastore} (generation ${ev.generation}); ${vms.size} protected VMs on it`, {
          datastore: ev.datastore,
          generation: ev.generation,
          protectedVms: vms.size,
          ...(ev.error ? { problem: ev.error } : {}),
        });
        if (!this.want) {
          this.out.push({ type: 'releaseProtectedlist', datastore: ev.datastore });
          this.ds.set(ev.datastore, { kind: 'free' });
        } else {
          // Rewrite at once: the header must name the new owner and generation, and a missing or
          // unreadable list must be whole again.
          this.flush(ev.datastore);
        }
        break;
      }
      case 'protectedlistWritten': {
        const s = this.ds.get(ev.datastore);
        if (s?.kind === 'held' && !ev.error) s.committed = [...ev.vms].sort();
        if (s?.kind === 'held' && ev.error) s.written = null; // retry at the next change or repair
        break;
      }
      case 'protectedlistDamaged': {
        const s = this.ds.get(ev.datastore);
        if (s?.kind === 'held') {
          this.log('warn', 'ownership.repair', `protectedlist of ${ev.datastore} damaged (${ev.problem}); rewriting it from memory (${s.vms.size} VMs)`, {
            datastore: ev.datastore,
            problem: ev.problem,
          });
          s.written = null;
          this.flush(ev.datastore);
        }
        break;
      }
      case 'protectedlistAcquireFailed':
        if (this.ds.get(ev.datastore)?.kind === 'acquiring') this.ds.set(ev.datastore, { kind: 'free' });
        this.log('debug', 'ownership.acquire-failed', `could not take the protectedlist of ${ev.datastore}: ${ev.error}`, { datastore: ev.datastore, error: ev.error });
        break;
      case 'protectedlistLost':
        if (this.ds.get(ev.datastore)?.kind === 'held') {
          this.log('warn', 'ownership.lost', `lost the protectedlist of ${ev.datastore}: ${ev.reason}`, { datastore: ev.datastore, reason: ev.reason });
        }
        this.ds.set(ev.datastore, { kind: 'free' });
        this.lastAttempt.set(ev.datastore, ev.now);
        break;
      case 'tick':
        if (this.want) this.tryAcquire(ev.now);
        // A write that failed is retried until the list on disk is what this master wants.
        for (const [d, s] of this.ds) if (s.kind === 'held' && s.written === null) this.flush(d);
        break;
      default:
        break;
    }
    return this.out;
  }

  private tryAcquire(now: number): void {
    for (const d of [...this.accessible].sort()) {
      const s = this.ds.get(d) ?? { kind: 'free' };
      if (s.kind !== 'free') continue;
      const last = this.lastAttempt.get(d);
      if (last !== undefined && now - last < this.opts.retryMs) continue;
      const rec = this.lastRecord.get(d);
      if (rec === undefined) continue; // not sampled yet
      const live = this.tracker.state(d, now);
      let takeover: LeaseRecordView | 'orphan' | null = null;
      if (live === 'released' || live === 'absent') {
        takeover = null;
      } else if (rec === null && live === 'dead') {
        takeover = 'orphan';
        this.log('warn', 'ownership.takeover', `protectedlist lock of ${d} has had no readable record for the lease timeout: taking it over`, { datastore: d });
      } else if (rec === null) {
        continue; // a lock without a record: watch it for a lease timeout first
      } else if (rec.host === this.opts.self) {
        takeover = rec; // our own earlier life
      } else if (live === 'dead') {
        takeover = rec;
        this.log('warn', 'ownership.takeover', `protectedlist of ${d} held by ${rec.host} unchanged for the lease timeout: taking it over`, {
          datastore: d,
          holder: rec.host,
          generation: rec.generation,
          leaseTimeoutMs: this.opts.leaseTimeoutMs,
        });
      } else {
        const key = `${rec.host}:${live}`;
        if (this.waitingLogged.get(d) !== key) {
          this.waitingLogged.set(d, key);
          this.log('info', 'ownership.waiting', `protectedlist of ${d} is held by ${rec.host} (${live}); waiting for it to be released or to expire`, {
            datastore: d,
            holder: rec.host,
            liveness: live,
          });
        }
        continue;
      }
      this.lastAttempt.set(d, now);
      this.ds.set(d, { kind: 'acquiring', since: now });
      this.out.push({ type: 'acquireProtectedlist', datastore: d, takeover });
    }
  }

  /** Add or remove a protected VM on a held datastore; returns the write action if it changed. */
  setProtected(datastore: string, vm: string, isProtected: boolean): CoreAction[] {
    this.out = [];
    const s = this.ds.get(datastore);
    if (s?.kind !== 'held') return [];
    const had = s.vms.has(vm);
    if (had === isProtected) return [];
    if (isProtected) s.vms.add(vm);
    else s.vms.delete(vm);
    this.flush(datastore);
    return this.out;
  }

  private flush(datastore: string): void {
    const s = this.ds.get(datastore);
    if (s?.kind !== 'held') return;
    const vms = [...s.vms].filter((v) => isVmId(v)).sort();
    const key = vms.join('\n');
    if (s.written === key) return;
    s.written = key;
    this.out.push({ type: 'writeProtectedlist', datastore, vms });
  }

  private log(level: LogLevel, event: string, message: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, message, fields });
  }
}
