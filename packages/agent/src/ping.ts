/**
 * ICMP reachability through the system's `ping` (iputils-ping): does `address` answer at least
 * once within `timeoutMs`? Used for the master's ping of a silent host (SPEC §3.2).
 */
import { execFile } from 'node:child_process';

export type PingOutcome = 'replied' | 'silent' | 'unavailable';

function pingOnce(address: string, waitS: number): Promise<PingOutcome> {
  return new Promise((resolve) => {
    // iputils-ping takes a fractional wait (-W 0.3): short rounds fit the fast profile's timings.
    execFile('ping', ['-n', '-c', '1', '-W', waitS.toFixed(1), address], { timeout: Math.ceil((waitS + 2) * 1000) }, (err) => {
      if (!err) return resolve('replied');
      const e = err as NodeJS.ErrnoException & { code?: string | number };
      resolve(e.code === 'ENOENT' ? 'unavailable' : 'silent');
    });
  });
}

export async function pingFor(address: string, timeoutMs: number): Promise<PingOutcome> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const left = end - Date.now();
    if (left <= 0) return 'silent';
    const r = await pingOnce(address, Math.max(0.1, Math.min(1, left / 1000)));
    if (r !== 'silent') return r;
    if (Date.now() >= end) return 'silent';
  }
}
