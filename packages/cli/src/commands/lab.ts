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

export function registerLab(program: Command): void {
  const labCmd = program.command('lab').description('a whole cluster on this machine: agents on 127.0.0.x:8182, local datastores, fast timings');
  const dirOpt = ['--dir <dir>', 'lab directory', DEFAULT_LAB_DIR] as const;

  labCmd
    .command('up')
    .description('create a lab and start its agents in the background')
    .option('--hosts <n>', 'number of hosts', intArg('--hosts', 1, 200), 4)
    .option('--datastores <n>', 'number of datastores', intArg('--datastores', 1, 16), 2)
    .option('--profile <name>', 'timing profile (fast or default)', 'fast')
    .option(...dirOpt)
    .option('--no-wait', 'return without waiting for the election')
    .action(async (opts: { hosts: number; datastores: number; profile: string; dir: string; wait: boolean }) => {
      if (opts.profile !== 'fast' && opts.profile !== 'default') throw new CliError(`--profile must be fast or default, not "${opts.profile}"`, EXIT_USAGE);
      const l = await lab(opts.dir);
      const ids = await l.create({ dir: opts.dir, hosts: opts.hosts, datastores: opts.datastores, profile: opts.profile });
      for (const id of ids) await l.start(id);
      process.stdout.write(`lab: started ${ids.length} agents (${ids.join(', ')}) in ${opts.dir}\n`);
      if (opts.wait) {
        const timeout = opts.profile === 'fast' ? 20_000 : 60_000;
        const master = await l.waitConverged(timeout);
        if (!master) {
          process.stdout.write(`lab: no agreement on a master after ${timeout / 1000} s; see \`vigil lab status --dir ${opts.dir}\` and the logs in ${opts.dir}/hosts/*/agent.log\n`);
        } else {
          process.stdout.write(`lab: ${master} is master; every other host is its slave\n`);
        }
      }
      process.stdout.write(
        [
          '',
          'Next:',
          `  vigil lab status --dir ${opts.dir}                       # role of every host`,
          `  vigil status --socket ${l.paths.socket('host-1')}   # one host, as on a real host`,
          `  vigil hosts --socket <master's socket>                  # the master's view`,
          `  vigil lab kill host-N --dir ${opts.dir}                  # power cut of a host`,
          `  vigil lab start host-N --dir ${opts.dir}                 # power it back on`,
          `  vigil lab down --dir ${opts.dir}                         # stop everything`,
          `  logs: ${opts.dir}/hosts/<host>/agent.log`,
          '',
        ].join('\n'),
      );
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
      const killed = await (await lab(opts.dir)).kill(host);
      process.stdout.write(killed ? `lab: ${host} powered off\n` : `lab: ${host} was not running\n`);
    });

  labCmd
    .command('start')
    .description('power a lab host back on')
    .argument('<host>', 'lab host id, e.g. host-2')
    .option(...dirOpt)
    .action(async (host: string, opts: { dir: string }) => {
      const pid = await (await lab(opts.dir)).start(host);
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
