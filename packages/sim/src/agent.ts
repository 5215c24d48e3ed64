/**
 * The simulated agent: Agent (packages/agent/src/agent.ts) with simulated edges. One instance is
 * one agent process life: it builds the real HostCore, feeds it the events the real agent feeds
 * at the same periods (ticks every max(10, min(250, heartbeat/4)) ms, datastore probes,
 * authenticated messages, storage and VM observations, ping results, CLI commands), and performs
 * its actions through AgentStorage, AgentVms, the network and the pinger. It decides nothing.
 */
import { HostCore, type CoreAction, type CoreEvent, type HostCoreOptions, type HostId, type IsolationResponse, type Message, type Role, type Timing, type VmCommand } from '@vigil/core';
import { ReplayGuard, SendSequence } from '@vigil/protocol';
import { all, describe, io, type Proc, type Process } from './io.js';
import { AgentStorage, type AgentHostInfo } from './agent-storage.js';
import { AgentVms } from './agent-vms.js';
import type { SimHypervisor } from './hypervisor.js';

/** A VM operation from the CLI (`vigil vm start|stop|protect|unprotect`). */
export interface OperatorRequest {
  op: 'start' | 'stop' | 'protect' | 'unprotect';
  vm: string;
  host?: HostId;
}

export interface AgentEnv {
  host: HostId;
  hosts: Record<HostId, AgentHostInfo>;
  timing: Timing;
  isolationResponse: IsolationResponse;
  maxConcurrentPerHost: number;
  maxAttempts: number;
  nextPriorityWhen: 'allocated' | 'poweredOn';
  proc: Process;
  hypervisor: SimHypervisor;
  /** From the host's state.json. */
  generation: number;
  incarnation: number;
  makeCore: (opts: HostCoreOptions) => HostCore;
  token: () => string;
  send: (from: HostId, to: HostId, incarnation: number, seq: number, msg: Message) => void;
  ping: (from: HostId, to: HostId, timeoutMs: number, done: (replied: boolean) => void) => void;
  pingIsolation: (from: HostId, timeoutMs: number, done: (replied: boolean) => void) => void;
  persistGeneration: (generation: number) => void;
  log: (level: 'info' | 'warn' | 'error', event: string, message: string) => void;
  watch: (agent: SimAgent, on: boolean) => void;
  /** Observers: every core step, and lease changes. */
  stepped: (ev: CoreEvent, actions: CoreAction[]) => void;
  coreError: (ev: CoreEvent, err: unknown) => void;
  leasesChanged: () => void;
}

export class SimAgent {
  readonly core: HostCore;
  readonly storage: AgentStorage;
  readonly vms: AgentVms;
  role: Role = 'uninitialized';
  master: HostId | null = null;
  private generation: number;
  private readonly replay = new ReplayGuard();
  private readonly sequence: SendSequence;
  private readonly pendingReplies = new Map<number, (ok: boolean, message: string) => void>();
  private nextReq = 1;
  private masterScanning = false;
  private inventoryReported = false;
  private probing = false;
  private readonly lastProbe = new Map<string, boolean>();
  private readonly probeTimeouts = new Map<string, number>();
  /** Identity first read on each datastore during this life (DatastoreProber). */
  private readonly identities = new Map<string, string>();
  private stopped = false;

  constructor(private readonly env: AgentEnv) {
    this.generation = env.generation;
    this.sequence = new SendSequence(env.incarnation);
    this.core = env.makeCore({
      self: env.host,
      hosts: env.hosts,
      timing: env.timing,
      generation: env.generation,
      capacity: env.hypervisor.capacity(),
      maxConcurrentPerHost: env.maxConcurrentPerHost,
      maxAttempts: env.maxAttempts,
      nextPriorityWhen: env.nextPriorityWhen,
      isolationResponse: env.isolationResponse,
      hasIsolationAddresses: true,
    });
    const feed = (ev: CoreEvent) => this.feed(ev);
    this.storage = new AgentStorage({
      host: env.host,
      hosts: env.hosts,
      timing: env.timing,
      proc: env.proc,
      token: env.token,
      feed,
      log: env.log,
      watch: (on) => env.watch(this, on),
      leasesChanged: env.leasesChanged,
    });
    this.vms = new AgentVms({
      host: env.host,
      hosts: env.hosts,
      timing: env.timing,
      proc: env.proc,
      feed,
      log: env.log,
      hypervisor: env.hypervisor,
      accessible: () => this.core.status().datastores,
    });
  }

  get host(): HostId {
    return this.env.host;
  }

  get alive(): boolean {
    return this.env.proc.alive && !this.stopped;
  }

  private get proc(): Process {
    return this.env.proc;
  }

  start(): void {
    const t = this.env.timing;
    const tickMs = Math.max(10, Math.min(250, Math.floor(t.heartbeatIntervalMs / 4)));
    this.proc.every(tickMs, () => !this.stopped && this.feed({ type: 'tick', now: this.proc.now() }));
    this.proc.every(t.datastoreProbeIntervalMs, () => !this.stopped && this.proc.spawn(this.probe()));
    this.storage.start();
    this.vms.start();
    const sampleMs = Math.max(50, Math.floor(t.storageHeartbeatIntervalMs / 2));
    this.proc.every(sampleMs, () => !this.stopped && this.masterSample());
    this.proc.every(t.rescanIntervalMs, () => !this.stopped && this.proc.spawn(this.masterScan()));
    this.proc.spawn(this.probe());
  }

  /** The process dies (crash, kill -9, power cut): nothing is released. */
  crash(): void {
    this.proc.kill();
    this.vms.stop();
  }

  /** SIGTERM, from outside: `done` once the process has exited. */
  shutdown(done: () => void): void {
    this.proc.spawn(this.stop(), () => done());
  }

  /** SIGTERM: give up roles, release the leases, then exit. */
  *stop(): Proc<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.feed({ type: 'shutdown', now: this.proc.now() });
    yield* this.storage.stop();
    this.vms.stop();
    for (const p of this.pendingReplies.values()) p(false, 'agent stopping');
    this.pendingReplies.clear();
    this.proc.kill();
  }

  /** A datagram from another host (already past the network). */
  receive(from: HostId, incarnation: number, seq: number, msg: Message): void {
    if (!this.alive) return;
    if (this.replay.check(from, incarnation, seq) !== 'ok') return; // duplicate or stale: dropped
    this.feed({ type: 'message', now: this.proc.now(), from, msg });
  }

  /** A VM command for the master (the CLI's request, forwarded to it). */
  request(req: OperatorRequest, done: (ok: boolean, message: string) => void): void {
    if (!this.alive) return;
    if (this.core.status().role !== 'master') {
      done(false, `${this.env.host} is not the master (master: ${this.core.status().master ?? 'none'})`);
      return;
    }
    this.proc.spawn(this.masterRequest(req, done));
  }

  private *masterRequest(req: OperatorRequest, done: (ok: boolean, message: string) => void): Proc<void> {
    if (!this.core.vmsView().some((v) => v.id === req.vm || v.name === req.vm)) {
      // Created a moment ago? Read the catalogs before answering.
      for (const ds of this.core.status().datastores) yield* this.vms.scanCatalog(ds);
    }
    if (!this.alive) return;
    const r = this.nextReq++;
    this.pendingReplies.set(r, done);
    const cmd: VmCommand = req.op === 'start' && req.host ? { op: 'start', vm: req.vm, host: req.host } : { op: req.op, vm: req.vm };
    this.feed({ type: 'command', now: this.proc.now(), req: r, cmd });
  }

  // ---- periodic work ----------------------------------------------------------------------------

  private masterSample(): void {
    if (this.role !== 'master') return;
    const vms = this.core.leasesToWatch();
    if (vms.length > 0) this.proc.spawn(this.vms.sampleLeases(vms));
  }

  private *masterScan(): Proc<void> {
    if (this.role !== 'master' || this.masterScanning) return;
    this.masterScanning = true;
    try {
      const accessible = this.core.status().datastores;
      for (const ds of accessible) yield* this.vms.scanCatalog(ds);
      yield* this.storage.rescanAll();
      if (!this.inventoryReported && this.role === 'master') {
        this.inventoryReported = true;
        this.feed({ type: 'inventoryScanned', now: this.proc.now() });
      }
    } finally {
      this.masterScanning = false;
    }
  }

  /** DatastoreProber.probeAll plus the agent's tolerance of one slow probe. */
  private *probe(): Proc<void> {
    if (this.probing || this.stopped) return;
    this.probing = true;
    try {
      const self = this;
      const names = this.env.hosts[this.env.host]!.datastores;
      const raw = yield* all(
        this.proc,
        names.map((name) =>
          (function* (): Proc<{ name: string; accessible: boolean; detail?: string; timedOut?: boolean }> {
            try {
              return yield* io({
                kind: 'io',
                ds: name,
                what: `probe of ${name}`,
                timeoutMs: self.env.timing.storageCallTimeoutMs,
                raw: true,
                apply: (d) => {
                  if (!d) return { name, accessible: false, detail: `${name}: no such file or directory` };
                  const known = self.identities.get(name);
                  let id = d.initialized ? d.identity : null;
                  let detail: string | undefined;
                  if (!id) {
                    if (known) return { name, accessible: false, detail: `${name}/datastore-id vanished (storage lost or replaced)` };
                    // A datastore this agent has not seen yet: initialize it (whatever is mounted there).
                    d.initialized = true;
                    d.identity = id = `${name} ${self.env.token()}`;
                    detail = 'initialized';
                  }
                  if (known && known !== id) return { name, accessible: false, detail: `identity changed (${known} -> ${id}): not the datastore this host knew` };
                  if (!known) self.identities.set(name, id);
                  return detail ? { name, accessible: true, detail } : { name, accessible: true };
                },
              });
            } catch (err) {
              return { name, accessible: false, detail: describe(err), timedOut: (err as { code?: string }).code === 'ETIMEDOUT' };
            }
          })(),
        ),
      );
      const results = raw.map((r) => {
        const timedOut = !r.accessible && r.timedOut === true;
        const streak = timedOut ? (this.probeTimeouts.get(r.name) ?? 0) + 1 : 0;
        this.probeTimeouts.set(r.name, streak);
        const before = this.lastProbe.get(r.name);
        return timedOut && streak < 2 && before === true ? { ...r, accessible: true, detail: `slow probe tolerated once (${r.detail})` } : r;
      });
      for (const r of results) {
        const before = this.lastProbe.get(r.name);
        if (before === undefined || before !== r.accessible) {
          this.env.log(r.accessible ? 'info' : 'warn', r.accessible ? 'datastore.accessible' : 'datastore.inaccessible', `datastore ${r.name} is ${r.accessible ? 'accessible' : 'not accessible'}${r.detail ? `: ${r.detail}` : ''}`);
        }
        this.lastProbe.set(r.name, r.accessible);
      }
      if (!this.stopped) {
        const accessible = results.filter((r) => r.accessible).map((r) => r.name);
        this.storage.setAccessible(accessible);
        this.feed({ type: 'datastores', now: this.proc.now(), accessible });
      }
    } finally {
      this.probing = false;
    }
  }

  // ---- core and actions -----------------------------------------------------------------------

  private feed(ev: CoreEvent): void {
    if (!this.proc.alive) return;
    let actions: CoreAction[];
    try {
      actions = this.core.step(ev);
    } catch (err) {
      this.env.log('error', 'core.error', `core failed on ${ev.type}: ${describe(err)}`);
      this.env.coreError(ev, err);
      return;
    }
    this.env.stepped(ev, actions);
    for (const a of actions) {
      try {
        this.perform(a);
      } catch (err) {
        this.env.log('error', 'agent.action-failed', `performing ${a.type} failed: ${describe(err)}`);
      }
    }
  }

  private perform(a: CoreAction): void {
    if (this.storage.perform(a)) return;
    if (this.vms.perform(a)) return;
    switch (a.type) {
      case 'reply': {
        const p = this.pendingReplies.get(a.req);
        if (!p) return;
        this.pendingReplies.delete(a.req);
        p(a.ok, a.message);
        return;
      }
      case 'ping':
        this.env.ping(this.env.host, a.host, a.timeoutMs, (replied) => this.feed({ type: 'pingResult', now: this.proc.now(), host: a.host, replied }));
        return;
      case 'pingIsolation':
        this.env.pingIsolation(this.env.host, a.timeoutMs, (replied) => this.feed({ type: 'isolationPingResult', now: this.proc.now(), replied }));
        return;
      case 'send': {
        const { incarnation, seq } = this.sequence.next();
        this.env.send(this.env.host, a.to, incarnation, seq, a.msg);
        return;
      }
      case 'log':
        if (a.level !== 'debug') this.env.log(a.level === 'error' ? 'error' : a.level === 'warn' ? 'warn' : 'info', a.event, a.message);
        return;
      case 'role':
        if (a.role === 'master' && this.role !== 'master') {
          this.inventoryReported = false;
          this.proc.soon(() => this.proc.spawn(this.masterScan()));
        }
        this.role = a.role;
        this.master = a.master;
        this.storage.setRole(a.role, a.master);
        if (a.generation > this.generation) {
          this.generation = a.generation;
          this.env.persistGeneration(a.generation);
        }
        return;
    }
  }
}
