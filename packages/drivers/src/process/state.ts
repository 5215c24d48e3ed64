/**
 * A supervisor's state file (`<state-dir>/vms/<vm>.json`): how the agent finds, re-adopts and
 * hears about the supervisors (and so the VMs) it started, even after an agent crash.
 */
import { readFile } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';

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

/**
 * Pids of the live supervisors of `vm` for `host` on this machine, found by their command lines
 * (argv: supervisor-main <vm as base64url> <args as base64url JSON>), whether or not a state
 * file points at them. Used before a power-on, so that a supervisor whose state file was lost is
 * never doubled by a second one taking over its (live) lease.
 */
export function liveSupervisors(vm: string, host: string): number[] {
  const tag = Buffer.from(vm).toString('base64url');
  const out: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^[0-9]+$/.test(e)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    const i = argv.findIndex((a) => a.endsWith('supervisor-main.js'));
    if (i < 0 || argv[i + 1] !== tag) continue;
    try {
      const args = JSON.parse(Buffer.from(argv[i + 2] ?? '', 'base64url').toString('utf8')) as { host?: unknown };
      if (args.host === host) out.push(Number(e));
    } catch {
      /* not ours */
    }
  }
  return out;
}
