/**
 * Key derivation and the HMAC-SHA256 tag.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { CLUSTER_ID_PATTERN } from '@vigil/core';
import { ProtocolError } from './errors.js';
import { MIN_SECRET_BYTES, TAG_BYTES } from './wire.js';

/**
 * Per-cluster datagram key: HMAC-SHA256(secret, "vigil-v1 " + cluster).
 * Binding the cluster into the key means two clusters sharing a secret still cannot accept
 * each other's datagrams.
 */
export function deriveKey(secret: Buffer, cluster: string): Buffer {
  if (!Buffer.isBuffer(secret)) {
    throw new ProtocolError('cluster secret must be a Buffer');
  }
  if (secret.length < MIN_SECRET_BYTES) {
    throw new ProtocolError(
      `cluster secret is too short: ${secret.length} bytes, at least ${MIN_SECRET_BYTES} required`,
    );
  }
  if (typeof cluster !== 'string' || !CLUSTER_ID_PATTERN.test(cluster)) {
    throw new ProtocolError(`invalid cluster id ${JSON.stringify(cluster)}`);
  }
  return createHmac('sha256', secret).update(`vigil-v1 ${cluster}`, 'utf8').digest();
}

/** The 32-byte tag over `data`. */
export function computeTag(key: Buffer, data: Uint8Array): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

/** Constant-time check of `tag` against the tag of `data`. */
export function verifyTag(key: Buffer, data: Uint8Array, tag: Uint8Array): boolean {
  if (tag.length !== TAG_BYTES) return false;
  const expected = computeTag(key, data);
  return timingSafeEqual(expected, tag);
}
