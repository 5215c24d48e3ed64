/**
 * A supervisor's state file (`<state-dir>/vms/<vm>.json`): how the agent finds, re-adopts and
 * hears about the supervisors (and so the VMs) it started, even after an agent crash.
 */
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';

export type SupervisorPhase = 'starting' | 'running' | 'exited' | 'stopped' | 'fenced' | 'leaseHeld' | 'failed';

export interface SupervisorState {
  vm: string;
  phase: SupervisorPhase;
  supervisorPid: number;
  vmPid?: number;
  leaseGeneration?: number;
  /** Wall-clock start (for display only; never used to judge anything). */
  startedAt?: string;
  detail?: string;
  code?: number | null;
  signal?: string | null;
}

export async function readState(file: string): Promise<SupervisorState | null> {
  try {
    const v = JSON.parse(await readFile(file, 'utf8')) as SupervisorState;
    if (!v || typeof v.vm !== 'string' || typeof v.phase !== 'string' || typeof v.supervisorPid !== 'number') return null;
    return v;
  } catch {
    return null;
  }
}

/** True if `pid` is alive and is a Vigil supervisor of `vm` (guards against pid reuse). */
export function isSupervisorOf(pid: number, vm: string): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmd.includes('supervisor-main') && cmd.includes(Buffer.from(vm).toString('base64url'));
  } catch {
    return false;
  }
}
