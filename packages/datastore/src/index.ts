export * from './timeout.js';
export * from './layout.js';
export * from './probe.js';
