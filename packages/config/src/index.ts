export * from './types.js';
export * from './profiles.js';
export { configSchema, hostSchema } from './schema.js';
export { validateConfig, checkTiming, heartbeatDatastoresFor, configSource } from './validate.js';
export { loadConfig, loadSecret, describeFsError, MIN_SECRET_BYTES } from './load.js';
export { canonicalAddress, ipv4Mapped } from './address.js';
