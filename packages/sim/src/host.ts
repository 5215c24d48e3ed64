/**
 * A simulated machine: its clock, its power, its local disk (the agent's state.json with the
 * master generation and protocol incarnation, the VM daemon's list of VMs), its hypervisor (one
 * VM daemon life per power-on) and its agent (one process life per start). Power loss kills
 * everything at once; an agent crash kills only the agent, and its VMs keep running under the
 * daemon until a restarted agent re-adopts them.
 */
import type { HostId } from '@vigil/core';
import { chooseIncarnation } from '@vigil/protocol';
import { HostClock, ProcessClock } from './clock.js';
import type { Process } from './io.js';
import type { SimHypervisor } from './hypervisor.js';
import type { SimAgent } from './agent.js';

export interface SimHostSpec {
  id: HostId;
  /** Datastores this host mounts. */
  datastores: string[];
  /** How far the host's wall clock is off, ms (only the protocol incarnation sees it). */
  clockOffsetMs?: number;
  /** Clock rate error: 0.001 runs 1000 ppm fast. */
  clockDrift?: number;
  /** Capacity offered to VMs. Default 65536 MB, 64 vCPUs. */
  capacity?: { memoryMB: number; cpus: number };
}

/** What a host needs from its world. */
export interface HostServices {
  /** Global virtual time now. */
  readonly now: number;
  newProcess(host: SimHost, name: string, clock: ProcessClock): Process;
  newHypervisor(host: SimHost, proc: Process): SimHypervisor;
  newAgent(host: SimHost, proc: Process, hypervisor: SimHypervisor): SimAgent;
  /** The host lost power: its storage calls in flight never land. */
  powerLost(host: SimHost): void;
  record(host: HostId, event: string, message: string): void;
}

export class SimHost {
  readonly clock: HostClock;
  powered = false;
  hypervisor: SimHypervisor | null = null;
  agent: SimAgent | null = null;
  /** state.json: the highest master generation this host has seen, and its last protocol incarnation. */
  generation = 0;
  incarnation = 0;
  /** vmd-vms.json after a power cut: VMs the next daemon reports killed. */
  private orphans: string[] = [];

  constructor(
    readonly spec: SimHostSpec,
    private readonly services: HostServices,
  ) {
    this.clock = new HostClock(spec.clockOffsetMs ?? 0, spec.clockDrift ?? 0);
  }

  get id(): HostId {
    return this.spec.id;
  }

  get capacity(): { memoryMB: number; cpus: number } {
    return this.spec.capacity ?? { memoryMB: 65536, cpus: 64 };
  }

  /** Power on now: the VM daemon starts, then the agent. */
  powerOn(): void {
    if (this.powered) return;
    this.powered = true;
    this.services.record(this.id, 'power.on', `${this.id} powered on`);
    const proc = this.services.newProcess(this, 'vmd', new ProcessClock(this.clock, this.services.now));
    this.hypervisor = this.services.newHypervisor(this, proc);
    this.hypervisor.start(this.orphans);
    this.orphans = [];
    this.startAgent();
  }

  /** Power cut: the agent, the VM daemon and every VM die at once; nothing is released. */
  powerOff(): void {
    if (!this.powered) return;
    this.powered = false;
    this.services.powerLost(this);
    this.agent?.crash();
    this.agent = null;
    this.orphans = this.hypervisor?.kill() ?? [];
    this.hypervisor = null;
    this.services.record(this.id, 'power.off', `${this.id} lost power (its agent, VM daemon and ${this.orphans.length} VM(s) are gone)`);
  }

  startAgent(): void {
    if (!this.powered || this.agent || !this.hypervisor) return;
    // As the agent does: max(wall clock, the last one + 1), persisted.
    this.incarnation = chooseIncarnation(this.clock.wall(this.services.now), this.incarnation);
    const proc = this.services.newProcess(this, 'agent', new ProcessClock(this.clock, this.services.now));
    this.agent = this.services.newAgent(this, proc, this.hypervisor);
    this.services.record(this.id, 'agent.started', `agent of ${this.id} started (generation ${this.generation})`);
    this.agent.start();
  }

  /** The agent process dies (kill -9, a crash); its VMs keep running. */
  crashAgent(): void {
    if (!this.agent) return;
    this.agent.crash();
    this.agent = null;
    this.services.record(this.id, 'agent.crashed', `agent of ${this.id} crashed (its VMs keep running under the VM daemon)`);
  }
}
