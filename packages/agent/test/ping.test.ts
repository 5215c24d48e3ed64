import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { pingFor } from '../src/ping.js';

const hasPing = (() => {
  try {
    execFileSync('ping', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!hasPing)('pingFor (iputils-ping)', () => {
  it('takes fractional timeouts (the fast profile pings for 0.28 s, say) without throwing', async () => {
    expect(await pingFor('127.0.0.1', 280)).toBe('replied');
    expect(await pingFor('127.0.0.1', 1234)).toBe('replied');
  });
});
