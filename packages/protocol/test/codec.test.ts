import { describe, expect, it } from 'vitest';
import { clipError, MESSAGE_TYPES } from '@vigil/core';
import type { Message } from '@vigil/core';
import {
  MAX_DATAGRAM_BYTES,
  ProtocolError,
  decode,
  deriveKey,
  encode,
  typeCode,
} from '../src/index.js';
import type { DecodeResult, Envelope } from '../src/index.js';
import { CLUSTER, KEY, SAMPLE_MESSAGES, SECRET, buildRaw } from './helpers.js';

function env(msg: Message, over: Partial<Envelope> = {}): Envelope {
  return { cluster: CLUSTER, sender: 'host-12', incarnation: 1_700_000_000_123, seq: 99, msg, ...over };
}

function reason(r: DecodeResult): string {
  return r.ok ? 'ok' : r.reason;
}

describe('encode/decode round trip', () => {
  it('covers every message type', () => {
    expect(SAMPLE_MESSAGES.map((m) => m.type).sort()).toEqual([...MESSAGE_TYPES].sort());
  });

  for (const msg of SAMPLE_MESSAGES) {
    it(`round-trips ${msg.type}`, () => {
      const e = env(msg);
      const buf = encode(e, KEY);
      const r = decode(buf, KEY, CLUSTER);
      expect(r).toEqual({ ok: true, env: e });
    });
  }

  it('round-trips extreme header values', () => {
    const e = env(
      { type: 'masterHeartbeat', datastores: 10000, maintenance: false, generation: Number.MAX_SAFE_INTEGER },
      { incarnation: Number.MAX_SAFE_INTEGER, seq: 0xffffffff, sender: 'host-999999999' },
    );
    expect(decode(encode(e, KEY), KEY, CLUSTER)).toEqual({ ok: true, env: e });
    const z = env({ type: 'election', datastores: 0, maintenance: false, generation: 0 }, { incarnation: 0, seq: 0, sender: 'host-0' });
    expect(decode(encode(z, KEY), KEY, CLUSTER)).toEqual({ ok: true, env: z });
  });

  it('writes the documented byte layout', () => {
    const buf = encode(env({ type: 'slaveHeartbeat', datastores: 5, master: 'host-3', memoryMB: 2048, cpus: 4 }), KEY);
    expect(buf.subarray(0, 3).toString('ascii')).toBe('VGL');
    expect(buf[3]).toBe(1);
    expect(buf[4]).toBe(3); // slaveHeartbeat is MESSAGE_TYPES[2]
    expect(buf[5]).toBe(0);
    expect(buf[6]).toBe(CLUSTER.length);
    let o = 7;
    expect(buf.subarray(o, o + CLUSTER.length).toString()).toBe(CLUSTER);
    o += CLUSTER.length;
    expect(buf[o]).toBe(7);
    expect(buf.subarray(o + 1, o + 8).toString()).toBe('host-12');
    o += 8;
    expect(buf.readBigUInt64BE(o)).toBe(1_700_000_000_123n);
    expect(buf.readUInt32BE(o + 8)).toBe(99);
    const len = buf.readUInt16BE(o + 12);
    o += 14;
    expect(JSON.parse(buf.subarray(o, o + len).toString())).toEqual({ datastores: 5, master: 'host-3', memoryMB: 2048, cpus: 4 });
    expect(buf.length).toBe(o + len + 32);
    // The independent builder produces the same bytes.
    const raw = buildRaw({ type: 3, incarnation: 1_700_000_000_123n, seq: 99, payload: '{"datastores":5,"master":"host-3","memoryMB":2048,"cpus":4}' });
    expect(raw.equals(buf)).toBe(true);
  });

  it('numbers message types 1-based in MESSAGE_TYPES order', () => {
    expect(MESSAGE_TYPES.map((t) => typeCode(t))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('does not put the type field or unknown fields into the payload', () => {
    const msg = { type: 'election', datastores: 1, maintenance: false, generation: 0, extra: 'x' } as unknown as Message;
    const buf = encode(env(msg), KEY);
    expect(buf.includes(Buffer.from('extra'))).toBe(false);
    expect(buf.includes(Buffer.from('"type"'))).toBe(false);
    const r = decode(buf, KEY, CLUSTER);
    expect(r.ok && r.env.msg).toEqual({ type: 'election', datastores: 1, maintenance: false, generation: 0 });
  });
});

describe('size budget', () => {
  const maxCluster = 'c'.repeat(64);
  const maxHost = 'host-999999999';
  // The longest VM id: a 64-character datastore name and a 512-character path.
  const maxVm = `${'d'.repeat(64)}:${'p'.repeat(512)}`;
  const maxKey = deriveKey(SECRET, maxCluster);
  const largest: Message[] = [
    { type: 'election', datastores: 10000, maintenance: false, generation: 0 },
    { type: 'masterHeartbeat', datastores: 10000, maintenance: false, generation: Number.MAX_SAFE_INTEGER },
    { type: 'slaveHeartbeat', datastores: 10000, master: maxHost, memoryMB: 2 ** 31, cpus: 1_000_000 },
    { type: 'abdicate', to: maxHost },
    { type: 'powerOn', vm: maxVm, req: Number.MAX_SAFE_INTEGER, takeover: `${maxHost}:999999999999999:${'f'.repeat(64)}:999999999999999:999999999999999/999999999999999:${'f'.repeat(64)}:999999999999999` },
    { type: 'powerOff', vm: maxVm, req: Number.MAX_SAFE_INTEGER, graceful: false, timeoutMs: 24 * 3600 * 1000 },
    { type: 'vmResult', vm: maxVm, req: Number.MAX_SAFE_INTEGER, ok: false, leaseHeld: false, error: clipError('\u{1F4A5}'.repeat(200)) },
    { type: 'vmStopped', vm: maxVm, reason: 'leaseHeld' },
  ];
  for (const msg of largest) {
    it(`largest ${msg.type} stays below ${MAX_DATAGRAM_BYTES} bytes`, () => {
      const e: Envelope = { cluster: maxCluster, sender: maxHost, incarnation: Number.MAX_SAFE_INTEGER, seq: 0xffffffff, msg };
      const buf = encode(e, maxKey);
      expect(buf.length).toBeLessThan(MAX_DATAGRAM_BYTES);
      if (!('vm' in msg)) expect(buf.length).toBeLessThan(300);
      expect(decode(buf, maxKey, maxCluster)).toEqual({ ok: true, env: e });
    });
  }

  it('drops an oversized datagram before any crypto (even if its tag would be valid)', () => {
    const big = buildRaw({ payload: `{"datastores":2${' '.repeat(MAX_DATAGRAM_BYTES)}}` });
    expect(big.length).toBeGreaterThan(MAX_DATAGRAM_BYTES);
    expect(reason(decode(big, KEY, CLUSTER))).toBe('oversized');
  });
});

describe('encode refuses invalid envelopes', () => {
  const good = env({ type: 'election', datastores: 1, maintenance: false, generation: 0 });
  const cases: Array<[string, Envelope]> = [
    ['bad cluster', { ...good, cluster: '../etc' }],
    ['empty cluster', { ...good, cluster: '' }],
    ['cluster too long', { ...good, cluster: 'c'.repeat(65) }],
    ['bad sender', { ...good, sender: 'node-1' }],
    ['negative incarnation', { ...good, incarnation: -1 }],
    ['unsafe incarnation', { ...good, incarnation: Number.MAX_SAFE_INTEGER + 1 }],
    ['fractional seq', { ...good, seq: 1.5 }],
    ['seq too large', { ...good, seq: 2 ** 32 }],
    ['datastores too large', { ...good, msg: { type: 'election', datastores: 10001, maintenance: false, generation: 0 } }],
    ['datastores fractional', { ...good, msg: { type: 'election', datastores: 1.5, maintenance: false, generation: 0 } }],
    ['bad master', { ...good, msg: { type: 'slaveHeartbeat', datastores: 1, master: 'x', memoryMB: 1, cpus: 1 } }],
    ['path-escaping vm id', { ...good, msg: { type: 'powerOn', vm: 'ds1:../../etc/passwd', req: 1, takeover: '' } }],
    ['bad takeover', { ...good, msg: { type: 'powerOn', vm: 'ds1:vms/a.json', req: 1, takeover: 'whatever' } }],
    ['error text too long', { ...good, msg: { type: 'vmResult', vm: 'ds1:vms/a.json', req: 1, ok: false, leaseHeld: false, error: 'x'.repeat(161) } }],
    ['negative generation', { ...good, msg: { type: 'masterHeartbeat', datastores: 1, maintenance: false, generation: -1 } }],
    ['unknown type', { ...good, msg: { type: 'nope', datastores: 1 } as unknown as Message }],
  ];
  for (const [name, e] of cases) {
    it(name, () => {
      expect(() => encode(e, KEY)).toThrow(ProtocolError);
    });
  }
  it('a key that is not 32 bytes', () => {
    expect(() => encode(good, Buffer.alloc(16))).toThrow(ProtocolError);
  });
});

describe('decode drop reasons', () => {
  const valid = encode(env({ type: 'election', datastores: 1, maintenance: false, generation: 0 }), KEY);

  it('accepts the valid datagram used below', () => {
    expect(decode(valid, KEY, CLUSTER).ok).toBe(true);
  });

  it('wrong key -> unauthenticated', () => {
    const other = deriveKey(Buffer.from('another-secret-of-enough-length'), CLUSTER);
    const r = decode(valid, other, CLUSTER);
    expect(reason(r)).toBe('unauthenticated');
  });

  it('wrong cluster -> wrongCluster', () => {
    expect(reason(decode(valid, KEY, 'other-cluster'))).toBe('wrongCluster');
    // Even when signed with that cluster's proper key.
    const k2 = deriveKey(SECRET, 'other-cluster');
    const buf = encode({ ...env({ type: 'election', datastores: 1, maintenance: false, generation: 0 }), cluster: 'other-cluster' }, k2);
    expect(reason(decode(buf, KEY, CLUSTER))).toBe('wrongCluster');
    // A prefix of the expected cluster id is not accepted either.
    expect(reason(decode(buildRaw({ cluster: CLUSTER.slice(0, 4) }), KEY, CLUSTER))).toBe('wrongCluster');
  });

  it('same secret, different cluster -> different key', () => {
    expect(deriveKey(SECRET, 'a').equals(deriveKey(SECRET, 'b'))).toBe(false);
  });

  it('structural reasons', () => {
    expect(reason(decode(Buffer.alloc(0), KEY, CLUSTER))).toBe('truncated');
    expect(reason(decode(buildRaw({ magic: Buffer.from('VGX') }), KEY, CLUSTER))).toBe('badMagic');
    expect(reason(decode(buildRaw({ version: 2 }), KEY, CLUSTER))).toBe('badVersion');
    expect(reason(decode(buildRaw({ type: 0 }), KEY, CLUSTER))).toBe('unknownType');
    expect(reason(decode(buildRaw({ type: 9 }), KEY, CLUSTER))).toBe('unknownType');
    expect(reason(decode(buildRaw({ flags: 1 }), KEY, CLUSTER))).toBe('malformed');
    expect(reason(decode(buildRaw({ sender: 'host-' }), KEY, CLUSTER))).toBe('badSender');
    expect(reason(decode(buildRaw({ sender: 'host-1234567890' }), KEY, CLUSTER))).toBe('badSender');
    expect(reason(decode(buildRaw({ sender: '' }), KEY, CLUSTER))).toBe('badSender');
    expect(reason(decode(buildRaw({ payloadLen: 200 }), KEY, CLUSTER))).toBe('truncated');
    expect(reason(decode(buildRaw({ payloadLen: 3 }), KEY, CLUSTER))).toBe('malformed');
    expect(reason(decode(Buffer.concat([valid, Buffer.from([0])]), KEY, CLUSTER))).toBe('malformed');
  });

  it('a cluster length byte pointing past the end -> truncated', () => {
    const buf = Buffer.from(valid.subarray(0, 10));
    buf[6] = 200;
    expect(reason(decode(buf, KEY, CLUSTER))).toBe('truncated');
  });

  it('the builder is correct (a well-formed raw datagram decodes)', () => {
    expect(reason(decode(buildRaw(), KEY, CLUSTER))).toBe('ok');
  });

  it('incarnation beyond MAX_SAFE_INTEGER with a valid tag -> malformed', () => {
    expect(reason(decode(buildRaw({ incarnation: BigInt(Number.MAX_SAFE_INTEGER) }), KEY, CLUSTER))).toBe('ok');
    expect(reason(decode(buildRaw({ incarnation: BigInt(Number.MAX_SAFE_INTEGER) + 1n }), KEY, CLUSTER))).toBe('malformed');
    expect(reason(decode(buildRaw({ incarnation: 2n ** 64n - 1n }), KEY, CLUSTER))).toBe('malformed');
  });

  it('never throws on non-buffer input or odd arguments', () => {
    expect(reason(decode(null as unknown as Buffer, KEY, CLUSTER))).toBe('malformed');
    expect(reason(decode('VGL' as unknown as Buffer, KEY, CLUSTER))).toBe('malformed');
    expect(reason(decode(valid, undefined as unknown as Buffer, CLUSTER))).toBe('unauthenticated');
    expect(reason(decode(valid, KEY, undefined as unknown as string))).toBe('wrongCluster');
  });

  it('accepts a plain Uint8Array and a Buffer view into a larger pool', () => {
    expect(decode(new Uint8Array(valid) as Buffer, KEY, CLUSTER).ok).toBe(true);
    const pool = Buffer.concat([Buffer.from('junk'), valid, Buffer.from('junk')]);
    expect(decode(pool.subarray(4, 4 + valid.length), KEY, CLUSTER).ok).toBe(true);
  });
});

describe('forged payloads with a valid HMAC are malformed', () => {
  const forged: Array<[string, number, string]> = [
    ['extra field', 1, '{"datastores":1,"maintenance":false,"generation":0,"x":1}'],
    ['maintenance not a boolean', 1, '{"datastores":1,"maintenance":0,"generation":0}'],
    ['type field in payload', 1, '{"datastores":1,"type":"election"}'],
    ['__proto__ field', 1, '{"datastores":1,"__proto__":{"a":1}}'],
    ['missing field', 2, '{"datastores":1}'],
    ['datastores as string', 1, '{"datastores":"1"}'],
    ['datastores negative', 1, '{"datastores":-1}'],
    ['datastores too large', 1, '{"datastores":10001}'],
    ['datastores fractional', 1, '{"datastores":1.5}'],
    ['datastores null', 1, '{"datastores":null}'],
    ['generation unsafe', 2, '{"datastores":1,"generation":9007199254740992}'],
    ['generation negative', 2, '{"datastores":1,"generation":-1}'],
    ['generation string', 2, '{"datastores":1,"generation":"1"}'],
    ['master not a host id', 3, '{"datastores":1,"master":"host-x","memoryMB":1,"cpus":1}'],
    ['slave heartbeat without capacity', 3, '{"datastores":1,"master":"host-1"}'],
    ['vm id escaping its datastore', 5, '{"vm":"ds1:vms/../../x","req":1,"takeover":""}'],
    ['stop reason unknown', 8, '{"vm":"ds1:vms/a.json","reason":"bored"}'],
    ['master a number', 3, '{"datastores":1,"master":7}'],
    ['to missing', 4, '{}'],
    ['to not a host id', 4, '{"to":"HOST-1"}'],
    ['payload of another type', 4, '{"datastores":1}'],
    ['array', 1, '[1]'],
    ['null', 1, 'null'],
    ['number', 1, '5'],
    ['not JSON', 1, '{datastores:1}'],
    ['empty', 1, ''],
    ['byte order mark', 1, '\uFEFF{"datastores":1}'],
  ];
  for (const [name, type, payload] of forged) {
    it(name, () => {
      expect(reason(decode(buildRaw({ type, payload }), KEY, CLUSTER))).toBe('malformed');
    });
  }

  it('invalid UTF-8 in the payload', () => {
    const payload = Buffer.concat([Buffer.from('{"datastores":1,"'), Buffer.from([0xff, 0xfe]), Buffer.from('":1}')]);
    expect(reason(decode(buildRaw({ payload }), KEY, CLUSTER))).toBe('malformed');
  });

  it('the same payloads well-formed are accepted (controls)', () => {
    expect(reason(decode(buildRaw({ type: 2, payload: '{"generation":3,"maintenance":true,"datastores":1}' }), KEY, CLUSTER))).toBe('ok');
    expect(reason(decode(buildRaw({ type: 3, payload: '{"datastores":1,"master":"host-1","cpus":2,"memoryMB":512}' }), KEY, CLUSTER))).toBe('ok');
    expect(reason(decode(buildRaw({ type: 5, payload: '{"vm":"ds1:vms/a.json","req":3,"takeover":"orphan"}' }), KEY, CLUSTER))).toBe('ok');
    expect(reason(decode(buildRaw({ type: 4, payload: ' {"to":"host-1"} ' }), KEY, CLUSTER))).toBe('ok');
    expect(reason(decode(buildRaw({ type: 1, payload: '{"datastores":1e2,"maintenance":false,"generation":0}' }), KEY, CLUSTER))).toBe('ok');
  });

  it('-0 decodes as 0', () => {
    const r = decode(buildRaw({ payload: '{"datastores":-0,"maintenance":false,"generation":0}' }), KEY, CLUSTER);
    expect(r.ok).toBe(true);
    expect(r.ok && Object.is((r.env.msg as { datastores: number }).datastores, 0)).toBe(true);
  });
});

describe('deriveKey', () => {
  it('is HMAC-SHA256(secret, "vigil-v1 " + cluster)', async () => {
    const { createHmac } = await import('node:crypto');
    const expected = createHmac('sha256', SECRET).update('vigil-v1 prod').digest();
    expect(deriveKey(SECRET, 'prod').equals(expected)).toBe(true);
    expect(deriveKey(SECRET, 'prod')).toHaveLength(32);
  });

  it('refuses short secrets with a clear message', () => {
    expect(() => deriveKey(Buffer.alloc(15, 1), 'prod')).toThrow(ProtocolError);
    expect(() => deriveKey(Buffer.alloc(15, 1), 'prod')).toThrow(/too short.*15 bytes.*16/);
    expect(() => deriveKey(Buffer.alloc(16, 1), 'prod')).not.toThrow();
  });

  it('refuses an invalid cluster id', () => {
    expect(() => deriveKey(SECRET, 'a/b')).toThrow(ProtocolError);
  });
});
