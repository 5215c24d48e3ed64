/**
 * VM statistics, the pure part (no I/O, times given by the caller):
 *
 *   - StatsBook keeps each local VM's latest sample and the one before, and computes CPU use as
 *     a percentage of one core from the CPU time used between the two, over the monotonic time
 *     between them. Counters (CPU time, disk, network) are the driver's, cumulative since the
 *     VM's power-on; when the power-on changes (a restart here: new pid / QEMU process) or a
 *     counter goes back, the history starts over and CPU is unknown until the next sample.
 *   - checkHostStats validates another host's answer; mergeVmStats joins the master's VM view
 *     with every host's answer for `vigil vms --stats` / `vigil vm stats`.
 *
 * stats-sampler.ts does the sampling (one driver query per period for all VMs).
 */
import type { VmCounters } from '@vigil/drivers';

/** What a host answers about one of its VMs (`vms --stats`, `vm stats`): the driver's counters (CPU time in ms), plus CPU %. */
export interface VmStats extends Omit<VmCounters, 'cpuTimeNs' | 'error'> {
  /** The host that runs it and sampled it. */
  host: string;
  /** Wall-clock time of the sample (ISO 8601), for people. */
  sampledAt: string;
  /** Age of the sample when the host answered, ms (monotonic). */
  ageMs: number;
  /** CPU use between the last two samples of this power-on, % of one core (150 = one and a half cores); null until there are two. */
  cpuPercent: number | null;
  /** Over how long cpuPercent was measured, ms (null with it). */
  cpuWindowMs: number | null;
  /** CPU time used since the VM started, ms. */
  cpuTimeMs: number | null;
  /** Why some fields are null, or why this is an older sample (the latest read failed). */
  error: string | null;
}

const COUNTERS = ['cpuTimeNs', 'diskReadBytes', 'diskWriteBytes', 'diskReadOps', 'diskWriteOps', 'netRxBytes', 'netTxBytes'] as const;

interface Entry {
  at: number;
  wall: number;
  c: VmCounters;
  cpuPercent: number | null;
  cpuWindowMs: number | null;
  /** Set when the latest read failed and this is the last good sample. */
  stale: string | null;
}

/** A counter went back: not the same run of counters (a restart the incarnation did not show). */
function wentBack(prev: VmCounters, cur: VmCounters): boolean {
  return COUNTERS.some((k) => prev[k] !== null && cur[k] !== null && cur[k]! < prev[k]!);
}

/** Nothing was read at all (the VM's process vanished, libvirtd has no stats for it). */
function empty(c: VmCounters): boolean {
  return c.cpuTimeNs === null && c.memoryBytes === null && COUNTERS.every((k) => c[k] === null);
}

export class StatsBook {
  private readonly vms = new Map<string, Entry>();

  constructor(private readonly host: string) {}

  /**
   * Record one sample of every local VM, taken at monotonic time `at` (ms) and wall time `wall`
   * (ms since the epoch). VMs not in `samples` no longer run here and are forgotten.
   */
  record(samples: readonly VmCounters[], at: number, wall: number): void {
    const seen = new Set<string>();
    for (const c of samples) {
      seen.add(c.vm);
      const prev = this.vms.get(c.vm);
      if (empty(c)) {
        // A failed read changes nothing: keep the last good sample, and say why it is older.
        if (prev && !empty(prev.c) && (c.incarnation === '' || c.incarnation === prev.c.incarnation)) prev.stale = c.error ?? 'no counters';
        else this.vms.set(c.vm, { at, wall, c, cpuPercent: null, cpuWindowMs: null, stale: null });
        continue;
      }
      let cpuPercent: number | null = null;
      let cpuWindowMs: number | null = null;
      const same = prev && !empty(prev.c) && prev.c.incarnation === c.incarnation && c.incarnation !== '' && !wentBack(prev.c, c);
      if (same && prev.c.cpuTimeNs !== null && c.cpuTimeNs !== null && at > prev.at) {
        cpuWindowMs = Math.round(at - prev.at);
        cpuPercent = Math.round(((c.cpuTimeNs - prev.c.cpuTimeNs) / ((at - prev.at) * 1e6)) * 1000) / 10;
      }
      this.vms.set(c.vm, { at, wall, c, cpuPercent, cpuWindowMs, stale: null });
    }
    for (const vm of [...this.vms.keys()]) if (!seen.has(vm)) this.vms.delete(vm);
  }

  /** Forget the VMs that no longer run here (`running`: the driver's list), when no sample could be taken. */
  keepOnly(running: ReadonlySet<string>): void {
    for (const vm of [...this.vms.keys()]) if (!running.has(vm)) this.vms.delete(vm);
  }

  /** The latest sample of every local VM, as of monotonic time `now`. */
  view(now: number): VmStats[] {
    return [...this.vms.values()]
      .map((e) => toStats(this.host, e, now))
      .sort((a, b) => (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0));
  }

  size(): number {
    return this.vms.size;
  }
}

function toStats(host: string, e: Entry, now: number): VmStats {
  const c = e.c;
  return {
    vm: c.vm,
    host,
    sampledAt: new Date(e.wall).toISOString(),
    ageMs: Math.max(0, Math.round(now - e.at)),
    cpuPercent: e.cpuPercent,
    cpuWindowMs: e.cpuWindowMs,
    cpuTimeMs: c.cpuTimeNs === null ? null : Math.round(c.cpuTimeNs / 1e6),
    memoryBytes: c.memoryBytes,
    diskReadBytes: c.diskReadBytes,
    diskWriteBytes: c.diskWriteBytes,
    diskReadOps: c.diskReadOps,
    diskWriteOps: c.diskWriteOps,
    netRxBytes: c.netRxBytes,
    netTxBytes: c.netTxBytes,
    incarnation: c.incarnation,
    error: e.stale !== null ? `latest read failed (${e.stale}); this is the last good sample` : (c.error ?? null),
  };
}

// ---- across hosts ----------------------------------------------------------------------------------

/** A host's answer to `hostVmStats`. */
export interface HostStats {
  host: string;
  intervalMs: number;
  /** Why this host has no samples at all right now (the last driver query failed), else null. */
  error: string | null;
  vms: VmStats[];
}

const NUM_FIELDS = ['ageMs', 'cpuPercent', 'cpuWindowMs', 'cpuTimeMs', 'memoryBytes', 'diskReadBytes', 'diskWriteBytes', 'diskReadOps', 'diskWriteOps', 'netRxBytes', 'netTxBytes'] as const;

/**
 * Validate another host's answer (authenticated, but from another version maybe): throws a clear
 * error if it is not a HostStats from `host`.
 */
export function checkHostStats(data: unknown, host: string): HostStats {
  const d = data as Partial<HostStats> | null;
  if (!d || typeof d !== 'object' || !Array.isArray(d.vms)) throw new Error(`${host} answered something that is not VM statistics`);
  if (d.host !== host) throw new Error(`${host} answered as ${String(d.host)}`);
  const vms: VmStats[] = [];
  for (const v of d.vms as unknown[]) {
    const s = v as Record<string, unknown> | null;
    if (!s || typeof s !== 'object' || typeof s.vm !== 'string' || typeof s.sampledAt !== 'string' || typeof s.incarnation !== 'string') throw new Error(`${host} answered a malformed VM sample`);
    const n: Partial<Record<(typeof NUM_FIELDS)[number], number | null>> = {};
    for (const k of NUM_FIELDS) {
      const x = s[k];
      if (x === null && k !== 'ageMs') n[k] = null;
      else if (typeof x === 'number' && Number.isFinite(x)) n[k] = x;
      else throw new Error(`${host} answered a malformed VM sample (${k} of ${s.vm})`);
    }
    vms.push({ vm: s.vm, host, sampledAt: s.sampledAt, incarnation: s.incarnation, error: typeof s.error === 'string' ? s.error : null, ...(n as Record<(typeof NUM_FIELDS)[number], number | null>), ageMs: n.ageMs! });
  }
  return { host, intervalMs: typeof d.intervalMs === 'number' ? d.intervalMs : 0, error: typeof d.error === 'string' ? d.error : null, vms };
}

/** What the master knows of a VM (the fields of VmView that matter here). */
export interface VmRowLike {
  id: string;
  host: string | null;
  power: 'on' | 'off';
}

/** A host's answer, or why there is none. */
export type HostAnswer = { ok: true; stats: HostStats } | { ok: false; error: string };

/**
 * Join the master's view of the VMs with the hosts' answers: each row gets `stats` (or null) and
 * `statsError` (why there are none, or null).
 */
export function mergeVmStats<R extends VmRowLike>(rows: readonly R[], answers: ReadonlyMap<string, HostAnswer>): (R & { stats: VmStats | null; statsError: string | null })[] {
  return rows.map((r) => {
    if (r.power !== 'on' || !r.host) return { ...r, stats: null, statsError: 'not running' };
    const a = answers.get(r.host);
    if (!a) return { ...r, stats: null, statsError: `${r.host} was not asked` };
    if (!a.ok) return { ...r, stats: null, statsError: `${r.host} did not answer: ${a.error}` };
    const s = a.stats.vms.find((v) => v.vm === r.id);
    if (s) return { ...r, stats: s, statsError: null };
    if (a.stats.error) return { ...r, stats: null, statsError: `${r.host} could not sample its VMs: ${a.stats.error}` };
    return { ...r, stats: null, statsError: `${r.host} has no sample of it yet (it samples every ${Math.round(a.stats.intervalMs / 1000)} s)` };
  });
}

/** The hosts to ask for the rows' statistics: where a VM runs, per the master. */
export function hostsToAsk(rows: readonly VmRowLike[]): string[] {
  return [...new Set(rows.filter((r) => r.power === 'on' && r.host).map((r) => r.host!))].sort();
}
