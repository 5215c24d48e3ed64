/**
 * Process-driver VM config: a JSON file on a datastore.
 * { "name", "command", "args"?, "env"?, "memoryMB"?, "cpus"?, "restartPriority"?, "isolationResponse"?, "benchmarkStandin"? }
 *
 * `"benchmarkStandin": true` is for the scale benchmark only (scripts/bench-scale.mjs): the VM
 * daemon takes and keeps the VM's lease exactly as for a real VM but starts no process, so that
 * 16,000 VMs fit on one small machine. The daemon refuses such a VM unless it runs with
 * VIGIL_BENCH_STANDIN=1 in its environment (vmd.ts).
 */
import { readFile, stat } from 'node:fs/promises';
import { RESTART_PRIORITIES, type IsolationResponseSetting, type RestartPriority, type VmSpec } from '../types.js';

export interface ProcessVmConfig {
  name: string;
  command: string;
  args: string[];
  env: Record<string, string>;
  memoryMB: number;
  cpus: number;
  restartPriority: RestartPriority;
  isolationResponse?: IsolationResponseSetting;
  /** Benchmark only: no process, everything else real (see the header). */
  benchmarkStandin?: true;
}

export const VM_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const KEYS = new Set(['name', 'command', 'args', 'env', 'memoryMB', 'cpus', 'restartPriority', 'isolationResponse', 'benchmarkStandin']);
const MAX_BYTES = 64 * 1024;

export class VmConfigError extends Error {}

/**
 * The HA settings every VM file has, whatever its driver: `restartPriority` (default medium) and
 * an optional `isolationResponse`. `fail` throws, naming the key.
 */
export function validateHaSettings(o: Record<string, unknown>, fail: (key: string, problem: string) => never): { restartPriority: RestartPriority; isolationResponse: IsolationResponseSetting | undefined } {
  const prio = o.restartPriority ?? 'medium';
  if (typeof prio !== 'string' || !(RESTART_PRIORITIES as readonly string[]).includes(prio)) fail('restartPriority', `must be one of ${RESTART_PRIORITIES.join(', ')}`);
  const iso = o.isolationResponse;
  if (iso !== undefined && iso !== 'leavePoweredOn' && iso !== 'powerOff' && iso !== 'shutdown') fail('isolationResponse', 'must be leavePoweredOn, powerOff or shutdown');
  return { restartPriority: prio as RestartPriority, isolationResponse: iso as IsolationResponseSetting | undefined };
}

/** Validate parsed JSON; every problem names its key. */
export function validateProcessVm(v: unknown, source: string): ProcessVmConfig {
  const fail = (key: string, problem: string): never => {
    throw new VmConfigError(`${source}: ${key}: ${problem}`);
  };
  if (!v || typeof v !== 'object' || Array.isArray(v)) fail('(top level)', 'must be a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!KEYS.has(k)) fail(k, 'unknown key');
  if (typeof o.name !== 'string' || !VM_NAME_RE.test(o.name)) fail('name', 'must be 1-63 of A-Z a-z 0-9 . _ - starting with a letter or digit');
  if (typeof o.command !== 'string' || o.command.length === 0 || o.command.length > 4096) fail('command', 'must be a non-empty string');
  const args = o.args ?? [];
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string') || args.length > 256) fail('args', 'must be an array of at most 256 strings');
  const env = o.env ?? {};
  if (!env || typeof env !== 'object' || Array.isArray(env) || Object.values(env).some((x) => typeof x !== 'string')) fail('env', 'must be an object of strings');
  const int = (k: string, dflt: number, max: number) => {
    const x = o[k] ?? dflt;
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 1 || x > max) fail(k, `must be an integer from 1 to ${max}`);
    return x as number;
  };
  const memoryMB = int('memoryMB', 128, 16 * 1024 * 1024);
  const cpus = int('cpus', 1, 1024);
  const { restartPriority: prio, isolationResponse: iso } = validateHaSettings(o, fail);
  if (o.benchmarkStandin !== undefined && o.benchmarkStandin !== true) fail('benchmarkStandin', 'must be true or absent (benchmark stand-in VMs only)');
  return {
    name: o.name as string,
    command: o.command as string,
    args: args as string[],
    env: env as Record<string, string>,
    memoryMB,
    cpus,
    restartPriority: prio as RestartPriority,
    ...(iso ? { isolationResponse: iso as IsolationResponseSetting } : {}),
    ...(o.benchmarkStandin === true ? { benchmarkStandin: true as const } : {}),
  };
}

export async function readProcessVm(path: string): Promise<ProcessVmConfig> {
  const st = await stat(path);
  if (!st.isFile()) throw new VmConfigError(`${path}: not a regular file`);
  if (st.size > MAX_BYTES) throw new VmConfigError(`${path}: larger than ${MAX_BYTES} bytes`);
  let json: unknown;
  try {
    json = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new VmConfigError(`${path}: not valid JSON (${(err as Error).message})`);
  }
  return validateProcessVm(json, path);
}

export function specOf(id: string, path: string, c: ProcessVmConfig): VmSpec {
  const datastore = id.slice(0, id.indexOf(':'));
  return {
    id,
    name: c.name,
    datastore,
    path,
    memoryMB: c.memoryMB,
    cpus: c.cpus,
    restartPriority: c.restartPriority,
    ...(c.isolationResponse ? { isolationResponse: c.isolationResponse } : {}),
  };
}
