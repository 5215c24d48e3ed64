/**
 * The agent runtime: turns real sockets, files and timers into core events, and performs the
 * core's actions. All decisions live in @vigil/core; this file only does I/O.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HostCore, type IsolationResponse, type CoreAction, type CoreEvent, type HostId, type HostView, type Message, type Role } from '@vigil/core';
import { canonicalAddress, heartbeatDatastoresFor, type ClusterConfig } from '@vigil/config';
import {
  chooseIncarnation,
  decode,
  deriveKey,
  encode,
  MAX_DATAGRAM_BYTES,
  RateLimitedCounter,
  ReplayGuard,
  SendSequence,
} from '@vigil/protocol';
import { DatastoreProber, type ProbeResult } from '@vigil/datastore';
import type { Logger } from './logger.js';
import { monotonicClock, type Clock } from './clock.js';
import { UdpTransport, type Datagram, type DatagramStats, type Transport } from './transport.js';
import { ControlServer, type ControlRequest } from './control-server.js';
import { StorageRuntime } from './storage.js';
import { VmRuntime } from './vm-runtime.js';
import { RpcServer, rpcCall } from './rpc.js';
import { StatsSampler, STATS_ASK_TIMEOUT_MS } from './stats-sampler.js';
import { checkHostStats, hostsToAsk, mergeVmStats, type HostAnswer, type HostStats } from './stats.js';
import { pingFor } from './ping.js';
import { defaultGateways } from './gateway.js';

export interface AgentOptions {
  config: ClusterConfig;
  host: HostId;
  secret: Buffer;
  logger: Logger;
  /** Local state (incarnation, generation). */
  stateDir: string;
  socketPath: string;
  clock?: Clock;
  /** Injected transport (tests); default binds UDP on the host's address and port. */
  transport?: Transport;
}

export interface AgentStatus {
  host: HostId;
  cluster: string;
  role: Role;
  master: HostId | null;
  datastores: string[];
  heartbeatDatastores: string[];
  /** Heartbeat datastores on which this host currently holds its host-N-hb lease. */
  heartbeatsHeld: string[];
  /** Datastores whose protectedlist this host holds (master only). */
  ownedDatastores: string[];
  generation: number;
  address: string;
  port: number;
  profile: string;
  incarnation: number;
  uptimeMs: number;
  pid: number;
  /** UDP datagram counters of this agent (absent with a transport that keeps none). */
  datagrams?: DatagramStats;
}

/** A row of `vigil hosts`: the core's view of a host plus its configured address. */
export type HostRow = HostView & { address: string };

export class Agent {
  private readonly config: ClusterConfig;
  private readonly host: HostId;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly key: Buffer;
  private core: HostCore;
  private readonly replay = new ReplayGuard();
  private readonly dropLog = new RateLimitedCounter<string>(10_000);
  private readonly prober: DatastoreProber;
  private readonly storage: StorageRuntime;
  private vm: VmRuntime | null = null;
  private stats: StatsSampler | null = null;
  private rpc: RpcServer | null = null;
  private readonly pendingReplies = new Map<number, { resolve: (v: string) => void; reject: (e: Error) => void }>();
  private nextReq = 1;
  private masterScanning = false;
  private inventoryReported = false;
  private pingWarned = false;
  /** Where this host checks for isolation: configured per host or cluster, else its default gateway. */
  private readonly isolationAddresses: string[];
  private readonly addressToHost = new Map<string, HostId>();
  private transport: Transport | null;
  private control: ControlServer | null = null;
  private sequence: SendSequence | null = null;
  private timers: NodeJS.Timeout[] = [];
  private probing = false;
  private lastProbe = new Map<string, ProbeResult>();
  private readonly probeTimeouts = new Map<string, number>();
  private role: Role = 'uninitialized';
  private generation = 0;
  private startedAt = 0;
  private persistedIncarnation = 0;
  private stopped = false;

  constructor(private readonly opts: AgentOptions) {
    this.config = opts.config;
    this.host = opts.host;
    this.logger = opts.logger;
    this.clock = opts.clock ?? monotonicClock;
    this.transport = opts.transport ?? null;
    const me = this.config.hosts[this.host];
    if (!me) throw new Error(`host ${this.host} is not in the cluster config (hosts: ${Object.keys(this.config.hosts).join(', ')})`);
    this.key = deriveKey(opts.secret, this.config.cluster);
    for (const [id, h] of Object.entries(this.config.hosts)) this.addressToHost.set(`${h.address}|${h.port}`, id);
    this.isolationAddresses = [...(me.isolationAddresses.length > 0 ? me.isolationAddresses : this.config.isolationAddresses.length > 0 ? this.config.isolationAddresses : defaultGateways())];
    this.core = this.makeCore(0, { memoryMB: 0, cpus: 0 });
    this.storage = new StorageRuntime({ config: this.config, host: this.host, logger: this.logger, clock: this.clock, feed: (ev) => this.feed(ev) });
    const mounted = Object.fromEntries(me.datastores.map((d) => [d, this.config.datastores[d]!]));
    this.prober = new DatastoreProber({
      cluster: this.config.cluster,
      host: this.host,
      datastores: mounted,
      timeoutMs: this.config.timing.storageCallTimeoutMs,
    });
  }

  async start(): Promise<void> {
    const me = this.config.hosts[this.host]!;
    this.startedAt = this.clock.now();
    await mkdir(this.opts.stateDir, { recursive: true, mode: 0o700 });
    const state = await this.readState();
    const incarnation = chooseIncarnation(Date.now(), state.incarnation);
    this.generation = state.generation ?? 0;
    await this.writeState({ incarnation, generation: this.generation });
    this.persistedIncarnation = incarnation;
    this.sequence = new SendSequence(incarnation);
    this.vm = new VmRuntime({
      config: this.config,
      host: this.host,
      stateDir: this.opts.stateDir,
      logger: this.logger,
      clock: this.clock,
      feed: (ev) => this.feed(ev),
      accessible: () => this.core.status().datastores,
    });
    // The core must not reuse an older generation after a restart.
    this.core = this.makeCore(this.generation, this.vm.capacity());

    if (!this.transport) {
      this.transport = await UdpTransport.bind(me.address, me.port, (err) => this.onSocketError(err));
    }
    this.transport.onDatagram((d) => this.onDatagram(d));
    this.control = new ControlServer(this.opts.socketPath, (req) => this.onControl(req));
    await this.control.listen();
    this.rpc = new RpcServer(this.key, (body) => this.onRpc(body), (from, why) => this.drop('rpcRejected', { data: Buffer.alloc(0), address: from, port: 0 }, why, this.clock.now()));
    await this.rpc.listen(me.address, me.port);

    this.logger.log('info', 'agent.started', `agent started on ${me.address}:${me.port}`, {
      address: me.address,
      port: me.port,
      incarnation,
      profile: this.config.profile,
      datastores: me.datastores,
      heartbeatDatastores: heartbeatDatastoresFor(this.config, this.host),
      isolationAddresses: this.isolationAddresses,
      isolationResponse: this.config.isolationResponse,
      socket: this.opts.socketPath,
      pid: process.pid,
    });

    const t = this.config.timing;
    const tickMs = Math.max(10, Math.min(250, Math.floor(t.heartbeatIntervalMs / 4)));
    this.timers.push(setInterval(() => this.feed({ type: 'tick', now: this.clock.now() }), tickMs));
    this.timers.push(setInterval(() => void this.probe(), t.datastoreProbeIntervalMs));
    this.timers.push(setInterval(() => this.flushDropLog(), 10_000));
    // Event-loop stalls make every timeout fire late at once: say so when it happens.
    let lastBeat = this.clock.now();
    this.timers.push(
      setInterval(() => {
        const now = this.clock.now();
        const lag = now - lastBeat - 100;
        lastBeat = now;
        if (lag > Math.max(200, t.heartbeatIntervalMs)) {
          const d = this.dropLog.hit('event-loop-stall', now);
          if (d.log) this.logger.log('warn', 'agent.stalled', `the agent's event loop stalled for ${Math.round(lag)} ms`, { lagMs: Math.round(lag), suppressedSinceLast: d.suppressed });
        }
      }, 100),
    );
    this.storage.start();
    this.vm.start();
    this.stats = new StatsSampler({ host: this.host, driver: this.vm.driver, logger: this.logger, clock: this.clock, intervalMs: t.statsIntervalMs });
    this.stats.start();
    const sampleMs = Math.max(50, Math.floor(t.storageHeartbeatIntervalMs / 2));
    this.timers.push(setInterval(() => void this.masterSample(), sampleMs));
    this.timers.push(setInterval(() => void this.masterScan(), t.rescanIntervalMs));
    await this.probe();
  }

  async stop(reason: string): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.logger.log('info', 'agent.stopping', `agent stopping: ${reason}`, { reason, role: this.role });
    this.feed({ type: 'shutdown', now: this.clock.now() });
    await this.storage.stop();
    await this.stats?.stop();
    await this.vm?.stop();
    await this.rpc?.close();
    for (const p of this.pendingReplies.values()) p.reject(new Error('agent stopping'));
    this.pendingReplies.clear();
    await this.control?.close();
    await this.transport?.close();
  }

  status(): AgentStatus {
    const st = this.core.status();
    const me = this.config.hosts[this.host]!;
    return {
      host: this.host,
      cluster: this.config.cluster,
      role: st.role,
      master: st.master,
      datastores: st.datastores,
      heartbeatDatastores: heartbeatDatastoresFor(this.config, this.host),
      heartbeatsHeld: this.storage.heldHeartbeats(),
      ownedDatastores: st.owned,
      generation: st.generation,
      address: me.address,
      port: me.port,
      profile: this.config.profile,
      incarnation: this.sequence?.incarnation ?? 0,
      uptimeMs: Math.round(this.clock.now() - this.startedAt),
      pid: process.pid,
      ...(this.transport?.stats ? { datagrams: this.transport.stats() } : {}),
    };
  }

  hosts(): HostRow[] {
    return this.core.hostsView().map((v) => v.host === this.host ? this.selfRow(v) : ({
      host: v.host,
      address: this.config.hosts[v.host]?.address ?? '',
      state: v.state,
      lastHeartbeatMs: v.lastHeartbeatMs === null ? null : Math.round(v.lastHeartbeatMs),
      datastores: v.datastores,
      storageHeartbeat: v.storageHeartbeat,
      isolated: v.isolated,
      vms: v.vms,
      maintenance: v.maintenance,
    }));
  }

  /** This host's own row: its storage heartbeat and poweron are what it holds and writes. */
  private selfRow(v: ReturnType<HostCore['hostsView']>[number]): HostRow {
    const held = this.storage.heldHeartbeats();
    return {
      host: v.host,
      address: this.config.hosts[v.host]?.address ?? '',
      state: v.state,
      lastHeartbeatMs: null,
      datastores: v.datastores,
      storageHeartbeat: held.length > 0 ? 'alive' : heartbeatDatastoresFor(this.config, this.host).length === 0 ? 'unknown' : 'dead',
      isolated: this.role === 'isolated',
      vms: this.vm ? this.vm.driver.list().length : 0,
      maintenance: v.maintenance,
    };
  }

  // ---- inputs -------------------------------------------------------------------------------

  private async onControl(req: ControlRequest): Promise<unknown> {
    switch (req.cmd) {
      case 'status':
        return this.status();
      case 'hosts': {
        const st = this.core.status();
        return { master: st.master, isMaster: st.role === 'master', hosts: this.hosts() };
      }
      case 'vm':
        if (req.op === 'create' && this.config.hosts[this.host]!.datastores.includes(String(req.datastore))) {
          const id = await this.vm!.create(req);
          if (this.role === 'master') void this.masterScan();
          return { message: `created ${id}`, id };
        }
        return this.toMaster(req);
      case 'vms':
      case 'vmStats':
      case 'maintenance':
        return this.toMaster(req);
      default:
        throw new Error(`unknown command "${req.cmd}"`);
    }
  }

  /** Handle on the master, or forward to it over an authenticated TCP request. */
  private async toMaster(req: Record<string, unknown>): Promise<unknown> {
    const st = this.core.status();
    if (st.role === 'master') return this.onMasterRequest(req);
    if (!st.master) throw new Error(`no master yet (this host is ${st.role}); retry in a few seconds`);
    const m = this.config.hosts[st.master]!;
    return rpcCall(this.key, m.address, m.port, req, 60_000);
  }

  private async onRpc(body: Record<string, unknown>): Promise<unknown> {
    // The master asks every host for its VM statistics (any host answers this one).
    if (body.cmd === 'hostVmStats') return this.localStats();
    if (this.core.status().role !== 'master') throw new Error(`${this.host} is not the master (master: ${this.core.status().master ?? 'none'})`);
    return this.onMasterRequest(body);
  }

  private async onMasterRequest(req: Record<string, unknown>): Promise<unknown> {
    if (req.cmd === 'vms') {
      const vms = this.core.vmsView();
      if (req.stats !== true) return { master: this.host, vms };
      return { master: this.host, vms: mergeVmStats(vms, await this.askStats(hostsToAsk(vms))) };
    }
    if (req.cmd === 'vmStats') return this.vmStats(typeof req.vm === 'string' ? req.vm : '');
    if (req.cmd === 'maintenance') {
      const host = String(req.host ?? '');
      if (!this.config.hosts[host]) throw new Error(`unknown host ${host} (hosts: ${Object.keys(this.config.hosts).join(', ')})`);
      const r = this.nextReq++;
      const done = new Promise<string>((resolve, reject) => this.pendingReplies.set(r, { resolve, reject }));
      this.feed({ type: 'maintenanceCommand', now: this.clock.now(), req: r, host, enter: req.enter === true, evacuate: req.evacuate === true });
      return { message: await done };
    }
    if (req.cmd !== 'vm') throw new Error(`unknown request "${String(req.cmd)}"`);
    const vm = typeof req.vm === 'string' ? req.vm : '';
    switch (req.op) {
      case 'create': {
        const id = await this.vm!.create(req);
        await this.vm!.catalogAdd(id);
        return { message: `created ${id}`, id };
      }
      case 'set': {
        const target = this.core.vmsView().find((v) => v.id === vm || v.name === vm);
        if (!target) throw new Error(`no VM named ${vm}`);
        await this.vm!.setPriority(target.id, String(req.priority));
        await this.masterScan();
        return { message: `${target.id}: restart priority ${String(req.priority)}` };
      }
      case 'start':
      case 'stop':
      case 'protect':
      case 'unprotect': {
        if (!this.core.vmsView().some((v) => v.id === vm || v.name === vm)) {
          // Created through another host a moment ago? Read the catalogs before answering.
          for (const ds of this.core.status().datastores) await this.vm!.scanCatalog(ds);
        }
        const req2 = this.nextReq++;
        const done = new Promise<string>((resolve, reject) => this.pendingReplies.set(req2, { resolve, reject }));
        const cmd = req.op === 'start' && typeof req.host === 'string' ? { op: 'start' as const, vm, host: req.host } : { op: req.op, vm };
        this.feed({ type: 'command', now: this.clock.now(), req: req2, cmd: cmd as never });
        return { message: await done };
      }
      default:
        throw new Error(`unknown vm operation "${String(req.op)}"`);
    }
  }

  /** This host's latest VM statistics (stats-sampler.ts). */
  private localStats(): HostStats {
    return this.stats?.answer() ?? { host: this.host, intervalMs: this.config.timing.statsIntervalMs, error: 'the agent is starting', vms: [] };
  }

  /** Master: ask `hosts` for their VM statistics, in parallel, each within STATS_ASK_TIMEOUT_MS. */
  private async askStats(hosts: readonly string[]): Promise<Map<string, HostAnswer>> {
    const out = new Map<string, HostAnswer>();
    await Promise.all(
      hosts.map(async (h) => {
        try {
          if (h === this.host) return void out.set(h, { ok: true, stats: this.localStats() });
          const cfg = this.config.hosts[h];
          if (!cfg) throw new Error('not in the cluster config');
          const data = await rpcCall(this.key, cfg.address, cfg.port, { cmd: 'hostVmStats' }, STATS_ASK_TIMEOUT_MS);
          out.set(h, { ok: true, stats: checkHostStats(data, h) });
        } catch (err) {
          out.set(h, { ok: false, error: err instanceof Error ? err.message : String(err) });
        }
      }),
    );
    return out;
  }

  /** Master: `vigil vm stats NAME`: one VM, by id or name, with its host's latest sample. */
  private async vmStats(name: string): Promise<unknown> {
    const rows = this.core.vmsView();
    const named = rows.filter((v) => v.name === name);
    const row = rows.find((v) => v.id === name) ?? (named.length === 1 ? named[0] : undefined);
    if (!row) {
      if (named.length > 1) throw new Error(`${named.length} VMs are named ${name} (${named.map((v) => v.id).join(', ')}): give its id`);
      throw new Error(`no VM named ${name} (see vigil vms)`);
    }
    const [vm] = mergeVmStats([row], await this.askStats(hostsToAsk([row])));
    return { master: this.host, vm };
  }

  /** Master: sample the VM leases the core watches. */
  private async masterSample(): Promise<void> {
    if (this.role !== 'master' || !this.vm) return;
    const vms = this.core.leasesToWatch();
    if (vms.length > 0) await this.vm.sampleLeases(vms);
  }

  /** Master: read the VM catalog and every host's files, then tell the core the inventory is known. */
  private async masterScan(): Promise<void> {
    if (this.role !== 'master' || !this.vm || this.masterScanning) return;
    this.masterScanning = true;
    try {
      const accessible = this.core.status().datastores;
      for (const ds of accessible) await this.vm.scanCatalog(ds);
      await this.storage.rescanAll();
      if (!this.inventoryReported && this.role === 'master') {
        this.inventoryReported = true;
        this.feed({ type: 'inventoryScanned', now: this.clock.now() });
      }
    } finally {
      this.masterScanning = false;
    }
  }

  private onDatagram(d: Datagram): void {
    const now = this.clock.now();
    if (d.data.length > MAX_DATAGRAM_BYTES) return this.drop('oversized', d, `${d.data.length} bytes`, now);
    const res = decode(d.data, this.key, this.config.cluster);
    if (!res.ok) return this.drop(res.reason, d, res.detail, now);
    const env = res.env;
    const sender = this.config.hosts[env.sender];
    if (!sender || env.sender === this.host) return this.drop('unknownSender', d, `sender ${env.sender} is not another host of this cluster`, now);
    if (this.addressToHost.get(`${canonicalAddress(d.address)}|${d.port}`) !== env.sender) {
      return this.drop('wrongSource', d, `claims ${env.sender} (${sender.address}:${sender.port}) but came from ${d.address}:${d.port}`, now);
    }
    const verdict = this.replay.check(env.sender, env.incarnation, env.seq);
    if (verdict !== 'ok') return this.drop(verdict, d, `${env.sender} incarnation ${env.incarnation} seq ${env.seq}`, now);
    this.feed({ type: 'message', now, from: env.sender, msg: env.msg });
  }

  private drop(reason: string, d: Datagram, detail: string, now: number): void {
    const decision = this.dropLog.hit(reason, now);
    if (decision.log) {
      this.logger.log('warn', 'datagram.dropped', `dropped a datagram from ${d.address}:${d.port}: ${reason}`, {
        reason,
        detail,
        from: `${d.address}:${d.port}`,
        bytes: d.data.length,
        suppressedSinceLast: decision.suppressed,
      });
    }
  }

  private flushDropLog(): void {
    for (const s of this.dropLog.flush(this.clock.now())) {
      this.logger.log('warn', 'datagram.dropped', `dropped ${s.suppressed} more datagrams: ${s.key}`, { reason: s.key, suppressed: s.suppressed });
    }
  }

  private onSocketError(err: Error): void {
    const decision = this.dropLog.hit(`socket:${(err as NodeJS.ErrnoException).code ?? 'error'}`, this.clock.now());
    if (decision.log) this.logger.log('warn', 'network.error', `UDP socket error: ${err.message}`, { suppressedSinceLast: decision.suppressed });
  }

  private async probe(): Promise<void> {
    if (this.probing || this.stopped) return;
    this.probing = true;
    try {
      const raw = await this.prober.probeAll();
      // One slow probe (a loaded host, a storage hiccup) does not make a datastore inaccessible:
      // a timeout counts only when the previous probe failed too. Definite answers (gone,
      // replaced, unwritable) count at once. Leases have their own self-fence deadline either way.
      const results = raw.map((r) => {
        const timedOut = !r.accessible && /ETIMEDOUT/.test(r.detail ?? '');
        const streak = timedOut ? (this.probeTimeouts.get(r.name) ?? 0) + 1 : 0;
        this.probeTimeouts.set(r.name, streak);
        const before = this.lastProbe.get(r.name);
        return timedOut && streak < 2 && before?.accessible ? { ...r, accessible: true, detail: `slow probe tolerated once (${r.detail})` } : r;
      });
      for (const r of results) {
        const before = this.lastProbe.get(r.name);
        if (!before || before.accessible !== r.accessible) {
          const level = r.accessible ? 'info' : 'warn';
          this.logger.log(level, r.accessible ? 'datastore.accessible' : 'datastore.inaccessible', `datastore ${r.name} is ${r.accessible ? 'accessible' : 'not accessible'}${r.detail ? `: ${r.detail}` : ''}`, {
            datastore: r.name,
            path: this.config.datastores[r.name],
            detail: r.detail,
          });
        }
        this.lastProbe.set(r.name, r);
      }
      if (!this.stopped) {
        const accessible = results.filter((r) => r.accessible).map((r) => r.name);
        this.storage.setAccessible(accessible);
        this.feed({ type: 'datastores', now: this.clock.now(), accessible });
      }
    } finally {
      this.probing = false;
    }
  }

  // ---- core and actions -----------------------------------------------------------------------

  private feed(ev: CoreEvent): void {
    let actions: CoreAction[];
    try {
      actions = this.core.step(ev);
    } catch (err) {
      // A bug in the core must not take the agent down silently; log loudly and keep going.
      this.logger.log('error', 'core.error', `core failed on ${ev.type}: ${(err as Error).stack ?? String(err)}`, { event: ev.type });
      return;
    }
    for (const a of actions) {
      try {
        this.perform(a);
      } catch (err) {
        this.logger.log('error', 'agent.action-failed', `performing ${a.type} failed: ${(err as Error).stack ?? String(err)}`, { action: a.type });
      }
    }
  }

  private perform(a: CoreAction): void {
    if (this.storage.perform(a)) return;
    if (this.vm?.perform(a)) return;
    switch (a.type) {
      case 'reply': {
        const p = this.pendingReplies.get(a.req);
        if (!p) return;
        this.pendingReplies.delete(a.req);
        if (a.ok) p.resolve(a.message);
        else p.reject(new Error(a.message));
        return;
      }
      case 'ping':
        void this.ping(a.host, a.address, a.timeoutMs);
        return;
      case 'pingIsolation':
        void this.pingIsolation(a.timeoutMs);
        return;
      case 'send':
        this.send(a.to, a.msg);
        return;
      case 'log':
        this.logger.log(a.level, a.event, a.message, a.fields);
        return;
      case 'role':
        if (a.role === 'master' && this.role !== 'master') {
          this.inventoryReported = false;
          setTimeout(() => void this.masterScan(), 0);
        }
        this.role = a.role;
        this.storage.setRole(a.role, a.master);
        if (a.generation > this.generation) {
          this.generation = a.generation;
          void this.writeState({ incarnation: this.sequence?.incarnation ?? 0, generation: this.generation });
        }
        return;
    }
  }

  private async ping(host: HostId, address: string, timeoutMs: number): Promise<void> {
    let replied = false;
    if (this.config.pingHosts) {
      const r = await pingFor(address, timeoutMs);
      if (r === 'unavailable' && !this.pingWarned) {
        this.pingWarned = true;
        this.logger.log('error', 'ping.unavailable', 'the ping command is missing (install iputils-ping): silent hosts are judged without it', {});
      }
      replied = r === 'replied';
    }
    this.feed({ type: 'pingResult', now: this.clock.now(), host, replied });
  }

  /** Ping every isolation address at once; any reply counts (SPEC §3.4). */
  private async pingIsolation(timeoutMs: number): Promise<void> {
    const results = await Promise.all(this.isolationAddresses.map((a) => pingFor(a, timeoutMs)));
    if (results.includes('unavailable') && !this.pingWarned) {
      this.pingWarned = true;
      this.logger.log('error', 'ping.unavailable', 'the ping command is missing (install iputils-ping): isolation addresses cannot be checked', {});
    }
    this.feed({ type: 'isolationPingResult', now: this.clock.now(), replied: results.includes('replied') });
  }

  private makeCore(generation: number, capacity: { memoryMB: number; cpus: number }): HostCore {
    return new HostCore({
      self: this.host,
      hosts: Object.fromEntries(
        Object.entries(this.config.hosts).map(([id, h]) => [id, { address: h.address, datastores: h.datastores, heartbeatDatastores: heartbeatDatastoresFor(this.config, id) }]),
      ),
      timing: this.config.timing,
      generation,
      capacity,
      maxConcurrentPerHost: this.config.restart.maxConcurrentPerHost,
      maxAttempts: this.config.restart.maxAttempts,
      nextPriorityWhen: this.config.restart.nextPriorityWhen,
      isolationResponse: this.config.isolationResponse as IsolationResponse,
      hasIsolationAddresses: this.isolationAddresses.length > 0,
    });
  }

  private send(to: HostId, msg: Message): void {
    const h = this.config.hosts[to];
    if (!h || !this.transport || !this.sequence) return;
    let buf: Buffer;
    const { incarnation, seq } = this.sequence.next();
    if (incarnation > this.persistedIncarnation) {
      // The sequence wrapped: persist the new incarnation so a restart never goes back to it.
      this.persistedIncarnation = incarnation;
      void this.writeState({ incarnation, generation: this.generation });
    }
    try {
      buf = encode({ cluster: this.config.cluster, sender: this.host, incarnation, seq, msg }, this.key);
    } catch (err) {
      // A message the protocol refuses is a bug, never a reason to stop the agent.
      this.logger.log('error', 'protocol.encode-failed', `cannot send ${msg.type} to ${to}: ${(err as Error).message}`, { to, type: msg.type });
      return;
    }
    this.transport.send(h.address, h.port, buf);
  }

  // ---- local state --------------------------------------------------------------------------

  private async readState(): Promise<{ incarnation?: number; generation?: number }> {
    const file = join(this.opts.stateDir, 'state.json');
    try {
      const parsed = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
      const num = (v: unknown) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined);
      const out: { incarnation?: number; generation?: number } = {};
      const inc = num(parsed.incarnation);
      const gen = num(parsed.generation);
      if (inc !== undefined) out.incarnation = inc;
      if (gen !== undefined) out.generation = gen;
      return out;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.logger.log('warn', 'state.unreadable', `ignoring unreadable ${file}: ${(err as Error).message}`, { file });
      }
      return {};
    }
  }

  private async writeState(state: { incarnation: number; generation: number }): Promise<void> {
    const file = join(this.opts.stateDir, 'state.json');
    const tmp = `${file}.tmp`;
    try {
      await writeFile(tmp, JSON.stringify(state) + '\n');
      await rename(tmp, file);
    } catch (err) {
      this.logger.log('warn', 'state.write-failed', `cannot write ${file}: ${(err as Error).message}`, { file });
    }
  }
}
