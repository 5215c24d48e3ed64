/** The bounded concurrency of the storage samples (storage.ts runLimited). */
import { describe, expect, it } from 'vitest';
import { runLimited } from '../src/storage.js';

describe('runLimited', () => {
  it('runs every task, never more than the limit at once, and survives failures', async () => {
    let inFlight = 0;
    let most = 0;
    const done: number[] = [];
    const tasks = Array.from({ length: 50 }, (_, i) => async () => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setImmediate(r));
      inFlight--;
      if (i % 7 === 0) throw new Error(`task ${i} fails`);
      done.push(i);
    });
    await runLimited(tasks, 8);
    expect(most).toBe(8);
    expect(done).toHaveLength(50 - 8);
    await runLimited([], 8);
  });
});
