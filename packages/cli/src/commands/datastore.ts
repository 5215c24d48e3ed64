import { fork } from 'node:child_process';
import type { Command } from 'commander';
import { CliError, EXIT_FAILURE, EXIT_USAGE } from '../errors.js';
import {
  formatReport,
  MAX_WINDOW_MS,
  WORKER_ENV,
  WORKER_MODULE,
  type DatastoreReport,
  type WorkerMessage,
  type WorkerRequest,
} from '../datastore-report.js';

function parseWindow(v: string): number {
  if (!/^[0-9]{1,9}$/.test(v) || Number(v) > MAX_WINDOW_MS) {
    throw new CliError(`--window: must be a whole number of milliseconds from 0 to ${MAX_WINDOW_MS}, not "${v}"`, EXIT_USAGE);
  }
  return Number(v);
}

/** Before the reader says how long it will watch: resolution is a few storage calls at most. */
const RESOLVE_GUARD_MS = 60_000;

/**
 * Run the reading in a child process. A storage call on a hung mount cannot be cancelled and
 * keeps a libuv thread forever; a process holding one cannot exit (not even with process.exit).
 * The child bounds every call with a timeout and reports; this process kills it and exits
 * normally, whatever state the mount is in.
 */
function readInChild(req: WorkerRequest, onStart: (m: Extract<WorkerMessage, { type: 'start' }>) => void): Promise<DatastoreReport> {
  return new Promise<DatastoreReport>((resolve, reject) => {
    const child = fork(WORKER_MODULE, [], {
      env: { ...process.env, [WORKER_ENV]: '1' },
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    let done = false;
    let guard: NodeJS.Timeout | undefined;
    const finish = (err: Error | null, report?: DatastoreReport) => {
      if (done) return;
      done = true;
      if (guard) clearTimeout(guard);
      child.kill('SIGKILL');
      if (child.connected) child.disconnect();
      child.unref();
      if (err) reject(err);
      else resolve(report!);
    };
    const arm = (ms: number) => {
      if (guard) clearTimeout(guard);
      guard = setTimeout(() => finish(new CliError(`no answer from the storage reader within ${Math.round(ms / 1000)} s`, EXIT_FAILURE)), ms);
    };
    arm(RESOLVE_GUARD_MS);
    child.on('message', (m: WorkerMessage) => {
      if (m.type === 'start') {
        // Sampling: the window, plus a few bounded reads per file at the start and the end.
        arm(m.windowMs + 30 * m.callTimeoutMs + 10_000);
        onStart(m);
      } else if (m.type === 'report') finish(null, m.report);
      else finish(new CliError(m.message, m.exitCode));
    });
    child.on('error', (err) => finish(new CliError(`cannot start the storage reader: ${err.message}`, EXIT_FAILURE)));
    child.on('exit', (code, signal) => finish(new CliError(`the storage reader stopped unexpectedly (${signal ?? `exit code ${code}`})`, EXIT_FAILURE)));
    child.send(req);
  });
}

export function registerDatastore(program: Command): void {
  const ds = program.command('datastore').description("read a datastore's .vigil-ha files (no agent needed)");

  ds.command('show')
    .description(
      'who owns protectedlist, which storage heartbeats are alive (judged by change over a sampling window), poweron contents, poweredoff entries',
    )
    .argument('<name|path>', 'a datastore name from the config, or the path of a datastore')
    .option('--json', 'machine-readable output (fields: docs/datastore-format.md)')
    .option('--config <file>', 'cluster config giving datastore names, the cluster id and timing (default: /etc/vigil/cluster.json if it exists)')
    .option('--cluster <id>', 'cluster directory under <path>/.vigil-ha/ (default: from the config, or the only one there)')
    .option(
      '--window <ms>',
      'how long to watch records for change (default: max(2 x storageHeartbeatIntervalMs, leaseTimeoutMs) from the config; 10000 without one)',
    )
    .action(async (arg: string, opts: { json?: boolean; config?: string; cluster?: string; window?: string }) => {
      const req: WorkerRequest = {
        arg,
        ...(opts.config !== undefined ? { config: opts.config } : {}),
        ...(opts.cluster !== undefined ? { cluster: opts.cluster } : {}),
        ...(opts.window !== undefined ? { windowMs: parseWindow(opts.window) } : {}),
      };
      const report = await readInChild(req, (m) => {
        if (!opts.json && process.stderr.isTTY && m.windowMs >= 1000) {
          process.stderr.write(`watching ${m.clusterDir} for ${(m.windowMs / 1000).toFixed(1)} s to judge liveness by change...\n`);
        }
      });
      process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
    });
}
