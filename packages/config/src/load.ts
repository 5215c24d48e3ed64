/** Reading the config file and the cluster secret from disk. */
import { readFileSync, statSync } from 'node:fs';
import { configSource, validateConfig } from './validate.js';
import { ConfigError, type ClusterConfig } from './types.js';

export const MIN_SECRET_BYTES = 16;
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/** An fs error as one line. Node's messages already start with the code ("ENOENT: no such file..."). */
export function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (!(err instanceof Error)) return String(err);
  if (!e.code || e.message.startsWith(`${e.code}:`) || e.message.startsWith(`${e.code} `)) return e.message;
  return `${e.code}: ${e.message}`;
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
    throw new ConfigError(file, [{ key: '', problem: `cannot read: ${describeFsError(err)}` }]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(file, [{ key: '', problem: `not valid JSON: ${(err as Error).message}` }]);
  }
  return validateConfig(json, file);
}

/**
 * Read the cluster secret named by `secretFile`. Throws ConfigError naming the key `secretFile`,
 * under `source`: by default the config file the config was loaded from (loadConfig /
 * validateConfig remember it), else "config".
 */
export function loadSecret(config: Pick<ClusterConfig, 'secretFile'>, source?: string): Buffer {
  const from = source ?? configSource(config) ?? 'config';
  let buf: Buffer;
  try {
    buf = readFileSync(config.secretFile);
  } catch (err) {
    throw new ConfigError(from, [{ key: 'secretFile', problem: `cannot read ${config.secretFile}: ${describeFsError(err)}` }]);
  }
  const secret = Buffer.from(buf.toString('utf8').trim(), 'utf8');
  if (secret.length < MIN_SECRET_BYTES) {
    throw new ConfigError(from, [
      { key: 'secretFile', problem: `${config.secretFile} holds ${secret.length} bytes; at least ${MIN_SECRET_BYTES} are required (e.g. openssl rand -hex 32)` },
    ]);
  }
  return secret;
}
