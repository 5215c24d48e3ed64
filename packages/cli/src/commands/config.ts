import type { Command } from 'commander';
import { ConfigError, loadConfig, loadSecret, PROFILES, TIMING_DOCS, type ProfileName } from '@vigil/config';
import type { Timing } from '@vigil/core';
import { CliError, EXIT_USAGE } from '../errors.js';
import { printJson } from '../format.js';

export function registerConfig(program: Command): void {
  const config = program.command('config').description('check a cluster config; show timing profiles');

  config
    .command('check')
    .description('validate a cluster config file and its secret (exit 0 if valid, 2 otherwise)')
    .argument('<file>', 'cluster config (JSON)')
    .option('--json', 'print the resolved config (defaults filled in) as JSON')
    .action((file: string, opts: { json?: boolean }) => {
      try {
        const cfg = loadConfig(file);
        loadSecret(cfg);
        if (opts.json) return printJson(cfg);
        const hosts = Object.keys(cfg.hosts).length;
        process.stdout.write(
          `${file}: valid (cluster ${cfg.cluster}, ${hosts} host${hosts === 1 ? '' : 's'}, ${Object.keys(cfg.datastores).length} datastores, timing profile ${cfg.profile})\n`,
        );
      } catch (err) {
        if (err instanceof ConfigError) throw new CliError(err.message, EXIT_USAGE);
        throw err;
      }
    });

  config
    .command('profiles')
    .description('every timing field with its default, fdm and fast values and its trade-off')
    .option('--json', 'machine-readable output')
    .action((opts: { json?: boolean }) => {
      const keys = Object.keys(TIMING_DOCS) as (keyof Timing)[];
      const value = (p: ProfileName, k: keyof Timing) => PROFILES[p][k];
      if (opts.json) {
        return printJson(keys.map((k) => ({ field: k, default: value('default', k), fdm: value('fdm', k), fast: value('fast', k), ...TIMING_DOCS[k] })));
      }
      for (const k of keys) {
        process.stdout.write(
          `${k}\n  default: ${JSON.stringify(value('default', k))}  fdm: ${JSON.stringify(value('fdm', k))}  fast: ${JSON.stringify(value('fast', k))}\n  ${TIMING_DOCS[k].what}\n  Trade-off: ${TIMING_DOCS[k].tradeOff}\n\n`,
        );
      }
    });
}
