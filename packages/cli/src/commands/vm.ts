import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { controlRequest, DEFAULT_SOCKET } from '@vigil/agent';
import type { VmView } from '@vigil/core';
import { printJson, table } from '../format.js';
import { registerVmStats, STATS_HEADERS, statsCells, statsNotes, type VmRowWithStats } from './vm-stats.js';
import { readFile, stat } from 'node:fs/promises';
import { CliError, EXIT_USAGE } from '../errors.js';

/** `vm create --domain-xml`: the XML travels in the control request, which must fit in 64 KiB. */
const MAX_CREATE_XML_BYTES = 48 * 1024;

function domainTypeArg(v: string): string {
  if (v !== 'kvm' && v !== 'qemu') throw new InvalidArgumentError('must be kvm or qemu');
  return v;
}

async function readDomainXml(file: string): Promise<string> {
  const st = await stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new CliError(`--domain-xml: cannot read ${file}: ${err.code ?? err.message}`, EXIT_USAGE);
  });
  if (!st.isFile()) throw new CliError(`--domain-xml: ${file} is not a regular file`, EXIT_USAGE);
  if (st.size > MAX_CREATE_XML_BYTES) {
    throw new CliError(`--domain-xml: ${file} is larger than ${MAX_CREATE_XML_BYTES / 1024} KiB: copy it to <datastore>/vms/ yourself and write its JSON file beside it (docs/libvirt.md)`, EXIT_USAGE);
  }
  return readFile(file, 'utf8');
}

const PRIORITIES = ['disabled', 'lowest', 'low', 'medium', 'high', 'highest'];

function priorityArg(v: string): string {
  if (!PRIORITIES.includes(v)) throw new InvalidArgumentError(`must be one of ${PRIORITIES.join(', ')}`);
  return v;
}

function positiveInt(name: string) {
  return (v: string) => {
    if (!/^[0-9]{1,9}$/.test(v) || Number(v) < 1) throw new InvalidArgumentError(`${name} must be a positive integer`);
    return Number(v);
  };
}

const socketOpt = ['--socket <path>', 'control socket of the local agent', DEFAULT_SOCKET] as const;
/** VM operations can wait for a power-on and a protectedlist commit. */
const VM_TIMEOUT_MS = 120_000;

async function vmOp(socket: string, body: Record<string, unknown>): Promise<void> {
  const res = (await controlRequest(socket, { cmd: 'vm', ...body }, VM_TIMEOUT_MS)) as { message: string };
  process.stdout.write(`${res.message}\n`);
}

export function registerVm(program: Command): void {
  program
    .command('vms')
    .description('every VM: where it runs, power state, protection, priority, restarts (the master\'s view)')
    .option('--json', 'machine-readable output (fields: docs/cli.md)')
    .option('--stats', 'add each running VM\'s latest statistics (CPU %, memory, disk, network), asked of every host through the master')
    .option(...socketOpt)
    .action(async (opts: { json?: boolean; stats?: boolean; socket: string }) => {
      const stats = opts.stats === true;
      const res = (await controlRequest(opts.socket, { cmd: 'vms', ...(stats ? { stats: true } : {}) }, 30_000)) as { master: string; vms: (VmView & Partial<VmRowWithStats>)[] };
      if (opts.json) return printJson(res.vms);
      process.stdout.write(
        table(
          ['NAME', 'HOST', 'POWER', 'PROTECTED', 'PRIORITY', 'RESTARTS', 'STATE', ...(stats ? STATS_HEADERS : []), 'ID'],
          res.vms.map((v) => [v.name, v.host, v.power, v.protected ? 'yes' : 'no', v.priority, v.restarts, v.state + (v.detail && v.state !== 'running' ? ` (${v.detail})` : ''), ...(stats ? statsCells({ ...v, stats: v.stats ?? null, statsError: v.statsError ?? null }) : []), v.id]),
        ) + '\n',
      );
      if (stats) for (const l of statsNotes(res.vms.map((v) => ({ ...v, stats: v.stats ?? null, statsError: v.statsError ?? null })))) process.stdout.write(`${l}\n`);
    });

  const vm = program.command('vm').description('create, start, stop, protect and configure VMs (handled by the master)');

  vm.command('create')
    .description('write a VM on a datastore (does not start it): a process VM (its command after --), or with the libvirt driver a domain XML (--domain-xml FILE, or a small diskless test domain)')
    .requiredOption('--datastore <ds>', 'datastore holding the VM')
    .requiredOption('--name <name>', 'VM name (unique on the datastore)')
    .option('--memory <mb>', 'memory the VM needs, MB (process VM: default 128; diskless libvirt domain: default 64 MiB; not with --domain-xml)', positiveInt('--memory'))
    .option('--cpus <n>', 'vCPUs the VM needs (default 1; not with --domain-xml)', positiveInt('--cpus'))
    .option('--priority <p>', `restart priority: ${PRIORITIES.join(', ')}`, priorityArg, 'medium')
    .option('--domain-xml <file>', `libvirt driver: the domain XML to copy to <datastore>/vms/<name>.xml (at most ${MAX_CREATE_XML_BYTES / 1024} KiB; memory and vCPUs come from it)`)
    .option('--domain-type <type>', 'libvirt driver, without --domain-xml: kvm or qemu (TCG) for the diskless domain (default: kvm if libvirtd offers it)', domainTypeArg)
    .option(...socketOpt)
    .argument('[command...]', 'process driver: the VM\'s command and arguments (after --)')
    .action(async (command: string[], opts: { datastore: string; name: string; memory?: number; cpus?: number; priority: string; domainXml?: string; domainType?: string; socket: string }) => {
      const [cmd, ...args] = command;
      const common = { op: 'create', datastore: opts.datastore, name: opts.name, priority: opts.priority, memoryMB: opts.memory, cpus: opts.cpus };
      if (opts.domainXml !== undefined || opts.domainType !== undefined) {
        // A libvirt VM (the agent refuses it if the cluster runs the process driver).
        if (cmd !== undefined) throw new CliError('--domain-xml and --domain-type make a libvirt VM, which takes no command after --', EXIT_USAGE);
        const domainXml = opts.domainXml === undefined ? undefined : await readDomainXml(opts.domainXml);
        await vmOp(opts.socket, { ...common, domainXml, domainType: opts.domainType });
        return;
      }
      // No command: a diskless libvirt domain (the agent says so if the cluster runs the process driver).
      await vmOp(opts.socket, cmd === undefined ? common : { ...common, command: cmd, args });
    });

  vm.command('start')
    .description('power a VM on (on --host, or where the master places it) and protect it')
    .argument('<name>', 'VM name or id (datastore:path)')
    .option('--host <host>', 'host to start it on')
    .option(...socketOpt)
    .action(async (name: string, opts: { host?: string; socket: string }) => {
      await vmOp(opts.socket, { op: 'start', vm: name, ...(opts.host ? { host: opts.host } : {}) });
    });

  vm.command('stop')
    .description('intentional stop: unprotect, then shut the VM down; it is never restarted')
    .argument('<name>', 'VM name or id')
    .option(...socketOpt)
    .action(async (name: string, opts: { socket: string }) => vmOp(opts.socket, { op: 'stop', vm: name }));

  for (const op of ['protect', 'unprotect'] as const) {
    vm.command(op)
      .description(op === 'protect' ? 'protect a VM: commit it to the protectedlist (restarted after failures)' : 'unprotect a VM (it keeps running; never restarted)')
      .argument('<name>', 'VM name or id')
      .option(...socketOpt)
      .action(async (name: string, opts: { socket: string }) => vmOp(opts.socket, { op, vm: name }));
  }

  vm.command('set')
    .description('change a VM\'s settings')
    .argument('<name>', 'VM name or id')
    .requiredOption('--priority <p>', `restart priority: ${PRIORITIES.join(', ')}`, priorityArg)
    .option(...socketOpt)
    .action(async (name: string, opts: { priority: string; socket: string }) => vmOp(opts.socket, { op: 'set', vm: name, priority: opts.priority }));

  registerVmStats(vm, socketOpt);
}
