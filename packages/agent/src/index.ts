export * from './agent.js';
export * from './logger.js';
export * from './clock.js';
export * from './transport.js';
export * from './control-server.js';
export * from './rpc.js';
export { VmRuntime, VM_DIR, type VmRuntimeOptions } from './vm-runtime.js';
export * from './stats.js';
export * from './stats-sampler.js';
