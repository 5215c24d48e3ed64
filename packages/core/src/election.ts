/**
 * Roles and master election (SPEC §3.1, §3.2), as a pure state machine.
 *
 * - A host starts `uninitialized`; its first datastore probe puts it in `election`.
 * - In election it sends an `election` message (with its accessible-datastore count) to every
 *   configured host each heartbeat interval, and listens. When the election window has passed,
 *   it re-evaluates on every tick: if it beats every candidate heard recently, it becomes master;
 *   otherwise it waits for the best candidate's master heartbeat.
 * - A host in election that hears a master heartbeat joins that master at once: a running master
 *   is never displaced by a better host that joins later.
 * - A slave that hears no heartbeat from its master for hostTimeoutMs re-enters election.
 * - When two masters hear each other (a healed partition), the election rule picks the survivor;
 *   the loser abdicates, tells its slaves to follow the survivor, and follows it too.
 *
 * No I/O, no timers, no clock: events in, actions out.
 */
import type { HostId } from './ids.js';
import type { Message } from './messages.js';
import type { Timing } from './timing.js';
import type { CoreAction, CoreEvent, LogLevel, Role } from './events.js';
import { beats, best, reason, type Rank } from './rank.js';

export interface ElectionOptions {
  self: HostId;
  /** Every configured host id, self included. */
  hosts: readonly HostId[];
  timing: Pick<Timing, 'electionWindowMs' | 'heartbeatIntervalMs' | 'hostTimeoutMs'>;
  /** Highest master generation this host has seen before (persisted by the runtime); default 0. */
  generation?: number;
  /** Capacity this host offers to VMs, reported to the master in slave heartbeats. */
  capacity?: { memoryMB: number; cpus: number };
}

interface Peer {
  /** Last time any authenticated message arrived from this host. */
  lastHeard: number;
  /** Last time it sent an election message, or -Infinity. */
  lastElection: number;
  /** Last time it sent us a slave heartbeat naming us as master, or -Infinity. */
  lastSlaveHeartbeat: number;
  datastores: number;
  /** What the peer last told us about itself. */
  lastRole: 'election' | 'master' | 'slave' | null;
  maintenance: boolean;
}

export interface ElectionStatus {
  role: Role;
  master: HostId | null;
  generation: number;
  datastores: string[];
  electionStartedAt: number | null;
}

export class Election {
  readonly self: HostId;
  private readonly others: HostId[];
  private readonly timing: ElectionOptions['timing'];
  private readonly capacity: { memoryMB: number; cpus: number };
  private role: Role = 'uninitialized';
  private master: HostId | null = null;
  private generation: number;
  private datastores: string[] = [];
  private readonly peers = new Map<HostId, Peer>();
  private maintenance = false;
  /** Generation of the master this slave follows, from its heartbeats. */
  private masterGeneration = 0;
  private readonly capacities = new Map<HostId, { memoryMB: number; cpus: number }>();
  private electionStartedAt = 0;
  private electionOutcomeLogged: HostId | null = null;
  private masterLastHeard = 0;
  private lastSent = -Infinity;
  private now = 0;
  private out: CoreAction[] = [];

  constructor(opts: ElectionOptions) {
    this.self = opts.self;
    this.others = opts.hosts.filter((h) => h !== opts.self);
    this.timing = opts.timing;
    this.generation = opts.generation ?? 0;
    this.capacity = opts.capacity ?? { memoryMB: 0, cpus: 0 };
    for (const h of this.others) {
      this.peers.set(h, { lastHeard: -Infinity, lastElection: -Infinity, lastSlaveHeartbeat: -Infinity, datastores: 0, lastRole: null, maintenance: false });
    }
  }

  status(): ElectionStatus {
    return {
      role: this.role,
      master: this.master,
      generation: this.generation,
      datastores: [...this.datastores],
      electionStartedAt: this.role === 'election' ? this.electionStartedAt : null,
    };
  }

  /** Peers' last-heard times and what they said, for the master's host view. */
  peerView(): ReadonlyMap<HostId, Readonly<Peer>> {
    return this.peers;
  }

  get myRank(): Rank {
    return { host: this.self, datastores: this.datastores.length, maintenance: this.maintenance };
  }

  /**
   * Maintenance mode of this host (from the cluster's maintenance file). A master entering it
   * hands over through an election in which it stands as a maintenance host.
   */
  setMaintenance(on: boolean, now: number): CoreAction[] {
    this.now = now;
    this.out = [];
    if (on === this.maintenance) return this.out;
    this.maintenance = on;
    this.log('info', on ? 'maintenance.entered' : 'maintenance.exited', `this host ${on ? 'entered' : 'left'} maintenance mode`, {});
    // Its slaves hear its election messages and elect too; it stands as a maintenance host.
    if (on && this.role === 'master') this.startElection('entering maintenance mode: handing the master role over');
    return this.out;
  }

  /** The isolation monitor declared this host isolated: stop being master or slave. */
  isolate(now: number, why: string): CoreAction[] {
    this.now = now;
    this.out = [];
    if (this.role === 'isolated' || this.role === 'uninitialized') return this.out;
    const was = this.role;
    this.role = 'isolated';
    this.master = null;
    this.log('warn', 'isolation.declared', `this host is isolated: ${why}`, { reason: why, was });
    this.emitRole();
    return this.out;
  }

  /** Isolation ended (agent traffic or a ping reply): rejoin through an election. */
  endIsolation(now: number, why: string): CoreAction[] {
    this.now = now;
    this.out = [];
    if (this.role === 'isolated') this.startElection(`isolation ended: ${why}`);
    return this.out;
  }

  step(ev: CoreEvent): CoreAction[] {
    this.now = ev.now;
    this.out = [];
    switch (ev.type) {
      case 'datastores':
        this.onDatastores(ev.accessible);
        break;
      case 'message':
        this.onMessage(ev.from, ev.msg);
        break;
      case 'tick':
        this.onTick();
        break;
      case 'shutdown':
        this.onShutdown();
        break;
    }
    return this.out;
  }

  // ---- events -------------------------------------------------------------------------------

  private onDatastores(accessible: string[]): void {
    const before = this.datastores;
    this.datastores = [...accessible].sort();
    if (before.join(',') !== this.datastores.join(',')) {
      this.log('info', 'datastores', `datastores accessible: ${this.datastores.length ? this.datastores.join(', ') : 'none'}`, {
        accessible: this.datastores,
        before,
      });
    }
    if (this.role === 'uninitialized') this.startElection('agent started and probed its datastores');
  }

  private onMessage(from: HostId, msg: Message): void {
    const peer = this.peers.get(from);
    if (!peer) return; // not a configured host (the runtime already filters these)
    peer.lastHeard = this.now;
    switch (msg.type) {
      case 'election':
        peer.lastElection = this.now;
        peer.datastores = msg.datastores;
        peer.maintenance = msg.maintenance;
        peer.lastRole = 'election';
        if (this.role === 'master' && this.maintenance && !msg.maintenance) {
          // A master in maintenance hands over as soon as a host that is not can take it.
          this.startElection(`${from} (not in maintenance) is available: handing the master role over`);
        } else if (this.role === 'master') {
          // A joining or re-electing host: tell it at once that a master exists.
          this.send(from, this.masterHeartbeat());
        } else if (this.role === 'slave' && from === this.master && msg.generation >= this.masterGeneration) {
          // Our master gave up its role (maintenance): elect now rather than after hostTimeout.
          // (An election message it sent before it became master carries an older generation.)
          this.startElection(`master ${from} started an election`);
        }
        break;
      case 'masterHeartbeat':
        peer.datastores = msg.datastores;
        peer.lastRole = 'master';
        if (msg.generation > this.generation && this.role !== 'master') this.generation = msg.generation;
        peer.maintenance = msg.maintenance;
        this.onMasterHeartbeat(from, msg.datastores, msg.generation, msg.maintenance);
        break;
      case 'slaveHeartbeat':
        peer.datastores = msg.datastores;
        peer.lastRole = 'slave';
        if (msg.master === this.self) peer.lastSlaveHeartbeat = this.now;
        this.capacities.set(from, { memoryMB: msg.memoryMB, cpus: msg.cpus });
        break;
      case 'abdicate':
        if (this.role === 'slave' && this.master === from && msg.to !== this.self) {
          this.log('info', 'master.changed', `master ${from} abdicated in favour of ${msg.to}; following ${msg.to}`, {
            oldMaster: from,
            master: msg.to,
          });
          this.becomeSlave(msg.to, false);
        } else if (this.role === 'slave' && this.master === from && msg.to === this.self) {
          // Our master says we won: we must have met it as a master ourselves; re-elect.
          this.startElection(`master ${from} abdicated in favour of this host`);
        }
        break;
    }
  }

  private onMasterHeartbeat(from: HostId, datastores: number, generation: number, maintenance: boolean): void {
    switch (this.role) {
      case 'uninitialized':
        return; // not ready: we have not probed our datastores yet
      case 'election':
      case 'isolated':
        this.log('info', 'election.joined', `joined running master ${from}`, {
          master: from,
          reason: 'a master heartbeat was heard; a running master is not displaced',
          masterDatastores: datastores,
          generation,
        });
        this.becomeSlave(from, true, generation);
        return;
      case 'slave':
        if (from === this.master) {
          this.masterLastHeard = this.now;
          this.masterGeneration = generation;
        }
        return; // another partition's master: our master resolves the merge
      case 'master': {
        const them: Rank = { host: from, datastores, maintenance };
        if (beats(them, this.myRank)) {
          this.log('warn', 'master.abdicated', `abdicating to master ${from}: ${reason(them, this.myRank)}`, {
            survivor: from,
            reason: reason(them, this.myRank),
            slaves: this.currentSlaves(),
          });
          for (const s of this.currentSlaves()) if (s !== from) this.send(s, { type: 'abdicate', to: from });
          this.becomeSlave(from, true, generation);
        } else {
          // We survive: make sure the other master hears us promptly so it abdicates.
          this.send(from, this.masterHeartbeat());
        }
        return;
      }
    }
  }

  private onTick(): void {
    const hb = this.timing.heartbeatIntervalMs;
    const due = this.now - this.lastSent >= hb;
    switch (this.role) {
      case 'uninitialized':
        return;
      case 'election':
      case 'isolated': {
        if (due) this.broadcast(this.electionMsg());
        if (this.role === 'election' && this.now - this.electionStartedAt >= this.timing.electionWindowMs) this.decide();
        return;
      }
      case 'slave': {
        if (this.now - this.masterLastHeard >= this.timing.hostTimeoutMs) {
          const lost = this.master;
          const silentMs = Math.round(this.now - this.masterLastHeard);
          this.log('warn', 'master.lost', `no heartbeat from master ${lost} for ${silentMs} ms`, {
            master: lost,
            silentMs,
            hostTimeoutMs: this.timing.hostTimeoutMs,
          });
          this.startElection(`master ${lost} silent for hostTimeout`);
          return;
        }
        if (due && this.master) {
          this.lastSent = this.now;
          this.send(this.master, this.slaveHeartbeat(this.master));
        }
        return;
      }
      case 'master':
        if (due) this.broadcast(this.masterHeartbeat());
        return;
    }
  }

  private onShutdown(): void {
    if (this.role === 'master') {
      this.log('info', 'master.stopped', 'agent stopping: giving up the master role', { slaves: this.currentSlaves() });
    }
    this.role = 'uninitialized';
    this.master = null;
    this.emitRole();
  }

  // ---- transitions --------------------------------------------------------------------------

  private decide(): void {
    // Candidates: hosts whose election messages we heard within the last few intervals (alive and
    // still electing). A host that went quiet drops out, so a dead favourite is not waited for.
    const alive = 3 * this.timing.heartbeatIntervalMs;
    const candidates: Rank[] = [this.myRank];
    for (const [host, p] of this.peers) {
      if (this.now - p.lastElection <= alive) {
        candidates.push({ host, datastores: p.datastores, maintenance: p.maintenance });
      }
    }
    const winner = best(candidates)!;
    if (winner.host === this.self) {
      const runnerUp = best(candidates.filter((c) => c.host !== this.self));
      this.generation += 1;
      this.role = 'master';
      this.master = this.self;
      this.log('info', 'election.won', `won the election with ${winner.datastores} datastores among ${candidates.length} candidates`, {
        candidates: candidates.map((c) => `${c.host}:${c.datastores}`),
        reason: runnerUp ? reason(winner, runnerUp) : 'no other candidate heard',
        generation: this.generation,
        durationMs: Math.round(this.now - this.electionStartedAt),
      });
      this.emitRole();
      this.broadcast(this.masterHeartbeat());
    } else if (this.electionOutcomeLogged !== winner.host) {
      this.electionOutcomeLogged = winner.host;
      this.log('info', 'election.lost', `lost the election to ${winner.host}; waiting for its master heartbeat`, {
        winner: winner.host,
        reason: reason(winner, this.myRank),
        candidates: candidates.map((c) => `${c.host}:${c.datastores}`),
      });
    }
  }

  private startElection(why: string): void {
    const wasMaster = this.role === 'master';
    this.role = 'election';
    this.master = null;
    this.electionStartedAt = this.now;
    this.electionOutcomeLogged = null;
    this.log('info', 'election.started', `election started: ${why}`, {
      reason: why,
      datastores: this.datastores.length,
      windowMs: this.timing.electionWindowMs,
      wasMaster,
    });
    this.emitRole();
    this.broadcast(this.electionMsg());
  }

  private becomeSlave(master: HostId, announce: boolean, generation = 0): void {
    this.role = 'slave';
    this.master = master;
    this.masterGeneration = generation;
    this.masterLastHeard = this.now;
    this.emitRole();
    if (announce) {
      this.lastSent = this.now;
      this.send(master, this.slaveHeartbeat(master));
    }
  }

  // ---- helpers ------------------------------------------------------------------------------

  /** Hosts that sent us a slave heartbeat naming us within hostTimeout. */
  currentSlaves(): HostId[] {
    const out: HostId[] = [];
    for (const [h, p] of this.peers) if (this.now - p.lastSlaveHeartbeat < this.timing.hostTimeoutMs) out.push(h);
    return out;
  }

  private electionMsg(): Message {
    return { type: 'election', datastores: this.datastores.length, maintenance: this.maintenance, generation: this.generation };
  }

  private slaveHeartbeat(master: HostId): Message {
    return { type: 'slaveHeartbeat', datastores: this.datastores.length, master, memoryMB: this.capacity.memoryMB, cpus: this.capacity.cpus };
  }

  /** Capacity a slave last reported (memoryMB, cpus). */
  peerCapacity(host: HostId): { memoryMB: number; cpus: number } | null {
    return this.capacities.get(host) ?? null;
  }

  private masterHeartbeat(): Message {
    return { type: 'masterHeartbeat', datastores: this.datastores.length, maintenance: this.maintenance, generation: this.generation };
  }

  private broadcast(msg: Message): void {
    this.lastSent = this.now;
    for (const h of this.others) this.send(h, msg);
  }

  private send(to: HostId, msg: Message): void {
    this.out.push({ type: 'send', to, msg });
  }

  private emitRole(): void {
    this.out.push({ type: 'role', role: this.role, master: this.master, generation: this.generation });
  }

  private log(level: LogLevel, event: string, message: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, message, fields });
  }
}
