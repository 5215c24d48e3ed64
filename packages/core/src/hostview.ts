/**
 * The master's view of every configured host (`vigil hosts`). Issue-level detail such as dead /
 * partitioned / isolated classification is added by the failure detector; this view covers the
 * network side: who is connected, who is electing, who is silent.
 */
import type { HostId } from './ids.js';


export type HostState =
  | 'master'
  | 'connected'
  | 'election'
  | 'unreachable'
  | 'unknown'
  /** Master's classification of a silent host (SPEC §3.2). */
  | 'dead'
  | 'isolated'
  | 'partitioned'
  | 'agentUnreachable';

export interface HostView {
  host: HostId;
  state: HostState;
  /** Milliseconds since the last heartbeat of any kind from this host (null: never heard, or self). */
  lastHeartbeatMs: number | null;
  /** Datastores it last reported as accessible. */
  datastores: number | null;
  /** Its storage heartbeat as the master judges it by change (master's view only). */
  storageHeartbeat: 'alive' | 'dead' | 'unknown';
  /** Isolation bit of its poweron file (null: not read). */
  isolated: boolean | null;
  /** Number of VMs its poweron file lists (null: not read). */
  vms: number | null;
  /** In maintenance mode (master's view): receives no restarts. */
  maintenance: boolean;
}
