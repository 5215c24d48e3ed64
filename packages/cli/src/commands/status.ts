import type { Command } from 'commander';
import { controlRequest, DEFAULT_SOCKET, type AgentStatus, type HostRow } from '@vigil/agent';
import { ms, printJson, table } from '../format.js';

/**
 * The note `vigil hosts` prints on stderr when the asked agent is not the master: the table is
 * then that host's own view, not the cluster's (slaves hear only their master outside
 * elections, and only the master reads storage heartbeats and classifies silent hosts).
 */
export function hostsNote(st: Pick<AgentStatus, 'host' | 'role' | 'master'> | null, master: string | null): string {
  const who = st ? st.host : 'this host';
  const role = st?.role ?? (master ? 'slave' : 'election');
  const m = master ?? st?.master ?? null;
  const what =
    role === 'slave' ? `a slave of ${m ?? '?'}` : role === 'election' ? 'in an election (no master yet)' : role === 'isolated' ? 'isolated' : `${role}, not master`;
  const why =
    'A slave hears only its master, so the other hosts show as unreachable or unknown with storage heartbeat unknown; ' +
    'only the master reads storage heartbeats and classifies hosts as dead, isolated, partitioned or agentUnreachable.';
  const next = m && role === 'slave' ? `Run \`vigil hosts\` on ${m} for the cluster's view.` : 'Run `vigil hosts` on the master for the cluster\'s view (`vigil status` names it).';
  return `note: ${who} is ${what}: this is ${who}'s own view, not the cluster's. ${why} ${next}`;
}

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
    .description("every host's state and last heartbeat: the cluster's view when asked on the master, else the asked host's own view")
    .option('--json', 'machine-readable output (fields: docs/cli.md)')
    .option('--socket <path>', 'control socket of the local agent', DEFAULT_SOCKET)
    .action(async (opts: { json?: boolean; socket: string }) => {
      const res = (await controlRequest(opts.socket, { cmd: 'hosts' })) as { master: string | null; isMaster: boolean; hosts: HostRow[] };
      if (opts.json) return printJson(res.hosts);
      if (!res.isMaster) {
        // Whose view this is, precisely: the asked host's own, not the cluster's.
        const st = (await controlRequest(opts.socket, { cmd: 'status' }).catch(() => null)) as AgentStatus | null;
        process.stderr.write(hostsNote(st, res.master) + '\n');
      }
      process.stdout.write(
        table(
          ['HOST', 'ADDRESS', 'STATE', 'LAST HEARTBEAT', 'STORAGE HB', 'ISOLATED', 'VMS', 'DATASTORES', 'MAINTENANCE'],
          res.hosts.map((h) => [
            h.host,
            h.address,
            h.state,
            h.lastHeartbeatMs === null ? '-' : `${ms(h.lastHeartbeatMs)} ago`,
            h.storageHeartbeat,
            h.isolated === null ? '-' : h.isolated ? 'yes' : 'no',
            h.vms,
            h.datastores,
            h.maintenance ? 'yes' : 'no',
          ]),
        ) + '\n',
      );
    });
}
