/**
 * Test helpers: an independent, byte-by-byte datagram builder following docs/protocol.md, so tests
 * can forge datagrams (valid HMAC, arbitrary contents) that encode() would refuse to produce.
 */
import { createHmac } from 'node:crypto';
import type { Message } from '@vigil/core';
import { deriveKey } from '../src/index.js';

export const SECRET = Buffer.from('0123456789abcdef0123456789abcdef', 'utf8');
export const CLUSTER = 'prod-cluster.1';
export const KEY = deriveKey(SECRET, CLUSTER);

export interface RawFields {
  magic?: Buffer;
  version?: number;
  type?: number;
  flags?: number;
  cluster?: Buffer | string;
  sender?: Buffer | string;
  incarnation?: bigint;
  seq?: number;
  payload?: Buffer | string;
  /** Overrides the payload length field (default: actual payload length). */
  payloadLen?: number;
  key?: Buffer;
}

export function buildRaw(f: RawFields = {}): Buffer {
  const cluster = Buffer.from(f.cluster ?? CLUSTER);
  const sender = Buffer.from(f.sender ?? 'host-12');
  const payload = Buffer.from(f.payload ?? '{"datastores":2,"maintenance":false,"generation":0}');
  const fixed = Buffer.from([
    ...(f.magic ?? Buffer.from('VGL')),
    f.version ?? 1,
    f.type ?? 1,
    f.flags ?? 0,
    cluster.length,
  ]);
  const nums = Buffer.alloc(14);
  nums.writeBigUInt64BE(f.incarnation ?? 1_700_000_000_000n, 0);
  nums.writeUInt32BE(f.seq ?? 7, 8);
  nums.writeUInt16BE(f.payloadLen ?? payload.length, 12);
  const body = Buffer.concat([fixed, cluster, Buffer.from([sender.length]), sender, nums, payload]);
  const tag = createHmac('sha256', f.key ?? KEY).update(body).digest();
  return Buffer.concat([body, tag]);
}

export const SAMPLE_MESSAGES: Message[] = [
  { type: 'election', datastores: 3, maintenance: false, generation: 0 },
  { type: 'masterHeartbeat', datastores: 2, maintenance: false, generation: 41 },
  { type: 'slaveHeartbeat', datastores: 0, master: 'host-7', memoryMB: 4096, cpus: 16 },
  { type: 'abdicate', to: 'host-100' },
  { type: 'powerOn', vm: 'ds1:vms/web-1.json', req: 7, takeover: 'host-3:4:0123456789abcdef:17:4' },
  { type: 'powerOff', vm: 'ds1:vms/web-1.json', req: 8, graceful: true, timeoutMs: 30000 },
  { type: 'vmResult', vm: 'ds1:vms/web-1.json', req: 7, ok: false, leaseHeld: true, error: 'VM lease held by host-3' },
  { type: 'vmStopped', vm: 'ds1:vms/web-1.json', reason: 'exited' },
];
