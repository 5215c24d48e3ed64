/**
 * Hostile datagrams for the agents' UDP port: a byte-level builder (after docs/protocol.md, like
 * packages/protocol/test/helpers.ts) so a test can forge headers and tags that encode() refuses
 * to produce, plus a small UDP sender bound to a chosen loopback address.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';

export interface RawFields {
  magic?: Buffer;
  version?: number;
  type?: number;
  flags?: number;
  cluster: string;
  sender: string;
  incarnation?: bigint;
  seq?: number;
  payload: string;
  key: Buffer;
}

/** Type codes (1-based position in MESSAGE_TYPES). */
export const TYPE = { election: 1, masterHeartbeat: 2, slaveHeartbeat: 3, abdicate: 4 } as const;

export function buildRaw(f: RawFields): Buffer {
  const cluster = Buffer.from(f.cluster, 'utf8');
  const sender = Buffer.from(f.sender, 'utf8');
  const payload = Buffer.from(f.payload, 'utf8');
  const fixed = Buffer.from([...(f.magic ?? Buffer.from('VGL')), f.version ?? 1, f.type ?? 1, f.flags ?? 0, cluster.length]);
  const nums = Buffer.alloc(14);
  nums.writeBigUInt64BE(f.incarnation ?? BigInt(Date.now()) * 1000n, 0);
  nums.writeUInt32BE(f.seq ?? 0, 8);
  nums.writeUInt16BE(payload.length, 12);
  const body = Buffer.concat([fixed, cluster, Buffer.from([sender.length]), sender, nums, payload]);
  const tag = createHmac('sha256', f.key).update(body).digest();
  return Buffer.concat([body, tag]);
}

export function randomInt(lo: number, hi: number): number {
  return lo + Math.floor(Math.random() * (hi - lo + 1));
}

export function randomSeq(): number {
  return randomInt(0, 0xffff_ffff);
}

/** A far-future incarnation: would pass any replay window if the datagram were accepted. */
export function bigIncarnation(): bigint {
  return BigInt(Date.now() + randomInt(1_000_000, 1_000_000_000));
}

export function noise(len: number): Buffer {
  return randomBytes(len);
}

/** A UDP socket bound to `address` (any port unless given), counting what it sent. */
export class Sender {
  sent = 0;
  errors: string[] = [];
  private constructor(readonly socket: Socket, readonly address: string, readonly port: number) {
    socket.on('error', (err) => this.errors.push(err.message));
  }

  static bind(address: string, port = 0): Promise<Sender> {
    const socket = createSocket({ type: 'udp4', reuseAddr: false });
    return new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.bind({ address, port, exclusive: true }, () => {
        socket.off('error', reject);
        resolve(new Sender(socket, address, socket.address().port));
      });
    });
  }

  send(data: Buffer, address: string, port: number): Promise<void> {
    return new Promise((resolve) => {
      this.socket.send(data, port, address, (err) => {
        if (err) this.errors.push(`${address}:${port} ${data.length} bytes: ${err.message}`);
        else this.sent += 1;
        resolve();
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      try {
        this.socket.close(() => resolve());
      } catch {
        resolve();
      }
    });
  }
}
