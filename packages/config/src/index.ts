export * from './types.js';
export * from './profiles.js';
export { configSchema } from './schema.js';
export { validateConfig, checkTiming, heartbeatDatastoresFor } from './validate.js';
export { loadConfig, loadSecret, MIN_SECRET_BYTES } from './load.js';
