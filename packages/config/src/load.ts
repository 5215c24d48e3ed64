/** Reading the config file and the cluster secret from disk. */
import { readFileSync, statSync } from 'node:fs';
import { validateConfig } from './validate.js';
import { ConfigError, type ClusterConfig } from './types.js';

export const MIN_SECRET_BYTES = 16;
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `${e.code}: ${e.message}` : String(err);
}

/** Load and validate a config file. Throws ConfigError (with key names) on any problem. */
export function loadConfig(file: string): ClusterConfig {
  let text: string;
  try {
    const st = statSync(file);
    if (!st.isFile()) throw new ConfigError(file, [{ key: '', problem: 'not a regular file' }]);
    if (st.size > MAX_CONFIG_BYTES) throw new ConfigError(file, [{ key: '', problem: `larger than ${MAX_CONFIG_BYTES} bytes` }]);
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(file, [{ key: '', problem: `cannot read: ${describe(err)}` }]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(file, [{ key: '', problem: `not valid JSON: ${(err as Error).message}` }]);
  }
  return validateConfig(json, file);
}

/** Read the cluster secret named by `secretFile`. Throws ConfigError naming `secretFile`. */
export function loadSecret(config: Pick<ClusterConfig, 'secretFile'>): Buffer {
  let buf: Buffer;
  try {
    buf = readFileSync(config.secretFile);
  } catch (err) {
    throw new ConfigError('config', [{ key: 'secretFile', problem: `cannot read ${config.secretFile}: ${describe(err)}` }]);
  }
  const secret = Buffer.from(buf.toString('utf8').trim(), 'utf8');
  if (secret.length < MIN_SECRET_BYTES) {
    throw new ConfigError('config', [
      { key: 'secretFile', problem: `${config.secretFile} holds ${secret.length} bytes; at least ${MIN_SECRET_BYTES} are required (e.g. openssl rand -hex 32)` },
    ]);
  }
  return secret;
}
