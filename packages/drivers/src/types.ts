/**
 * The hypervisor driver interface (SPEC §4.3): the agent never calls a hypervisor directly.
 * The libvirt driver (libvirt/driver.ts) implements it with the same VM daemon as the process driver.
 */
export type RestartPriority = 'disabled' | 'lowest' | 'low' | 'medium' | 'high' | 'highest';
export const RESTART_PRIORITIES: readonly RestartPriority[] = ['disabled', 'lowest', 'low', 'medium', 'high', 'highest'];
export type IsolationResponseSetting = 'leavePoweredOn' | 'powerOff' | 'shutdown';

/** What every driver knows of a VM, read from its config file on a datastore. */
export interface VmSpec {
  /** `datastore:relative/path` of the config file. */
  id: string;
  name: string;
  datastore: string;
  /** Absolute path of the config file on this host. */
  path: string;
  memoryMB: number;
  cpus: number;
  restartPriority: RestartPriority;
  isolationResponse?: IsolationResponseSetting;
  /** Other files the spec was read from (libvirt: the domain XML), absolute paths. */
  sourceFiles?: string[];
}

export type PowerState = 'on' | 'off';

export interface VmRuntime {
  id: string;
  power: PowerState;
  /** Pid of the process that holds the VM's lease (the host's VM daemon), if known. */
  daemonPid?: number;
  /** Pid of the VM itself (libvirt: its QEMU process). */
  pid?: number;
  /** libvirt: the domain's name on this host. */
  domain?: string;
}

export type StopReason =
  /** The VM process exited on its own (crash or guest shutdown). */
  | 'exited'
  /** Killed by a signal nobody in Vigil sent. */
  | 'killed'
  /** Its host's VM lease on the datastore was lost or not renewed before the self-fence deadline: killed by the VM daemon. */
  | 'fenced'
  /** Stopped through the driver (power off / shutdown). */
  | 'requested'
  /** The lease was held elsewhere: never started. */
  | 'leaseHeld'
  /** Could not be started (bad command, VM daemon failure). */
  | 'failed';

export interface DriverEvent {
  type: 'stopped';
  vm: string;
  reason: StopReason;
  detail: string;
}

/**
 * One VM's counters as its driver read them (`Driver.stats`). Counters (CPU time, disk, network)
 * are cumulative since this power-on of the VM; memory is current. null: this driver cannot tell
 * (a process VM's network) or the read failed (then `error` says why). Never made up.
 */
export interface VmCounters {
  vm: string;
  /**
   * This power-on of the VM (its process: pid and start time): counters start over when it
   * changes. '' when unknown.
   */
  incarnation: string;
  /** CPU time used since the VM started, ns (process VM: its process and the children it reaped; libvirt: cpu.time). */
  cpuTimeNs: number | null;
  /** Resident memory on the host, bytes (process VM: RSS of its process; libvirt: balloon.rss of QEMU). */
  memoryBytes: number | null;
  diskReadBytes: number | null;
  diskWriteBytes: number | null;
  /** Disk requests (libvirt: rd.reqs / wr.reqs summed over the disks; process VMs: null). */
  diskReadOps: number | null;
  diskWriteOps: number | null;
  /** Bytes received / sent by the VM's interfaces (process VMs: null, they share the host's network). */
  netRxBytes: number | null;
  netTxBytes: number | null;
  /** Why some or all fields are null (the VM's process vanished, libvirtd has no stats for the domain...). */
  error?: string;
}

export interface HostCapacity {
  memoryMB: number;
  cpus: number;
}

export interface Driver {
  readonly type: string;
  /** Read and validate a VM config file. Throws a clear error on a bad file. */
  loadSpec(vmId: string, path: string): Promise<VmSpec>;
  /**
   * Power on: acquires the VM's lease first; resolves once the VM runs (rejects with code
   * ELEASEHELD if the lease is held). `takeover`: the lease record the master judged dead
   * (`host:generation:token:counter` or `orphan`), taken over only if it is still exactly that.
   */
  powerOn(spec: VmSpec, takeover?: string): Promise<void>;
  /** Hard power off. */
  powerOff(vmId: string): Promise<void>;
  /** Graceful shutdown; forced off after `timeoutMs`. */
  shutdown(vmId: string, timeoutMs: number): Promise<void>;
  /** VMs this host runs, including ones adopted after an agent restart. */
  list(): VmRuntime[];
  /** Unexpected (and requested) stops. */
  onEvent(handler: (ev: DriverEvent) => void): void;
  capacity(): HostCapacity;
  /**
   * Counters of every VM this host runs (`list()`), read in one query for all of them (process
   * VMs: /proc; libvirt: one `virsh domstats`). A VM that cannot be read gets null fields and an
   * `error`; rejects only when the whole query failed (libvirtd does not answer).
   */
  stats(): Promise<VmCounters[]>;
  /** Stop watching (the VMs keep running). */
  close(): Promise<void>;
}
