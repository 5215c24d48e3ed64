/**
 * Datagram encoding and decoding: binary header, JSON payload, HMAC-SHA256 tag.
 * Layout (offsets in docs/protocol.md):
 *   "VGL" | version u8 | type u8 | flags u8 | clusterLen u8 | cluster | senderLen u8 | sender |
 *   incarnation u64 BE | seq u32 BE | payloadLen u16 BE | payload (UTF-8 JSON) | tag (32 bytes)
 * The tag covers every byte before it.
 */
import { CLUSTER_ID_PATTERN, isHostId } from '@vigil/core';
import type { HostId, Message, MessageType } from '@vigil/core';
import { computeTag, verifyTag } from './auth.js';
import { ProtocolError } from './errors.js';
import { payloadFields, validatePayload } from './payload.js';
import {
  FLAGS_NONE,
  MAGIC,
  MAX_DATAGRAM_BYTES,
  MAX_SEQ,
  OFFSET_CLUSTER_LEN,
  OFFSET_FLAGS,
  OFFSET_TYPE,
  OFFSET_VERSION,
  PROTOCOL_VERSION,
  TAG_BYTES,
  TRAILER_FIELDS_BYTES,
  typeCode,
  typeFromCode,
} from './wire.js';

/** A message with everything the header carries about it. */
export interface Envelope {
  cluster: string;
  sender: HostId;
  /** Sender's incarnation: chosen at agent start, strictly increasing across restarts. */
  incarnation: number;
  /** Per-incarnation sequence number, uint32. */
  seq: number;
  msg: Message;
}

export const DROP_REASONS = [
  'oversized',
  'truncated',
  'badMagic',
  'badVersion',
  'unknownType',
  'wrongCluster',
  'badSender',
  'unauthenticated',
  'malformed',
] as const;

export type DropReason = (typeof DROP_REASONS)[number];

export type DecodeResult = { ok: true; env: Envelope } | { ok: false; reason: DropReason; detail: string };

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
/** Strict UTF-8: invalid byte sequences are an error, not U+FFFD. */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function fail(reason: DropReason, detail: string): DecodeResult {
  return { ok: false, reason, detail };
}

/**
 * Encodes and authenticates `env`. Throws ProtocolError if any field is invalid (the receiver
 * would drop it) or if the datagram would exceed MAX_DATAGRAM_BYTES.
 */
export function encode(env: Envelope, key: Buffer): Buffer {
  if (!Buffer.isBuffer(key) || key.length !== TAG_BYTES) {
    throw new ProtocolError('datagram key must be the 32-byte Buffer returned by deriveKey');
  }
  if (typeof env !== 'object' || env === null) {
    throw new ProtocolError('envelope must be an object');
  }
  const { cluster, sender, incarnation, seq, msg } = env;
  if (typeof cluster !== 'string' || !CLUSTER_ID_PATTERN.test(cluster)) {
    throw new ProtocolError(`invalid cluster id ${JSON.stringify(cluster)}`);
  }
  if (!isHostId(sender)) {
    throw new ProtocolError(`invalid sender host id ${JSON.stringify(sender)}`);
  }
  if (!Number.isSafeInteger(incarnation) || incarnation < 0) {
    throw new ProtocolError(`invalid incarnation ${String(incarnation)}: must be a safe integer >= 0`);
  }
  if (!Number.isInteger(seq) || seq < 0 || seq > MAX_SEQ) {
    throw new ProtocolError(`invalid seq ${String(seq)}: must be an integer in 0..${MAX_SEQ}`);
  }
  const payload = payloadFields(msg);
  if (!payload.ok) {
    throw new ProtocolError(`invalid message: ${payload.detail}`);
  }
  const code = typeCode(msg.type);
  const clusterBytes = Buffer.from(cluster, 'utf8');
  const senderBytes = Buffer.from(sender, 'utf8');
  const payloadBytes = Buffer.from(JSON.stringify(payload.fields), 'utf8');

  const headerLen = OFFSET_CLUSTER_LEN + 1 + clusterBytes.length + 1 + senderBytes.length + TRAILER_FIELDS_BYTES;
  const total = headerLen + payloadBytes.length + TAG_BYTES;
  if (total > MAX_DATAGRAM_BYTES) {
    throw new ProtocolError(`datagram would be ${total} bytes, more than the ${MAX_DATAGRAM_BYTES}-byte limit`);
  }

  const out = Buffer.alloc(total);
  let o = 0;
  MAGIC.copy(out, o);
  o += MAGIC.length;
  out.writeUInt8(PROTOCOL_VERSION, o++);
  out.writeUInt8(code, o++);
  out.writeUInt8(FLAGS_NONE, o++);
  out.writeUInt8(clusterBytes.length, o++);
  clusterBytes.copy(out, o);
  o += clusterBytes.length;
  out.writeUInt8(senderBytes.length, o++);
  senderBytes.copy(out, o);
  o += senderBytes.length;
  out.writeBigUInt64BE(BigInt(incarnation), o);
  o += 8;
  out.writeUInt32BE(seq, o);
  o += 4;
  out.writeUInt16BE(payloadBytes.length, o);
  o += 2;
  payloadBytes.copy(out, o);
  o += payloadBytes.length;
  computeTag(key, out.subarray(0, o)).copy(out, o);
  return out;
}

/**
 * Decodes and authenticates a datagram. Never throws: anything unacceptable comes back as
 * { ok: false, reason, detail }. Checks run in this order: size, structure (no length field is
 * trusted past the end of the buffer), cluster and sender form, HMAC (constant time), and only
 * then the incarnation range and the JSON payload.
 */
export function decode(buf: Buffer, key: Buffer, expectedCluster: string): DecodeResult {
  try {
    return decodeUnsafe(buf, key, expectedCluster);
  } catch (err) {
    // Defensive: no known path throws, but a datagram must never crash the agent.
    return fail('malformed', `decoder error: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function decodeUnsafe(buf: Buffer, key: Buffer, expectedCluster: string): DecodeResult {
  if (!(buf instanceof Uint8Array)) {
    return fail('malformed', 'not a byte buffer');
  }
  const len = buf.length;
  if (len > MAX_DATAGRAM_BYTES) {
    return fail('oversized', `${len} bytes, limit ${MAX_DATAGRAM_BYTES}`);
  }
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);

  // Fixed part: magic, version, type, flags.
  if (len < MAGIC.length) {
    return fail('truncated', `${len} bytes, too short for the magic`);
  }
  if (!view.subarray(0, MAGIC.length).equals(MAGIC)) {
    return fail('badMagic', 'magic is not "VGL"');
  }
  if (len < OFFSET_CLUSTER_LEN + 1) {
    return fail('truncated', `${len} bytes, too short for the fixed header`);
  }
  const version = view.readUInt8(OFFSET_VERSION);
  if (version !== PROTOCOL_VERSION) {
    return fail('badVersion', `version ${version}, expected ${PROTOCOL_VERSION}`);
  }
  const type: MessageType | undefined = typeFromCode(view.readUInt8(OFFSET_TYPE));
  if (type === undefined) {
    return fail('unknownType', `message type code ${view.readUInt8(OFFSET_TYPE)}`);
  }
  const flags = view.readUInt8(OFFSET_FLAGS);
  if (flags !== FLAGS_NONE) {
    return fail('malformed', `flags 0x${flags.toString(16)}, expected 0`);
  }

  // Cluster id.
  let o = OFFSET_CLUSTER_LEN;
  const clusterLen = view.readUInt8(o++);
  if (o + clusterLen > len) {
    return fail('truncated', 'cluster id runs past the end');
  }
  const clusterBytes = view.subarray(o, o + clusterLen);
  o += clusterLen;
  const expectedBytes = Buffer.from(String(expectedCluster), 'utf8');
  if (clusterLen === 0 || !clusterBytes.equals(expectedBytes)) {
    return fail('wrongCluster', `cluster ${JSON.stringify(clusterBytes.toString('utf8'))}`);
  }

  // Sender host id.
  if (o + 1 > len) {
    return fail('truncated', 'no sender length');
  }
  const senderLen = view.readUInt8(o++);
  if (o + senderLen > len) {
    return fail('truncated', 'sender id runs past the end');
  }
  const sender = view.toString('utf8', o, o + senderLen);
  o += senderLen;
  if (!isHostId(sender)) {
    return fail('badSender', `sender ${JSON.stringify(sender)} is not a host id`);
  }

  // Incarnation, seq, payload length.
  if (o + TRAILER_FIELDS_BYTES > len) {
    return fail('truncated', 'header fields run past the end');
  }
  const incarnation = view.readBigUInt64BE(o);
  o += 8;
  const seq = view.readUInt32BE(o);
  o += 4;
  const payloadLen = view.readUInt16BE(o);
  o += 2;
  const payloadStart = o;
  const tagStart = payloadStart + payloadLen;
  if (tagStart + TAG_BYTES > len) {
    return fail('truncated', `payload (${payloadLen} bytes) and tag run past the end`);
  }
  if (tagStart + TAG_BYTES < len) {
    return fail('malformed', `${len - tagStart - TAG_BYTES} trailing bytes after the tag`);
  }

  // Authentication, before any byte of the payload is interpreted.
  if (!Buffer.isBuffer(key) || key.length !== TAG_BYTES) {
    return fail('unauthenticated', 'receiver key is not a 32-byte key');
  }
  if (!verifyTag(key, view.subarray(0, tagStart), view.subarray(tagStart, tagStart + TAG_BYTES))) {
    return fail('unauthenticated', 'HMAC tag does not match');
  }

  // Authenticated from here on.
  if (incarnation > MAX_SAFE) {
    return fail('malformed', `incarnation ${incarnation} exceeds Number.MAX_SAFE_INTEGER`);
  }
  let text: string;
  try {
    text = utf8.decode(view.subarray(payloadStart, tagStart));
  } catch {
    return fail('malformed', 'payload is not valid UTF-8');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return fail('malformed', 'payload is not valid JSON');
  }
  const checked = validatePayload(type, parsed);
  if (!checked.ok) {
    return fail('malformed', checked.detail);
  }
  return {
    ok: true,
    env: {
      cluster: clusterBytes.toString('utf8'),
      sender,
      incarnation: Number(incarnation),
      seq,
      msg: checked.msg,
    },
  };
}
