import type { Command } from 'commander';
import { ConfigError, loadConfig, loadSecret } from '@vigil/config';
import { Agent, createLogger, DEFAULT_SOCKET } from '@vigil/agent';
import { hangingCalls } from '@vigil/datastore';
import { CliError, EXIT_USAGE } from '../errors.js';

export const DEFAULT_STATE_DIR = '/var/lib/vigil';

export function registerAgent(program: Command): void {
  program
    .command('agent')
    .description('run the Vigil agent of one host in the foreground (stops cleanly on SIGTERM/SIGINT)')
    .requiredOption('--config <file>', 'cluster config (the same file on every host)')
    .requiredOption('--host <id>', 'this host\'s id in the config, e.g. host-12')
    .option('--state-dir <dir>', 'local state directory', DEFAULT_STATE_DIR)
    .option('--socket <path>', 'control socket for the CLI', DEFAULT_SOCKET)
    .option('--log-file <file>', 'also append log lines to this file')
    .option('--log-format <format>', 'json or text (default: the config\'s log.format)')
    .action(async (opts: { config: string; host: string; stateDir: string; socket: string; logFile?: string; logFormat?: string }) => {
      let config;
      let secret;
      try {
        config = loadConfig(opts.config);
        secret = loadSecret(config);
      } catch (err) {
        if (err instanceof ConfigError) throw new CliError(err.message, EXIT_USAGE);
        throw err;
      }
      if (!config.hosts[opts.host]) {
        throw new CliError(`--host: ${opts.host} is not in ${opts.config} (hosts: ${Object.keys(config.hosts).join(', ')})`, EXIT_USAGE);
      }
      if (opts.logFormat !== undefined && opts.logFormat !== 'json' && opts.logFormat !== 'text') {
        throw new CliError(`--log-format: must be json or text, not "${opts.logFormat}"`, EXIT_USAGE);
      }
      const logger = createLogger({
        host: opts.host,
        cluster: config.cluster,
        level: config.log.level,
        format: (opts.logFormat as 'json' | 'text' | undefined) ?? config.log.format,
        ...(opts.logFile ? { file: opts.logFile } : {}),
      });
      const agent = new Agent({ config, host: opts.host, secret, logger, stateDir: opts.stateDir, socketPath: opts.socket });
      process.on('uncaughtException', (err) => {
        logger.log('error', 'agent.crashed', `unexpected error: ${err.stack ?? err.message}`, {});
        void logger.close().finally(() => process.exit(70));
      });
      try {
        await agent.start();
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        logger.log('error', 'agent.start-failed', `cannot start: ${e.message}`, { code: e.code });
        await agent.stop('start failed').catch(() => {});
        await logger.close();
        throw new CliError(`cannot start the agent: ${e.message}`);
      }
      await new Promise<void>((resolve) => {
        const onSignal = (sig: NodeJS.Signals) => {
          void agent
            .stop(`received ${sig}`)
            .then(() => logger.log('info', 'agent.stopped', 'agent stopped', { signal: sig }))
            .finally(() =>
              logger.close().then(() => {
                // A storage call that never returns (dead NFS/sshfs server) would keep the
                // process from exiting (libuv joins its threads): leave at once instead.
                if (hangingCalls() > 0) process.kill(process.pid, 'SIGKILL');
                resolve();
              }),
            );
        };
        process.once('SIGTERM', onSignal);
        process.once('SIGINT', onSignal);
      });
    });
}
