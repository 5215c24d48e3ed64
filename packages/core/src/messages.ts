/**
 * Agent-to-agent messages: what travels (authenticated) over UDP between hosts.
 * The wire format lives in @vigil/protocol; this file is the shared vocabulary the pure core
 * speaks. Every message is small and fixed in size: nothing here grows with the number of hosts
 * or VMs, so a datagram stays far below the 1,400-byte limit whatever the cluster size.
 */
import type { HostId } from './ids.js';

/** Sent by a host in the election state to every configured host, every heartbeat interval. */
export interface ElectionMsg {
  type: 'election';
  /** Datastores this host can read and write right now. */
  datastores: number;
}

/** Sent by a master to every configured host, every heartbeat interval. */
export interface MasterHeartbeatMsg {
  type: 'masterHeartbeat';
  datastores: number;
  /** Increases each time this agent becomes master (protectedlist generation). */
  generation: number;
}

/** Sent by a slave to its master, every heartbeat interval. */
export interface SlaveHeartbeatMsg {
  type: 'slaveHeartbeat';
  datastores: number;
  /** The master this slave follows (so a master can tell its own slaves from another's). */
  master: HostId;
}

/** Sent by a master that lost to another master, to its slaves: follow `to` from now on. */
export interface AbdicateMsg {
  type: 'abdicate';
  to: HostId;
}

export type Message = ElectionMsg | MasterHeartbeatMsg | SlaveHeartbeatMsg | AbdicateMsg;
export type MessageType = Message['type'];

export const MESSAGE_TYPES: readonly MessageType[] = ['election', 'masterHeartbeat', 'slaveHeartbeat', 'abdicate'];
