import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { Lab } from '../lab/lab.js';
import { DEFAULT_LAB_DIR } from '../lab/layout.js';
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
    if (err instanceof Error && !(err instanceof CliError) && /^unknown lab host /.test(err.message)) throw new CliError(err.message, EXIT_USAGE);
    throw err;
  }
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
export function nextSteps(l: Lab, dir: string, master: string | null): string {
  const dirArg = dir === DEFAULT_LAB_DIR ? '' : ` --dir ${dir}`;
  const sock = (h: string) => l.paths.socket(h);
  const steps: [string, string][] = [
    [`npx vigil lab status${dirArg}`, 'role of every host'],
    [`npx vigil status --socket ${sock('host-1')}`, 'one host, as on a real host'],
    [`npx vigil hosts --socket ${sock(master ?? 'host-N')}`, "the master's view of every host"],
    [`npx vigil vm create --socket ${sock('host-1')} --datastore ds1 --name web1 -- sleep 100000`, 'a process VM'],
    [`npx vigil vm start web1 --socket ${sock('host-1')}`, 'the master places and protects it'],
    [`npx vigil vms --socket ${sock('host-1')}`, 'every VM (any host forwards to the master)'],
    [`npx vigil lab kill host-N${dirArg}`, 'power cut: the agent and its VMs die'],
    [`npx vigil lab start host-N${dirArg}`, 'power it back on'],
    [`npx vigil lab down${dirArg}`, `stop everything (--purge also deletes ${dir})`],
  ];
  // Align the comments, except after the odd long command.
  const width = Math.max(...steps.map(([c]) => c.length).filter((n) => n <= 72));
  return ['', 'Next:', ...steps.map(([c, why]) => `  ${c.padEnd(width)}  # ${why}`), `  logs: ${dir}/hosts/<host>/agent.log`, ''].join('\n') + '\n';
}

export function registerLab(program: Command): void {
  const labCmd = program.command('lab').description('a whole cluster on this machine: agents on 127.0.0.x:8182 (or --port), local datastores, fast timings');
  const dirOpt = ['--dir <dir>', 'lab directory', DEFAULT_LAB_DIR] as const;

  labCmd
    .command('up')
    .description('create a lab and start its agents in the background')
    .option('--hosts <n>', 'number of hosts', intArg('--hosts', 1, 200), 4)
    .option('--datastores <n>', 'number of datastores', intArg('--datastores', 1, 16), 2)
    .option('--vms <n>', 'process VMs to create, start and protect (spread by the master)', intArg('--vms', 0, 2000), 0)
    .option('--profile <name>', 'timing profile (fast or default)', 'fast')
    .option('--port <port>', 'UDP and TCP port of every lab agent (another port lets a second lab, or a test run, use the same 127.0.0.x addresses)', intArg('--port', 1, 65535), 8182)
    .option(...dirOpt)
    .option('--no-wait', 'return once the agents are up, without waiting for the election')
    .action(async (opts: { hosts: number; datastores: number; vms: number; profile: string; port: number; dir: string; wait: boolean }) => {
      if (opts.profile !== 'fast' && opts.profile !== 'default') throw new CliError(`--profile must be fast or default, not "${opts.profile}"`, EXIT_USAGE);
      const l = await lab(opts.dir);
      const ids = await l.create({ dir: opts.dir, hosts: opts.hosts, datastores: opts.datastores, profile: opts.profile, port: opts.port });
      const pids = new Map<string, number>();
      for (const id of ids) pids.set(id, await l.start(id));
      process.stdout.write(`lab: started ${ids.length} agents (${ids.join(', ')}) in ${opts.dir}\n`);
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
        }
      }
      process.stdout.write(nextSteps(l, opts.dir, master));
    });

  labCmd
    .command('status')
    .description('role and master of every lab host')
    .option(...dirOpt)
    .option('--json', 'machine-readable output')
    .action(async (opts: { dir: string; json?: boolean }) => {
      const reports = await (await lab(opts.dir)).statusAll();
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
    .command('down')
    .description('stop every lab agent; leaves no process behind')
    .option(...dirOpt)
    .option('--purge', 'also delete the lab directory')
    .action(async (opts: { dir: string; purge?: boolean }) => {
      const stopped = await (await lab(opts.dir)).down({ purge: opts.purge ?? false });
      process.stdout.write(`lab: stopped ${stopped.length} agent${stopped.length === 1 ? '' : 's'}${opts.purge ? `; removed ${opts.dir}` : ''}\n`);
    });
}
