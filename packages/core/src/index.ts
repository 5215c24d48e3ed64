export * from './ids.js';
export * from './messages.js';
export * from './timing.js';
export * from './events.js';
export * from './rank.js';
export * from './election.js';
export * from './hostview.js';
export * from './host-core.js';
