/**
 * VM statistics end to end (issue 7 item 4), with real agents and a real busy process VM: asked
 * through a SLAVE's control socket, for a VM running on ANOTHER slave, `vm stats NAME --json` and
 * `vms --stats --json` (the CLI binary) return figures that move (CPU time, disk writes, a new
 * sample every statsIntervalMs of the fast profile); a wrong name fails with exit 1; a host whose
 * agent is down is marked as not answering (within seconds), and once it is back its re-adopted
 * VM has statistics again, with the same counters continuing (same power-on).
 */
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { controlRequest, type VmStats } from '@vigil/agent';
import { labVmTag } from '@vigil/cli';
import { startHosts, waitFor } from './helpers/lab.js';
import { Timeline, agentPid, useVmLab } from './helpers/vms.js';

const CLI_BIN = fileURLToPath(new URL('../../packages/cli/bin/vigil.cjs', import.meta.url));

interface Row {
  id: string;
  name: string;
  host: string | null;
  state: string;
  stats: VmStats | null;
  statsError: string | null;
}

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI_BIN, ...args], { encoding: 'utf8', timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('VM statistics through the master', () => {
  const fx = useVmLab('stats', { hosts: 3, vms: 0 }, { watch: false });

  it('a slave shows moving figures of a VM on another slave; a wrong name fails; a silent host is marked, then answers again', async () => {
    const tl = new Timeline('VM statistics');
    try {
      const { lab, dir, master, hosts } = fx.v;
      const [runner, via] = hosts.filter((h) => h !== master) as [string, string];
      const socket = lab.paths.socket(via);
      // Busy but light: counting in the shell, and 256 KiB written by dd (a child it reaps) about four times a second.
      const script = `while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; dd if=/dev/zero of=${join(dir, 'vm-busy-output')} bs=64k count=4 2>/dev/null; sleep 0.25; done`;
      await lab.createVms(1, { via: master, vm: (name) => ({ command: 'bash', args: ['-c', `exec -a ${labVmTag(dir, name)} sh -c '${script}'`], host: runner }) });
      tl.mark(`vm-1 started on ${runner}; asking through ${via} (master ${master})`);

      const ask = async () => ((await controlRequest(socket, { cmd: 'vmStats', vm: 'vm-1' }, 20_000)) as { master: string; vm: Row }).vm;
      // Two samples of this power-on give a CPU figure: within two intervals (6 s each) and a bit.
      const first = await waitFor('vm-1 statistics with a CPU figure', async () => {
        const r = await ask();
        return r.stats && r.stats.cpuPercent !== null && r.stats.cpuPercent > 0 ? r : undefined;
      }, { timeoutMs: 30_000, intervalMs: 500 });
      const s1 = first.stats!;
      tl.mark(`first: cpu ${s1.cpuPercent} %, cpu time ${s1.cpuTimeMs} ms, mem ${s1.memoryBytes}, disk w ${s1.diskWriteBytes}, age ${s1.ageMs} ms`);
      expect(first).toMatchObject({ name: 'vm-1', host: runner, statsError: null });
      expect(s1).toMatchObject({ host: runner, netRxBytes: null, netTxBytes: null, diskReadOps: null, diskWriteOps: null });
      expect(s1.memoryBytes).toBeGreaterThan(100 * 1024);
      expect(s1.ageMs).toBeGreaterThanOrEqual(0);

      // The next sample: later, and the counters have moved.
      const second = await waitFor('a later sample with more CPU time and more disk writes', async () => {
        const s = (await ask()).stats;
        return s && s.sampledAt !== s1.sampledAt && s.cpuTimeMs! > s1.cpuTimeMs! && s.diskWriteBytes! > s1.diskWriteBytes! ? s : undefined;
      }, { timeoutMs: 20_000, intervalMs: 500 });
      tl.mark(`second: cpu ${second.cpuPercent} %, cpu time ${second.cpuTimeMs} ms, disk w ${second.diskWriteBytes}`);
      expect(second.incarnation).toBe(s1.incarnation);
      expect(Date.parse(second.sampledAt) - Date.parse(s1.sampledAt)).toBeGreaterThanOrEqual(5000);

      // The CLI binary, through the same slave.
      const vms = await cli(['vms', '--stats', '--json', '--socket', socket]);
      expect(vms.code, vms.stderr).toBe(0);
      const row = (JSON.parse(vms.stdout) as Row[]).find((r) => r.name === 'vm-1')!;
      expect(row.stats).toMatchObject({ vm: row.id, host: runner });
      expect(row.stats!.cpuTimeMs).toBeGreaterThanOrEqual(second.cpuTimeMs!);
      const one = await cli(['vm', 'stats', 'vm-1', '--json', '--socket', socket]);
      expect(one.code, one.stderr).toBe(0);
      expect(JSON.parse(one.stdout)).toMatchObject({ id: row.id, stats: { host: runner, incarnation: s1.incarnation } });
      const table = await cli(['vms', '--stats', '--socket', socket]);
      expect(table.stdout.split('\n')[0]).toMatch(/^NAME +HOST .* STATE +CPU% +MEM +DISK R\/W +NET RX\/TX +AGE +ID$/);
      const human = await cli(['vm', 'stats', row.id, '--socket', socket]);
      expect(human.stdout).toMatch(new RegExp(`^HOST +${runner}$`, 'm'));
      expect(human.stdout).toMatch(/^CPU +[0-9.]+ % of one core over /m);
      const wrong = await cli(['vm', 'stats', 'no-such-vm', '--json', '--socket', socket]);
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toMatch(/no VM named no-such-vm/);

      // The runner's agent dies (its VM keeps running under its VM daemon): the master answers anyway,
      // marking that host as not answering (how long it waits is the timeline's business, not a test's).
      const pid = await agentPid(lab, runner);
      process.kill(pid, 'SIGKILL');
      await waitFor('the agent to be gone', () => !lab.alive(pid), { timeoutMs: 5000, intervalMs: 20 });
      tl.mark(`SIGKILL of ${runner}'s agent`);
      const t0 = Date.now();
      const silent = await ask();
      const took = Date.now() - t0;
      tl.mark(`asked with ${runner} down: ${took} ms: ${silent.statsError}`);
      expect(silent.stats).toBeNull();
      expect(silent.statsError).toMatch(new RegExp(`^${runner} did not answer: `));

      // Back: the restarted agent re-adopts the VM and samples it at once; same power-on, counters continue.
      await startHosts(lab, [runner]);
      tl.mark(`${runner}'s agent restarted`);
      const back = await waitFor(`statistics from ${runner} again`, async () => (await ask()).stats ?? undefined, { timeoutMs: 20_000, intervalMs: 500 });
      tl.mark(`back: cpu time ${back.cpuTimeMs} ms`);
      expect(back.incarnation).toBe(s1.incarnation);
      expect(back.cpuTimeMs).toBeGreaterThanOrEqual(second.cpuTimeMs!);
    } finally {
      tl.print();
    }
  });
});
