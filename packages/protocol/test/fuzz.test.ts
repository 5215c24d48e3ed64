import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { Message } from '@vigil/core';
import { clipError, VM_STOP_REASONS } from '@vigil/core';
import { MAX_DATAGRAM_BYTES, decode, deriveKey, encode } from '../src/index.js';
import type { DropReason, Envelope } from '../src/index.js';
import { CLUSTER, KEY, SECRET, buildRaw } from './helpers.js';

const hostId = fc.integer({ min: 0, max: 999_999_999 }).map((n) => `host-${n}`);
const clusterId = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/);
const datastores = fc.integer({ min: 0, max: 10_000 });
const vmId = fc
  .tuple(fc.stringMatching(/^[a-z][a-z0-9]{0,8}$/), fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,20}$/))
  .map(([ds, name]) => `${ds}:vms/${name}.json`);
const takeover = fc.oneof(
  fc.constant(''),
  fc.constant('orphan'),
  fc.tuple(hostId, fc.integer({ min: 1, max: 1e9 }), fc.stringMatching(/^[0-9a-f]{16}$/), fc.nat(), fc.nat()).map(([h, g, t, c, m]) => `${h}:${g}:${t}:${c}:${m}`),
  fc
    .tuple(hostId, fc.integer({ min: 1, max: 1e9 }), fc.stringMatching(/^[0-9a-f]{16}$/), fc.nat(), fc.nat(), fc.oneof(fc.constant('-'), fc.tuple(fc.integer({ min: 1, max: 1e9 }), fc.stringMatching(/^[0-9a-f]{16}$/), fc.nat()).map(([g, t, c]) => `${g}:${t}:${c}`)))
    .map(([h, g, t, c, m, hl]) => `${h}:${g}:${t}:${c}:${m}/${hl}`),
);

const message: fc.Arbitrary<Message> = fc.oneof(
  datastores.map((d): Message => ({ type: 'election', datastores: d, maintenance: false, generation: 0 })),
  fc
    .tuple(datastores, fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }))
    .map(([d, g]): Message => ({ type: 'masterHeartbeat', datastores: d, maintenance: false, generation: g })),
  fc
    .tuple(datastores, hostId, fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 0, max: 1_000_000 }))
    .map(([d, m, mem, cpus]): Message => ({ type: 'slaveHeartbeat', datastores: d, master: m, memoryMB: mem, cpus })),
  hostId.map((t): Message => ({ type: 'abdicate', to: t })),
  fc.tuple(vmId, fc.nat(), takeover).map(([vm, req, tk]): Message => ({ type: 'powerOn', vm, req, takeover: tk })),
  fc.tuple(vmId, fc.nat(), fc.boolean(), fc.integer({ min: 0, max: 24 * 3600 * 1000 })).map(([vm, req, graceful, timeoutMs]): Message => ({ type: 'powerOff', vm, req, graceful, timeoutMs })),
  fc
    .tuple(vmId, fc.nat(), fc.boolean(), fc.boolean(), fc.string({ maxLength: 40 }))
    .map(([vm, req, ok, leaseHeld, error]): Message => ({ type: 'vmResult', vm, req, ok, leaseHeld, error: clipError(error) })),
  fc.tuple(vmId, fc.constantFrom(...VM_STOP_REASONS)).map(([vm, reason]): Message => ({ type: 'vmStopped', vm, reason })),
);

const envelope: fc.Arbitrary<Envelope> = fc.record({
  cluster: fc.constant(CLUSTER),
  sender: hostId,
  incarnation: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  seq: fc.integer({ min: 0, max: 0xffffffff }),
  msg: message,
});

/** Reasons a corrupted datagram may legitimately produce: anything but ok, and never oversized. */
const CORRUPTION_REASONS: ReadonlySet<DropReason> = new Set<DropReason>([
  'truncated',
  'badMagic',
  'badVersion',
  'unknownType',
  'wrongCluster',
  'badSender',
  'unauthenticated',
  'malformed',
]);

function safeDecode(buf: Buffer, key: Buffer = KEY, cluster = CLUSTER) {
  // decode must not throw; if it did, the property fails with the exception.
  return decode(buf, key, cluster);
}

describe('property: round trip', () => {
  it('every valid envelope decodes to itself and fits the budget', () => {
    fc.assert(
      fc.property(envelope, (e) => {
        const buf = encode(e, KEY);
        expect(buf.length).toBeLessThanOrEqual(MAX_DATAGRAM_BYTES);
        expect(decode(buf, KEY, CLUSTER)).toEqual({ ok: true, env: e });
      }),
    );
  });

  it('with random cluster ids and secrets', () => {
    fc.assert(
      fc.property(clusterId, fc.uint8Array({ minLength: 16, maxLength: 64 }), envelope, (c, s, e) => {
        const key = deriveKey(Buffer.from(s), c);
        const env = { ...e, cluster: c };
        expect(decode(encode(env, key), key, c)).toEqual({ ok: true, env });
      }),
      { numRuns: 200 },
    );
  });
});

describe('property: hostile input', () => {
  it('random bytes never throw and never decode ok', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), (bytes) => {
        const r = safeDecode(Buffer.from(bytes));
        expect(r.ok).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  it('random bytes behind a valid-looking header never decode ok', () => {
    const prefix = buildRaw().subarray(0, 7 + CLUSTER.length);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const r = safeDecode(Buffer.concat([prefix, Buffer.from(bytes)]));
        expect(r.ok).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  it('a valid datagram truncated at any length is dropped', () => {
    fc.assert(
      fc.property(envelope, fc.nat(), (e, cut) => {
        const buf = encode(e, KEY);
        const n = cut % buf.length;
        const r = safeDecode(buf.subarray(0, n));
        expect(r.ok).toBe(false);
        if (!r.ok) expect(r.reason).toBe('truncated');
      }),
      { numRuns: 1000 },
    );
  });

  it('truncation at every length of one datagram', () => {
    const buf = encode({ cluster: CLUSTER, sender: 'host-5', incarnation: 12, seq: 3, msg: { type: 'abdicate', to: 'host-9' } }, KEY);
    for (let n = 0; n < buf.length; n++) {
      const r = safeDecode(buf.subarray(0, n));
      expect(r.ok, `cut at ${n}`).toBe(false);
    }
  });

  it('flipping any single bit of a valid datagram is detected', () => {
    fc.assert(
      fc.property(envelope, fc.nat(), fc.integer({ min: 0, max: 7 }), (e, pos, bit) => {
        const buf = Buffer.from(encode(e, KEY));
        const i = pos % buf.length;
        buf[i] = (buf[i] ?? 0) ^ (1 << bit);
        const r = safeDecode(buf);
        expect(r.ok).toBe(false);
        if (!r.ok) expect(CORRUPTION_REASONS.has(r.reason)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it('every single-bit flip of one datagram is detected', () => {
    const original = encode(
      { cluster: CLUSTER, sender: 'host-42', incarnation: 1_700_000_000_000, seq: 17, msg: { type: 'slaveHeartbeat', datastores: 4, master: 'host-1', memoryMB: 1024, cpus: 8 } },
      KEY,
    );
    const seen = new Set<string>();
    for (let i = 0; i < original.length; i++) {
      for (let b = 0; b < 8; b++) {
        const buf = Buffer.from(original);
        buf[i] = (buf[i] ?? 0) ^ (1 << b);
        const r = safeDecode(buf);
        expect(r.ok, `byte ${i} bit ${b}`).toBe(false);
        if (!r.ok) seen.add(r.reason);
      }
    }
    // Flips land in every part of the header, so several reasons occur.
    expect(seen).toContain('unauthenticated');
    expect(seen).toContain('badMagic');
    expect(seen).toContain('badVersion');
    expect(seen).toContain('wrongCluster');
  });

  it('a datagram from another key is never accepted', () => {
    fc.assert(
      fc.property(envelope, fc.uint8Array({ minLength: 16, maxLength: 40 }), (e, s) => {
        const other = deriveKey(Buffer.from(s), CLUSTER);
        fc.pre(!other.equals(KEY));
        const r = safeDecode(encode(e, other));
        expect(r.ok).toBe(false);
        if (!r.ok) expect(r.reason).toBe('unauthenticated');
      }),
      { numRuns: 300 },
    );
  });

  it('arbitrary JSON payloads with a valid HMAC never throw, and decode ok only if valid', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.json({ maxDepth: 3 }), (type, json) => {
        const r = safeDecode(buildRaw({ type, payload: json }));
        if (r.ok) {
          // Only well-formed payloads are accepted, and the result re-encodes identically.
          expect(decode(encode(r.env, KEY), KEY, CLUSTER)).toEqual(r);
        } else {
          expect(r.reason).toBe('malformed');
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('forged objects with one extra field are malformed', () => {
    fc.assert(
      fc.property(
        datastores,
        fc.string({ minLength: 1, maxLength: 20 }).filter((k) => k !== 'datastores'),
        fc.jsonValue(),
        (d, k, v) => {
          const payload = JSON.stringify({ datastores: d, [k]: v });
          const r = safeDecode(buildRaw({ type: 1, payload }));
          expect(r.ok).toBe(false);
          if (!r.ok) expect(r.reason).toBe('malformed');
        },
      ),
      { numRuns: 500 },
    );
  });

  it('secrets are checked for length', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 15 }), (s) => {
        expect(() => deriveKey(Buffer.from(s), CLUSTER)).toThrow(/too short/);
      }),
    );
    expect(deriveKey(SECRET, CLUSTER)).toHaveLength(32);
  });
});
