/**
 * What the core consumes (events) and produces (actions). The agent runtime turns real I/O into
 * events and performs the actions; the simulator does the same with in-memory edges.
 * `now` is the host's own monotonic clock in milliseconds; the core never reads a clock itself.
 */
import type { HostId } from './ids.js';
import type { Message } from './messages.js';

export type Role = 'uninitialized' | 'election' | 'master' | 'slave' | 'isolated';

export type CoreEvent =
  /** Time passes. The runtime ticks at least every heartbeatIntervalMs / 4. */
  | { type: 'tick'; now: number }
  /** An authenticated message from a configured host (the runtime drops everything else). */
  | { type: 'message'; now: number; from: HostId; msg: Message }
  /** Result of the latest datastore probe: the datastores this host can read and write now. */
  | { type: 'datastores'; now: number; accessible: string[] }
  /** The agent is stopping (SIGTERM): give up roles cleanly. */
  | { type: 'shutdown'; now: number };

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export type CoreAction =
  | { type: 'send'; to: HostId; msg: Message }
  /** One structured line per decision, with its reason. */
  | { type: 'log'; level: LogLevel; event: string; message: string; fields: Record<string, unknown> }
  /** The role changed: the runtime starts or stops what the role owns (e.g. protectedlist locks). */
  | { type: 'role'; role: Role; master: HostId | null; generation: number };
