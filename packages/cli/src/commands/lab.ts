import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { LAB_ISOLATION_RESPONSES, Lab, LabUsageError, type LabIsolationResponse } from '../lab/lab.js';
import { DEFAULT_LAB_DIR } from '../lab/layout.js';
import { LAB_DOMAIN_MEMORY_MB, type LabLibvirt } from '../lab/libvirt.js';
import { CliError, EXIT_USAGE } from '../errors.js';
import { ms, printJson, table } from '../format.js';

function intArg(name: string, lo: number, hi: number) {
  return (v: string) => {
    const n = Number(v);
    if (!/^[0-9]+$/.test(v) || n < lo || n > hi) throw new InvalidArgumentError(`${name} must be an integer from ${lo} to ${hi}`);
    return n;
  };
}

async function lab(dir: string): Promise<Lab> {
  return new Lab(dir);
}

/** Lab errors that are the caller's mistake (an unknown host) exit 2 like other usage errors. */
async function usage<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof LabUsageError || (err instanceof Error && !(err instanceof CliError) && /^unknown lab host /.test(err.message))) throw new CliError(err.message, EXIT_USAGE);
    throw err;
  }
}

/**
 * `host-1,host-2/host-3,host-4` (also with spaces around `/`, or split over several arguments:
 * `host-1,host-2 / host-3,host-4`) -> [[host-1, host-2], [host-3, host-4]].
 */
export function parsePartition(args: string[]): string[][] {
  const text = args.join(' ').trim();
  const syntax = `expected groups of hosts separated by "/", hosts within a group by ",": host-1,host-2/host-3,host-4 (got "${text}")`;
  if (!text.includes('/')) throw new CliError(`partition: ${syntax}`, EXIT_USAGE);
  return text.split('/').map((g) => {
    const hosts = g
      .split(',')
      .map((h) => h.trim())
      .filter((h, i, all) => h !== '' || all.length > 1);
    if (hosts.length === 0 || hosts.some((h) => h === '' || /\s/.test(h))) throw new CliError(`partition: ${syntax}`, EXIT_USAGE);
    return hosts;
  });
}

/** The lab hosts whose agent process started by `lab up` is gone. */
function gone(l: Lab, pids: Map<string, number>): string[] {
  return [...pids].filter(([, pid]) => !l.alive(pid)).map(([h]) => h);
}

/**
 * After `lab up` started the agents: wait until every agent answers on its control socket (it
 * has bound its address and socket), or until one of them exits. Returns the hosts whose agent
 * exited (an agent that fails at start, e.g. with EADDRINUSE, exits at once).
 */
export async function waitStarted(l: Lab, pids: Map<string, number>, timeoutMs: number): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dead = gone(l, pids);
    if (dead.length > 0) return dead;
    const reports = await l.statusAll();
    if (reports.every((r) => r.up)) {
      // The agent opens its control socket before its TCP listener: give a late bind failure a moment.
      await new Promise((r) => setTimeout(r, 300));
      return gone(l, pids);
    }
    if (Date.now() > deadline) return gone(l, pids);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Wait for one master, checking all along that no agent died. */
export async function waitMaster(l: Lab, pids: Map<string, number>, timeoutMs: number): Promise<{ master: string | null; dead: string[] }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dead = gone(l, pids);
    if (dead.length > 0) return { master: null, dead };
    const master = await l.waitConverged(Math.max(0, Math.min(500, deadline - Date.now())));
    if (master) return { master, dead: gone(l, pids) };
    if (Date.now() > deadline) return { master: null, dead: gone(l, pids) };
  }
}

export function reportDead(l: Lab, dir: string, dead: string[]): never {
  for (const h of dead) {
    process.stderr.write(`lab: the agent of ${h} exited at start; the end of ${l.paths.log(h)}:\n`);
    const tail = l
      .tail(h, 5)
      .split('\n')
      .filter(Boolean)
      .map((line) => `  ${line}`)
      .join('\n');
    process.stderr.write((tail || '  (empty)') + '\n');
  }
  throw new CliError(
    `${dead.length} of the lab's agents failed to start (${dead.join(', ')}). A common cause is EADDRINUSE: another lab or a test run holds the same 127.0.0.x address and port (try another --port). ` +
      `The other agents are still running: stop them with \`npx vigil lab down --dir ${dir}\`.`,
  );
}

/** What `lab up` suggests typing next (commands that work in a checkout: `npx vigil`). */
export function nextSteps(l: Lab, dir: string, master: string | null, netnsHosts: string[] = [], libvirtUri: string | null = null): string {
  const half = Math.ceil(netnsHosts.length / 2);
  const groups = `${netnsHosts.slice(0, half).join(',')}/${netnsHosts.slice(half).join(',')}`;
  const dirArg = dir === DEFAULT_LAB_DIR ? '' : ` --dir ${dir}`;
  const sock = (h: string) => l.paths.socket(h);
  const steps: [string, string][] = [
    [`npx vigil lab status${dirArg}`, 'role of every host'],
    [`npx vigil status --socket ${sock('host-1')}`, 'one host, as on a real host'],
    [`npx vigil hosts --socket ${sock(master ?? 'host-N')}`, "the master's view of every host"],
    libvirtUri
      ? [`npx vigil vm create --socket ${sock('host-1')} --datastore ds1 --name web1`, 'a diskless QEMU domain (or --domain-xml FILE)']
      : [`npx vigil vm create --socket ${sock('host-1')} --datastore ds1 --name web1 -- sleep 100000`, 'a process VM'],
    [`npx vigil vm start web1 --socket ${sock('host-1')}`, 'the master places and protects it'],
    [`npx vigil vms --socket ${sock('host-1')}`, 'every VM (any host forwards to the master)'],
    ...(libvirtUri ? ([[`virsh -c ${libvirtUri} list`, 'the running domains: vigil-<host>-<vm>-<hash>']] as [string, string][]) : []),
    [`npx vigil lab kill host-N${dirArg}`, 'power cut: the agent and its VMs die'],
    [`npx vigil lab start host-N${dirArg}`, 'power it back on'],
    ...(netnsHosts.length > 0
      ? ([
          [`npx vigil lab isolate host-N${dirArg}`, 'host-N loses all network'],
          ...(netnsHosts.length > 1 ? [[`npx vigil lab partition ${groups}${dirArg}`, 'two groups that cannot talk']] : []),
          [`npx vigil lab heal${dirArg}`, 'undo isolate, partition and one-way'],
          [`npx vigil lab storage-loss host-N ds1${dirArg}`, 'hide ds1 from host-N only (storage-heal undoes it)'],
        ] as [string, string][])
      : []),
    [`npx vigil lab down${dirArg}`, `stop everything (--purge also deletes ${dir})`],
  ];
  // Align the comments, except after the odd long command.
  const width = Math.max(...steps.map(([c]) => c.length).filter((n) => n <= 72));
  return ['', 'Next:', ...steps.map(([c, why]) => `  ${c.padEnd(width)}  # ${why}`), `  logs: ${dir}/hosts/<host>/agent.log`, ''].join('\n') + '\n';
}

export function registerLab(program: Command): void {
  const labCmd = program.command('lab').description('a whole cluster on this machine: agents on 127.0.0.x:8182 (or --port; or each in its own network namespace with --netns), local datastores, fast timings');
  const dirOpt = ['--dir <dir>', 'lab directory', DEFAULT_LAB_DIR] as const;

  labCmd
    .command('up')
    .description('create a lab and start its agents in the background')
    .option('--hosts <n>', 'number of hosts', intArg('--hosts', 1, 200), 4)
    .option('--datastores <n>', 'number of datastores', intArg('--datastores', 1, 16), 2)
    .option('--vms <n>', 'process VMs to create, start and protect (spread by the master)', intArg('--vms', 0, 2000), 0)
    .option('--profile <name>', 'timing profile (fast, default or fdm)', 'fast')
    .option('--port <port>', 'UDP and TCP port of every lab agent (another port lets a second lab, or a test run, use the same 127.0.0.x addresses)', intArg('--port', 1, 65535), 8182)
    .option(...dirOpt)
    .option('--no-wait', 'return once the agents are up, without waiting for the election')
    .option('--netns', 'each host in its own network namespace on a bridge (root): enables isolate, partition, one-way, heal, storage-loss, storage-heal')
    .option('--isolation-response <response>', `the cluster's isolation response: ${LAB_ISOLATION_RESPONSES.join(', ')} (default leavePoweredOn)`)
    .option('--driver <driver>', 'process (VMs are processes) or libvirt (VMs are small diskless QEMU domains of this machine\'s libvirtd, qemu:///system: see docs/libvirt.md)', 'process')
    .option('--libvirt-uri <uri>', 'with --driver libvirt: the libvirtd of this machine to use (default qemu:///system)')
    .action(async (opts: { hosts: number; datastores: number; vms: number; profile: string; port: number; dir: string; wait: boolean; netns?: boolean; isolationResponse?: string; driver: string; libvirtUri?: string }) => {
      if (opts.profile !== 'fast' && opts.profile !== 'default' && opts.profile !== 'fdm') throw new CliError(`--profile must be fast, default or fdm, not "${opts.profile}"`, EXIT_USAGE);
      if (opts.driver !== 'process' && opts.driver !== 'libvirt') throw new CliError(`--driver must be process or libvirt, not "${opts.driver}"`, EXIT_USAGE);
      if (opts.isolationResponse !== undefined && !(LAB_ISOLATION_RESPONSES as readonly string[]).includes(opts.isolationResponse)) {
        throw new CliError(`--isolation-response must be one of ${LAB_ISOLATION_RESPONSES.join(', ')}, not "${opts.isolationResponse}"`, EXIT_USAGE);
      }
      const l = await lab(opts.dir);
      const ids = await usage(
        l.create({
          dir: opts.dir,
          hosts: opts.hosts,
          datastores: opts.datastores,
          profile: opts.profile,
          port: opts.port,
          ...(opts.netns ? { netns: true } : {}),
          ...(opts.isolationResponse ? { isolationResponse: opts.isolationResponse as LabIsolationResponse } : {}),
          ...(opts.driver === 'libvirt' ? { driver: 'libvirt' as const } : {}),
          ...(opts.libvirtUri !== undefined ? { libvirtUri: opts.libvirtUri } : {}),
        }),
      );
      const pids = new Map<string, number>();
      for (const id of ids) pids.set(id, await l.start(id));
      const st = await l.readState();
      process.stdout.write(`lab: started ${ids.length} agents (${ids.join(', ')}) in ${opts.dir}\n`);
      if (st?.libvirt) process.stdout.write(`lab: driver libvirt: VMs are QEMU domains of the libvirtd on ${st.libvirt.uri}, shared by every lab host (domain names vigil-<host>-<vm>-<hash>)\n`);
      if (st?.netns) {
        const n = await l.netns();
        process.stdout.write(`lab: network namespaces ${ids.length > 1 ? `${n.nsName(ids[0]!)} ... ` : ''}${n.nsName(ids[ids.length - 1]!)} on bridge ${st.netns.prefix}-br, subnet ${st.netns.subnet}, isolation address ${n.isolationAddress()}\n`);
      }
      const timeout = opts.profile === 'fast' ? 20_000 : 60_000;
      const startedAt = Date.now();
      // Even with --no-wait: make sure every agent came up (bound its address and socket).
      const dead = await waitStarted(l, pids, 10_000);
      if (dead.length > 0) reportDead(l, opts.dir, dead);
      let master: string | null = null;
      if (opts.wait) {
        const r = await waitMaster(l, pids, Math.max(1000, timeout - (Date.now() - startedAt)));
        if (r.dead.length > 0) reportDead(l, opts.dir, r.dead);
        master = r.master;
        if (!master) {
          process.stdout.write(`lab: no agreement on a master after ${timeout / 1000} s; see \`npx vigil lab status --dir ${opts.dir}\` and the logs in ${opts.dir}/hosts/*/agent.log\n`);
        } else {
          process.stdout.write(`lab: ${master} is master; every other host is its slave\n`);
        }
      }
      if (opts.vms > 0) {
        if (!master) {
          process.stdout.write(`lab: no VMs created: ${opts.wait ? 'no master was agreed' : '--no-wait does not wait for a master'}; create them with \`npx vigil vm create\`\n`);
        } else {
          const names = await l.createVms(opts.vms, { via: master });
          process.stdout.write(`lab: created, started and protected ${names.length} VM${names.length === 1 ? '' : 's'} (${names.length > 4 ? `${names.slice(0, 3).join(', ')}, ..., ${names[names.length - 1]}` : names.join(', ')})\n`);
          const lv = await l.libvirt();
          if (lv) process.stdout.write(libvirtReport(lv, names, `lab: their domains (diskless, ${LAB_DOMAIN_MEMORY_MB} MiB, XML in ${opts.dir}/datastores/<ds>/vms/<vm>.xml):`));
        }
      }
      process.stdout.write(nextSteps(l, opts.dir, master, st?.netns ? ids : [], st?.libvirt?.uri ?? null));
    });

  labCmd
    .command('status')
    .description('role and master of every lab host')
    .option(...dirOpt)
    .option('--json', 'machine-readable output')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const l = await lab(opts.dir);
      const reports = await l.statusAll();
      if (opts.json) return printJson(reports.map((r) => (r.up ? { up: true, ...r.status } : { host: r.host, up: false, pid: r.pid })));
      process.stdout.write(
        table(
          ['HOST', 'ADDRESS', 'AGENT', 'ROLE', 'MASTER', 'DATASTORES', 'UPTIME'],
          reports.map((r) =>
            r.up
              ? [r.host, r.status.address, `up (pid ${r.status.pid})`, r.status.role, r.status.master ?? '-', r.status.datastores.join(',') || '-', ms(r.status.uptimeMs)]
              : [r.host, '-', 'down', '-', '-', '-', '-'],
          ),
        ) + '\n',
      );
      const lv = await l.libvirt();
      if (lv) process.stdout.write(libvirtReport(lv, [...lv.vms().values()], `libvirt: ${lv.uri}, shared by the lab's hosts`));
      const info = await l.netnsInfo().catch((err: Error) => err);
      if (info instanceof Error) {
        process.stdout.write(`netns: cannot read the namespaces: ${info.message}\n`);
      } else if (info) {
        const faults = netnsFaults(info.rules);
        // Hosts powered off by `lab kill` have their bridge port down too: they are not "isolated".
        const poweredOff = (await l.readState())?.poweredOff ?? [];
        const hidden: string[] = [];
        for (const r of reports) {
          const ds = await l.hiddenDatastores(r.host);
          if (ds.length > 0) hidden.push(`${r.host}: ${ds.join(',')}`);
        }
        process.stdout.write(
          [
            `netns: ${info.prefix} (${info.namespaces.length} namespaces)`,
            `  isolated:     ${info.isolated.filter((h) => !poweredOff.includes(h)).join(', ') || '-'}`,
            `  partition:    ${faults.partition.join('  ') || '-'}`,
            `  one-way:      ${faults.oneWay.join(', ') || '-'}`,
            `  storage-loss: ${hidden.join('; ') || '-'}`,
          ].join('\n') + '\n',
        );
      }
    });

  labCmd
    .command('kill')
    .description('power cut: the host\'s agent (and everything it started) dies at once')
    .argument('<host>', 'lab host id, e.g. host-2')
    .option(...dirOpt)
    .action(async (host: string, opts: { dir: string }) => {
      const killed = await usage((await lab(opts.dir)).kill(host));
      process.stdout.write(killed ? `lab: ${host} powered off\n` : `lab: ${host} was not running\n`);
    });

  labCmd
    .command('start')
    .description('power a lab host back on')
    .argument('<host>', 'lab host id, e.g. host-2')
    .option(...dirOpt)
    .action(async (host: string, opts: { dir: string }) => {
      const pid = await usage((await lab(opts.dir)).start(host));
      process.stdout.write(`lab: ${host} started (pid ${pid})\n`);
    });

  labCmd
    .command('isolate')
    .description('netns lab: the host loses all network (no agent traffic, no isolation address); `heal` undoes it')
    .argument('<host>', 'lab host id, e.g. host-2')
    .option(...dirOpt)
    .action(async (host: string, opts: { dir: string }) => {
      await usage((await lab(opts.dir)).isolate(host));
      process.stdout.write(`lab: ${host} isolated (its bridge port is down)\n`);
    });

  labCmd
    .command('partition')
    .description('netns lab: split the hosts into groups that cannot talk to each other (each still reaches the isolation address)')
    .argument('<groups...>', 'every lab host once: host-1,host-2/host-3,host-4')
    .option(...dirOpt)
    .action(async (groups: string[], opts: { dir: string }) => {
      const parsed = parsePartition(groups);
      await usage((await lab(opts.dir)).partition(parsed));
      process.stdout.write(`lab: partitioned: ${parsed.map((g) => g.join(',')).join(' / ')}\n`);
    });

  labCmd
    .command('one-way')
    .description('netns lab: drop IP traffic from one host to another; the other direction passes')
    .argument('<from>', 'lab host whose packets to <to> are dropped')
    .argument('<to>', 'lab host that no longer hears <from>')
    .option(...dirOpt)
    .action(async (from: string, to: string, opts: { dir: string }) => {
      await usage((await lab(opts.dir)).oneWay(from, to));
      process.stdout.write(`lab: ${from} -> ${to} dropped (${to} -> ${from} still passes)\n`);
    });

  labCmd
    .command('heal')
    .description('netns lab: undo every isolate, partition and one-way (storage losses stay: storage-heal)')
    .option(...dirOpt)
    .action(async (opts: { dir: string }) => {
      await usage((await lab(opts.dir)).heal());
      process.stdout.write('lab: network healed (every bridge port up, no partition or one-way rule)\n');
    });

  labCmd
    .command('storage-loss')
    .description("netns lab: hide a datastore from one host only (its agent, VM daemon and VMs)")
    .argument('<host>', 'lab host id, e.g. host-2')
    .argument('<datastore>', 'datastore name, e.g. ds1')
    .option(...dirOpt)
    .action(async (host: string, ds: string, opts: { dir: string }) => {
      const pids = await usage((await lab(opts.dir)).storageLoss(host, ds));
      process.stdout.write(`lab: ${ds} hidden from ${host} (mount namespace of pid ${pids.join(', ')})\n`);
    });

  labCmd
    .command('storage-heal')
    .description('netns lab: make a datastore hidden by storage-loss visible to the host again')
    .argument('<host>', 'lab host id, e.g. host-2')
    .argument('<datastore>', 'datastore name, e.g. ds1')
    .option(...dirOpt)
    .action(async (host: string, ds: string, opts: { dir: string }) => {
      await usage((await lab(opts.dir)).storageHeal(host, ds));
      process.stdout.write(`lab: ${ds} visible to ${host} again\n`);
    });

  labCmd
    .command('down')
    .description('stop every lab agent; leaves no process behind (and, for a netns lab, no namespace, link, rule or mount)')
    .option(...dirOpt)
    .option('--purge', 'also delete the lab directory')
    .action(async (opts: { dir: string; purge?: boolean }) => {
      const l = await lab(opts.dir);
      const stopped = await l.down({ purge: opts.purge ?? false });
      for (const note of l.downNotes) process.stderr.write(`lab: ${note}\n`);
      process.stdout.write(`lab: stopped ${stopped.length} agent${stopped.length === 1 ? '' : 's'}${opts.purge ? `; removed ${opts.dir}` : ''}\n`);
    });
}

/**
 * The domains of a libvirt lab's VMs, as found in /proc: each VM with the host whose domain runs
 * it and the QEMU pid (two lines for a VM running twice; `-` for one running nowhere).
 */
export function libvirtReport(lv: LabLibvirt, names: string[], title: string): string {
  const qemus = lv.qemus();
  const rows: string[][] = [];
  for (const name of [...new Set(names)].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))) {
    const mine = qemus.filter((q) => q.name === name);
    if (mine.length === 0) rows.push([name, '-', '-', '-']);
    for (const q of mine) rows.push([name, q.host, q.domain, String(q.pid)]);
  }
  const body = rows.length > 0 ? table(['VM', 'HOST', 'DOMAIN', 'QEMU PID'], rows) : '(no VMs)';
  return `${title}\n${body.split('\n').map((l) => `  ${l}`).join('\n')}\n`;
}

/** The partition groups and one-way pairs of a netns lab, read from the comments of its nft rules. */
export function netnsFaults(rules: string): { partition: string[]; oneWay: string[] } {
  const oneWay = [...rules.matchAll(/comment "oneway (host-[0-9]+)>(host-[0-9]+)"/g)].map((m) => `${m[1]} -> ${m[2]}`);
  const partition: string[] = [];
  const cut = /iifname \{?\s*([^}]*?)\s*\}? oifname .* comment "partition ([0-9]+)>([0-9]+)"/g;
  const groups = new Map<number, string>();
  for (const m of rules.matchAll(cut)) {
    const ports = m[1]!.split(',').map((p) => p.trim().replace(/"/g, '').replace(/^.*-h/, 'host-'));
    groups.set(Number(m[2]), ports.join(','));
  }
  for (const k of [...groups.keys()].sort((a, b) => a - b)) partition.push(groups.get(k)!);
  return { partition: partition.length > 1 ? [partition.join(' / ')] : [], oneWay };
}
