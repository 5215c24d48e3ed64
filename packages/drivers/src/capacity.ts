import { cpus, totalmem } from 'node:os';
import type { HostCapacity } from './types.js';

/** Capacity offered to VMs: from config, or the machine's memory and cores. */
export function hostCapacity(configured?: { memoryMB: number; cpus: number }): HostCapacity {
  if (configured) return { ...configured };
  return { memoryMB: Math.floor(totalmem() / (1024 * 1024)), cpus: cpus().length };
}
