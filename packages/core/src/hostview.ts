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
  | 'unknown';

export interface HostView {
  host: HostId;
  state: HostState;
  /** Milliseconds since the last heartbeat of any kind from this host (null: never heard, or self). */
  lastHeartbeatMs: number | null;
  /** Datastores it last reported as accessible. */
  datastores: number | null;
}
