/**
 * Statistics of libvirt VMs: ONE `virsh domstats` per sample for every running domain of the
 * libvirtd (`--list-running --cpu-total --balloon --block --interface --raw`), parsed here, then
 * matched to this host's VMs by domain name. Its output:
 *
 *   Domain: 'vigil-host-1-web-1a2b3c4d'
 *     cpu.time=650700000                 ns, since QEMU started
 *     balloon.rss=42672                  KiB, QEMU's resident memory on the host
 *     net.count=1
 *     net.0.rx.bytes=90                  bytes, as the guest sees them (libvirt swaps the tap's rx/tx)
 *     block.count=1
 *     block.0.rd.bytes=512   block.0.rd.reqs=1   block.0.wr.bytes=0   block.0.wr.reqs=0
 *
 * All counters are QEMU's, so they start over with each power-on (a new QEMU process).
 */
import type { VmCounters } from '../types.js';

export class DomstatsError extends Error {}

/** Parse `virsh domstats --raw` output: domain name -> its `key=value` fields. Throws DomstatsError on an unexpected line. */
export function parseDomstats(text: string): Map<string, Map<string, string>> {
  const out = new Map<string, Map<string, string>>();
  let cur: Map<string, string> | null = null;
  const lines = text.split('\n');
  for (const [i, raw] of lines.entries()) {
    const line = raw.trimEnd();
    if (line.trim() === '') continue;
    const d = /^Domain: '(.*)'$/.exec(line);
    if (d) {
      cur = new Map();
      out.set(d[1]!, cur);
      continue;
    }
    const kv = /^\s+([A-Za-z0-9_.-]+)=(.*)$/.exec(line);
    if (!kv || !cur) throw new DomstatsError(`unexpected line ${i + 1} of virsh domstats: ${JSON.stringify(line.slice(0, 120))}`);
    cur.set(kv[1]!, kv[2]!);
  }
  return out;
}

/** A non-negative integer field, or null (absent or not a number). */
function num(f: Map<string, string>, key: string): number | null {
  const v = f.get(key);
  if (v === undefined || !/^[0-9]+$/.test(v)) return null;
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : null;
}

/**
 * Sum `<group>.<i>.<suffix>` over i < `<group>.count`. 0 when the count is 0 (no such device: no
 * traffic); null when the count is missing, or no device reports the field (e.g. user-mode
 * networking, which has no host-side interface to count).
 */
function sumOver(f: Map<string, string>, group: string, suffix: string): number | null {
  const count = num(f, `${group}.count`);
  if (count === null) return null;
  if (count === 0) return 0;
  let sum = 0;
  let seen = 0;
  for (let i = 0; i < count && i < 4096; i++) {
    const v = num(f, `${group}.${i}.${suffix}`);
    if (v === null) continue;
    sum += v;
    seen++;
  }
  return seen > 0 ? sum : null;
}

/** The counters of one domain from its domstats fields (`incarnation`: its QEMU process). */
export function countersFromDomstats(vm: string, incarnation: string, f: Map<string, string>): VmCounters {
  const rss = num(f, 'balloon.rss');
  const out: VmCounters = {
    vm,
    incarnation,
    cpuTimeNs: num(f, 'cpu.time'),
    memoryBytes: rss === null ? null : rss * 1024,
    diskReadBytes: sumOver(f, 'block', 'rd.bytes'),
    diskWriteBytes: sumOver(f, 'block', 'wr.bytes'),
    diskReadOps: sumOver(f, 'block', 'rd.reqs'),
    diskWriteOps: sumOver(f, 'block', 'wr.reqs'),
    netRxBytes: sumOver(f, 'net', 'rx.bytes'),
    netTxBytes: sumOver(f, 'net', 'tx.bytes'),
  };
  const missing = (['cpuTimeNs', 'memoryBytes', 'diskReadBytes', 'netRxBytes'] as const).filter((k) => out[k] === null);
  if (missing.length > 0) out.error = `virsh domstats gave no ${missing.join(', ')}`;
  return out;
}

/** The arguments of the one domstats call per sample. */
export const DOMSTATS_ARGS = ['domstats', '--list-running', '--cpu-total', '--balloon', '--block', '--interface', '--raw'];
