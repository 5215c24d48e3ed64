/**
 * The VM half of the simulated agent: VmRuntime (packages/agent/src/vm-runtime.ts) and the
 * process driver's client side, talking to this host's simulated hypervisor. It performs the
 * core's power actions and the isolation response, reports what the hypervisor runs and every
 * stop, and on the master reads the VM catalog and samples VM leases. It decides nothing.
 */
import { vmDatastore, type CatalogVm, type CoreAction, type CoreEvent, type HostId, type IsolationResponse, type Timing } from '@vigil/core';
import { all, attempt, describe, io, wait, type Proc, type Process } from './io.js';
import { VmdError, type HypervisorClient, type HypervisorEvent, type SimHypervisor } from './hypervisor.js';
import { snapshotOf } from './lease.js';
import { enoent, type SimVmConfig } from './storage.js';
import type { AgentHostInfo } from './agent-storage.js';

export interface AgentVmsEnv {
  host: HostId;
  hosts: Record<HostId, AgentHostInfo>;
  timing: Timing;
  proc: Process;
  feed: (ev: CoreEvent) => void;
  log: (level: 'info' | 'warn' | 'error', event: string, message: string) => void;
  hypervisor: SimHypervisor;
  /** The datastores this host could read and write at the last probe. */
  accessible: () => string[];
}

export class AgentVms implements HypervisorClient {
  /** The driver's view of the daemon's VMs (its `list()`). */
  private readonly view = new Set<string>();
  private readonly responses = new Map<string, IsolationResponse | null>();
  private readonly loadingResponses = new Set<string>();
  private readonly badFiles = new Map<string, string>();
  private lastLocal = '';

  constructor(private readonly env: AgentVmsEnv) {}

  private get t(): number {
    return this.env.timing.storageCallTimeoutMs;
  }

  private now(): number {
    return this.env.proc.now();
  }

  start(): void {
    for (const vm of this.env.hypervisor.list()) this.view.add(vm);
    this.env.hypervisor.attach(this);
    this.reportLocal(true);
  }

  stop(): void {
    this.env.hypervisor.detach(this);
  }

  list(): string[] {
    return [...this.view].sort();
  }

  onHypervisorEvent(ev: HypervisorEvent): void {
    if (!this.env.proc.alive) return;
    if (ev.event === 'started') {
      this.view.add(ev.vm);
      return;
    }
    this.view.delete(ev.vm);
    this.env.log(ev.reason === 'requested' ? 'info' : 'warn', 'vm.local-stop', `${ev.vm} stopped on this host: ${ev.reason} (${ev.detail})`);
    this.env.feed({ type: 'localVmStopped', now: this.now(), vm: ev.vm, reason: ev.reason, detail: ev.detail });
    this.reportLocal(true);
  }

  /** Tell the core which VMs run here (on change, or always when `force`). */
  reportLocal(force = false): void {
    const vms = this.list();
    const responses: Record<string, IsolationResponse> = {};
    for (const vm of vms) {
      const r = this.responses.get(vm);
      if (r) responses[vm] = r;
      else if (r === undefined) this.loadResponse(vm);
    }
    const key = vms.map((v) => `${v}=${responses[v] ?? ''}`).join('\n');
    if (!force && key === this.lastLocal) return;
    this.lastLocal = key;
    this.env.feed({ type: 'localVms', now: this.now(), vms, responses });
  }

  private mounted(vm: string): boolean {
    return this.env.hosts[this.env.host]!.datastores.includes(vmDatastore(vm));
  }

  private readSpec(vm: string, timeoutMs: number): Proc<SimVmConfig> {
    return io({
      kind: 'io',
      ds: vmDatastore(vm),
      what: `read ${vm}`,
      timeoutMs,
      apply: (d) => {
        const c = d?.vmConfigs.get(vm);
        if (!c) throw enoent(`open ${vm}`);
        return { ...c };
      },
    });
  }

  private loadResponse(vm: string): void {
    if (!this.mounted(vm) || this.loadingResponses.has(vm)) return;
    this.loadingResponses.add(vm);
    this.env.proc.spawn(this.readSpec(vm, this.t), (err, spec) => {
      this.loadingResponses.delete(vm);
      if (err) return;
      this.responses.set(vm, spec!.isolationResponse ?? null);
      this.reportLocal();
    });
  }

  perform(a: CoreAction): boolean {
    if (a.type === 'localPowerOn') {
      this.env.proc.spawn(this.powerOn(a.vm, a.req, a.replyTo, a.takeover));
      return true;
    }
    if (a.type === 'localPowerOff') {
      this.env.proc.spawn(this.powerOff(a.vm, a.req, a.replyTo, a.graceful, a.timeoutMs));
      return true;
    }
    if (a.type === 'isolationStop') {
      this.env.proc.spawn(this.isolationStop(a.vm, a.graceful, a.timeoutMs));
      return true;
    }
    return false;
  }

  private result(vm: string, req: number, replyTo: HostId, ok: boolean, leaseHeld: boolean, error: string): void {
    this.reportLocal();
    this.env.feed({ type: 'localVmResult', now: this.now(), vm, req, replyTo, ok, leaseHeld, error });
  }

  /** A request to the VM daemon, with the driver's deadline for its answer. */
  private *daemon(op: Proc<void>, timeoutMs: number): Proc<void> {
    const hv = this.env.hypervisor;
    if (!hv.alive) throw new VmdError('the VM daemon of this host is not reachable', 'EPOWERON');
    yield* wait<void>((done) => {
      let finished = false;
      hv.request(op, (err) => {
        if (finished) return;
        finished = true;
        done(err);
      });
      this.env.proc.after(timeoutMs, () => {
        if (finished) return;
        finished = true;
        done(new VmdError(`no answer from the VM daemon within ${timeoutMs} ms`, 'EPOWERON'));
      });
    });
  }

  private *powerOn(vm: string, req: number, replyTo: HostId, takeover: string): Proc<void> {
    if (!this.mounted(vm)) return this.result(vm, req, replyTo, false, false, `datastore of ${vm} is not mounted on ${this.env.host}`);
    try {
      // driver.loadSpec: the agent reads the config without a deadline of its own.
      const spec = yield* this.readSpec(vm, Infinity);
      this.responses.set(vm, spec.isolationResponse ?? null);
      yield* this.daemon(this.env.hypervisor.powerOn(vm, vmDatastore(vm), takeover), 20 * this.t + 10_000);
      this.view.add(vm);
      this.env.log('info', 'vm.powered-on', `${vm} powered on here (lease acquired)`);
      this.result(vm, req, replyTo, true, false, '');
    } catch (err) {
      const leaseHeld = (err as { code?: string }).code === 'ELEASEHELD';
      this.env.log('warn', 'vm.power-on-failed', `${vm} could not be powered on here: ${describe(err)}`);
      this.result(vm, req, replyTo, false, leaseHeld, describe(err));
    }
  }

  private *powerOff(vm: string, req: number, replyTo: HostId, graceful: boolean, timeoutMs: number): Proc<void> {
    try {
      if (graceful) yield* this.daemon(this.env.hypervisor.stop(vm, 'graceful', timeoutMs), timeoutMs + 4 * this.t + 30_000);
      else yield* this.daemon(this.env.hypervisor.stop(vm, 'hard', 0), 4 * this.t + 30_000);
      this.result(vm, req, replyTo, true, false, '');
    } catch (err) {
      this.result(vm, req, replyTo, false, false, describe(err));
    }
  }

  /** The isolation response for one VM: `poweredoff/<vm>` first, then the stop. */
  private *isolationStop(vm: string, graceful: boolean, timeoutMs: number): Proc<void> {
    const ds = vmDatastore(vm);
    const how = graceful ? `shutdown (forced off after ${timeoutMs} ms)` : 'power off';
    try {
      yield* io({ kind: 'io', ds, what: 'mkdir poweredoff', timeoutMs: this.t, apply: (d) => { if (!d) throw enoent('mkdir poweredoff'); } });
      yield* io({
        kind: 'io',
        ds,
        what: `write poweredoff ${vm}`,
        timeoutMs: this.t,
        apply: (d) => {
          if (!d) throw enoent(`write poweredoff ${vm}`);
          d.addPoweredOff(vm, this.env.host);
        },
      });
    } catch (err) {
      const lost = !this.env.accessible().includes(ds);
      this.env.log('error', 'isolation.poweredoff-failed', `could not write poweredoff/ for ${vm}: ${describe(err)}; ${lost ? `${ds} is lost: stopping it anyway` : 'leaving it running'}`);
      if (!lost) return;
    }
    try {
      if (graceful) yield* this.daemon(this.env.hypervisor.stop(vm, 'graceful', timeoutMs), timeoutMs + 4 * this.t + 30_000);
      else yield* this.daemon(this.env.hypervisor.stop(vm, 'hard', 0), 4 * this.t + 30_000);
      this.env.log('warn', 'isolation.stopped', `${vm} stopped by the isolation response (${how}); the master restarts it elsewhere`);
    } catch (err) {
      this.env.log('error', 'isolation.stop-failed', `isolation response ${how} of ${vm} failed: ${describe(err)}`);
    }
    this.reportLocal();
  }

  // ---- master: catalog and leases -----------------------------------------------------------------

  *scanCatalog(ds: string): Proc<void> {
    const listed = yield* attempt(io({ kind: 'io', ds, what: 'list vms', timeoutMs: this.t, apply: (d) => (d ? [...d.vmConfigs.keys()].sort() : []) }));
    if (!listed.ok) return;
    const vms: CatalogVm[] = [];
    for (const id of listed.value) {
      const r = yield* attempt(this.readSpec(id, this.t));
      if (r.ok) {
        vms.push({ id, name: r.value.name, memoryMB: r.value.memoryMB, cpus: r.value.cpus, priority: r.value.priority });
        this.badFiles.delete(id);
      } else {
        const msg = describe(r.error);
        if (this.badFiles.get(id) !== msg) {
          this.badFiles.set(id, msg);
          this.env.log('warn', 'vm.config-invalid', `ignoring VM config ${id}: ${msg}`);
        }
      }
    }
    this.env.feed({ type: 'vmCatalog', now: this.now(), datastore: ds, vms });
  }

  *sampleLeases(vms: string[]): Proc<void> {
    const self = this;
    yield* all(
      this.env.proc,
      vms.map((vm) =>
        (function* () {
          const r = yield* attempt(io({ kind: 'io', ds: vmDatastore(vm), what: `read lease (vms/${vm})`, timeoutMs: self.t, apply: (d) => snapshotOf(d, `vms/${vm}`) }));
          if (!r.ok) return; // unreadable now: no sample
          self.env.feed({ type: 'vmLeaseSample', now: self.now(), vm, record: r.value.record, lockExists: r.value.lockExists, maxClaim: r.value.maxClaim });
        })(),
      ),
    );
  }
}
