/**
 * @vigil/protocol: the authenticated agent-to-agent UDP protocol (port 8182).
 * Format and rules: docs/protocol.md.
 */
export { ProtocolError } from './errors.js';
export {
  DEFAULT_PORT,
  MAX_DATAGRAM_BYTES,
  MIN_SECRET_BYTES,
  PROTOCOL_VERSION,
  TAG_BYTES,
  MAX_SEQ,
  typeCode,
  typeFromCode,
} from './wire.js';
export { deriveKey } from './auth.js';
export { MAX_DATASTORES } from './payload.js';
export { DROP_REASONS, decode, encode } from './codec.js';
export type { DecodeResult, DropReason, Envelope } from './codec.js';
export { DEFAULT_MAX_SENDERS, REPLAY_WINDOW, ReplayGuard } from './replay.js';
export type { ReplayVerdict } from './replay.js';
export { SendSequence, chooseIncarnation } from './sequence.js';
export type { SeqPair } from './sequence.js';
export { DEFAULT_MAX_KEYS, RateLimitedCounter } from './ratelimit.js';
export type { RateDecision, SuppressedSummary } from './ratelimit.js';
