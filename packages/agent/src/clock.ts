/** The agent's clocks: a monotonic one for every interval; wall time only seeds incarnations. */
import { performance } from 'node:perf_hooks';

export interface Clock {
  /** Monotonic milliseconds (never jumps with NTP or an admin's `date -s`). */
  now(): number;
}

export const monotonicClock: Clock = { now: () => performance.now() };
