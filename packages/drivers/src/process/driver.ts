/**
 * The process driver: a VM is a long-running process described by a JSON file on a datastore.
 * Each VM runs under its own supervisor (supervisor.ts), which holds the VM's lease and
 * outlives the agent; the driver finds supervisors through their state files, so a restarted
 * agent re-adopts the VMs that kept running.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { vmFileName, vmIdFromFileName } from '@vigil/datastore';
import { hostCapacity } from '../capacity.js';
import type { Driver, DriverEvent, HostCapacity, StopReason, VmRuntime, VmSpec } from '../types.js';
import { readProcessVm, specOf } from './spec.js';
import { isSupervisorOf, liveSupervisors, readState, type SupervisorState } from './state.js';
import type { SupervisorArgs } from './supervisor.js';

const SUPERVISOR_MAIN = fileURLToPath(new URL('./supervisor-main.js', import.meta.url));

export interface ProcessDriverOptions {
  host: string;
  cluster: string;
  /** Datastore name -> path on this host. */
  datastores: Record<string, string>;
  /** Agent state directory; supervisors keep `vms/<vm>.json|.log` there. */
  stateDir: string;
  timing: { storageHeartbeatIntervalMs: number; selfFenceDeadlineMs: number; storageCallTimeoutMs: number; heartbeatIntervalMs: number };
  capacity?: { memoryMB: number; cpus: number };
  /** Default graceful-stop timeout. */
  shutdownTimeoutMs: number;
}

interface Tracked {
  vm: string;
  supervisorPid: number;
  state: SupervisorState | null;
  /** Why we asked it to stop, if we did. */
  requested: boolean;
}

export class ProcessDriver implements Driver {
  readonly type = 'process';
  private readonly dir: string;
  private readonly tracked = new Map<string, Tracked>();
  private handler: (ev: DriverEvent) => void = () => {};
  private timer: NodeJS.Timeout | null = null;
  private readonly pending: DriverEvent[] = [];

  constructor(private readonly opts: ProcessDriverOptions) {
    this.dir = join(opts.stateDir, 'vms');
    mkdirSync(this.dir, { recursive: true });
    this.adopt();
    const pollMs = Math.max(20, Math.floor(opts.timing.heartbeatIntervalMs / 2));
    this.timer = setInterval(() => void this.poll(), pollMs);
    this.timer.unref();
  }

  private stateFile(vm: string): string {
    return join(this.dir, `${vmFileName(vm)}.json`);
  }

  /** Find supervisors left by an earlier agent run: alive ones are adopted, dead ones reported. */
  private adopt(): void {
    for (const name of readdirSync(this.dir)) {
      if (!name.endsWith('.json')) continue;
      const vm = vmIdFromFileName(name.slice(0, -5));
      if (!vm) continue;
      let st: SupervisorState | null = null;
      try {
        st = JSON.parse(readFileSync(join(this.dir, name), 'utf8')) as SupervisorState;
      } catch {
        continue;
      }
      if (!st || typeof st.supervisorPid !== 'number') continue;
      if (isSupervisorOf(st.supervisorPid, vm)) {
        this.tracked.set(vm, { vm, supervisorPid: st.supervisorPid, state: st, requested: false });
      } else if (st.phase === 'running' || st.phase === 'starting') {
        // It was running when the agent went away, and is gone now.
        this.pending.push({ type: 'stopped', vm, reason: 'killed', detail: 'VM and its supervisor were gone when the agent restarted' });
      }
    }
  }

  async loadSpec(vmId: string, path: string): Promise<VmSpec> {
    return specOf(vmId, path, await readProcessVm(path));
  }

  async powerOn(spec: VmSpec, takeover = ''): Promise<void> {
    const existing = this.tracked.get(spec.id);
    if (existing && isSupervisorOf(existing.supervisorPid, spec.id)) return; // already running here
    // A supervisor of this VM for this host that we do not track (its state file was lost):
    // never start a second one, which would take over the first one's live lease.
    const untracked = liveSupervisors(spec.id, this.opts.host).filter((p) => p !== existing?.supervisorPid);
    if (untracked.length > 0) {
      const err = new Error(`${spec.id} already runs here under supervisor ${untracked.join(', ')} (not tracked: its state file is gone)`);
      (err as Error & { code?: string }).code = 'ELEASEHELD';
      throw err;
    }
    const dsPath = this.opts.datastores[spec.datastore];
    if (!dsPath) throw new Error(`datastore ${spec.datastore} is not mounted on ${this.opts.host}`);
    const stateFile = this.stateFile(spec.id);
    const args: SupervisorArgs = {
      vm: spec.id,
      host: this.opts.host,
      cluster: this.opts.cluster,
      datastorePath: dsPath,
      specPath: spec.path,
      stateFile,
      logFile: join(this.dir, `${vmFileName(spec.id)}.log`),
      storageHeartbeatIntervalMs: this.opts.timing.storageHeartbeatIntervalMs,
      selfFenceDeadlineMs: this.opts.timing.selfFenceDeadlineMs,
      storageCallTimeoutMs: this.opts.timing.storageCallTimeoutMs,
      shutdownTimeoutMs: this.opts.shutdownTimeoutMs,
      // Our own earlier record: no live supervisor of this VM exists here (checked above).
      takeoverOwn: true,
      takeover,
    };
    const log = openSync(join(this.dir, `${vmFileName(spec.id)}.supervisor.log`), 'a');
    const child = spawn(process.execPath, [SUPERVISOR_MAIN, Buffer.from(spec.id).toString('base64url'), Buffer.from(JSON.stringify(args)).toString('base64url')], {
      detached: true,
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    child.unref();
    const pid = child.pid;
    if (!pid) throw new Error(`could not start the supervisor of ${spec.id}`);
    const t: Tracked = { vm: spec.id, supervisorPid: pid, state: null, requested: false };
    this.tracked.set(spec.id, t);
    // Wait until the VM runs or the supervisor gives up (lease held, bad command...).
    const deadline = Date.now() + 3 * this.opts.timing.storageCallTimeoutMs + 5000;
    for (;;) {
      const st = await readState(stateFile);
      if (st && st.supervisorPid === pid) {
        t.state = st;
        if (st.phase === 'running') return;
        if (st.phase !== 'starting') {
          this.tracked.delete(spec.id);
          const err = new Error(st.detail ?? `supervisor ended in phase ${st.phase}`);
          (err as Error & { code?: string }).code = st.phase === 'leaseHeld' ? 'ELEASEHELD' : 'EPOWERON';
          throw err;
        }
      }
      if (!isSupervisorOf(pid, spec.id) && Date.now() > deadline - 4000) {
        this.tracked.delete(spec.id);
        throw new Error(`the supervisor of ${spec.id} exited before the VM started`);
      }
      if (Date.now() > deadline) {
        process.kill(pid, 'SIGUSR2');
        this.tracked.delete(spec.id);
        throw new Error(`${spec.id} did not start in time`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private async stop(vmId: string, signal: 'SIGTERM' | 'SIGUSR2', timeoutMs: number): Promise<void> {
    const t = this.tracked.get(vmId);
    if (!t || !isSupervisorOf(t.supervisorPid, vmId)) return;
    t.requested = true;
    process.kill(t.supervisorPid, signal);
    const deadline = Date.now() + timeoutMs + 5000;
    while (isSupervisorOf(t.supervisorPid, vmId) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (isSupervisorOf(t.supervisorPid, vmId)) process.kill(-t.supervisorPid, 'SIGKILL');
    await this.poll();
  }

  powerOff(vmId: string): Promise<void> {
    return this.stop(vmId, 'SIGUSR2', 0);
  }

  shutdown(vmId: string, timeoutMs: number): Promise<void> {
    return this.stop(vmId, 'SIGTERM', timeoutMs);
  }

  list(): VmRuntime[] {
    return [...this.tracked.values()]
      .filter((t) => t.state?.phase === 'running' || t.state?.phase === 'starting')
      .map((t) => ({ id: t.vm, power: 'on' as const, supervisorPid: t.supervisorPid, ...(t.state?.vmPid ? { pid: t.state.vmPid } : {}) }))
      .sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  onEvent(handler: (ev: DriverEvent) => void): void {
    this.handler = handler;
    for (const ev of this.pending.splice(0)) handler(ev);
  }

  capacity(): HostCapacity {
    return hostCapacity(this.opts.capacity);
  }

  /** Notice supervisors that ended, and why. */
  private async poll(): Promise<void> {
    for (const t of [...this.tracked.values()]) {
      if (isSupervisorOf(t.supervisorPid, t.vm)) {
        if (t.state?.phase !== 'running') {
          const st = await readState(this.stateFile(t.vm));
          if (st && st.supervisorPid === t.supervisorPid) t.state = st;
        }
        continue;
      }
      if (t.state?.phase !== 'running') continue; // still starting: powerOn() handles it
      this.tracked.delete(t.vm);
      const st = await readState(this.stateFile(t.vm));
      let reason: StopReason = 'killed';
      let detail = 'the VM and its supervisor disappeared';
      if (st && st.supervisorPid === t.supervisorPid) {
        if (st.phase === 'fenced') reason = 'fenced';
        else if (st.phase === 'stopped') reason = 'requested';
        else if (st.phase === 'exited') reason = st.signal ? 'killed' : 'exited';
        detail = st.detail ?? detail;
      }
      if (t.requested && reason !== 'fenced') reason = 'requested';
      this.handler({ type: 'stopped', vm: t.vm, reason, detail });
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}

