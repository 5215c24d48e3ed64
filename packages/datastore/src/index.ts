export * from './timeout.js';
export * from './layout.js';
export * from './probe.js';
export * from './atomic.js';
export * from './records.js';
export * from './lease.js';
export * from './keeper.js';
