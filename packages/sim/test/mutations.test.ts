/**
 * The simulator must catch a broken core (or a broken lease edge): each mutation below breaks
 * one safety rule on purpose, through a subclass (no flag in production code), and a scenario
 * that a correct build passes must now end with the matching violation of SPEC §5.
 */
import { describe, expect, it } from 'vitest';
import { HostCore, Ownership, VmManager, type HostCoreOptions } from '@vigil/core';
import { formatResult, parseScenario, runScenario, SimHypervisor, type RunOptions, type SimResult } from '@vigil/sim';

/** Reach a private part of the core (a mutation only). */
function set(core: HostCore, field: string, value: unknown): void {
  (core as unknown as Record<string, unknown>)[field] = value;
}

function vmManager(opts: HostCoreOptions, timing = opts.timing): VmManager {
  return new VmManager({ self: opts.self, timing, maxConcurrentPerHost: opts.maxConcurrentPerHost ?? 32, maxAttempts: opts.maxAttempts ?? 5 });
}

/** Restarts without waiting for the lease: VM leases are judged dead after 1 ms unchanged. */
class NoLeaseWaitCore extends HostCore {
  constructor(opts: HostCoreOptions) {
    super(opts);
    set(this, 'vms', vmManager(opts, { ...opts.timing, leaseTimeoutMs: 1 }));
  }
}

/** Takes over a protectedlist without waiting: a live owner's record is judged dead after 1 ms unchanged. */
class NoOwnershipWaitCore extends HostCore {
  constructor(opts: HostCoreOptions) {
    super(opts);
    set(this, 'ownership', new Ownership({ self: opts.self, leaseTimeoutMs: 1, retryMs: opts.timing.storageHeartbeatIntervalMs }));
  }
}

/** Forgets `vm unprotect` / `vm stop`: a VM once protected stays protected in the manager's eyes. */
class StickyProtectionManager extends VmManager {
  private readonly ever = new Set<string>();
  override setProtected(byDs: Map<string, string[]>, owned: string[]): void {
    for (const vms of byDs.values()) for (const vm of vms) this.ever.add(vm);
    const sticky = new Map<string, string[]>();
    for (const vm of this.ever) {
      const ds = vm.slice(0, vm.indexOf(':'));
      sticky.set(ds, [...(sticky.get(ds) ?? []), vm]);
    }
    super.setProtected(sticky, owned);
  }
}
class StickyProtectionCore extends HostCore {
  constructor(opts: HostCoreOptions) {
    super(opts);
    set(this, 'vms', new StickyProtectionManager({ self: opts.self, timing: opts.timing, maxConcurrentPerHost: opts.maxConcurrentPerHost ?? 32, maxAttempts: opts.maxAttempts ?? 5 }));
  }
}

/** A VM daemon that never fences: it keeps its VMs running when it cannot renew its host VM lease. */
class NoFenceHypervisor extends SimHypervisor {
  protected override selfFence(ds: string, why: string): void {
    this.env.log('vmd.not-fencing', `MUTATION: not fencing the VMs of ${ds} (${why})`);
  }
}

function run(script: string, opts: RunOptions = {}): SimResult {
  return runScenario(parseScenario(script), opts);
}

/** A host cut off from the cluster and from its heartbeat datastores, its VMs' datastore still fine: its VMs run on. */
const SILENT_HOST_WITH_RUNNING_VMS = `
hosts 4
datastores ds1,ds2,ds3
heartbeat-datastores ds1,ds2
vm web ds3
vm db ds3
unprotected web db
at 1s vm-start web on host-2
at 1s vm-start db on host-2
at 5s partition host-2 / host-1,host-3,host-4
at 5s storage-loss host-2 ds1 error
at 5s storage-loss host-2 ds2 error
at 30s expect running web on host-2
at 30s expect running db on host-2
`;

const PARTITION_2_2 = `
hosts 4
vms 8
at 5s partition host-1,host-2 / host-3,host-4
at 20s heal
at 30s expect converged
`;

const UNPROTECT_THEN_CRASH = `
hosts 4
vms 6
at 3s vm-unprotect vm-1
at 3s vm-stop vm-2
at 8s kill-vm vm-1
at 20s expect not-running vm-1
at 20s expect not-running vm-2
`;

const HUNG_AND_PARTITIONED = `
hosts 4
vm web ds1
unprotected web
at 1s vm-start web on host-2
at 5s hang-storage host-2 ds1
at 5s hang-storage host-2 ds2
at 5s partition host-2 / host-1,host-3,host-4
at 30s expect one-master
`;

describe('mutations: the simulator catches a broken core', () => {
  it('a correct build passes every mutation scenario', () => {
    for (const s of [SILENT_HOST_WITH_RUNNING_VMS, PARTITION_2_2, UNPROTECT_THEN_CRASH, HUNG_AND_PARTITIONED]) {
      const r = run(s);
      expect(r.ok, formatResult(r)).toBe(true);
    }
  });

  it('restarting without waiting for the VM lease runs a VM twice (SPEC §5.1)', () => {
    const r = run(SILENT_HOST_WITH_RUNNING_VMS, { coreFactory: (o) => new NoLeaseWaitCore(o) });
    expect(r.ok).toBe(false);
    expect(r.violations[0]!.invariant, formatResult(r)).toBe(1);
  });

  it('taking over a live protectedlist gives it two holders (SPEC §5.2)', () => {
    const r = run(PARTITION_2_2, { coreFactory: (o) => new NoOwnershipWaitCore(o) });
    expect(r.ok).toBe(false);
    expect(r.violations[0]!.invariant, formatResult(r)).toBe(2);
  });

  it('forgetting an unprotect restarts a VM Vigil was told to leave alone (SPEC §5.4)', () => {
    const r = run(UNPROTECT_THEN_CRASH, { coreFactory: (o) => new StickyProtectionCore(o) });
    expect(r.ok).toBe(false);
    expect(r.violations[0]!.invariant, formatResult(r)).toBe(4);
  });

  it('a VM daemon that does not fence on hung storage runs a VM twice (SPEC §5.1)', () => {
    const r = run(HUNG_AND_PARTITIONED, { hypervisorFactory: (env) => new NoFenceHypervisor(env) });
    expect(r.ok).toBe(false);
    expect(r.violations[0]!.invariant, formatResult(r)).toBe(1);
  });
});
