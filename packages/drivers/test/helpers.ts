/** Shared by the driver tests: polling with a deadline, and the VM daemons a test started. */
import { readdirSync, readFileSync } from 'node:fs';

/** Polls `f` every 50 ms until it returns something truthy; throws after `ms`. */
export async function until<T>(f: () => T | undefined | false | Promise<T | undefined | false>, ms = 5000, what = 'condition'): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`${what} not met within ${ms} ms (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether a process exists and is not a zombie. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\d+ \(.*\) Z /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Live VM daemons (`node vmd-main.js <args>`) whose state directory is `dir` or inside it. */
export function vmdProcesses(dir: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      const i = argv.findIndex((a) => a.endsWith('vmd-main.js'));
      if (i < 0 || !alive(Number(e))) continue;
      const args = JSON.parse(Buffer.from(argv[i + 1] ?? '', 'base64url').toString('utf8')) as { stateDir?: string };
      if (args.stateDir === dir || args.stateDir?.startsWith(dir + '/')) out.push(Number(e));
    } catch {
      /* gone, or not ours */
    }
  }
  return out;
}

/** SIGKILL the VM daemons a test started under `dir`, and wait until they are gone. */
export async function killVmds(dir: string): Promise<void> {
  const pids = vmdProcesses(dir);
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await until(() => pids.every((p) => !alive(p)), 5000, 'daemons gone');
}
