/**
 * VM statistics in the CLI: the columns `vigil vms --stats` adds, and `vigil vm stats NAME`.
 * The agent answers with the master's VM rows, each with `stats` (the latest sample of the host
 * that runs it, packages/agent/src/stats.ts) or `statsError` (why there is none).
 */
import type { Command } from 'commander';
import { controlRequest, type VmStats } from '@vigil/agent';
import type { VmView } from '@vigil/core';
import { ms, printJson } from '../format.js';

export type VmRowWithStats = VmView & { stats: VmStats | null; statsError: string | null };

/** 1536 -> "1.5 KiB", 0 -> "0 B", null -> "-". */
export function bytes(v: number | null | undefined): string {
  if (v === null || v === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let x = v;
  let u = 0;
  while (x >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return u === 0 ? `${x} B` : `${x < 10 ? x.toFixed(1) : Math.round(x)} ${units[u]}`;
}

function pair(a: number | null, b: number | null): string {
  return a === null && b === null ? '-' : `${bytes(a)}/${bytes(b)}`;
}

function cpu(s: VmStats | null): string {
  return s?.cpuPercent === null || s?.cpuPercent === undefined ? '-' : s.cpuPercent.toFixed(1);
}

/** The columns `vms --stats` adds, for one row. */
export function statsCells(r: VmRowWithStats): string[] {
  const s = r.stats;
  if (!s) return ['-', '-', '-', '-', '-'];
  return [cpu(s), bytes(s.memoryBytes), pair(s.diskReadBytes, s.diskWriteBytes), pair(s.netRxBytes, s.netTxBytes), ms(s.ageMs)];
}

export const STATS_HEADERS = ['CPU%', 'MEM', 'DISK R/W', 'NET RX/TX', 'AGE'];

/** Lines under the `vms --stats` table: why running VMs have no figures (each reason once). */
export function statsNotes(rows: readonly VmRowWithStats[]): string[] {
  const notes = new Map<string, string[]>();
  for (const r of rows) {
    if (r.stats || !r.statsError || r.statsError === 'not running') continue;
    notes.set(r.statsError, [...(notes.get(r.statsError) ?? []), r.name]);
  }
  return [...notes].map(([why, names]) => `no statistics for ${names.join(', ')}: ${why}`);
}

/** `vigil vm stats NAME` for people. */
export function formatVmStats(r: VmRowWithStats): string {
  const s = r.stats;
  const lines: [string, string][] = [
    ['VM', `${r.name} (${r.id})`],
    ['HOST', r.host ?? '-'],
    ['STATE', r.state],
  ];
  if (!s) {
    lines.push(['STATISTICS', `none: ${r.statsError ?? 'unknown'}`]);
  } else {
    const ops = (n: number | null) => (n === null ? '' : ` (${n} requests)`);
    lines.push(
      ['SAMPLED', `${s.sampledAt} (${ms(s.ageMs)} ago)`],
      ['CPU', s.cpuPercent === null ? '- (needs two samples of this power-on)' : `${s.cpuPercent.toFixed(1)} % of one core over ${ms(s.cpuWindowMs)}`],
      ['CPU TIME', s.cpuTimeMs === null ? '-' : ms(s.cpuTimeMs)],
      ['MEMORY', bytes(s.memoryBytes)],
      ['DISK READ', `${bytes(s.diskReadBytes)}${ops(s.diskReadOps)}`],
      ['DISK WRITE', `${bytes(s.diskWriteBytes)}${ops(s.diskWriteOps)}`],
      ['NET RX', bytes(s.netRxBytes)],
      ['NET TX', bytes(s.netTxBytes)],
    );
    if (s.error) lines.push(['NOTE', s.error]);
  }
  const w = Math.max(...lines.map(([k]) => k.length));
  return lines.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n');
}

/** Register `vigil vm stats` under `vm`. */
export function registerVmStats(vm: Command, socketOpt: readonly [string, string, string]): void {
  vm.command('stats')
    .description('a VM\'s latest statistics: CPU, memory, disk and network, sampled by the host that runs it')
    .argument('<name>', 'VM name or id')
    .option('--json', 'machine-readable output (fields: docs/cli.md)')
    .option(...socketOpt)
    .action(async (name: string, opts: { json?: boolean; socket: string }) => {
      const res = (await controlRequest(opts.socket, { cmd: 'vmStats', vm: name }, 30_000)) as { master: string; vm: VmRowWithStats };
      if (opts.json) return printJson(res.vm);
      process.stdout.write(formatVmStats(res.vm) + '\n');
    });
}
