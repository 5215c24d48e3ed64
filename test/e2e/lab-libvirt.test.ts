/**
 * `vigil lab up --driver libvirt` through the real CLI, with the machine's libvirtd and real QEMU
 * domains: 3 hosts sharing one libvirtd, small diskless domains created and started by the lab,
 * `vm create` of libvirt VMs (a generated domain and an operator's XML), a power cut of a host
 * (its QEMU processes die with it and its VMs run again elsewhere), and `lab down` leaving no
 * domain and no QEMU process.
 *
 * Copies of a VM are counted independently of the lab's code: live QEMU processes (/proc) whose
 * `-uuid` is the UUID in the VM's XML on the datastore; the host running a copy is read from its
 * domain name (`-name guest=vigil-<host>-<vm>-<hash>`). A watcher counts them every 50 ms for
 * the whole file and fails it if any VM ever ran twice.
 *
 * Needs libvirtd on qemu:///system (scripts/libvirt-setup.sh, which .ci/run calls); skipped with
 * the reason otherwise (VIGIL_LIBVIRT_SKIP, or what `virsh version` said).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkLibvirt } from '@vigil/drivers';
import { Lab, labTempDir, runCli, waitFor, waitPortsFree } from './helpers/lab.js';

const URI = 'qemu:///system';
const skipReason = process.env.VIGIL_LIBVIRT_SKIP || checkLibvirt(URI);
if (skipReason) console.warn(`lab --driver libvirt end-to-end test SKIPPED: ${skipReason}`);

const PORT = 40000 + Math.floor(Math.random() * 900);
const HOSTS = ['host-1', 'host-2', 'host-3'];

interface Copy {
  pid: number;
  domain: string;
  host: string;
}

/** Live QEMU processes by `-uuid`, with their domain name and the host it names. */
function qemuByUuid(): Map<string, Copy[]> {
  const out = new Map<string, Copy[]>();
  for (const e of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (!argv[0]?.includes('qemu-system')) continue;
      if (/^\d+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${e}/stat`, 'utf8'))) continue;
      const uuid = argv[argv.indexOf('-uuid') + 1] ?? '';
      const domain = (argv[argv.indexOf('-name') + 1] ?? '').replace(/^guest=/, '').split(',')[0]!;
      const host = /^vigil-(host-[0-9]+)-/.exec(domain)?.[1] ?? '?';
      out.set(uuid, [...(out.get(uuid) ?? []), { pid: Number(e), domain, host }]);
    } catch {
      /* gone */
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

function virshNames(): string[] {
  return execFileSync('virsh', ['-q', '-c', URI, 'list', '--all', '--name'], { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } })
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
}

describe.skipIf(!!skipReason)('vigil lab up --driver libvirt (real libvirtd, real QEMU domains)', () => {
  let dir = '';
  let sock = '';
  /** VM name -> the UUID in its XML on the datastore. */
  const uuids = new Map<string, string>();
  /** Highest number of simultaneous copies seen per VM, and every domain name seen. */
  const maxCopies = new Map<string, number>();
  const seenDomains = new Set<string>();
  let watcher: NodeJS.Timeout | null = null;
  const t0 = Date.now();
  const timeline: string[] = [];
  const mark = (what: string) => timeline.push(`${((Date.now() - t0) / 1000).toFixed(2).padStart(6)} s  ${what}`);

  const copies = (vm: string): Copy[] => qemuByUuid().get(uuids.get(vm) ?? '-') ?? [];

  const readUuids = () => {
    for (const ds of ['ds1', 'ds2']) {
      const vms = join(dir, 'datastores', ds, 'vms');
      if (!existsSync(vms)) continue;
      for (const f of readdirSync(vms).filter((n) => n.endsWith('.xml'))) {
        const uuid = /<uuid>([^<]+)<\/uuid>/.exec(readFileSync(join(vms, f), 'utf8'))?.[1];
        if (uuid) uuids.set(f.slice(0, -4), uuid);
      }
    }
  };

  const vmsJson = async (): Promise<{ name: string; host: string | null; state: string; restarts: number }[]> => {
    const r = await runCli(['vms', '--json', '--socket', sock], { timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`vigil vms: ${r.stderr}`);
    return JSON.parse(r.stdout) as { name: string; host: string | null; state: string; restarts: number }[];
  };

  beforeAll(async () => {
    dir = await labTempDir('libvirt');
    await waitPortsFree(HOSTS.map((_, i) => `127.0.0.${11 + i}`), PORT);
    watcher = setInterval(() => {
      const by = qemuByUuid();
      for (const [vm, uuid] of uuids) {
        const c = by.get(uuid) ?? [];
        for (const x of c) seenDomains.add(x.domain);
        maxCopies.set(vm, Math.max(maxCopies.get(vm) ?? 0, c.length));
      }
    }, 50);
  });

  afterAll(async () => {
    if (watcher) clearInterval(watcher);
    console.log(`-- timeline: lab --driver libvirt\n${timeline.join('\n')}`);
    if (dir) await new Lab(dir).down({ purge: true, graceMs: 2000 }).catch((err: Error) => console.warn(`cleanup: ${err.message}`));
  });

  it('lab up: 3 hosts sharing libvirtd, 4 diskless domains, each running exactly once where vigil vms says', async () => {
    mark('lab up --driver libvirt --hosts 3 --vms 4');
    const up = await runCli(['lab', 'up', '--driver', 'libvirt', '--hosts', '3', '--vms', '4', '--dir', dir, '--port', String(PORT)], { timeoutMs: 60_000 });
    mark(`lab up exited ${up.code}`);
    expect(up.code, `${up.stdout}\n${up.stderr}`).toBe(0);
    expect(up.stdout).toMatch(/created, started and protected 4 VMs/);
    sock = join(dir, 'hosts', 'host-1', 'vigil.sock');
    const cfg = JSON.parse(await readFile(join(dir, 'cluster.json'), 'utf8')) as { driver: unknown };
    expect(cfg.driver).toEqual({ type: 'libvirt', uri: URI });
    readUuids();
    expect([...uuids.keys()].sort()).toEqual(['vm-1', 'vm-2', 'vm-3', 'vm-4']);
    for (const vm of uuids.keys()) {
      const ds = Number(vm.slice(3)) % 2 === 1 ? 'ds1' : 'ds2';
      const xml = await readFile(join(dir, 'datastores', ds, 'vms', `${vm}.xml`), 'utf8');
      expect(xml).toMatch(/<memory unit='MiB'>32<\/memory>/);
      expect(xml).not.toMatch(/<disk|<interface/);
    }
    const rows = await vmsJson();
    for (const vm of uuids.keys()) {
      const c = copies(vm);
      expect(c, `${vm}: ${JSON.stringify(c)}`).toHaveLength(1);
      const row = rows.find((r) => r.name === vm)!;
      expect(row.state).toBe('running');
      expect(c[0]!.host).toBe(row.host);
      expect(c[0]!.domain).toMatch(new RegExp(`^vigil-${row.host}-${vm}-[0-9a-f]{8}$`));
      expect(up.stdout).toContain(c[0]!.domain);
    }
    expect(virshNames()).toEqual(expect.arrayContaining([...uuids.keys()].map((vm) => copies(vm)[0]!.domain)));
    const st = await runCli(['lab', 'status', '--dir', dir]);
    expect(st.code, st.stderr).toBe(0);
    for (const vm of uuids.keys()) {
      const c = copies(vm)[0]!;
      expect(st.stdout).toMatch(new RegExp(`${vm}\\s+${c.host}\\s+${c.domain}\\s+${c.pid}`));
    }
  });

  it('vm create makes libvirt VMs: a generated diskless domain and an operator\'s XML; a command is refused', async () => {
    const refused = await runCli(['vm', 'create', '--socket', sock, '--datastore', 'ds1', '--name', 'bad', '--', 'sleep', '100']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/libvirt driver: a VM is a domain XML, not a command/);
    expect(existsSync(join(dir, 'datastores', 'ds1', 'vms', 'bad.json'))).toBe(false);

    const made = await runCli(['vm', 'create', '--socket', sock, '--datastore', 'ds1', '--name', 'gen', '--memory', '48', '--priority', 'high']);
    expect(made.code, made.stderr).toBe(0);
    expect(made.stdout).toBe('created ds1:vms/gen.json\n');
    const mine = `<domain type='qemu'>
  <name>as-written</name>
  <memory unit='MiB'>40</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><serial type='pty'/></devices>
</domain>
`;
    const file = join(dir, 'operator.xml');
    await writeFile(file, mine.replace('<memory', `<uuid>${randomUUID()}</uuid>\n  <memory`));
    const op = await runCli(['vm', 'create', '--socket', sock, '--datastore', 'ds2', '--name', 'op', '--domain-xml', file]);
    expect(op.code, op.stderr).toBe(0);
    expect(await readFile(join(dir, 'datastores', 'ds2', 'vms', 'op.xml'), 'utf8')).toBe(await readFile(file, 'utf8'));
    const both = await runCli(['vm', 'create', '--socket', sock, '--datastore', 'ds2', '--name', 'op2', '--domain-xml', file, '--memory', '64']);
    expect(both.code).toBe(1);
    expect(both.stderr).toMatch(/--memory and --cpus do not go with --domain-xml/);

    readUuids();
    for (const vm of ['gen', 'op']) {
      mark(`vm start ${vm}`);
      const r = await runCli(['vm', 'start', vm, '--socket', sock], { timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(0);
      expect(copies(vm), vm).toHaveLength(1);
    }
    mark('gen and op run');
  });

  it('lab kill: the host\'s QEMU processes die with it, and its VMs run again elsewhere, exactly once', async () => {
    const rows = await vmsJson();
    const st = await runCli(['lab', 'status', '--json', '--dir', dir]);
    const master = (JSON.parse(st.stdout) as { role?: string; host?: string }[]).find((r) => r.role === 'master')?.host;
    // A slave running VMs (the master's failover is another test's business: this keeps it short).
    const victim = HOSTS.filter((h) => h !== master).sort((a, b) => rows.filter((r) => r.host === b).length - rows.filter((r) => r.host === a).length)[0]!;
    const theirs = rows.filter((r) => r.host === victim).map((r) => r.name);
    expect(theirs.length, `no VM on ${victim}: ${JSON.stringify(rows)}`).toBeGreaterThan(0);
    const pids = theirs.flatMap((vm) => copies(vm).map((c) => c.pid));
    expect(pids).toHaveLength(theirs.length);

    mark(`lab kill ${victim} (runs ${theirs.join(', ')}; QEMU pids ${pids.join(', ')})`);
    const k = await runCli(['lab', 'kill', victim, '--dir', dir]);
    expect(k.code, k.stderr).toBe(0);
    mark('lab kill returned');
    // Ask a host that is still up from now on.
    sock = join(dir, 'hosts', master ?? HOSTS.find((h) => h !== victim)!, 'vigil.sock');
    // Dead when the command returns, as after a power cut.
    expect(pids.filter(alive)).toEqual([]);
    expect([...qemuByUuid().values()].flat().filter((c) => c.host === victim)).toEqual([]);

    for (const vm of theirs) {
      const c = await waitFor(
        `${vm} to run again on another host`,
        () => {
          const now = copies(vm);
          return now.length === 1 && now[0]!.host !== victim ? now[0]! : undefined;
        },
        { timeoutMs: 30_000, intervalMs: 50 },
      );
      mark(`${vm} runs on ${c.host} (${c.domain}, QEMU pid ${c.pid})`);
    }
    const after = await waitFor(
      'vigil vms to show them running elsewhere',
      async () => {
        const r = await vmsJson();
        return theirs.every((vm) => {
          const row = r.find((x) => x.name === vm);
          return row?.state === 'running' && row.host !== victim && row.host === copies(vm)[0]?.host;
        })
          ? r
          : undefined;
      },
      { timeoutMs: 15_000 },
    );
    for (const vm of uuids.keys()) expect(copies(vm), vm).toHaveLength(1);
    expect(after.filter((r) => theirs.includes(r.name)).every((r) => r.restarts === 1)).toBe(true);
  });

  it('lab down: no domain of the lab and no QEMU process left; no VM ever ran twice', async () => {
    mark('lab down');
    const d = await runCli(['lab', 'down', '--dir', dir], { timeoutMs: 60_000 });
    mark(`lab down exited ${d.code}`);
    expect(d.code, d.stderr).toBe(0);
    const left = virshNames().filter((n) => seenDomains.has(n));
    expect(left).toEqual([]);
    const lab = new Set(uuids.values());
    expect([...qemuByUuid().entries()].filter(([u]) => lab.has(u))).toEqual([]);
    expect(seenDomains.size).toBeGreaterThanOrEqual(uuids.size + 1);
    if (watcher) clearInterval(watcher);
    watcher = null;
    expect(Object.fromEntries([...maxCopies].filter(([, n]) => n > 1))).toEqual({});
    expect([...maxCopies.values()].every((n) => n === 1)).toBe(true);
  });
});

describe('vigil lab up --driver libvirt: bad input', () => {
  it('an unreachable libvirtd: a clear error, exit 1, nothing written', async () => {
    const dir = join(await labTempDir('libvirt-bad'), 'lab');
    const r = await runCli(['lab', 'up', '--driver', 'libvirt', '--libvirt-uri', 'qemu:///nonexistent', '--dir', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--driver libvirt: (virsh is not installed|libvirtd does not answer on qemu:\/\/\/nonexistent).*scripts\/libvirt-setup\.sh.*docs\/libvirt\.md/s);
    expect(existsSync(dir)).toBe(false);
    await rm(join(dir, '..'), { recursive: true, force: true });
  });

  it('an unknown driver exits 2', async () => {
    const dir = join(await labTempDir('libvirt-bad'), 'lab');
    const r = await runCli(['lab', 'up', '--driver', 'xen', '--dir', dir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--driver must be process or libvirt, not "xen"/);
    expect(existsSync(dir)).toBe(false);
    await rm(join(dir, '..'), { recursive: true, force: true });
  });
});
