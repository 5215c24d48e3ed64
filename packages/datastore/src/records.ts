/**
 * The text formats of the files on a datastore (docs/datastore-format.md). Parsers are strict and
 * never throw: a corrupt or truncated file yields an error naming the problem, never a guess.
 */

/** The renewal record of a lease: `host-N-hb`, `protectedlist.owner`, `vms/<vm>.lease`. */
export interface LeaseRecord {
  host: string;
  /** Generation of this holding; increases at every acquisition or takeover. */
  generation: number;
  /** Renewal counter: observers judge liveness by its change, never by a timestamp. */
  counter: number;
  /** Random id of this holding (distinguishes a restarted holder with the same generation). */
  token: string;
  state: 'held' | 'released';
  /**
   * VM leases only: the generation of the holder's host VM lease (`host-N-vm`) on the same
   * datastore under which this VM lease is held. A VM lease is not renewed itself: it lives as
   * long as that host lease is renewed with this generation (sanlock's design).
   */
  hostLease?: number;
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

const HOST_RE = /^host-[0-9]{1,9}$/;
const TOKEN_RE = /^[0-9a-f]{8,64}$/;
const MAX_RECORD_BYTES = 4096;

export function formatLeaseRecord(r: LeaseRecord): string {
  const o: Record<string, unknown> = { host: r.host, generation: r.generation, counter: r.counter, token: r.token, state: r.state };
  if (r.hostLease !== undefined) o.hostLease = r.hostLease;
  return JSON.stringify(o) + '\n';
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export function parseLeaseRecord(text: string): Parsed<LeaseRecord> {
  if (text.length > MAX_RECORD_BYTES) return { ok: false, error: `larger than ${MAX_RECORD_BYTES} bytes` };
  if (!text.endsWith('\n')) return { ok: false, error: 'truncated (no final newline)' };
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { ok: false, error: 'not a JSON lease record' };
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return { ok: false, error: 'not a JSON object' };
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o).sort().join(',');
  if (keys !== 'counter,generation,host,state,token' && keys !== 'counter,generation,host,hostLease,state,token') return { ok: false, error: `unexpected fields (${keys})` };
  if (o.hostLease !== undefined && (!isCount(o.hostLease) || o.hostLease < 1)) return { ok: false, error: 'bad hostLease' };
  if (typeof o.host !== 'string' || !HOST_RE.test(o.host)) return { ok: false, error: 'bad host' };
  if (!isCount(o.generation) || o.generation < 1) return { ok: false, error: 'bad generation' };
  if (!isCount(o.counter)) return { ok: false, error: 'bad counter' };
  if (typeof o.token !== 'string' || !TOKEN_RE.test(o.token)) return { ok: false, error: 'bad token' };
  if (o.state !== 'held' && o.state !== 'released') return { ok: false, error: 'bad state' };
  const value: LeaseRecord = { host: o.host, generation: o.generation, counter: o.counter, token: o.token, state: o.state };
  if (o.hostLease !== undefined) value.hostLease = o.hostLease as number;
  return { ok: true, value };
}

/** `host-N-poweron`: first line the isolation bit (0 or 1), then one VM id per line. */
export interface Poweron {
  isolated: boolean;
  vms: string[];
}

export { isVmId } from '@vigil/core';
import { isVmId } from '@vigil/core';

export function formatPoweron(p: Poweron): string {
  return [p.isolated ? '1' : '0', ...[...p.vms].sort()].join('\n') + '\n';
}

export function parsePoweron(text: string): Parsed<Poweron> {
  if (!text.endsWith('\n')) return { ok: false, error: 'truncated (no final newline)' };
  const lines = text.slice(0, -1).split('\n');
  const bit = lines[0];
  if (bit !== '0' && bit !== '1') return { ok: false, error: `first line must be 0 or 1, not ${JSON.stringify(bit?.slice(0, 20))}` };
  const vms = lines.slice(1);
  const bad: string | undefined = vms.find((v: string): boolean => !isVmId(v));
  if (bad !== undefined) return { ok: false, error: `bad VM id ${JSON.stringify(bad.slice(0, 80))}` };
  return { ok: true, value: { isolated: bit === '1', vms } };
}

/** `protectedlist`: a header naming owner and generation, then one protected VM id per line. */
export interface ProtectedList {
  owner: string;
  generation: number;
  vms: string[];
}

export function formatProtectedList(p: ProtectedList): string {
  return [`# vigil protectedlist owner=${p.owner} generation=${p.generation}`, ...[...p.vms].sort()].join('\n') + '\n';
}

export function parseProtectedList(text: string): Parsed<ProtectedList> {
  if (!text.endsWith('\n')) return { ok: false, error: 'truncated (no final newline)' };
  const lines = text.slice(0, -1).split('\n');
  const m = /^# vigil protectedlist owner=(host-[0-9]{1,9}) generation=([0-9]{1,15})$/.exec(lines[0] ?? '');
  if (!m) return { ok: false, error: 'missing or bad header line' };
  const vms = lines.slice(1);
  const bad: string | undefined = vms.find((v: string): boolean => !isVmId(v));
  if (bad !== undefined) return { ok: false, error: `bad VM id ${JSON.stringify(bad.slice(0, 80))}` };
  return { ok: true, value: { owner: m[1]!, generation: Number(m[2]), vms } };
}
