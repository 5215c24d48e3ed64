export * from './types.js';
export * from './capacity.js';
export * from './process/spec.js';
export * from './process/state.js';
export * from './process/driver.js';
export type { SupervisorArgs } from './process/supervisor.js';
