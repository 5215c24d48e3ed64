export * from './types.js';
export * from './capacity.js';
export * from './process/spec.js';
export * from './process/driver.js';
export * from './process/vmd-protocol.js';
export * from './process/vmd-client.js';
export type { VmdArgs } from './process/vmd.js';
