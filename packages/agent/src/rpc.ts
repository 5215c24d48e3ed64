/**
 * Agent-to-agent requests over TCP on the cluster port (FDM also uses TCP 8182 between agents):
 * how the CLI on any host reaches the master (`vigil vms`, `vigil vm start` ...), with answers
 * too large for a datagram. Authenticated with the cluster key; replay-proof by a fresh
 * challenge per connection:
 *   server -> client  `VGLR1 <nonce hex>\n`                 (16 random bytes)
 *   client -> server  `{"body":{...},"mac":"<hex>"}\n`      mac = HMAC-SHA256(key, "req\n" nonce "\n" body)
 *   server -> client  `{"body":{...},"mac":"<hex>"}\n`      mac = HMAC-SHA256(key, "res\n" nonce "\n" body)
 * Anything else, or a bad mac, closes the connection with no answer.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const MAX_RPC_BYTES = 8 * 1024 * 1024;

function mac(key: Buffer, dir: 'req' | 'res', nonce: string, body: string): string {
  return createHmac('sha256', key).update(`${dir}\n${nonce}\n${body}`).digest('hex');
}

function macOk(expected: string, got: unknown): boolean {
  if (typeof got !== 'string' || !/^[0-9a-f]{64}$/.test(got)) return false;
  return timingSafeEqual(Buffer.from(expected, 'hex'), Buffer.from(got, 'hex'));
}

function readLine(sock: Socket, limit: number, onLine: (line: string) => void, onFail: (why: string) => void): void {
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('data', (chunk: string) => {
    buf += chunk;
    if (buf.length > limit) {
      onFail('message too large');
      return;
    }
    const nl = buf.indexOf('\n');
    if (nl >= 0) {
      sock.removeAllListeners('data');
      onLine(buf.slice(0, nl));
    }
  });
}

export type RpcHandler = (body: Record<string, unknown>) => Promise<unknown>;

export class RpcServer {
  private server: Server | null = null;

  constructor(
    private readonly key: Buffer,
    private readonly handler: RpcHandler,
    private readonly onReject: (from: string, why: string) => void,
  ) {}

  listen(address: string, port: number): Promise<void> {
    const server = createServer((sock) => this.serve(sock));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: address, port, exclusive: true }, () => {
        server.off('error', reject);
        this.server = server;
        resolve();
      });
    });
  }

  private serve(sock: Socket): void {
    const from = `${sock.remoteAddress}:${sock.remotePort}`;
    const nonce = randomBytes(16).toString('hex');
    sock.setTimeout(30_000, () => sock.destroy());
    sock.on('error', () => {});
    sock.write(`VGLR1 ${nonce}\n`);
    readLine(
      sock,
      MAX_RPC_BYTES,
      (line) => {
        let msg: { body?: unknown; mac?: unknown };
        try {
          msg = JSON.parse(line) as { body?: unknown; mac?: unknown };
        } catch {
          this.onReject(from, 'not JSON');
          return void sock.destroy();
        }
        if (!msg || typeof msg.body !== 'object' || msg.body === null || Array.isArray(msg.body)) {
          this.onReject(from, 'malformed request');
          return void sock.destroy();
        }
        const body = JSON.stringify(msg.body);
        if (!macOk(mac(this.key, 'req', nonce, body), msg.mac)) {
          this.onReject(from, 'unauthenticated request');
          return void sock.destroy();
        }
        sock.setTimeout(0); // an authenticated request may take long (maintenance --evacuate)
        this.handler(msg.body as Record<string, unknown>)
          .then(
            (res) => ({ ok: true, data: res }),
            (err: unknown) => ({ ok: false, error: err instanceof Error ? err.message : String(err) }),
          )
          .then((res) => {
            const out = JSON.stringify(res);
            sock.end(JSON.stringify({ body: res, mac: mac(this.key, 'res', nonce, out) }) + '\n');
          });
      },
      (why) => {
        this.onReject(from, why);
        sock.destroy();
      },
    );
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}

/** One authenticated request to another agent. Rejects on any failure or a bad answer. */
export function rpcCall(key: Buffer, address: string, port: number, body: Record<string, unknown>, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: address, port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer from ${address}:${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      sock.destroy();
      reject(err);
    };
    sock.on('error', (err) => fail(new Error(`cannot reach ${address}:${port}: ${err.message}`)));
    sock.on('close', () => fail(new Error(`${address}:${port} closed the connection without an answer`)));
    readLine(
      sock,
      256,
      (hello) => {
        const m = /^VGLR1 ([0-9a-f]{32})$/.exec(hello);
        if (!m) return fail(new Error(`${address}:${port} is not a Vigil agent`));
        const nonce = m[1]!;
        const b = JSON.stringify(body);
        sock.write(JSON.stringify({ body, mac: mac(key, 'req', nonce, b) }) + '\n');
        readLine(
          sock,
          MAX_RPC_BYTES,
          (line) => {
            clearTimeout(timer);
            sock.destroy();
            try {
              const msg = JSON.parse(line) as { body?: { ok?: boolean; data?: unknown; error?: string }; mac?: unknown };
              if (!msg.body || !macOk(mac(key, 'res', nonce, JSON.stringify(msg.body)), msg.mac)) throw new Error('unauthenticated answer');
              if (msg.body.ok) resolve(msg.body.data);
              else reject(new Error(msg.body.error ?? 'failed'));
            } catch (err) {
              reject(err instanceof Error ? err : new Error(String(err)));
            }
          },
          (why) => fail(new Error(why)),
        );
      },
      (why) => fail(new Error(why)),
    );
  });
}
