/**
 * A client connection to the VM daemon (vmd.ts): connect to its abstract socket, authenticate
 * with the token of `<stateDir>/vmd.token`, send requests and match their replies, hand events
 * over. Used by ProcessDriver, and by tests and tools through vmdRequest().
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { LineReader, vmdSocketName, vmdTokenFile, type VmdEvent, type VmdRequest } from './vmd-protocol.js';

/** A request without its id (the connection numbers them). */
export type VmdRequestBody = VmdRequest extends infer R ? (R extends unknown ? Omit<R, 'id'> : never) : never;

export type VmdReply = Record<string, unknown>;

export interface VmdHello {
  pid: number;
  host: string;
  cluster: string;
  /** 'process' or 'libvirt'. */
  backend: string;
}

export interface VmdConnectionHandlers {
  /** Every event, in arrival order (also the ones right after `hello`, before open() resolves). */
  onEvent?: (ev: VmdEvent) => void;
  /** The connection is gone (the daemon died, or close() was called). */
  onClose?: () => void;
}

interface Inflight {
  resolve: (r: VmdReply) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  onOk: ((r: VmdReply) => void) | undefined;
}

const HELLO_TIMEOUT_MS = 5000;

export function codedError(message: string, code: string): Error & { code: string } {
  const err = new Error(message) as Error & { code: string };
  err.code = code;
  return err;
}

export class VmdConnection {
  private readonly inflight = new Map<number, Inflight>();
  private nextId = 1;
  private ended = false;
  hello: VmdHello = { pid: 0, host: '', cluster: '', backend: 'process' };

  private constructor(
    private readonly sock: Socket,
    private readonly handlers: VmdConnectionHandlers,
  ) {
    const reader = new LineReader();
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      for (const line of reader.push(chunk)) if (line !== null) this.onLine(line);
    });
    sock.on('error', () => {});
    sock.on('close', () => this.onClosed());
  }

  /**
   * Connect to the daemon of `stateDir` and say hello. Rejects with the socket error
   * (ECONNREFUSED: no daemon listens) or the daemon's refusal (EPERM: token not current yet).
   */
  static async open(stateDir: string, handlers: VmdConnectionHandlers = {}): Promise<VmdConnection> {
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = connect({ path: vmdSocketName(stateDir) });
      const onError = (err: Error) => {
        s.destroy();
        reject(err);
      };
      s.once('error', onError);
      s.once('connect', () => {
        s.off('error', onError);
        resolve(s);
      });
    });
    const c = new VmdConnection(sock, handlers);
    try {
      const token = readFileSync(vmdTokenFile(stateDir), 'utf8').trim();
      const r = await c.request({ op: 'hello', token }, HELLO_TIMEOUT_MS);
      c.hello = { pid: Number(r.pid), host: String(r.host), cluster: String(r.cluster), backend: typeof r.backend === 'string' ? r.backend : 'process' };
    } catch (err) {
      c.close();
      throw err;
    }
    return c;
  }

  get closed(): boolean {
    return this.ended;
  }

  /**
   * Send a request; resolves with the reply of `ok: true`, rejects with an Error carrying the
   * reply's `code` otherwise (ETIMEDOUT without a reply in time, ECONNRESET if the connection
   * goes). `onOk` runs synchronously as the reply is read, before any later event is handled:
   * the place to apply the reply to a view that events also change.
   */
  request(body: VmdRequestBody, timeoutMs: number, onOk?: (r: VmdReply) => void): Promise<VmdReply> {
    if (this.ended) return Promise.reject(codedError('the connection to the VM daemon is closed', 'ECONNRESET'));
    const id = this.nextId++;
    return new Promise<VmdReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.inflight.delete(id);
        reject(codedError(`no answer from the VM daemon to ${body.op} within ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      this.inflight.set(id, { resolve, reject, timer, onOk });
      this.sock.write(JSON.stringify({ ...body, id }) + '\n');
    });
  }

  private onLine(line: string): void {
    let m: unknown;
    try {
      m = JSON.parse(line);
    } catch {
      return;
    }
    if (!m || typeof m !== 'object' || Array.isArray(m)) return;
    const o = m as Record<string, unknown>;
    if (typeof o.event === 'string') {
      this.handlers.onEvent?.(o as unknown as VmdEvent);
      return;
    }
    const p = typeof o.id === 'number' ? this.inflight.get(o.id) : undefined;
    if (!p) return;
    this.inflight.delete(o.id as number);
    clearTimeout(p.timer);
    if (o.ok === true) {
      try {
        p.onOk?.(o);
      } finally {
        p.resolve(o);
      }
    } else {
      p.reject(codedError(typeof o.error === 'string' ? o.error : 'the VM daemon refused', typeof o.code === 'string' ? o.code : 'EPOWERON'));
    }
  }

  private onClosed(): void {
    if (this.ended) return;
    this.ended = true;
    for (const p of this.inflight.values()) {
      clearTimeout(p.timer);
      p.reject(codedError('the connection to the VM daemon was lost', 'ECONNRESET'));
    }
    this.inflight.clear();
    this.handlers.onClose?.();
  }

  close(): void {
    this.sock.destroy();
    this.onClosed();
  }
}

/**
 * One request to the VM daemon of `stateDir` (tests, tools): connect, hello, ask, disconnect.
 * Rejects with code ECONNREFUSED if no daemon runs.
 */
export async function vmdRequest(stateDir: string, body: VmdRequestBody, timeoutMs = 10_000): Promise<VmdReply> {
  const c = await VmdConnection.open(stateDir);
  try {
    return await c.request(body, timeoutMs);
  } finally {
    c.close();
  }
}
