/**
 * Running a scenario (hand-written or generated from a seed) in a world, with the invariant
 * checker attached: `runScenario` and `runSim`. The result carries the violations, the timeline
 * (byte-identical for the same input), and the script that reproduces the run.
 */
import type { HostCore, HostCoreOptions } from '@vigil/core';
import { PROFILES } from '@vigil/config';
import { World, formatEntry, type TimelineEntry } from './world.js';
import type { HypervisorEnv, SimHypervisor } from './hypervisor.js';
import { Operator } from './operator.js';
import { InvariantChecker, INVARIANT_TITLES, convergenceBounds, type Violation } from './invariants.js';
import { describeCommand, formatDuration, formatScenario, parseScenario, type Command, type Scenario } from './scenario.js';
import { DEFAULT_RANDOM, maxPowerOnMs, randomScenario, type RandomWorldOptions } from './faults.js';

export interface RunOptions {
  /** Build each agent's core (mutation tests). */
  coreFactory?: (opts: HostCoreOptions) => HostCore;
  /** Build each host's hypervisor (mutation tests). */
  hypervisorFactory?: (env: HypervisorEnv) => SimHypervisor;
  /** Look at the world when the run starts (attach an observer) and when it ends (debugging, tests). */
  onStart?: (world: World) => void;
  onEnd?: (world: World) => void;
}

export type SimOptions = RandomWorldOptions & RunOptions;

export interface SimStats {
  hosts: number;
  vms: number;
  /** Scenario steps run (faults, operator commands, expectations). */
  steps: number;
  /** Restarts the masters reported (`vm.restarted`). */
  restarts: number;
  /** Scheduler steps (events) run. */
  events: number;
  /** Elections won (`election.won`). */
  elections: number;
}

export interface SimResult {
  name: string;
  seed: number;
  ok: boolean;
  violations: Violation[];
  timeline: TimelineEntry[];
  /** Global time the cluster was ready (scenario times count from here; the timeline is shown relative to it). */
  readyAt: number;
  /** Global time the run ended. */
  endedAt: number;
  /** Simulated ms after the cluster was ready. */
  simulatedMs: number;
  stats: SimStats;
  /** Remarks: VMs the master gave up on, checks that could not run, ... */
  notes: string[];
  scenario: Scenario;
  /** The scenario as a script (`vigil sim --scenario FILE` replays it). */
  script: string;
}

/** A predicate evaluated at most every `everyMs` of simulated time (it may be costly). */
function every(world: World, everyMs: number, pred: () => boolean): () => boolean {
  let last = -Infinity;
  return () => {
    if (world.now - last < everyMs) return false;
    last = world.now;
    return pred();
  };
}

function isFault(c: Command): boolean {
  return c.op !== 'expect';
}

export function runSim(opts: SimOptions): SimResult {
  const { coreFactory, hypervisorFactory, ...world } = opts;
  return runScenario(randomScenario(world), { ...(coreFactory ? { coreFactory } : {}), ...(hypervisorFactory ? { hypervisorFactory } : {}) });
}

export function runScenarioText(text: string, name?: string, opts: RunOptions = {}): SimResult {
  return runScenario(parseScenario(text, name), opts);
}

export function runScenario(scn: Scenario, opts: RunOptions = {}): SimResult {
  const timing = { ...PROFILES[scn.profile], ...scn.timing };
  const world = new World({
    seed: scn.seed,
    timing,
    hosts: scn.hosts,
    vms: scn.vms,
    heartbeatDatastores: scn.heartbeatDatastores,
    isolationResponse: scn.isolationResponse,
    nextPriorityWhen: scn.nextPriorityWhen,
    storage: scn.storage,
    watcher: scn.watcher,
    ...(opts.coreFactory ? { coreFactory: opts.coreFactory } : {}),
    ...(opts.hypervisorFactory ? { hypervisorFactory: opts.hypervisorFactory } : {}),
  });
  world.network.faults = { ...scn.network };
  const powerOnTimeoutMs = 3 * timing.storageCallTimeoutMs + 10_000;
  const maxPowerOn = Math.max(0, ...scn.vms.map((v) => v.powerOnMs));
  const operator = new Operator(world, world.rng.fork(10), powerOnTimeoutMs + maxPowerOn);
  const configs = new Map(scn.vms.map((v) => [v.id, v]));
  const checker = new InvariantChecker(world, operator, configs);
  world.observe(checker);
  operator.onConfirmed = (op, vm) => checker.confirmed(op, vm);
  opts.onStart?.(world);
  const notes: string[] = [];
  const bounds = convergenceBounds(timing, Math.max(maxPowerOn, maxPowerOnMs(timing)));
  let stepsRun = 0;

  // Setup: boot every host, wait for one master, start the VMs, wait until they all run.
  const stagger = world.rng.fork(11);
  for (const h of scn.hosts) world.powerOn(h.id, stagger.int(0, Math.floor(timing.electionWindowMs / 4)));
  const poll = Math.max(10, Math.floor(timing.heartbeatIntervalMs / 4));
  const formed = world.runUntil(every(world, poll, () => checker.allConnected().length === 0), bounds.rolesMs + timing.electionWindowMs);
  let readyAt = world.now;
  if (formed === null) {
    if (checker.ok) checker.violate('setup', `the cluster did not form within ${formatDuration(bounds.rolesMs + timing.electionWindowMs)}: ${checker.allConnected().join('; ')}`, []);
  } else {
    const unprotected = new Set(scn.unprotected);
    for (const v of scn.vms) if (!unprotected.has(v.id)) operator.command('start', v.id);
    const started = world.runUntil(every(world, poll, () => operator.settled && checker.converged().length === 0), bounds.vmsMs);
    readyAt = world.now;
    if (started === null && checker.ok) checker.violate('setup', `the VMs did not all start within ${formatDuration(bounds.vmsMs)}: ${[...checker.converged(), ...(operator.settled ? [] : ['operator commands unconfirmed'])].slice(0, 10).join('; ')}`, []);
  }
  checker.origin = readyAt;
  world.record(null, 'sim.ready', `cluster ready: ${scn.hosts.length} hosts, ${operator.protectedVms().length} protected VMs; scenario times count from here`);

  if (checker.ok) {
    for (const s of scn.steps) {
      world.at(readyAt + s.at, () => {
        stepsRun += 1;
        execute(world, scn, operator, checker, s.cmd, s.line);
      });
    }
    if (scn.autoConverge) {
      const faults = scn.steps.filter((s) => isFault(s.cmd));
      const quietAt = readyAt + (faults.length > 0 ? faults[faults.length - 1]!.at : 0);
      const end = readyAt + scn.durationMs;
      const check = (what: 'roles' | 'all') => {
        const extra: string[] = [];
        const problems = what === 'roles' ? checker.allConnected() : checker.converged(extra);
        for (const n of extra) if (!notes.includes(n)) notes.push(n);
        if (problems.length > 0) {
          const after = formatDuration(Math.round(world.now - quietAt));
          checker.violate(3, `${after} after the last fault (bound: ${formatDuration(what === 'roles' ? bounds.rolesMs : bounds.vmsMs)}): ${problems.slice(0, 8).join('; ')}${problems.length > 8 ? `; and ${problems.length - 8} more` : ''}`, problems.flatMap((p) => p.match(/\S+:vms\/\S+\.json|host-[0-9]+/g) ?? []).slice(0, 10));
        }
      };
      // (A millisecond of slack: these are sums of floats.)
      if (quietAt + bounds.rolesMs <= end + 1) world.at(Math.min(end, quietAt + bounds.rolesMs), () => check('roles'));
      else notes.push(`not enough quiet time after the last fault to check convergence (needs ${formatDuration(bounds.rolesMs)})`);
      if (quietAt + bounds.vmsMs <= end + 1) {
        world.at(Math.min(end, quietAt + bounds.vmsMs), () => check('all'));
        // And it stays converged.
        for (let t = quietAt + bounds.vmsMs + 10_000; t <= end; t += 10_000) world.at(t, () => check('all'));
      } else notes.push(`not enough quiet time after the last fault to check that every protected VM runs (needs ${formatDuration(bounds.vmsMs)})`);
    }
    world.run(readyAt + scn.durationMs);
  }
  for (const [vm, why] of checker.gaveUp) notes.push(`the master gave up on ${vm}: ${why}`);
  opts.onEnd?.(world);
  const endedAt = world.now;
  return {
    name: scn.name,
    seed: scn.seed,
    ok: checker.ok,
    violations: checker.violations,
    timeline: world.timeline,
    readyAt,
    endedAt,
    simulatedMs: Math.max(0, endedAt - readyAt),
    stats: {
      hosts: scn.hosts.length,
      vms: scn.vms.length,
      steps: stepsRun,
      restarts: checker.restarts,
      events: world.sched.steps,
      elections: world.timeline.filter((e) => e.event === 'election.won').length,
    },
    notes,
    scenario: scn,
    script: formatScenario(scn),
  };
}

function execute(world: World, scn: Scenario, operator: Operator, checker: InvariantChecker, c: Command, line: number): void {
  const text = describeCommand(c, scn);
  world.record(null, c.op === 'expect' ? 'sim.expect' : 'sim.step', `${text}${line ? ` (line ${line})` : ''}`);
  const net = world.network;
  switch (c.op) {
    case 'power-off':
      world.powerOff(c.host);
      return;
    case 'power-on':
      world.powerOn(c.host);
      return;
    case 'crash-agent':
      world.crashAgent(c.host);
      return;
    case 'restart-agent':
      world.restartAgent(c.host);
      return;
    case 'stop-agent':
      world.stopAgent(c.host);
      return;
    case 'isolate':
      net.isolate(c.host);
      return;
    case 'reconnect':
      net.reconnect(c.host);
      return;
    case 'partition':
      net.partition(c.groups);
      return;
    case 'oneway':
      net.blockOneWay(c.from, c.to);
      return;
    case 'heal':
      net.heal();
      return;
    case 'network-down':
      for (const h of world.hostIds) net.isolate(h);
      return;
    case 'network':
      net.faults = { ...c.faults };
      return;
    case 'storage-loss':
      world.setAccess(c.host, c.ds, c.mode);
      return;
    case 'hang-storage':
      world.setAccess(c.host, c.ds, 'hung');
      return;
    case 'storage-heal':
      for (const ds of c.ds === '*' ? world.hostInfo[c.host]!.datastores : [c.ds]) world.setAccess(c.host, ds, 'ok');
      return;
    case 'latency':
      for (const ds of c.ds === '*' ? world.hostInfo[c.host]!.datastores : [c.ds]) world.storage.setLatency(c.host, ds, c.ms === 0 ? null : { min: Math.round(c.ms / 2), max: c.ms });
      return;
    case 'skew':
      world.host(c.host).clock.skewMs = c.ms;
      return;
    case 'drift':
      world.host(c.host).clock.setDrift(world.now, c.rate);
      return;
    case 'kill-vm': {
      const hit = world.crashVm(c.vm, c.how);
      if (hit.length === 0) world.record(null, 'sim.step', `${c.vm} does not run anywhere: nothing to kill`);
      return;
    }
    case 'vm-start':
      operator.command('start', c.vm, c.host);
      return;
    case 'vm-stop':
    case 'vm-protect':
    case 'vm-unprotect':
      operator.command(c.op.slice(3) as 'stop' | 'protect' | 'unprotect', c.vm);
      return;
    case 'heal-all':
      net.heal();
      net.faults = { ...scn.network };
      world.storage.healAll();
      for (const h of world.hostIds) {
        const host = world.host(h);
        if (!host.powered) world.powerOn(h);
        else if (!host.agent) world.restartAgent(h);
      }
      return;
    case 'expect': {
      const problems = checker.evaluate(c.what);
      if (problems.length > 0) checker.violate('expect', `${text}${line ? ` (line ${line})` : ''} does not hold: ${problems.slice(0, 8).join('; ')}${problems.length > 8 ? `; and ${problems.length - 8} more` : ''}`, problems.flatMap((p) => p.match(/\S+:vms\/\S+\.json|host-[0-9]+/g) ?? []).slice(0, 10));
      return;
    }
  }
}

// ---- shrinking ----------------------------------------------------------------------------------

export interface ShrinkResult {
  /** The smallest failing scenario found (the original if nothing could be removed). */
  result: SimResult;
  /** Runs tried. */
  runs: number;
  /** Steps removed. */
  removed: number;
}

/**
 * Look for a shorter failing run: drop scenario steps (faults and operator commands; never the
 * final heal-all or the expectations), in halves, then quarters, ... then one by one, keeping a
 * removal whenever the run still violates the same invariant. At most `maxRuns` runs.
 */
export function shrink(failing: SimResult, opts: RunOptions & { maxRuns?: number; onProgress?: (r: SimResult, runs: number) => void } = {}): ShrinkResult {
  const first = failing.violations[0];
  if (!first) return { result: failing, runs: 0, removed: 0 };
  const maxRuns = opts.maxRuns ?? 60;
  const keep = (s: Scenario['steps'][number]) => s.cmd.op === 'heal-all' || s.cmd.op === 'expect';
  let best = failing;
  let runs = 0;
  let chunk = Math.max(1, Math.ceil(best.scenario.steps.filter((s) => !keep(s)).length / 2));
  while (chunk >= 1 && runs < maxRuns) {
    let progressed = false;
    const removable = best.scenario.steps.map((s, i) => (keep(s) ? -1 : i)).filter((i) => i >= 0);
    for (let start = 0; start < removable.length && runs < maxRuns; start += chunk) {
      const drop = new Set(removable.slice(start, start + chunk));
      const candidate: Scenario = { ...best.scenario, steps: best.scenario.steps.filter((_, i) => !drop.has(i)) };
      const r = runScenario(candidate, opts);
      runs += 1;
      opts.onProgress?.(r, runs);
      if (!r.ok && r.violations[0]!.invariant === first.invariant) {
        best = r;
        progressed = true;
        break;
      }
    }
    if (!progressed) chunk = chunk === 1 ? 0 : Math.ceil(chunk / 2);
  }
  return { result: best, runs, removed: failing.scenario.steps.length - best.scenario.steps.length };
}

// ---- reporting ----------------------------------------------------------------------------------

/** The command line that replays a random world. */
export function replayCommand(r: SimResult): string {
  const s = r.scenario;
  if (!s.autoConverge) return `vigil sim --scenario FILE   (the script below)`;
  const parts = [`vigil sim --seed ${r.seed} --hosts ${s.hosts.length} --vms ${s.vms.length} --duration ${formatDuration(s.durationMs)}`];
  if (s.profile !== DEFAULT_RANDOM.profile) parts.push(`--profile ${s.profile}`);
  if (s.faultKinds && s.faultKinds.length !== 14) parts.push(`--faults ${s.faultKinds.length ? s.faultKinds.join(',') : 'none'}`);
  return parts.join(' ');
}

/** The timeline around a violation: the last `lines` entries, plus earlier ones about its subjects. */
export function violationTimeline(r: SimResult, lines = 60, related = 40): TimelineEntry[] {
  const tl = r.timeline;
  const tail = lines > 0 ? tl.slice(-lines) : [];
  const v = r.violations[0];
  if (!v || v.subjects.length === 0) return tail;
  const start = tl.length - tail.length;
  const earlier = tl.slice(0, start).filter((e) => e.event.startsWith('sim.') || v.subjects.some((s) => e.message.includes(s) || e.host === s)).slice(-related);
  return [...earlier, ...tail];
}

/**
 * Timeline lines for people: runs of lines that repeat what was printed just before (the same
 * host, event and message up to the numbers in it) are folded into one "... N similar" line.
 */
export function compactTimeline(entries: readonly TimelineEntry[], origin: number): string[] {
  const out: string[] = [];
  const recent: string[] = [];
  let folded = 0;
  const flush = () => {
    if (folded > 0) out.push(`${' '.repeat(12)}... ${folded} more line${folded === 1 ? '' : 's'} repeating the ones above`);
    folded = 0;
  };
  for (const e of entries) {
    const key = `${e.host}|${e.event}|${e.message.replace(/[0-9]+(\.[0-9]+)?/g, '#')}`;
    if (recent.includes(key) && !e.event.startsWith('sim.') && e.event !== 'VIOLATION') {
      folded += 1;
      continue;
    }
    flush();
    recent.push(key);
    if (recent.length > 12) recent.shift();
    out.push(formatEntry(e, origin));
  }
  flush();
  return out;
}

export function formatResult(r: SimResult, opts: { timelineLines?: number; wallMs?: number } = {}): string {
  const s = r.scenario;
  const out: string[] = [];
  const wall = opts.wallMs !== undefined ? ` in ${(opts.wallMs / 1000).toFixed(1)} s` : '';
  out.push(`${r.name}: ${s.hosts.length} hosts, ${s.vms.length} VMs, ${s.datastores.length} datastores, ${s.profile} profile; ${formatDuration(Math.round(r.simulatedMs))} simulated after the cluster formed${wall}`);
  out.push(`  ${r.stats.steps} scenario steps, ${r.stats.restarts} restarts, ${r.stats.elections} elections won, ${r.stats.events} events`);
  for (const n of r.notes) out.push(`  note: ${n}`);
  if (r.ok) {
    out.push('no violation');
    return out.join('\n') + '\n';
  }
  const v = r.violations[0]!;
  out.push('');
  out.push(`VIOLATION of ${INVARIANT_TITLES[String(v.invariant)]}`);
  out.push(`  at step ${v.step}, t=${((v.at - r.readyAt) / 1000).toFixed(3)}s after the cluster formed`);
  out.push(`  ${v.message}`);
  out.push(`  replay: ${replayCommand(r)}`);
  out.push('');
  out.push(`timeline (times relative to the moment the cluster formed; the last events, and earlier ones about ${v.subjects.slice(0, 4).join(', ') || 'it'}):`);
  out.push(...compactTimeline(violationTimeline(r, opts.timelineLines ?? 60), r.readyAt));
  return out.join('\n') + '\n';
}

