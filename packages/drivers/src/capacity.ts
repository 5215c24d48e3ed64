import { cpus, totalmem } from 'node:os';
import type { HostCapacity } from './types.js';

/**
 * vCPUs offered per physical core when capacity is not configured. KVM hosts routinely
 * overcommit vCPUs (CPU time is shared; memory is not), so placement counts vCPUs against
 * cores x this ratio, and memory one for one.
 */
export const DEFAULT_VCPU_PER_CORE = 8;

/** Capacity offered to VMs: from config, or the machine's memory and cores x DEFAULT_VCPU_PER_CORE. */
export function hostCapacity(configured?: { memoryMB: number; cpus: number }): HostCapacity {
  if (configured) return { ...configured };
  return { memoryMB: Math.floor(totalmem() / (1024 * 1024)), cpus: cpus().length * DEFAULT_VCPU_PER_CORE };
}
