/**
 * The `vigil` command line. Read commands talk to the local agent over its Unix socket; `agent`
 * runs the daemon; `config` checks configs; `lab` runs a whole cluster on one machine.
 */
import { Command, CommanderError } from 'commander';
import { registerAgent } from './commands/agent.js';
import { registerStatus } from './commands/status.js';
import { registerConfig } from './commands/config.js';
import { registerLab } from './commands/lab.js';
import { registerVm } from './commands/vm.js';
import { registerHost } from './commands/host.js';
import { registerDatastore } from './commands/datastore.js';
import { registerSim } from './commands/sim.js';
import { CliError, EXIT_FAILURE, EXIT_USAGE } from './errors.js';

export function buildProgram(): Command {
  const program = new Command('vigil')
    .description('Vigil: high availability for KVM/libvirt and process hosts on shared storage (after vSphere HA / FDM)')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerAgent(program);
  registerStatus(program);
  registerConfig(program);
  registerVm(program);
  registerHost(program);
  registerLab(program);
  registerDatastore(program);
  registerSim(program);
  for (const c of program.commands) c.exitOverride();
  return program;
}

/** The command being run (first argument that is not an option), e.g. "agent". */
function commandOf(argv: string[]): string | undefined {
  return argv.slice(2).find((a) => !a.startsWith('-'));
}

/**
 * `vigil ... | head`: once the reader goes away, writes fail with EPIPE. That is not an error
 * of the command: stop quietly with exit 0 (as `cat` does with SIGPIPE, minus the signal).
 * The agent is different: it must keep running when nobody reads its stdout, so there the lost
 * output is dropped (the log file, if any, still gets it).
 */
export function handleEpipe(streams: NodeJS.WriteStream[], exitOnEpipe: boolean): void {
  for (const s of streams) {
    s.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
      if (exitOnEpipe) process.exit(process.exitCode && process.exitCode !== 0 ? process.exitCode : 0);
    });
  }
}

export async function main(argv: string[]): Promise<void> {
  handleEpipe([process.stdout, process.stderr], commandOf(argv) !== 'agent');
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version "fail" with exit code 0; usage errors are already printed.
      process.exitCode = err.exitCode === 0 ? 0 : EXIT_USAGE;
      return;
    }
    if (err instanceof CliError) {
      process.stderr.write(`vigil: ${err.message}\n`);
      process.exitCode = err.exitCode;
      return;
    }
    process.stderr.write(`vigil: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = EXIT_FAILURE;
  }
}
