/**
 * VM statistics of a real libvirt VM through real agents (issue 7 items 4 and 6): a lab with
 * `--driver libvirt` (3 hosts sharing the machine's libvirtd, one small diskless QEMU domain);
 * `vigil vm stats vm-1 --json`, asked through a slave that does not run it, shows the guest's CPU
 * time moving between samples (one `virsh domstats` per sample on the host that runs it), a CPU
 * percentage, QEMU's resident memory, and zero disk and network traffic (it has neither).
 *
 * Needs libvirtd on qemu:///system (scripts/libvirt-setup.sh, which .ci/run calls); skipped with
 * the reason otherwise (VIGIL_LIBVIRT_SKIP, or what `virsh version` said).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkLibvirt } from '@vigil/drivers';
import type { VmStats } from '@vigil/agent';
import { Lab, labTempDir, runCli, waitFor, waitPortsFree } from './helpers/lab.js';

const URI = 'qemu:///system';
const skipReason = process.env.VIGIL_LIBVIRT_SKIP || checkLibvirt(URI);
if (skipReason) console.warn(`VM statistics with libvirt end-to-end test SKIPPED: ${skipReason}`);

const PORT = 41000 + Math.floor(Math.random() * 900);
const HOSTS = ['host-1', 'host-2', 'host-3'];

interface Row {
  id: string;
  name: string;
  host: string | null;
  stats: VmStats | null;
  statsError: string | null;
}

describe.skipIf(!!skipReason)('VM statistics of a libvirt VM through the master (real libvirtd, real QEMU)', () => {
  let dir = '';

  beforeAll(async () => {
    dir = await labTempDir('stats-libvirt');
    await waitPortsFree(HOSTS.map((_, i) => `127.0.0.${11 + i}`), PORT);
  });

  afterAll(async () => {
    if (dir) await new Lab(dir).down({ purge: true, graceMs: 2000 }).catch((err: Error) => console.warn(`cleanup: ${err.message}`));
  });

  it('a slave shows the moving CPU time, a CPU figure and QEMU\'s memory of a domain on another host', async () => {
    const up = await runCli(['lab', 'up', '--driver', 'libvirt', '--hosts', '3', '--vms', '1', '--dir', dir, '--port', String(PORT)], { timeoutMs: 60_000 });
    expect(up.code, `${up.stdout}\n${up.stderr}`).toBe(0);
    const sock = (h: string) => join(dir, 'hosts', h, 'vigil.sock');
    const vms = await runCli(['vms', '--json', '--socket', sock('host-1')], { timeoutMs: 30_000 });
    expect(vms.code, vms.stderr).toBe(0);
    const runner = (JSON.parse(vms.stdout) as Row[]).find((r) => r.name === 'vm-1')!.host!;
    const st = await runCli(['status', '--json', '--socket', sock(runner)]);
    const master = (JSON.parse(st.stdout) as { master: string }).master;
    const via = HOSTS.find((h) => h !== runner && h !== master)!;
    expect(via, `runner ${runner}, master ${master}`).toBeDefined();

    const ask = async (): Promise<Row> => {
      const r = await runCli(['vm', 'stats', 'vm-1', '--json', '--socket', sock(via)], { timeoutMs: 30_000 });
      if (r.code !== 0) throw new Error(`vm stats: ${r.stderr}`);
      return JSON.parse(r.stdout) as Row;
    };
    const first = await waitFor('vm-1 statistics with a CPU figure', async () => {
      const r = await ask();
      return r.stats && r.stats.cpuPercent !== null ? r.stats : undefined;
    }, { timeoutMs: 30_000, intervalMs: 500 });
    console.log(`libvirt VM through ${via} (runs on ${runner}, master ${master}): ${first.cpuPercent} % of one core, cpu time ${first.cpuTimeMs} ms, RSS ${Math.round(first.memoryBytes! / 1048576)} MiB`);
    expect(first).toMatchObject({ host: runner, diskReadBytes: 0, diskWriteBytes: 0, diskReadOps: 0, diskWriteOps: 0, netRxBytes: 0, netTxBytes: 0, error: null });
    expect(first.cpuPercent).toBeGreaterThanOrEqual(0);
    expect(first.memoryBytes).toBeGreaterThan(10 << 20);
    const second = await waitFor('a later sample with more CPU time', async () => {
      const s = (await ask()).stats;
      return s && s.sampledAt !== first.sampledAt && s.cpuTimeMs! > first.cpuTimeMs! ? s : undefined;
    }, { timeoutMs: 20_000, intervalMs: 500 });
    expect(second.incarnation).toBe(first.incarnation);
    const table = await runCli(['vms', '--stats', '--socket', sock(via)], { timeoutMs: 30_000 });
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^vm-1 +\S+ +on .* running +[0-9.]+ +[0-9.]+ MiB +0 B\/0 B +0 B\/0 B +[0-9.]+ m?s +ds1:vms\/vm-1\.json$/m);
  });
});
