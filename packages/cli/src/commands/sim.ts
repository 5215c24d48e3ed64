/**
 * `vigil sim`: run a simulated cluster (packages/sim: the real core under virtual time, with
 * simulated network, storage, hypervisors and faults) and check the invariants of SPEC §5.
 * A random world from a seed, or a scenario script. Exit 0: no violation; 1: a violation; 2: usage.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import {
  DEFAULT_RANDOM,
  FAULT_KINDS,
  INVARIANT_TITLES,
  ScenarioError,
  formatDuration,
  formatEntry,
  formatResult,
  parseDuration,
  parseFaultKinds,
  parseScenario,
  randomScenario,
  replayCommand,
  runScenario,
  shrink,
  violationTimeline,
  type FaultKind,
  type ProfileName,
  type Scenario,
  type SimResult,
} from '@vigil/sim';
import { CliError, EXIT_FAILURE, EXIT_USAGE } from '../errors.js';
import { printJson } from '../format.js';

interface SimCliOptions {
  seed?: string;
  hosts: string;
  vms: string;
  duration: string;
  faults: string;
  profile: string;
  scenario?: string;
  timeline: string;
  printScenario?: boolean;
  shrink?: boolean;
  json?: boolean;
}

function integer(name: string, v: string, lo: number, hi: number): number {
  if (!/^[0-9]{1,10}$/.test(v) || Number(v) < lo || Number(v) > hi) throw new CliError(`${name}: must be a whole number from ${lo} to ${hi}, not "${v}"`, EXIT_USAGE);
  return Number(v);
}

function scenarioOf(opts: SimCliOptions): Scenario {
  if (opts.scenario !== undefined) {
    if (opts.seed !== undefined) throw new CliError('--seed and --scenario: give one or the other (a scenario has its own seed line)', EXIT_USAGE);
    let text: string;
    try {
      text = readFileSync(opts.scenario, 'utf8');
    } catch (err) {
      throw new CliError(`--scenario: cannot read ${opts.scenario}: ${(err as Error).message}`, EXIT_USAGE);
    }
    try {
      return parseScenario(text, opts.scenario.replace(/^.*\//, '').replace(/\.scn$/, ''));
    } catch (err) {
      if (err instanceof ScenarioError) throw new CliError(`${opts.scenario}: ${err.message}`, EXIT_USAGE);
      throw err;
    }
  }
  if (opts.seed === undefined) throw new CliError('--seed is required (or --scenario FILE)', EXIT_USAGE);
  const seed = integer('--seed', opts.seed, 0, 4294967295);
  const hosts = integer('--hosts', opts.hosts, 1, 64);
  const vms = integer('--vms', opts.vms, 0, 5000);
  const durationMs = /^[0-9]+$/.test(opts.duration) ? Number(opts.duration) : parseDuration(opts.duration);
  if (durationMs === null || durationMs < 1000 || durationMs > 48 * 3_600_000) throw new CliError(`--duration: a time from 1s to 48h (e.g. 30m, 90s, or milliseconds), not "${opts.duration}"`, EXIT_USAGE);
  if (opts.profile !== 'default' && opts.profile !== 'fast' && opts.profile !== 'fdm') throw new CliError(`--profile: default, fast or fdm, not "${opts.profile}"`, EXIT_USAGE);
  let faults: FaultKind[];
  try {
    faults = parseFaultKinds(opts.faults);
  } catch (err) {
    throw new CliError(`--faults: ${(err as Error).message}`, EXIT_USAGE);
  }
  return randomScenario({ seed, hosts, vms, durationMs, faults, profile: opts.profile as ProfileName });
}

function jsonOf(r: SimResult, wallMs: number, lines: number | 'all', shrunk: { runs: number; removed: number; script: string } | null): unknown {
  const tl = lines === 'all' ? r.timeline : r.ok ? [] : violationTimeline(r, lines);
  return {
    name: r.name,
    seed: r.seed,
    ok: r.ok,
    violations: r.violations.map((v) => ({ invariant: v.invariant, title: INVARIANT_TITLES[String(v.invariant)], step: v.step, atMs: Math.round(v.at - r.readyAt), message: v.message, subjects: v.subjects })),
    profile: r.scenario.profile,
    hosts: r.stats.hosts,
    vms: r.stats.vms,
    simulatedMs: Math.round(r.simulatedMs),
    wallMs: Math.round(wallMs),
    simulatedHoursPerSecond: Number((r.endedAt / 3_600_000 / Math.max(wallMs / 1000, 1e-6)).toFixed(3)),
    stats: r.stats,
    notes: r.notes,
    replay: replayCommand(r),
    timeline: tl.map((e) => ({ atMs: Math.round((e.at - r.readyAt) * 1000) / 1000, step: e.step, host: e.host, event: e.event, message: e.message })),
    ...(shrunk ? { shrunk } : {}),
  };
}

export function registerSim(program: Command): void {
  program
    .command('sim')
    .description('simulate a cluster (the real core; simulated network, storage, hypervisors and faults) from a seed or a scenario, checking the invariants of SPEC §5 (exit 1 on a violation)')
    .option('--seed <n>', 'seed of a random world: the same seed gives the same run, byte for byte')
    .option('--hosts <n>', 'hosts of a random world', String(DEFAULT_RANDOM.hosts))
    .option('--vms <n>', 'VMs of a random world', String(DEFAULT_RANDOM.vms))
    .option('--duration <time>', 'simulated time after the cluster formed (30m, 90s, 2h, or ms)', formatDuration(DEFAULT_RANDOM.durationMs))
    .option('--faults <list>', `fault kinds to draw from, comma-separated (${FAULT_KINDS.join(', ')}), or all, or none`, 'all')
    .option('--profile <name>', 'timing profile of a random world: default, fast or fdm', DEFAULT_RANDOM.profile)
    .option('--scenario <file>', 'run a scenario script (test/scenarios/*.scn) instead of a random world')
    .option('--timeline <n|all>', 'timeline lines printed with a violation, or all: the whole timeline (also without a violation)', '60')
    .option('--print-scenario', 'print the run as a scenario script (a random world too), to replay or edit it')
    .option('--shrink', 'on a violation, search for a run with fewer faults that still violates, and print it as a scenario script')
    .option('--json', 'machine-readable result (fields: docs/cli.md)')
    .action((opts: SimCliOptions) => {
      const lines: number | 'all' = opts.timeline === 'all' ? 'all' : integer('--timeline', opts.timeline, 0, 1_000_000);
      const scn = scenarioOf(opts);
      const t0 = performance.now();
      let r = runScenario(scn);
      const wallMs = performance.now() - t0;
      let shrunk: { runs: number; removed: number; script: string } | null = null;
      if (!r.ok && opts.shrink) {
        if (!opts.json) process.stderr.write('shrinking: looking for fewer faults that still violate...\n');
        const s = shrink(r, { onProgress: (x, n) => !opts.json && process.stderr.write(`  run ${n}: ${x.scenario.steps.length} steps, ${x.ok ? 'no violation' : 'violation'}\n`) });
        r = s.result;
        shrunk = { runs: s.runs, removed: s.removed, script: r.script };
      }
      if (opts.json) {
        printJson(jsonOf(r, wallMs, lines, shrunk));
      } else {
        process.stdout.write(formatResult(r, { wallMs, timelineLines: lines === 'all' ? 0 : lines }));
        if (lines === 'all') process.stdout.write(`\ntimeline:\n${r.timeline.map((e) => formatEntry(e, r.readyAt)).join('\n')}\n`);
        if (shrunk) process.stdout.write(`\nshrunk in ${shrunk.runs} runs (${shrunk.removed} steps removed); the scenario:\n${shrunk.script}`);
        else if (opts.printScenario) process.stdout.write(`\n${r.script}`);
        if (!r.ok && !shrunk && !opts.printScenario) process.stdout.write('\n(--print-scenario prints the run as an editable script; --shrink looks for a shorter one)\n');
      }
      if (!r.ok) process.exitCode = EXIT_FAILURE;
    });
}
