/**
 * The invariants of SPEC §5, checked while a world runs:
 *   1. no VM ever runs on two hosts: checked each time a VM process comes up on a host;
 *   2. at most one holder of each protectedlist: checked each time a host acquires one (a holder
 *      is a live agent whose keeper still considers its lease valid, on the real datastore);
 *   3. after the faults, within a bound derived from the timing: one master per connected
 *      partition, every host connected to it, every protected VM running when capacity allows
 *      (`converged()`, used by `expect` lines and by random worlds after their last fault);
 *   4. a VM stopped through Vigil or unprotected is never restarted: checked when a VM comes up
 *      (ground truth) and when a master decides a restart (`vm.restarting`).
 * The first violation stops the run.
 */
import type { CoreAction, CoreEvent, HostId, Timing } from '@vigil/core';
import type { World, WorldObserver } from './world.js';
import type { Operator } from './operator.js';
import type { SimVmConfig } from './storage.js';
import type { Expectation } from './scenario.js';

export type InvariantId = 1 | 2 | 3 | 4 | 'setup' | 'expect' | 'core' | 'sim';

export const INVARIANT_TITLES: Record<string, string> = {
  1: 'no VM runs on two hosts (SPEC §5.1)',
  2: 'at most one holder of each protectedlist (SPEC §5.2)',
  3: 'convergence after the faults (SPEC §5.3)',
  4: 'a VM stopped through Vigil or unprotected is never restarted (SPEC §5.4)',
  setup: 'the cluster forms and starts its VMs',
  expect: 'a scenario expectation',
  core: 'the core never throws on its inputs',
  sim: 'the simulated runtime hit an unexpected error',
};

export interface Violation {
  invariant: InvariantId;
  /** Scheduler step and global time at which it was found. */
  step: number;
  at: number;
  message: string;
  /** VMs, datastores or hosts it is about (to pick timeline lines). */
  subjects: string[];
}

export class InvariantChecker implements WorldObserver {
  readonly violations: Violation[] = [];
  /** Hosts on which each VM's process exists. */
  private readonly up = new Map<string, Set<HostId>>();
  /** VMs the master gave up on (SPEC §3.5's attempts, or a crash loop), with the reason. */
  readonly gaveUp = new Map<string, string>();
  restarts = 0;
  /** Global time scenario times count from (for messages). */
  origin = 0;
  /** When a master last decided to restart each VM, and when each VM last came up. */
  private readonly decidedAt = new Map<string, number>();
  private readonly upAt = new Map<string, number>();

  constructor(
    private readonly world: World,
    private readonly operator: Operator,
    private readonly configs: Map<string, SimVmConfig>,
  ) {}

  get ok(): boolean {
    return this.violations.length === 0;
  }

  violate(invariant: InvariantId, message: string, subjects: string[]): void {
    if (this.violations.length > 0) return;
    this.violations.push({ invariant, step: this.world.sched.steps, at: this.world.now, message, subjects });
    this.world.record(null, 'VIOLATION', `${INVARIANT_TITLES[String(invariant)]}: ${message}`);
    this.world.sched.halt();
  }

  // ---- observer ---------------------------------------------------------------------------------

  vmUp(host: HostId, vm: string): void {
    let set = this.up.get(vm);
    if (!set) this.up.set(vm, (set = new Set()));
    const others = [...set].filter((h) => h !== host);
    set.add(host);
    if (others.length > 0) {
      this.violate(1, `${vm} started on ${host} while it still runs on ${others.join(', ')}`, [vm, host, ...others]);
      return;
    }
    const i = this.operator.intent(vm);
    const lastUp = this.upAt.get(vm) ?? -Infinity;
    this.upAt.set(vm, this.world.now);
    if (this.world.now <= i.startOpenUntil) return; // the operator's own `vm start` is landing
    const cfg = this.configs.get(vm);
    // A restart decided while the VM was still protected, landing after an unprotect: the VM was
    // not restarted *as* an unprotected VM (a stop, unlike an unprotect, waits for it and stops it).
    const decided = this.decidedAt.get(vm);
    const inFlight = decided !== undefined && decided > lastUp && i.confirmedAt !== null && decided <= i.confirmedAt;
    if (i.desired === 'never') this.violate(4, `${vm} was never started through Vigil, yet it started on ${host}`, [vm, host]);
    else if (i.desired === 'stopped' && i.confirmedAt !== null) this.violate(4, `${vm} was stopped through Vigil (confirmed at ${this.fmt(i.confirmedAt)}), yet it started again on ${host}`, [vm, host]);
    else if (i.desired === 'unprotected' && i.confirmedAt !== null && !inFlight) this.violate(4, `${vm} was unprotected (confirmed at ${this.fmt(i.confirmedAt)}), yet it was restarted on ${host}`, [vm, host]);
    else if (cfg?.priority === 'disabled') this.violate(4, `${vm} has restart priority disabled, yet it was restarted on ${host}`, [vm, host]);
  }

  private fmt(t: number): string {
    return `${((t - this.origin) / 1000).toFixed(3)}s`;
  }

  /** Vigil confirmed an operator command: a VM confirmed stopped runs nowhere. */
  confirmed(op: string, vm: string): void {
    if (op !== 'stop') return;
    const where = [...(this.up.get(vm) ?? [])];
    if (where.length > 0) this.violate(4, `${vm} was confirmed stopped through Vigil, yet it runs on ${where.join(', ')}`, [vm, ...where]);
  }

  vmDown(host: HostId, vm: string): void {
    this.up.get(vm)?.delete(host);
  }

  leasesChanged(_host: HostId): void {
    const holders = new Map<string, HostId[]>();
    for (const id of this.world.hostIds) {
      const a = this.world.agent(id);
      if (!a) continue;
      for (const [ds, store] of a.storage.validProtectedlists()) {
        if (store !== this.world.storage.datastores.get(ds)) continue; // a lease on whatever was mounted in its place
        const l = holders.get(ds);
        if (l) l.push(id);
        else holders.set(ds, [id]);
      }
    }
    for (const [ds, hosts] of holders) {
      if (hosts.length > 1) this.violate(2, `the protectedlist of ${ds} is held by ${hosts.join(' and ')} at once`, [ds, ...hosts]);
    }
  }

  stepped(host: HostId, ev: CoreEvent, actions: CoreAction[]): void {
    if (ev.type === 'protectedlistAcquired') this.coreOwners(host, ev.datastore);
    for (const a of actions) {
      if (a.type !== 'log') continue;
      if (a.event === 'vm.restarted') this.restarts += 1;
      if (a.event === 'vm.failed') this.gaveUp.set(String(a.fields.vm), a.message);
      if (a.event !== 'vm.restarting') continue;
      const vm = String(a.fields.vm);
      this.decidedAt.set(vm, this.world.now);
      const i = this.operator.intent(vm);
      const cfg = this.configs.get(vm);
      if (i.desired === 'never') this.violate(4, `master ${host} decided to restart ${vm}, which was never started through Vigil`, [vm, host]);
      else if (i.desired === 'stopped' && i.confirmedAt !== null) this.violate(4, `master ${host} decided to restart ${vm}, stopped through Vigil at ${this.fmt(i.confirmedAt)}`, [vm, host]);
      else if (i.desired === 'unprotected' && i.confirmedAt !== null) this.violate(4, `master ${host} decided to restart ${vm}, unprotected at ${this.fmt(i.confirmedAt)}`, [vm, host]);
      else if (cfg?.priority === 'disabled') this.violate(4, `master ${host} decided to restart ${vm}, whose restart priority is disabled`, [vm, host]);
    }
  }

  /**
   * The core's side of SPEC §5.2: a master that now believes it holds a datastore's protectedlist
   * must hold its lease, and no other master may believe the same.
   */
  private coreOwners(host: HostId, ds: string): void {
    const a = this.world.agent(host);
    if (!a || a.role !== 'master' || !a.core.status().owned.includes(ds)) return;
    if (!a.storage.validProtectedlists().has(ds)) {
      this.violate(2, `master ${host} believes it holds the protectedlist of ${ds}, but its lease is not held (lost, or past its self-fence deadline)`, [ds, host]);
      return;
    }
    const others = this.world.hostIds.filter((h) => h !== host && this.world.agent(h)?.role === 'master' && this.world.core(h)!.status().owned.includes(ds));
    if (others.length > 0) this.violate(2, `masters ${[host, ...others].join(' and ')} both believe they hold the protectedlist of ${ds}`, [ds, host, ...others]);
  }

  coreError(host: HostId, ev: CoreEvent, err: unknown): void {
    this.violate('core', `HostCore of ${host} threw on a ${ev.type} event: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`, [host]);
  }

  unhandled(host: HostId, proc: string, err: unknown): void {
    this.violate('sim', `unhandled error in the ${proc} of ${host}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`, [host]);
  }

  // ---- convergence (SPEC §5.3) and expectations ---------------------------------------------------

  private live(): HostId[] {
    return this.world.hostIds.filter((h) => this.world.isUp(h));
  }

  /** Live hosts grouped by who can talk to whom (both ways); hosts off the network are left out. */
  partitions(): HostId[][] {
    const live = this.live().filter((h) => !this.world.network.isOffline(h));
    const seen = new Set<HostId>();
    const out: HostId[][] = [];
    for (const h of live) {
      if (seen.has(h)) continue;
      const group: HostId[] = [];
      const todo = [h];
      seen.add(h);
      while (todo.length > 0) {
        const x = todo.pop()!;
        group.push(x);
        for (const y of live) if (!seen.has(y) && this.world.network.connected(x, y)) (seen.add(y), todo.push(y));
      }
      out.push(group.sort());
    }
    return out;
  }

  /** One master per connected partition, every other live host its slave. */
  oneMaster(): string[] {
    const problems: string[] = [];
    for (const g of this.partitions()) {
      const masters = g.filter((h) => this.world.role(h) === 'master');
      if (masters.length !== 1) {
        problems.push(`partition ${g.join(',')} has ${masters.length === 0 ? 'no master' : `masters ${masters.join(', ')}`} (roles: ${g.map((h) => `${h}=${this.world.role(h)}`).join(' ')})`);
        continue;
      }
      const m = masters[0]!;
      for (const h of g) {
        if (h !== m && (this.world.role(h) !== 'slave' || this.world.masterOf(h) !== m)) problems.push(`${h} is ${this.world.role(h)}${this.world.masterOf(h) ? ` of ${this.world.masterOf(h)}` : ''}, not a slave of ${m}`);
      }
    }
    return problems;
  }

  /** Every live host in one partition, and the master sees every other one connected. */
  allConnected(): string[] {
    const groups = this.partitions();
    const live = this.live();
    if (groups.length !== 1 || groups[0]!.length !== live.length) return [`the live hosts are not one partition: ${groups.map((g) => g.join(',')).join(' / ')}`];
    const problems = this.oneMaster();
    if (problems.length > 0) return problems;
    const m = groups[0]!.find((h) => this.world.role(h) === 'master')!;
    const view = this.world.core(m)!.hostsView();
    for (const v of view) {
      if (v.host === m || !live.includes(v.host)) continue;
      if (v.state !== 'connected') problems.push(`master ${m} sees ${v.host} as ${v.state}`);
    }
    return problems;
  }

  /**
   * VMs that must run now: protected and confirmed, not disabled, not given up, and on a
   * datastore some master mounts (a master that does not mount a datastore cannot own it, and a
   * running master is never displaced by a host that mounts more: a known limitation, noted).
   */
  private required(notes?: string[]): SimVmConfig[] {
    const failed = new Set<string>();
    const mounted = new Set<string>();
    const masters: HostId[] = [];
    for (const h of this.live()) {
      if (this.world.role(h) !== 'master') continue;
      masters.push(h);
      for (const d of this.world.hostInfo[h]!.datastores) mounted.add(d);
      for (const v of this.world.core(h)!.vmsView()) if (v.state === 'failed') failed.add(v.id);
    }
    const out: SimVmConfig[] = [];
    const unowned = new Set<string>();
    for (const vm of this.operator.protectedVms()) {
      const cfg = this.configs.get(vm);
      if (!cfg || cfg.priority === 'disabled' || failed.has(vm)) continue;
      const ds = vm.slice(0, vm.indexOf(':'));
      if (masters.length > 0 && !mounted.has(ds)) {
        unowned.add(ds);
        continue;
      }
      out.push(cfg);
    }
    for (const ds of unowned) notes?.push(`not required to run: the VMs of ${ds}, which no master mounts (${masters.join(', ')}; known limitation: a running master is not displaced by a host that mounts more datastores)`);
    return out;
  }

  /** First-fit decreasing: can the live hosts hold every required VM at all? */
  private capacityAllows(vms: SimVmConfig[]): boolean {
    const hosts = this.live().map((h) => ({ id: h, free: { ...this.world.host(h).capacity }, ds: this.world.hostInfo[h]!.datastores }));
    for (const v of [...vms].sort((a, b) => b.memoryMB - a.memoryMB || b.cpus - a.cpus || (a.id < b.id ? -1 : 1))) {
      const ds = v.id.slice(0, v.id.indexOf(':'));
      let best: (typeof hosts)[number] | null = null;
      for (const h of hosts) if (h.ds.includes(ds) && h.free.memoryMB >= v.memoryMB && h.free.cpus >= v.cpus && (!best || h.free.memoryMB > best.free.memoryMB)) best = h;
      if (!best) return false;
      best.free.memoryMB -= v.memoryMB;
      best.free.cpus -= v.cpus;
    }
    return true;
  }

  /** Every protected VM runs (once) when capacity allows; no VM stopped through Vigil runs. */
  protectedRunning(notes?: string[]): string[] {
    const problems: string[] = [];
    const running = this.world.runningVms();
    const required = this.required(notes);
    if (this.capacityAllows(required)) {
      for (const v of required) {
        const where = running.get(v.id) ?? [];
        if (where.length === 0) problems.push(`${v.id} is protected but runs nowhere`);
      }
    } else notes?.push(`capacity of the live hosts does not allow every protected VM: not required to run`);
    for (const [vm, i] of this.operator.intents) {
      if (i.desired === 'stopped' && i.confirmedAt !== null && (running.get(vm)?.length ?? 0) > 0) problems.push(`${vm} was stopped through Vigil but runs on ${running.get(vm)!.join(', ')}`);
    }
    return problems;
  }

  converged(notes?: string[]): string[] {
    return [...this.allConnected(), ...this.protectedRunning(notes)];
  }

  /** Why an expectation does not hold (empty: it holds). */
  evaluate(e: Expectation): string[] {
    switch (e.kind) {
      case 'one-master':
        return this.oneMaster();
      case 'all-connected':
        return this.allConnected();
      case 'all-protected-running':
        return this.protectedRunning();
      case 'converged':
        return this.converged();
      case 'master':
        return this.world.role(e.host) === 'master' ? [] : [`${e.host} is ${this.world.role(e.host)}, not master`];
      case 'role':
        return this.world.role(e.host) === e.role ? [] : [`${e.host} is ${this.world.role(e.host)}, not ${e.role}`];
      case 'running': {
        const where = this.world.vmHosts(e.vm);
        if (where.length === 0) return [`${e.vm} runs nowhere`];
        if (e.host && !where.includes(e.host)) return [`${e.vm} runs on ${where.join(', ')}, not on ${e.host}`];
        return [];
      }
      case 'not-running': {
        const where = this.world.vmHosts(e.vm);
        return where.length === 0 ? [] : [`${e.vm} runs on ${where.join(', ')}`];
      }
      case 'datastores': {
        const core = this.world.core(e.host);
        if (!core) return [`${e.host} runs no agent`];
        const have = core.status().datastores;
        const want = [...e.datastores].sort();
        return have.join(',') === want.join(',') ? [] : [`${e.host} accesses ${have.length ? have.join(', ') : 'no datastore'}, not ${want.length ? want.join(', ') : 'none'}`];
      }
      case 'owner': {
        const owners = this.live().filter((h) => this.world.agent(h)!.storage.validProtectedlists().has(e.ds));
        const want = e.host === null ? [] : [e.host];
        return owners.join(',') === want.join(',') ? [] : [`the protectedlist of ${e.ds} is held by ${owners.length ? owners.join(', ') : 'nobody'}, not ${e.host ?? 'nobody'}`];
      }
    }
  }
}

/** Time bounds for SPEC §5.3, derived from the timing profile (ms after the last fault). */
export function convergenceBounds(t: Timing, maxPowerOnMs: number): { rolesMs: number; vmsMs: number } {
  const rolesMs = 2 * (t.electionWindowMs + t.hostTimeoutMs) + t.slaveIsolationMs + 10 * t.heartbeatIntervalMs + t.datastoreProbeIntervalMs + t.rescanIntervalMs;
  const powerOnTimeoutMs = 3 * t.storageCallTimeoutMs + 10_000;
  const retry = Math.max(0, ...t.restartRetryDelaysMs);
  const vmsMs = rolesMs + 3 * t.leaseTimeoutMs + t.deadMs + 2 * t.rescanIntervalMs + powerOnTimeoutMs + maxPowerOnMs + 10 * t.storageHeartbeatIntervalMs + retry;
  return { rolesMs, vmsMs };
}
