/**
 * Wire constants of the agent-to-agent UDP protocol (see docs/protocol.md for the byte layout).
 */
import { MESSAGE_TYPES } from '@vigil/core';
import type { MessageType } from '@vigil/core';

/** UDP port the agents talk on (FDM uses 8182 too). */
export const DEFAULT_PORT = 8182;

/** Upper bound on a datagram, chosen to stay below a typical 1,500-byte MTU with headers. */
export const MAX_DATAGRAM_BYTES = 1400;

/** "VGL". */
export const MAGIC: Readonly<Buffer> = Buffer.from('VGL', 'ascii');
export const PROTOCOL_VERSION = 1;
/** No flags are defined in version 1; the byte must be 0. */
export const FLAGS_NONE = 0;

/** HMAC-SHA256 tag length. */
export const TAG_BYTES = 32;
/** Secrets shorter than this are refused by deriveKey. */
export const MIN_SECRET_BYTES = 16;

/** Byte offsets of the fixed part of the header. */
export const OFFSET_MAGIC = 0;
export const OFFSET_VERSION = 3;
export const OFFSET_TYPE = 4;
export const OFFSET_FLAGS = 5;
export const OFFSET_CLUSTER_LEN = 6;

/** Bytes after the sender id: incarnation (u64) + seq (u32) + payload length (u16). */
export const TRAILER_FIELDS_BYTES = 8 + 4 + 2;

export const MAX_SEQ = 0xffff_ffff;

/** Message type byte: position in MESSAGE_TYPES, 1-based. */
export function typeCode(type: MessageType): number {
  const index = MESSAGE_TYPES.indexOf(type);
  if (index < 0) return 0;
  return index + 1;
}

/** Inverse of typeCode; undefined for 0 or an unknown code. */
export function typeFromCode(code: number): MessageType | undefined {
  if (!Number.isInteger(code) || code < 1) return undefined;
  return MESSAGE_TYPES[code - 1];
}
