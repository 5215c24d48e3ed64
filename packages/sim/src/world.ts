/**
 * A deterministic world: N simulated hosts, each running the real HostCore inside a simulated
 * agent, with a simulated hypervisor, on a simulated network and shared storage, under virtual
 * time. Everything random comes from one seed; the same seed gives the same run, event for
 * event. The world offers the faults (power, agent crashes, network cuts, storage loss and hangs,
 * clock skew and drift, VM crashes) and the observations (roles, where VMs run, who holds which
 * lease) that scenarios and the invariant checker use.
 */
import { HostCore, type CoreAction, type CoreEvent, type HostCoreOptions, type HostId, type IsolationResponse, type Message, type Role, type Timing } from '@vigil/core';
import { heartbeatDatastoresFor } from '@vigil/config';
import { Scheduler } from './scheduler.js';
import { Rng } from './rng.js';
import { SimNetwork } from './network.js';
import { DEFAULT_STORAGE, SimStorage, type Access, type SimVmConfig, type StorageOptions } from './storage.js';
import { Process } from './io.js';
import type { ProcessClock } from './clock.js';
import { SimHypervisor, type HypervisorEnv } from './hypervisor.js';
import { SimAgent, type OperatorRequest } from './agent.js';
import type { AgentHostInfo } from './agent-storage.js';
import { SimHost, type HostServices, type SimHostSpec } from './host.js';

export type { SimHostSpec } from './host.js';

export interface WorldOptions {
  seed: number;
  timing: Timing;
  hosts: SimHostSpec[];
  /** VM config files on the datastores (`vigil vm create` done before the run). */
  vms?: SimVmConfig[];
  /** The cluster's `heartbeatDatastores` (null: 2 chosen per host, as the config does). */
  heartbeatDatastores?: string[] | null;
  isolationResponse?: IsolationResponse;
  maxConcurrentPerHost?: number;
  maxAttempts?: number;
  /** restart.nextPriorityWhen (default allocated, as the config). */
  nextPriorityWhen?: 'allocated' | 'poweredOn';
  storage?: Partial<StorageOptions>;
  /** Whether the master's file watcher sees other hosts' changes (local directories: yes; NFS: no, only the rescan). Default true. */
  watcher?: boolean;
  /** Build each agent's core (default `new HostCore`): mutation tests pass a broken one. */
  coreFactory?: (opts: HostCoreOptions) => HostCore;
  /** Build each host's hypervisor (default SimHypervisor): mutation tests pass a broken one. */
  hypervisorFactory?: (env: HypervisorEnv) => SimHypervisor;
  /** Ignored (the agent's tick is derived from the timing, as in the real agent). */
  tickMs?: number;
}

export interface TimelineEntry {
  /** Global virtual time, ms. */
  at: number;
  /** Scheduler step during which it happened. */
  step: number;
  host: HostId | null;
  event: string;
  message: string;
}

/** What the invariant checker and tests can watch. */
export interface WorldObserver {
  vmUp?(host: HostId, vm: string): void;
  vmDown?(host: HostId, vm: string): void;
  leasesChanged?(host: HostId): void;
  stepped?(host: HostId, ev: CoreEvent, actions: CoreAction[]): void;
  coreError?(host: HostId, ev: CoreEvent, err: unknown): void;
  unhandled?(host: HostId, proc: string, err: unknown): void;
}

export class World implements HostServices {
  readonly rng: Rng;
  readonly sched = new Scheduler();
  readonly network = new SimNetwork();
  readonly storage: SimStorage;
  readonly timing: Timing;
  readonly timeline: TimelineEntry[] = [];
  readonly hostInfo: Record<HostId, AgentHostInfo>;
  private readonly netRng: Rng;
  private readonly tokenRng: Rng;
  private readonly hosts = new Map<HostId, SimHost>();
  private readonly ids: HostId[];
  private readonly observers: WorldObserver[] = [];
  private readonly watchers = new Set<SimAgent>();

  constructor(private readonly opts: WorldOptions) {
    this.rng = new Rng(opts.seed);
    this.netRng = this.rng.fork(1);
    this.tokenRng = this.rng.fork(2);
    const ioRng = this.rng.fork(3);
    this.timing = opts.timing;
    this.storage = new SimStorage(this.sched, ioRng, { ...DEFAULT_STORAGE, ...opts.storage });
    this.ids = opts.hosts.map((h) => h.id);
    const cfgHosts = Object.fromEntries(opts.hosts.map((h) => [h.id, { datastores: h.datastores }]));
    this.hostInfo = {};
    for (const spec of opts.hosts) {
      const n = Number(spec.id.replace(/^host-/, '')) || 0;
      this.hostInfo[spec.id] = {
        address: `10.0.${(n >> 8) & 255}.${n & 255}`,
        datastores: [...spec.datastores],
        heartbeatDatastores: heartbeatDatastoresFor({ hosts: cfgHosts, heartbeatDatastores: opts.heartbeatDatastores ?? null } as never, spec.id),
      };
      this.storage.mount(spec.id, spec.datastores);
      this.hosts.set(spec.id, new SimHost(spec, this));
    }
    for (const vm of opts.vms ?? []) {
      const ds = vm.id.slice(0, vm.id.indexOf(':'));
      this.storage.addDatastore(ds).vmConfigs.set(vm.id, { ...vm });
    }
    this.storage.onChange = (ds, what, host) => {
      if (this.opts.watcher === false) return;
      for (const a of this.watchers) {
        if (!this.hostInfo[a.host]!.datastores.includes(ds)) continue;
        this.sched.after(this.netRng.int(2, 30), () => a.alive && a.storage.onFileChange(ds, what, host));
      }
    };
  }

  get now(): number {
    return this.sched.now;
  }

  get hostIds(): readonly HostId[] {
    return this.ids;
  }

  observe(o: WorldObserver): void {
    this.observers.push(o);
  }

  host(id: HostId): SimHost {
    const h = this.hosts.get(id);
    if (!h) throw new Error(`unknown host ${id}`);
    return h;
  }

  // ---- HostServices --------------------------------------------------------------------------

  newProcess(host: SimHost, name: string, clock: ProcessClock): Process {
    return new Process(host.id, name, clock, this.sched, this.storage, (proc, err) => {
      this.record(host.id, 'sim.unhandled', `unhandled error in ${proc.name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      for (const o of this.observers) o.unhandled?.(host.id, proc.name, err);
    });
  }

  newHypervisor(host: SimHost, proc: Process): SimHypervisor {
    const env: HypervisorEnv = {
      host: host.id,
      proc,
      timing: this.timing,
      capacity: host.capacity,
      token: () => this.tokenRng.token(),
      vmUp: (vm) => {
        for (const o of this.observers) o.vmUp?.(host.id, vm);
      },
      vmDown: (vm) => {
        for (const o of this.observers) o.vmDown?.(host.id, vm);
      },
      post: (fn) => this.sched.after(0, fn),
      log: (event, message) => this.record(host.id, event, message),
    };
    return this.opts.hypervisorFactory ? this.opts.hypervisorFactory(env) : new SimHypervisor(env);
  }

  newAgent(host: SimHost, proc: Process, hypervisor: SimHypervisor): SimAgent {
    const id = host.id;
    return new SimAgent({
      host: id,
      hosts: this.hostInfo,
      timing: this.timing,
      isolationResponse: this.opts.isolationResponse ?? 'leavePoweredOn',
      maxConcurrentPerHost: this.opts.maxConcurrentPerHost ?? 32,
      maxAttempts: this.opts.maxAttempts ?? 5,
      nextPriorityWhen: this.opts.nextPriorityWhen ?? 'allocated',
      proc,
      hypervisor,
      generation: host.generation,
      incarnation: host.incarnation,
      makeCore: this.opts.coreFactory ?? ((o) => new HostCore(o)),
      token: () => this.tokenRng.token(),
      send: (from, to, inc, seq, msg) => this.send(from, to, inc, seq, msg),
      ping: (from, to, timeoutMs, done) => this.ping(from, timeoutMs, () => this.hosts.get(to)?.powered === true && this.network.connected(from, to), done, proc),
      pingIsolation: (from, timeoutMs, done) => this.ping(from, timeoutMs, () => this.network.gatewayReachable(from), done, proc),
      persistGeneration: (g) => {
        host.generation = Math.max(host.generation, g);
      },
      log: (_level, event, message) => this.record(id, event, message),
      watch: (agent, on) => {
        if (on) this.watchers.add(agent);
        else this.watchers.delete(agent);
      },
      stepped: (ev, actions) => {
        for (const o of this.observers) o.stepped?.(id, ev, actions);
      },
      coreError: (ev, err) => {
        for (const o of this.observers) o.coreError?.(id, ev, err);
      },
      leasesChanged: () => {
        for (const o of this.observers) o.leasesChanged?.(id);
      },
    });
  }

  powerLost(host: SimHost): void {
    this.storage.newLife(host.id);
    if (host.agent) this.watchers.delete(host.agent);
  }

  record(host: HostId | null, event: string, message: string): void {
    this.timeline.push({ at: this.sched.now, step: this.sched.steps, host, event, message });
  }

  // ---- the network ------------------------------------------------------------------------------

  private send(from: HostId, to: HostId, incarnation: number, seq: number, msg: Message): void {
    for (const delay of this.network.deliveries(from, to, this.netRng)) {
      this.sched.after(delay, () => this.hosts.get(to)?.agent?.receive(from, incarnation, seq, msg));
    }
  }

  /**
   * pingFor (packages/agent/src/ping.ts): `ping -c 1 -W <wait>` again and again, each waiting
   * min(1 s, what is left) (at least 0.1 s), until a reply or the timeout, on the pinging
   * process's clock. A reply comes back after a round trip; without one the answer comes when the
   * last attempt ends, at about the timeout. `reachable` is evaluated at each attempt.
   */
  private ping(from: HostId, timeoutMs: number, reachable: () => boolean, done: (replied: boolean) => void, proc: Process): void {
    let finished = false;
    const finish = (replied: boolean) => {
      if (finished) return;
      finished = true;
      if (proc.alive) done(replied);
    };
    const attempt = (elapsed: number) => {
      if (finished) return;
      if (this.hosts.get(from)?.powered && reachable()) {
        this.sched.after(2 * this.network.delay(this.netRng), () => finish(true));
        return;
      }
      const wait = Math.max(100, Math.min(1000, timeoutMs - elapsed));
      if (elapsed + wait >= timeoutMs) proc.after(wait + this.netRng.int(0, 20), () => finish(false));
      else proc.after(wait, () => attempt(elapsed + wait));
    };
    proc.soon(() => attempt(0));
  }

  // ---- faults and operations ----------------------------------------------------------------

  /** Power a host on after `afterMs` (boot time). */
  powerOn(id: HostId, afterMs = 0): void {
    const h = this.host(id);
    this.sched.after(afterMs, () => h.powerOn());
  }

  powerOff(id: HostId): void {
    this.host(id).powerOff();
  }

  crashAgent(id: HostId): void {
    this.host(id).crashAgent();
  }

  restartAgent(id: HostId, afterMs = 0): void {
    const h = this.host(id);
    this.sched.after(afterMs, () => h.startAgent());
  }

  /** SIGTERM: the agent gives up its roles and releases its leases, then exits. */
  stopAgent(id: HostId): void {
    const h = this.host(id);
    const a = h.agent;
    if (!a) return;
    this.record(id, 'agent.stopping', `agent of ${id} stopping (SIGTERM)`);
    a.shutdown(() => {
      if (h.agent === a) h.agent = null;
    });
  }

  /** The datastores a host can reach; the others are lost (EIO). */
  setAccessible(id: HostId, datastores: string[]): void {
    for (const ds of this.hostInfo[id]!.datastores) this.storage.setAccess(id, ds, datastores.includes(ds) ? 'ok' : 'lost');
  }

  setAccess(id: HostId, ds: string, access: Access): void {
    this.host(id);
    this.storage.setAccess(id, ds, access);
  }

  /** A VM crashes where it runs (`killed`: a signal; `exited`: it ended by itself). */
  crashVm(vm: string, how: 'killed' | 'exited' = 'killed'): HostId[] {
    const hit: HostId[] = [];
    for (const [id, h] of this.hosts) if (h.hypervisor?.crashVm(vm, how)) hit.push(id);
    return hit;
  }

  /**
   * A CLI request typed on `entry` (a host's agent): handled there if it is the master, else
   * forwarded to its master over TCP (both directions must work). `done` gets the answer, or an
   * error if there is no master or the connection fails (after 60 s, as the CLI's rpc timeout).
   */
  request(entry: HostId, req: OperatorRequest, done: (ok: boolean, message: string) => void): void {
    const a = this.hosts.get(entry)?.agent;
    let finished = false;
    const finish = (ok: boolean, message: string) => {
      if (finished) return;
      finished = true;
      done(ok, message);
    };
    if (!a || !a.alive) return this.sched.after(0, () => finish(false, `cannot reach the agent of ${entry}`));
    const st = a.core.status();
    if (st.role === 'master') {
      a.request(req, finish);
    } else if (!st.master) {
      return this.sched.after(0, () => finish(false, `no master yet (this host is ${st.role}); retry in a few seconds`));
    } else {
      const master = st.master;
      if (!this.network.connected(entry, master)) {
        this.sched.after(60_000, () => finish(false, `cannot reach master ${master}: timed out`));
        return;
      }
      this.sched.after(this.network.delay(this.netRng), () => {
        const m = this.hosts.get(master)?.agent;
        if (!m || !this.network.connected(entry, master)) return;
        m.request(req, (ok, message) => {
          if (!this.network.connected(entry, master)) return;
          this.sched.after(this.network.delay(this.netRng), () => finish(ok, message));
        });
      });
    }
    this.sched.after(60_000, () => finish(false, 'no answer within 60 s'));
  }

  /** Run a function at virtual time `at`. */
  at(at: number, fn: () => void): void {
    this.sched.at(at, fn);
  }

  // ---- running --------------------------------------------------------------------------------

  run(untilMs: number): void {
    this.sched.run(untilMs);
  }

  runUntil(pred: () => boolean, limitMs: number): number | null {
    return this.sched.runUntil(pred, limitMs);
  }

  // ---- observation ----------------------------------------------------------------------------

  agent(id: HostId): SimAgent | null {
    const a = this.host(id).agent;
    return a && a.alive ? a : null;
  }

  role(id: HostId): Role {
    return this.agent(id)?.role ?? 'uninitialized';
  }

  masterOf(id: HostId): HostId | null {
    return this.agent(id)?.master ?? null;
  }

  core(id: HostId): HostCore | null {
    return this.agent(id)?.core ?? null;
  }

  isUp(id: HostId): boolean {
    return this.agent(id) !== null;
  }

  masters(): HostId[] {
    return this.ids.filter((id) => this.role(id) === 'master');
  }

  /** The hosts on which a VM's process exists now. */
  vmHosts(vm: string): HostId[] {
    return this.ids.filter((id) => this.host(id).hypervisor?.running().includes(vm));
  }

  /** Every VM process that exists, with its host. */
  runningVms(): Map<string, HostId[]> {
    const m = new Map<string, HostId[]>();
    for (const id of this.ids) {
      for (const vm of this.host(id).hypervisor?.running() ?? []) {
        const l = m.get(vm);
        if (l) l.push(id);
        else m.set(vm, [id]);
      }
    }
    return m;
  }

  /** A readable timeline (times relative to `origin`), for failure reports. */
  formatTimeline(last = 200, origin = 0): string {
    return formatTimeline(this.timeline.slice(-last), origin);
  }
}

export function formatTimeline(entries: readonly TimelineEntry[], origin = 0): string {
  return entries.map((e) => formatEntry(e, origin)).join('\n');
}

export function formatEntry(e: TimelineEntry, origin = 0): string {
  return `${((e.at - origin) / 1000).toFixed(3).padStart(10)}s ${(e.host ?? '-').padEnd(9)} ${e.event.padEnd(26)} ${e.message}`;
}
