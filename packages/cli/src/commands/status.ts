import type { Command } from 'commander';
import { controlRequest, DEFAULT_SOCKET, type AgentStatus, type HostRow } from '@vigil/agent';
import { ms, printJson, table } from '../format.js';

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description("this host's role, its master, cluster and accessible datastores")
    .option('--json', 'machine-readable output (fields: docs/cli.md)')
    .option('--socket <path>', 'control socket of the local agent', DEFAULT_SOCKET)
    .action(async (opts: { json?: boolean; socket: string }) => {
      const st = (await controlRequest(opts.socket, { cmd: 'status' })) as AgentStatus;
      if (opts.json) return printJson(st);
      process.stdout.write(
        table(
          ['field', 'value'],
          [
            ['host', `${st.host} (${st.address}:${st.port})`],
            ['cluster', st.cluster],
            ['role', st.role],
            ['master', st.master ?? '(none)'],
            ['datastores', st.datastores.join(', ') || '(none accessible)'],
            ['heartbeat datastores', `${st.heartbeatDatastores.join(', ') || '(none)'} (held: ${st.heartbeatsHeld.join(', ') || 'none'})`],
            ['owned datastores', st.role === 'master' ? st.ownedDatastores.join(', ') || '(none yet)' : '-'],
            ['generation', st.generation],
            ['timing profile', st.profile],
            ['uptime', ms(st.uptimeMs)],
          ],
        ) + '\n',
      );
    });

  program
    .command('hosts')
    .description("the master's view of every host: state and last heartbeat")
    .option('--json', 'machine-readable output (fields: docs/cli.md)')
    .option('--socket <path>', 'control socket of the local agent', DEFAULT_SOCKET)
    .action(async (opts: { json?: boolean; socket: string }) => {
      const res = (await controlRequest(opts.socket, { cmd: 'hosts' })) as { master: string | null; isMaster: boolean; hosts: HostRow[] };
      if (opts.json) return printJson(res.hosts);
      if (!res.isMaster) {
        process.stderr.write(
          res.master
            ? `note: this host is a slave; the view below is what it hears directly. The master is ${res.master}: run \`vigil hosts\` there for the cluster's view.\n`
            : 'note: no master yet (election in progress); the view below is what this host hears directly.\n',
        );
      }
      process.stdout.write(
        table(
          ['HOST', 'ADDRESS', 'STATE', 'LAST HEARTBEAT', 'STORAGE HB', 'ISOLATED', 'VMS', 'DATASTORES'],
          res.hosts.map((h) => [
            h.host,
            h.address,
            h.state,
            h.lastHeartbeatMs === null ? '-' : `${ms(h.lastHeartbeatMs)} ago`,
            h.storageHeartbeat,
            h.isolated === null ? '-' : h.isolated ? 'yes' : 'no',
            h.vms,
            h.datastores,
          ]),
        ) + '\n',
      );
    });
}
