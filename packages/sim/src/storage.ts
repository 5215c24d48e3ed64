/**
 * Simulated shared storage: every datastore's `.vigil-ha/<cluster>/` content in memory, and each
 * host's path to it. A storage call (one `withTimeout` group of the real code) completes after a
 * latency drawn per host and datastore, and its effect is applied atomically at that moment, so
 * the calls of different hosts interleave as they do on a real filesystem.
 *
 * Per host and datastore, the path can be:
 *   ok        calls complete after their latency;
 *   lost      calls fail at once (EIO: a dead mount);
 *   replaced  something empty is mounted in its place (the lab's tmpfs): reads find nothing,
 *             writes fail with ENOENT because the cluster directory is not there;
 *   hung      calls never answer (all paths down). Their callers time out; the calls themselves
 *             stay in the kernel and land when the path comes back, as on a hard NFS mount.
 * A host's calls in flight when it loses power never land.
 */
import type { HostId, LeaseRecordView } from '@vigil/core';
import type { IsolationResponse, Priority } from '@vigil/core';
import { SimIoError, type IoBackend, type IoStep, type Process } from './io.js';
import type { Rng } from './rng.js';
import type { Scheduler } from './scheduler.js';

/** Calls that timed out and still hang, per process and datastore, before new ones fail at once. */
export const MAX_HANGING_PER_DATASTORE = 4;

export type Access = 'ok' | 'lost' | 'replaced' | 'hung';

/** A lease record as stored (the real one is a line of JSON with these fields). */
export type SimLeaseRecord = Omit<LeaseRecordView, 'maxClaim'>;

export interface LeaseData {
  record: SimLeaseRecord | null;
  /** `X.lock/` exists. */
  lock: boolean;
  /** `X.claims/<g>` files. */
  claims: Set<number>;
}

/** A VM's config file on a datastore (`<ds>/vms/<name>.json`). */
export interface SimVmConfig {
  id: string;
  name: string;
  memoryMB: number;
  cpus: number;
  priority: Priority;
  isolationResponse?: IsolationResponse;
  /** How long the hypervisor takes to start it (ms of the host's time). */
  powerOnMs: number;
  /** How long its guest takes to shut down when asked gracefully. */
  shutdownMs: number;
}

export interface PoweronFile {
  isolated: boolean;
  vms: string[];
}

export interface ProtectedListFile {
  owner: HostId;
  generation: number;
  vms: string[];
}

export class SimDatastore {
  /** `.vigil-ha/<cluster>/` exists (always, except on what is mounted in a lost datastore's place until a probe initializes it). */
  initialized = true;
  /** Content of `datastore-id`. */
  identity: string | null;
  readonly leases = new Map<string, LeaseData>();
  /** `host-N-poweron` files. */
  readonly poweron = new Map<HostId, PoweronFile>();
  protectedlist: ProtectedListFile | null = null;
  restartqueue: { vm: string; attempts: number; failed: boolean }[] | null = null;
  maintenance: { seq: number; hosts: HostId[] } | null = null;
  /** `poweredoff/<vm>`: the VM and the host that wrote it. */
  readonly poweredoff = new Map<string, HostId>();
  /** `<ds>/vms/*.json` (outside .vigil-ha). */
  readonly vmConfigs = new Map<string, SimVmConfig>();

  constructor(
    readonly name: string,
    /** Told about changes a file watcher would see (`host`: whose poweron file). */
    private readonly notify: (ds: string, what: 'poweron' | 'poweredoff', host: HostId | null) => void,
    identity: string | null,
  ) {
    this.identity = identity;
  }

  lease(name: string): LeaseData {
    let l = this.leases.get(name);
    if (!l) {
      l = { record: null, lock: false, claims: new Set() };
      this.leases.set(name, l);
    }
    return l;
  }

  maxClaim(name: string): number {
    const l = this.leases.get(name);
    let max = 0;
    if (l) for (const c of l.claims) if (c > max) max = c;
    return max;
  }

  setPoweron(host: HostId, file: PoweronFile): void {
    const before = this.poweron.get(host);
    this.poweron.set(host, file);
    if (!before || before.isolated !== file.isolated || before.vms.join('\n') !== file.vms.join('\n')) this.notify(this.name, 'poweron', host);
  }

  addPoweredOff(vm: string, host: HostId): void {
    this.poweredoff.set(vm, host);
    this.notify(this.name, 'poweredoff', null);
  }

  removePoweredOff(vm: string): void {
    if (this.poweredoff.delete(vm)) this.notify(this.name, 'poweredoff', null);
  }
}

/** ENOENT for a write on whatever is mounted in a datastore's place. */
export function enoent(what: string): SimIoError {
  return new SimIoError(`no such file or directory, ${what}`, 'ENOENT');
}

export interface StorageOptions {
  /** Latency of a healthy call, ms (uniform). */
  minLatencyMs: number;
  maxLatencyMs: number;
  /** Probability that a healthy call is slow (up to 1.5 x its timeout). */
  slowCallChance: number;
}

export const DEFAULT_STORAGE: StorageOptions = { minLatencyMs: 1, maxLatencyMs: 4, slowCallChance: 0 };

interface Pending {
  complete: () => void;
}

export class SimStorage implements IoBackend {
  readonly datastores = new Map<string, SimDatastore>();
  private readonly access = new Map<string, Access>();
  private readonly latency = new Map<string, { min: number; max: number }>();
  private readonly hung = new Map<string, Pending[]>();
  /** What is mounted in a datastore's place, per host and datastore ('replaced'). */
  private readonly shadows = new Map<string, SimDatastore>();
  private shadowCount = 0;
  private readonly mounts = new Map<HostId, Set<string>>();
  /** Power life of each host: calls of an earlier life never land. */
  private readonly lives = new Map<HostId, number>();
  /** File watchers (the master's chokidar): called on poweron / poweredoff changes. */
  onChange: ((ds: string, what: 'poweron' | 'poweredoff', host: HostId | null) => void) | null = null;

  constructor(
    private readonly sched: Scheduler,
    private readonly rng: Rng,
    private opts: StorageOptions,
  ) {}

  addDatastore(name: string): SimDatastore {
    let d = this.datastores.get(name);
    if (!d) {
      d = new SimDatastore(name, (ds, what, host) => this.onChange?.(ds, what, host), `${name} ${this.rng.token()}`);
      this.datastores.set(name, d);
    }
    return d;
  }

  mount(host: HostId, datastores: readonly string[]): void {
    this.mounts.set(host, new Set(datastores));
    for (const ds of datastores) this.addDatastore(ds);
  }

  mounted(host: HostId, ds: string): boolean {
    return this.mounts.get(host)?.has(ds) ?? false;
  }

  /** A host lost power (or came back): its calls in flight are gone. */
  newLife(host: HostId): void {
    this.lives.set(host, (this.lives.get(host) ?? 0) + 1);
  }

  accessOf(host: HostId, ds: string): Access {
    if (!this.mounted(host, ds)) return 'replaced';
    return this.access.get(`${host}|${ds}`) ?? 'ok';
  }

  setAccess(host: HostId, ds: string, a: Access): void {
    const key = `${host}|${ds}`;
    if (a === 'ok') this.access.delete(key);
    else this.access.set(key, a);
    // Each replacement is a fresh empty filesystem; healing unmounts it.
    if (a === 'replaced') this.shadows.set(key, new SimDatastore(ds, () => {}, null));
    else this.shadows.delete(key);
    if (a === 'replaced') this.shadows.get(key)!.initialized = false;
    this.shadowCount = this.shadows.size;
    if (a !== 'hung') {
      // Calls that hung come back now: they land (or fail) in the order they were made.
      const parked = this.hung.get(key);
      if (parked) {
        this.hung.delete(key);
        let t = 0;
        for (const p of parked) this.sched.after((t += this.rng.int(1, 3)), p.complete);
      }
    }
  }

  /** Every host's path to every datastore back to normal, slow calls included. */
  healAll(): void {
    for (const key of [...this.access.keys()]) {
      const [host, ds] = key.split('|') as [string, string];
      this.setAccess(host, ds, 'ok');
    }
    this.latency.clear();
    this.opts = { ...this.opts, slowCallChance: 0 };
  }

  setLatency(host: HostId, ds: string, ms: { min: number; max: number } | null): void {
    if (ms) this.latency.set(`${host}|${ds}`, ms);
    else this.latency.delete(`${host}|${ds}`);
  }

  /** Whether any path is not ok. */
  get faulty(): boolean {
    return this.access.size > 0 || this.latency.size > 0;
  }

  /** Number of host paths with something mounted in a datastore's place. */
  get replacedPaths(): number {
    return this.shadowCount;
  }

  private draw(host: HostId, ds: string, timeoutMs: number): number {
    const l = this.latency.get(`${host}|${ds}`) ?? { min: this.opts.minLatencyMs, max: this.opts.maxLatencyMs };
    if (this.opts.slowCallChance > 0 && Number.isFinite(timeoutMs) && this.rng.chance(this.opts.slowCallChance)) return this.rng.float(l.min, timeoutMs * 1.5);
    return this.rng.float(l.min, l.max);
  }

  call(proc: Process, step: IoStep, done: (err: unknown, value?: unknown) => void): void {
    const host = proc.host;
    const ds = step.ds;
    const key = `${host}|${ds}`;
    const timeoutMs = step.timeoutMs;
    if ((proc.hanging.get(ds) ?? 0) >= MAX_HANGING_PER_DATASTORE) {
      this.sched.after(0, () => done(new SimIoError(`${step.what} (an earlier call to this datastore is still hanging): no answer from storage within ${timeoutMs} ms`, 'ETIMEDOUT')));
      return;
    }
    const life = this.lives.get(host) ?? 0;
    const issuedAt = this.sched.now;
    let settled = false;
    let timedOut = false;
    let timerArmed = false;
    const armTimeout = () => {
      if (timerArmed || !Number.isFinite(timeoutMs)) return;
      timerArmed = true;
      this.sched.at(issuedAt + timeoutMs, () => {
        if (settled) return;
        settled = true;
        timedOut = true;
        proc.hanging.set(ds, (proc.hanging.get(ds) ?? 0) + 1);
        done(new SimIoError(`${step.what}: no answer from storage within ${timeoutMs} ms`, 'ETIMEDOUT'));
      });
    };
    const complete = () => {
      if ((this.lives.get(host) ?? 0) !== life) return; // the host lost power: never lands
      const a = this.accessOf(host, ds);
      if (a === 'hung') {
        let parked = this.hung.get(key);
        if (!parked) this.hung.set(key, (parked = []));
        parked.push({ complete });
        armTimeout();
        return;
      }
      let err: unknown = null;
      let value: unknown;
      if (a === 'lost') err = new SimIoError(`i/o error, ${step.what}`, 'EIO');
      else {
        let target: SimDatastore | null = null;
        if (a === 'ok') target = this.datastores.get(ds) ?? null;
        else {
          const shadow = this.shadows.get(key) ?? null;
          target = shadow && (shadow.initialized || step.raw) ? shadow : null;
        }
        try {
          value = step.apply(target);
        } catch (e) {
          err = e;
        }
      }
      if (timedOut) {
        // It returned after all: no longer counts as hanging (its result goes nowhere).
        const n = (proc.hanging.get(ds) ?? 1) - 1;
        if (n <= 0) proc.hanging.delete(ds);
        else proc.hanging.set(ds, n);
        return;
      }
      if (settled) return;
      settled = true;
      done(err, value);
    };
    const latency = this.draw(host, ds, timeoutMs);
    if (latency >= timeoutMs) armTimeout();
    this.sched.after(latency, complete);
  }
}
