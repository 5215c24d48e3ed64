/**
 * What the core consumes (events) and produces (actions). The agent runtime turns real I/O into
 * events and performs the actions; the simulator does the same with in-memory edges.
 * `now` is the host's own monotonic clock in milliseconds; the core never reads a clock itself.
 */
import type { HostId } from './ids.js';
import type { Message, VmStopReason } from './messages.js';
import type { CatalogVm, VmCommand } from './vms.js';
import type { IsolationResponse } from './isolation.js';

export type Role = 'uninitialized' | 'election' | 'master' | 'slave' | 'isolated';

export type CoreEvent =
  /** Time passes. The runtime ticks at least every heartbeatIntervalMs / 4. */
  | { type: 'tick'; now: number }
  /** An authenticated message from a configured host (the runtime drops everything else). */
  | { type: 'message'; now: number; from: HostId; msg: Message }
  /** Result of the latest datastore probe: the datastores this host can read and write now. */
  | { type: 'datastores'; now: number; accessible: string[] }
  /** The agent is stopping (SIGTERM): give up roles cleanly. */
  | { type: 'shutdown'; now: number }
  /** A periodic read of a datastore's protectedlist lease record (every host samples these). */
  | { type: 'protectedlistSample'; now: number; datastore: string; record: LeaseRecordView | null; lockExists: boolean; maxClaim: number; error?: string }
  /** Result of an acquireProtectedlist action. `vms`: the list found on disk (null if none or unreadable). */
  | { type: 'protectedlistAcquired'; now: number; datastore: string; generation: number; vms: string[] | null; error?: string }
  | { type: 'protectedlistAcquireFailed'; now: number; datastore: string; error: string }
  /** The protectedlist file of a datastore this master holds was found missing, corrupt or not its own. */
  | { type: 'protectedlistDamaged'; now: number; datastore: string; problem: string }
  /** A held protectedlist lease was lost (taken over, or the self-fence deadline passed). */
  | { type: 'protectedlistLost'; now: number; datastore: string; reason: string }
  /** This host's own storage heartbeat on a datastore could not be renewed in time (or was taken). */
  | { type: 'heartbeatLost'; now: number; datastore: string; reason: string }
  /** Master only: a read of host-N-hb on a datastore (the storage heartbeat). */
  | { type: 'heartbeatSample'; now: number; host: HostId; datastore: string; record: LeaseRecordView | null; error?: string }
  /** The protectedlist of a datastore was written: `vms` is what is on disk now (error: the write failed). */
  | { type: 'protectedlistWritten'; now: number; datastore: string; vms: string[]; error?: string }
  /**
   * This host's driver: the VMs running here now (every host). `responses`: each VM's own
   * isolation response, where its config sets one (others use the cluster's).
   */
  | { type: 'localVms'; now: number; vms: string[]; responses?: Record<string, IsolationResponse> }
  /** Outcome of a pingIsolation action: did any isolation address answer within the timeout. */
  | { type: 'isolationPingResult'; now: number; replied: boolean }
  /** This host's driver: a VM stopped here (reason as the driver tells it). */
  | { type: 'localVmStopped'; now: number; vm: string; reason: VmStopReason; detail: string }
  /** This host's driver finished a localPowerOn / localPowerOff. */
  | { type: 'localVmResult'; now: number; vm: string; req: number; replyTo: HostId; ok: boolean; leaseHeld: boolean; error: string }
  /** Master: VM configs found on a datastore. */
  | { type: 'vmCatalog'; now: number; datastore: string; vms: CatalogVm[] }
  /** Master: every host's poweron file and poweredoff/ have been read once since it became master. */
  | { type: 'inventoryScanned'; now: number }
  /** Master: a read of a VM's lease record. */
  /** A read of host N's host VM lease `host-N-vm` on a datastore (master: every host; slave: its master). */
  | { type: 'hostVmLeaseSample'; now: number; host: HostId; datastore: string; record: LeaseRecordView | null }
  | { type: 'vmLeaseSample'; now: number; vm: string; record: LeaseRecordView | null; lockExists: boolean; maxClaim: number }
  /** Master: restart state found on disk when it took a protectedlist. */
  | { type: 'restartQueue'; now: number; datastore: string; entries: { vm: string; attempts: number; failed: boolean }[] }
  /** Every host: the hosts in maintenance mode, as the `maintenance` file on a datastore says. */
  | { type: 'maintenanceSample'; now: number; hosts: HostId[]; seq: number }
  /** Master: `vigil host maintenance enter|exit HOST [--evacuate]`. */
  | { type: 'maintenanceCommand'; now: number; req: number; host: HostId; enter: boolean; evacuate: boolean }
  /** Master: a VM operation from the CLI (any host forwards to the master). */
  | { type: 'command'; now: number; req: number; cmd: VmCommand }
  /** Outcome of a ping action: did the address answer at least once within the timeout. */
  | { type: 'pingResult'; now: number; host: HostId; replied: boolean }
  /** Master only: the VM ids listed in a datastore's poweredoff/ directory. */
  | { type: 'poweredoffSample'; now: number; datastore: string; vms: string[] }
  /** Master only: a host's poweron file as read from a datastore (null: absent; error: corrupt). */
  | { type: 'poweronSample'; now: number; host: HostId; datastore: string; isolated: boolean | null; vms: string[] | null; error?: string };

/** What the core needs to know of a lease record (see @vigil/datastore LeaseRecord). */
export interface LeaseRecordView {
  host: HostId;
  generation: number;
  counter: number;
  token: string;
  state: 'held' | 'released';
  /** Highest generation claimed (a takeover claims exactly the next one). */
  maxClaim?: number;
  /** VM leases: the holder's host VM lease (`host-N-vm`) generation it is held under. */
  hostLease?: number;
}

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export type CoreAction =
  | { type: 'send'; to: HostId; msg: Message }
  /** One structured line per decision, with its reason. */
  | { type: 'log'; level: LogLevel; event: string; message: string; fields: Record<string, unknown> }
  /** The role changed. */
  | { type: 'role'; role: Role; master: HostId | null; generation: number }
  /**
   * Take the protectedlist lease of a datastore. `takeover`: null when it is free; the dead
   * record it replaces; or 'orphan' for a lock directory seen without a readable record for the
   * whole lease timeout.
   */
  | { type: 'acquireProtectedlist'; datastore: string; takeover: LeaseRecordView | 'orphan' | null }
  | { type: 'releaseProtectedlist'; datastore: string }
  /** Power a VM on on this host (the driver acquires its lease first); report a localVmResult. */
  | { type: 'localPowerOn'; vm: string; req: number; replyTo: HostId; takeover: string }
  | { type: 'localPowerOff'; vm: string; req: number; replyTo: HostId; graceful: boolean; timeoutMs: number }
  /** VmManager -> HostCore (translated into local actions or messages; never reach the runtime). */
  | { type: 'vmPowerOn'; host: HostId; vm: string; req: number; takeover: string }
  | { type: 'vmPowerOff'; host: HostId; vm: string; req: number; graceful: boolean; timeoutMs: number }
  | { type: 'setProtection'; vm: string; protected: boolean }
  /** Persist the hosts in maintenance mode (the `maintenance` file on every owned datastore). */
  | { type: 'writeMaintenance'; hosts: HostId[]; generation?: number; seq?: number }
  /** Answer a CLI command. */
  | { type: 'reply'; req: number; ok: boolean; message: string }
  /** The master removes a poweredoff/ entry once the VM runs again. */
  | { type: 'removePoweredOff'; vm: string }
  /** The master persists its restart state on a datastore it owns. */
  | { type: 'writeRestartQueue'; datastore: string; entries: { vm: string; attempts: number; failed: boolean }[] }
  /** Ping every isolation address for up to `timeoutMs`, then report an isolationPingResult. */
  | { type: 'pingIsolation'; timeoutMs: number }
  /**
   * Isolation response for one VM: write `poweredoff/<vm>` on its datastore first, then stop it
   * (graceful: shutdown, forced off after timeoutMs; else power off). The driver's stop event
   * then drops it from the poweron file.
   */
  | { type: 'isolationStop'; vm: string; graceful: boolean; timeoutMs: number }
  /** Ping `address` for up to `timeoutMs`, then report a pingResult. */
  | { type: 'ping'; host: HostId; address: string; timeoutMs: number }
  /** This host's poweron content (isolation bit, powered-on VMs): the runtime keeps every heartbeat datastore's copy equal to it. */
  | { type: 'writePoweron'; isolated: boolean; vms: string[] }
  /** Rewrite the protectedlist of a datastore this master holds (the runtime refuses if not held). */
  | { type: 'writeProtectedlist'; datastore: string; vms: string[] };
