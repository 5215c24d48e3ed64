/**
 * Entry point of a VM supervisor process: `node supervisor-main.js <vm id as base64url> <args as base64url JSON>`.
 * The VM id appears in the command line so `ps` and the agent can tell which VM it serves.
 */
import { runSupervisor, type SupervisorArgs } from './supervisor.js';

const encoded = process.argv[3];
if (!encoded) {
  process.stderr.write('usage: supervisor-main <vm-b64> <args-b64>\n');
  process.exit(2);
}
const args = JSON.parse(Buffer.from(encoded, 'base64url').toString('utf8')) as SupervisorArgs;
runSupervisor(args).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`supervisor of ${args.vm} failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(6);
  },
);
