/**
 * Entry point of the VM daemon: `node vmd-main.js <VmdArgs as base64url JSON>` (started by the
 * process driver, detached, its stdout and stderr appended to `<stateDir>/vmd.log`). The
 * arguments stay on the command line, so `ps` and the lab's tests can tell which host and state
 * directory a daemon serves. Exits 0 at once if a daemon of that state directory already runs.
 */
import { runVmd, type VmdArgs } from './vmd.js';

const encoded = process.argv[2];
if (!encoded) {
  process.stderr.write('usage: vmd-main <args as base64url JSON>\n');
  process.exit(2);
}
const args = JSON.parse(Buffer.from(encoded, 'base64url').toString('utf8')) as VmdArgs;
runVmd(args).then(
  (started) => {
    if (!started) process.exit(0); // another VM daemon of this state directory runs
  },
  (err: unknown) => {
    process.stderr.write(`${JSON.stringify({ timestamp: new Date().toISOString(), level: 'error', event: 'vmd.failed', message: `VM daemon failed to start: ${err instanceof Error ? err.stack : String(err)}` })}\n`);
    process.exit(1);
  },
);
