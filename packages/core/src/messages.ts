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
  /** In maintenance mode: loses to any host that is not. */
  maintenance: boolean;
  /** The sender's master generation: a master re-electing sends the generation it led. */
  generation: number;
}

/** Sent by a master to every configured host, every heartbeat interval. */
export interface MasterHeartbeatMsg {
  type: 'masterHeartbeat';
  datastores: number;
  maintenance: boolean;
  /** Increases each time this agent becomes master (protectedlist generation). */
  generation: number;
}

/** Sent by a slave to its master, every heartbeat interval. */
export interface SlaveHeartbeatMsg {
  type: 'slaveHeartbeat';
  datastores: number;
  /** The master this slave follows (so a master can tell its own slaves from another's). */
  master: HostId;
  /** Capacity this host offers to VMs (for placement). */
  memoryMB: number;
  cpus: number;
}

/** Sent by a master that lost to another master, to its slaves: follow `to` from now on. */
export interface AbdicateMsg {
  type: 'abdicate';
  to: HostId;
}

/** Master -> host: power this VM on (the host acquires its lease first). */
export interface PowerOnMsg {
  type: 'powerOn';
  vm: string;
  req: number;
  /**
   * The VM lease state the master judged dead, `host:generation:token:counter:maxClaim`, or `orphan`
   * (a lock seen without a record), or '' when the lease is free. The host takes the lease
   * over only if the record is still exactly this one. When the record names a host VM lease
   * generation, `/` follows with the state of the holder's host VM lease the master saw dead:
   * `generation:token:counter`, or `-` when that host lease no longer had the record's
   * generation; the host checks that too (see TakeoverState).
   */
  takeover: string;
}

/** Encode a lease record for PowerOnMsg.takeover. */
export const TAKEOVER_PATTERN = /^(|orphan|host-[0-9]{1,9}:[0-9]{1,15}:[0-9a-f]{8,64}:[0-9]{1,15}:[0-9]{1,15}(\/([0-9]{1,15}:[0-9a-f]{8,64}:[0-9]{1,15}|-))?)$/;

/** A takeover string, decoded (see PowerOnMsg.takeover). */
export interface TakeoverState {
  record: { host: HostId; generation: number; token: string; counter: number };
  maxClaim: number;
  /** The holder's host VM lease as judged dead; null: it had moved off the record's generation; undefined: no host lease involved. */
  hostLease?: { generation: number; token: string; counter: number } | null;
}

export function parseTakeover(s: string): TakeoverState | null {
  if (!TAKEOVER_PATTERN.test(s) || s === '' || s === 'orphan') return null;
  const [lease, host] = s.split('/');
  const p = lease!.split(':');
  const out: TakeoverState = { record: { host: p[0]!, generation: Number(p[1]), token: p[2]!, counter: Number(p[3]) }, maxClaim: Number(p[4]) };
  if (host === '-') out.hostLease = null;
  else if (host !== undefined) {
    const h = host.split(':');
    out.hostLease = { generation: Number(h[0]), token: h[1]!, counter: Number(h[2]) };
  }
  return out;
}

/** Master -> host: stop this VM (graceful: shutdown forced off after timeoutMs; else hard off). */
export interface PowerOffMsg {
  type: 'powerOff';
  vm: string;
  req: number;
  graceful: boolean;
  timeoutMs: number;
}

/** Host -> master: outcome of a powerOn / powerOff request. */
export interface VmResultMsg {
  type: 'vmResult';
  vm: string;
  req: number;
  ok: boolean;
  /** The VM's lease was held elsewhere (not a failed attempt: wait). */
  leaseHeld: boolean;
  /** At most 160 bytes. */
  error: string;
}

export type VmStopReason = 'exited' | 'killed' | 'fenced' | 'requested' | 'leaseHeld' | 'failed';
export const VM_STOP_REASONS: readonly VmStopReason[] = ['exited', 'killed', 'fenced', 'requested', 'leaseHeld', 'failed'];

/** Host -> master: a VM stopped on this host (VM monitoring). */
export interface VmStoppedMsg {
  type: 'vmStopped';
  vm: string;
  reason: VmStopReason;
}

export type Message = ElectionMsg | MasterHeartbeatMsg | SlaveHeartbeatMsg | AbdicateMsg | PowerOnMsg | PowerOffMsg | VmResultMsg | VmStoppedMsg;
export type MessageType = Message['type'];

/** Wire type codes are the 1-based position in this list: append only. */
export const MESSAGE_TYPES: readonly MessageType[] = ['election', 'masterHeartbeat', 'slaveHeartbeat', 'abdicate', 'powerOn', 'powerOff', 'vmResult', 'vmStopped'];

/** Longest error text a vmResult carries, in UTF-8 bytes. */
export const MAX_ERROR_BYTES = 160;

/**
 * An error text fit for a datagram: printable ASCII only (anything else becomes '?'), at most
 * MAX_ERROR_BYTES. JSON escaping at most doubles it, so a vmResult stays far below 1,400 bytes.
 */
export function clipError(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?').slice(0, MAX_ERROR_BYTES);
}
