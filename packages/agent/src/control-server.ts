/**
 * The local control socket the CLI talks to (SPEC §4.2): a Unix socket, mode 0600, one JSON
 * request per connection, one JSON response. Malformed requests get an error response; they
 * never reach the core.
 */
import { createServer, createConnection, type Server, type Socket } from 'node:net';
import { chmod, mkdir, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';

export const DEFAULT_SOCKET = '/run/vigil/vigil.sock';
export const MAX_REQUEST_BYTES = 64 * 1024;

export interface ControlRequest {
  cmd: string;
  [key: string]: unknown;
}

export type ControlResponse = { ok: true; data: unknown } | { ok: false; error: string };

export type ControlHandler = (req: ControlRequest) => Promise<unknown> | unknown;

export class ControlError extends Error {}

function isLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export class ControlServer {
  private server: Server | null = null;

  constructor(private readonly path: string, private readonly handler: ControlHandler) {}

  async listen(): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
    if (await isLive(this.path)) throw new ControlError(`another agent is already listening on ${this.path}`);
    await unlink(this.path).catch(() => {});
    const server = createServer((sock) => this.serve(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const old = process.umask(0o177);
      try {
        server.listen(this.path, () => {
          server.off('error', reject);
          resolve();
        });
      } finally {
        process.umask(old);
      }
    });
    await chmod(this.path, 0o600);
    this.server = server;
  }

  private serve(sock: Socket): void {
    let buf = '';
    let done = false;
    sock.setEncoding('utf8');
    sock.setTimeout(10_000, () => sock.destroy());
    sock.on('error', () => {});
    const reply = (r: ControlResponse) => {
      if (done) return;
      done = true;
      sock.end(JSON.stringify(r) + '\n');
    };
    sock.on('data', (chunk: string) => {
      if (done) return;
      buf += chunk;
      if (buf.length > MAX_REQUEST_BYTES) return reply({ ok: false, error: `request larger than ${MAX_REQUEST_BYTES} bytes` });
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      let req: unknown;
      try {
        req = JSON.parse(buf.slice(0, nl));
      } catch {
        return reply({ ok: false, error: 'request is not valid JSON' });
      }
      if (!req || typeof req !== 'object' || typeof (req as ControlRequest).cmd !== 'string') {
        return reply({ ok: false, error: 'request must be an object with a string "cmd"' });
      }
      // The request is complete: operations may take long (a VM start waits for its power-on
      // and its protectedlist commit); only the client's own timeout applies from here.
      sock.setTimeout(0);
      Promise.resolve()
        .then(() => this.handler(req as ControlRequest))
        .then(
          (data) => reply({ ok: true, data }),
          (err: unknown) => reply({ ok: false, error: err instanceof Error ? err.message : String(err) }),
        );
    });
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
    await unlink(this.path).catch(() => {});
  }
}

/** Send one request to an agent's control socket. */
export function controlRequest(path: string, req: ControlRequest, timeoutMs = 10_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new ControlError(`no answer from the agent on ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('data', (c: string) => (buf += c));
    sock.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const hint = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? ' (is the agent running? use --socket to point at it)' : '';
      reject(new ControlError(`cannot reach the agent on ${path}: ${err.code ?? err.message}${hint}`));
    });
    sock.on('end', () => {
      clearTimeout(timer);
      let res: ControlResponse;
      try {
        res = JSON.parse(buf) as ControlResponse;
      } catch {
        return reject(new ControlError(`garbled answer from the agent on ${path}`));
      }
      if (res.ok) resolve(res.data);
      else reject(new ControlError(res.error));
    });
  });
}
