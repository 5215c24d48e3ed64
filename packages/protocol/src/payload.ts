/**
 * JSON payload of each message type: the message minus its `type` (which travels in the header).
 * Validation is strict: exactly the documented fields, each of the right type and range.
 */
import { isHostId, isVmId, MAX_ERROR_BYTES, TAKEOVER_PATTERN, VM_STOP_REASONS } from '@vigil/core';
import type { Message, MessageType } from '@vigil/core';

/** Largest datastore count a message may carry. */
export const MAX_DATASTORES = 10_000;

type FieldCheck = (value: unknown) => boolean;

function isDatastoreCount(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= MAX_DATASTORES;
}

function isGeneration(value: unknown): boolean {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function isCount(max: number): FieldCheck {
  return (value) => typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= max;
}

const isReq: FieldCheck = (value) => typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
const isBool: FieldCheck = (value) => typeof value === 'boolean';
const isErrorText: FieldCheck = (value) => typeof value === 'string' && value.length <= MAX_ERROR_BYTES && /^[\x20-\x7e]*$/.test(value);
const isStopReason: FieldCheck = (value) => typeof value === 'string' && (VM_STOP_REASONS as readonly string[]).includes(value);

/** Field name -> check, per message type. Key order is the order fields are written on the wire. */
const FIELDS: Readonly<Record<MessageType, Readonly<Record<string, FieldCheck>>>> = {
  election: { datastores: isDatastoreCount, maintenance: isBool, generation: isGeneration },
  masterHeartbeat: { datastores: isDatastoreCount, maintenance: isBool, generation: isGeneration },
  slaveHeartbeat: { datastores: isDatastoreCount, master: isHostId, memoryMB: isCount(2 ** 31), cpus: isCount(1_000_000) },
  abdicate: { to: isHostId },
  powerOn: { vm: isVmId, req: isReq, takeover: (v) => typeof v === 'string' && TAKEOVER_PATTERN.test(v) },
  powerOff: { vm: isVmId, req: isReq, graceful: isBool, timeoutMs: isCount(24 * 3600 * 1000) },
  vmResult: { vm: isVmId, req: isReq, ok: isBool, leaseHeld: isBool, error: isErrorText },
  vmStopped: { vm: isVmId, reason: isStopReason },
};

export type PayloadResult = { ok: true; msg: Message } | { ok: false; detail: string };

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** -0 -> 0, so that a decoded message compares equal to what was sent. */
function normalize(value: unknown): unknown {
  return typeof value === 'number' ? value + 0 : value;
}

/**
 * Validates `fields` (the message without `type`) for `type`. Reads own properties only,
 * never calls anything on the value, never throws on JSON.parse output.
 */
export function validatePayload(type: MessageType, fields: unknown): PayloadResult {
  const spec = FIELDS[type];
  if (!isPlainObject(fields)) {
    return { ok: false, detail: `${type}: payload is not a JSON object` };
  }
  const expected = Object.keys(spec);
  for (const key of Object.keys(fields)) {
    if (!Object.prototype.hasOwnProperty.call(spec, key)) {
      return { ok: false, detail: `${type}: unexpected field ${JSON.stringify(key)}` };
    }
  }
  const msg: Record<string, unknown> = { type };
  for (const key of expected) {
    if (!Object.prototype.hasOwnProperty.call(fields, key)) {
      return { ok: false, detail: `${type}: missing field ${key}` };
    }
    const value = fields[key];
    const check = spec[key];
    if (check === undefined || !check(value)) {
      return { ok: false, detail: `${type}: invalid value for field ${key}` };
    }
    msg[key] = normalize(value);
  }
  return { ok: true, msg: msg as unknown as Message };
}

/**
 * The payload object to serialise for `msg`: the documented fields only, in a fixed order.
 * Refuses (ok: false) a message the receiver would drop as malformed.
 */
export function payloadFields(
  msg: Message,
): { ok: true; fields: Record<string, unknown> } | { ok: false; detail: string } {
  const source: unknown = msg;
  if (!isPlainObject(source)) {
    return { ok: false, detail: 'message is not an object' };
  }
  const type = source['type'];
  if (typeof type !== 'string' || !Object.prototype.hasOwnProperty.call(FIELDS, type)) {
    return { ok: false, detail: `unknown message type ${JSON.stringify(type)}` };
  }
  const spec = FIELDS[type as MessageType];
  const fields: Record<string, unknown> = {};
  for (const key of Object.keys(spec)) {
    fields[key] = normalize(source[key]);
  }
  const checked = validatePayload(type as MessageType, fields);
  if (!checked.ok) return checked;
  return { ok: true, fields };
}
