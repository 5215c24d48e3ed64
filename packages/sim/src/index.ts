export * from './rng.js';
export * from './queue.js';
export * from './network.js';
export * from './world.js';
