import type { Command } from 'commander';
import { controlRequest, DEFAULT_SOCKET } from '@vigil/agent';

export function registerHost(program: Command): void {
  const host = program.command('host').description('host operations (handled by the master)');
  const maint = host.command('maintenance').description('maintenance mode: a host in maintenance receives no restarts and is not elected master');
  maint
    .command('enter')
    .description('put a host in maintenance mode (refused while protected VMs run there, unless --evacuate)')
    .argument('<host>', 'host id, e.g. host-3')
    .option('--evacuate', 'shut its protected VMs down and restart them on other hosts')
    .option('--socket <path>', 'control socket of the local agent', DEFAULT_SOCKET)
    .action(async (h: string, opts: { evacuate?: boolean; socket: string }) => {
      const res = (await controlRequest(opts.socket, { cmd: 'maintenance', host: h, enter: true, evacuate: opts.evacuate === true }, 600_000)) as { message: string };
      process.stdout.write(`${res.message}\n`);
    });
  maint
    .command('exit')
    .description('take a host out of maintenance mode')
    .argument('<host>', 'host id')
    .option('--socket <path>', 'control socket of the local agent', DEFAULT_SOCKET)
    .action(async (h: string, opts: { socket: string }) => {
      const res = (await controlRequest(opts.socket, { cmd: 'maintenance', host: h, enter: false }, 60_000)) as { message: string };
      process.stdout.write(`${res.message}\n`);
    });
}
