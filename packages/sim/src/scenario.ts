/**
 * Scenario scripts: a small text format for hand-written fault cases (test/scenarios/*.scn), and
 * the form random worlds take too, so any generated run can be printed and replayed as a script.
 *
 *   # slave power loss                    comments start with #
 *   hosts 4                               host-1 .. host-4, each mounting every datastore
 *   datastores ds1,ds2                    default ds1,ds2
 *   vms 12                                vm-1 .. vm-12, spread over the datastores, all started
 *   profile fast                          timing profile: fast (default), default or fdm (FDM's)
 *   at 5s power-off host-3                times are counted from the moment the cluster is ready
 *   at 20s expect all-protected-running
 *
 * Setup lines (before or between the `at` lines, order free): name, known-issue, seed, hosts, datastores,
 * host, heartbeat-datastores, vms, vm, unprotected, profile, timing, isolation-response, restart-order, watcher,
 * converge-check, storage-latency, storage-slow, network, skew, drift, duration. Timed lines: `at <time> <command>` with the
 * commands of COMMAND_HELP. Errors name the line.
 */
import type { HostId, IsolationResponse, Priority, Role, Timing } from '@vigil/core';
import { ISOLATION_RESPONSE_VALUES } from '@vigil/core';
import type { SimHostSpec } from './host.js';
import type { SimVmConfig, StorageOptions } from './storage.js';
import { CLEAN_NETWORK, type NetworkFaults } from './network.js';

export type ProfileName = 'fast' | 'default' | 'fdm';

export type Expectation =
  | { kind: 'one-master' }
  | { kind: 'all-connected' }
  | { kind: 'all-protected-running' }
  | { kind: 'converged' }
  | { kind: 'master'; host: HostId }
  | { kind: 'role'; host: HostId; role: Role }
  | { kind: 'running'; vm: string; host?: HostId }
  | { kind: 'not-running'; vm: string }
  | { kind: 'owner'; ds: string; host: HostId | null }
  | { kind: 'datastores'; host: HostId; datastores: string[] };

export type Command =
  | { op: 'power-off' | 'power-on' | 'crash-agent' | 'restart-agent' | 'stop-agent' | 'isolate' | 'reconnect'; host: HostId }
  | { op: 'partition'; groups: HostId[][] }
  | { op: 'oneway'; from: HostId; to: HostId }
  | { op: 'heal' }
  | { op: 'network-down' }
  | { op: 'network'; faults: NetworkFaults }
  | { op: 'storage-loss'; host: HostId; ds: string; mode: 'lost' | 'replaced' }
  | { op: 'hang-storage'; host: HostId; ds: string }
  | { op: 'storage-heal'; host: HostId; ds: string }
  | { op: 'latency'; host: HostId; ds: string; ms: number }
  | { op: 'skew'; host: HostId; ms: number }
  | { op: 'drift'; host: HostId; rate: number }
  | { op: 'kill-vm'; vm: string; how: 'killed' | 'exited' }
  | { op: 'vm-start'; vm: string; host?: HostId }
  | { op: 'vm-stop' | 'vm-protect' | 'vm-unprotect'; vm: string }
  | { op: 'heal-all' }
  | { op: 'expect'; what: Expectation };

export interface ScenarioStep {
  /** ms after the cluster is ready. */
  at: number;
  cmd: Command;
  /** Source line (0 for generated steps). */
  line: number;
}

export interface Scenario {
  name: string;
  seed: number;
  profile: ProfileName;
  /** Timing fields overriding the profile's. */
  timing: Partial<Timing>;
  hosts: SimHostSpec[];
  datastores: string[];
  heartbeatDatastores: string[] | null;
  vms: SimVmConfig[];
  /** VMs not started at setup (never protected unless a step does it). */
  unprotected: string[];
  isolationResponse: IsolationResponse;
  /** The cluster's restart.nextPriorityWhen (`restart-order allocated|poweredOn`). */
  nextPriorityWhen: 'allocated' | 'poweredOn';
  watcher: boolean;
  storage: StorageOptions;
  network: NetworkFaults;
  /** Simulated time after the cluster is ready. */
  durationMs: number;
  steps: ScenarioStep[];
  /** Check SPEC §5.3 by itself once the last fault is over (random worlds). */
  autoConverge: boolean;
  /** Fault kinds a random world was generated with (for the replay command). */
  faultKinds?: string[];
  /**
   * A known, reported problem this scenario shows (`known-issue TEXT`): the test suite then
   * expects a violation, and fails once the problem is fixed (move the scenario on then).
   */
  knownIssue: string | null;
}

export class ScenarioError extends Error {
  constructor(
    readonly line: number,
    message: string,
  ) {
    super(line > 0 ? `line ${line}: ${message}` : message);
    this.name = 'ScenarioError';
  }
}

export const COMMAND_HELP: Record<string, string> = {
  'power-off': 'power-off HOST              power cut: agent, VM daemon and VMs die at once',
  'power-on': 'power-on HOST               boot the host (VM daemon, then agent)',
  'crash-agent': 'crash-agent HOST            the agent dies; its VMs keep running',
  'restart-agent': 'restart-agent HOST          start the agent again (it re-adopts its VMs)',
  'stop-agent': 'stop-agent HOST             SIGTERM: the agent releases its leases and exits',
  partition: 'partition A,B / C,D         split the network into groups (unlisted hosts form one more)',
  oneway: 'oneway A -> B               drop everything A sends to B',
  heal: 'heal                        undo every network cut',
  isolate: 'isolate HOST                take the host off the network (no host, no gateway)',
  reconnect: 'reconnect HOST              put an isolated host back on the network',
  'network-down': 'network-down                every host off the network at once',
  network: 'network loss P duplicate P delay A-B   datagram loss, duplication, delay',
  'storage-loss': 'storage-loss HOST DS [empty|error]   lose a datastore (empty: something else mounted there; error: EIO)',
  'hang-storage': 'hang-storage HOST DS        calls to DS never answer (they land when it comes back)',
  'storage-heal': 'storage-heal HOST DS|*      the path is back (hung calls land now)',
  latency: 'latency HOST DS TIME        storage calls take up to TIME (0: normal)',
  skew: 'skew HOST +5m               the host\'s wall clock (faketime); only the protocol incarnation sees it',
  drift: 'drift HOST 0.001            clock rate error from now on',
  'kill-vm': 'kill-vm VM [exited]         the VM dies (killed by a signal, or exits by itself)',
  'vm-start': 'vm-start VM [on HOST]       vigil vm start [--host] (the operator retries until it succeeds)',
  'vm-stop': 'vm-stop VM                  vigil vm stop',
  'vm-protect': 'vm-protect VM               vigil vm protect',
  'vm-unprotect': 'vm-unprotect VM             vigil vm unprotect',
  'heal-all': 'heal-all                    everything back: network, storage, power, agents',
  expect: 'expect WHAT                 one-master | all-connected | all-protected-running | converged | master HOST | role HOST ROLE | running VM [on HOST] | not-running VM | owner DS HOST|none | datastores HOST DS,DS (what its agent can access)',
};

const ROLES: readonly Role[] = ['uninitialized', 'election', 'master', 'slave', 'isolated'];
const PRIORITIES: readonly Priority[] = ['disabled', 'lowest', 'low', 'medium', 'high', 'highest'];

/** `5s`, `500ms`, `2m`, `1h`, `1.5s`, `+5m`, `-30s`. */
export function parseDuration(text: string, signed = false): number | null {
  const m = /^([+-]?)([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$/.exec(text);
  if (!m || (!signed && m[1])) return null;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[3] as 'ms' | 's' | 'm' | 'h'];
  const v = Math.round(Number(m[2]) * unit);
  return m[1] === '-' ? -v : v;
}

export function formatDuration(ms: number): string {
  const sign = ms < 0 ? '-' : '';
  const a = Math.abs(ms);
  if (a === 0) return '0s';
  if (a % 3_600_000 === 0) return `${sign}${a / 3_600_000}h`;
  if (a % 60_000 === 0) return `${sign}${a / 60_000}m`;
  if (a % 1000 === 0) return `${sign}${a / 1000}s`;
  return `${sign}${a}ms`;
}

export function vmId(ds: string, name: string): string {
  return `${ds}:vms/${name}.json`;
}

/** Defaults of a scenario before its lines. */
export function baseScenario(): Scenario {
  return {
    name: 'scenario',
    seed: 1,
    profile: 'fast',
    timing: {},
    hosts: [],
    datastores: ['ds1', 'ds2'],
    heartbeatDatastores: null,
    vms: [],
    unprotected: [],
    isolationResponse: 'leavePoweredOn',
    nextPriorityWhen: 'allocated',
    watcher: true,
    storage: { minLatencyMs: 1, maxLatencyMs: 4, slowCallChance: 0 },
    network: { ...CLEAN_NETWORK },
    durationMs: 0,
    steps: [],
    autoConverge: false,
    knownIssue: null,
  };
}

interface Pending {
  hostCount: number | null;
  hostLines: { line: number; id: string; args: string[] }[];
  vmCount: number | null;
  vmLines: { line: number; args: string[] }[];
  unprotected: { line: number; name: string }[];
  skews: { line: number; host: string; ms: number }[];
  drifts: { line: number; host: string; rate: number }[];
  timed: { line: number; at: number; words: string[] }[];
  duration: number | null;
}

/** Parse a scenario script. Throws ScenarioError naming the line. */
export function parseScenario(text: string, name = 'scenario'): Scenario {
  const scn = baseScenario();
  scn.name = name;
  const p: Pending = { hostCount: null, hostLines: [], vmCount: null, vmLines: [], unprotected: [], skews: [], drifts: [], timed: [], duration: null };
  const lines = text.split('\n');
  let firstComment: string | null = null;
  let named = false;
  lines.forEach((raw, i) => {
    const line = i + 1;
    const trimmed = raw.trim();
    if (trimmed === '') return;
    if (trimmed.startsWith('#')) {
      if (firstComment === null) firstComment = trimmed.replace(/^#+\s*/, '');
      return;
    }
    const words = trimmed.replace(/\s+#.*$/, '').split(/\s+/);
    const [kw, ...args] = words as [string, ...string[]];
    const need = (n: number, usage: string) => {
      if (args.length < n) throw new ScenarioError(line, `${kw}: expected ${usage}`);
    };
    switch (kw) {
      case 'name':
        scn.name = args.join(' ');
        named = true;
        break;
      case 'known-issue':
        need(1, 'a description of the problem');
        scn.knownIssue = args.join(' ');
        break;
      case 'seed':
        need(1, 'a number');
        if (!/^[0-9]{1,10}$/.test(args[0]!)) throw new ScenarioError(line, `seed: not a number: ${args[0]}`);
        scn.seed = Number(args[0]);
        break;
      case 'hosts':
        need(1, 'a number of hosts');
        if (!/^[0-9]{1,3}$/.test(args[0]!) || Number(args[0]) < 1) throw new ScenarioError(line, `hosts: expected a number from 1 to 999, not ${args[0]}`);
        p.hostCount = Number(args[0]);
        break;
      case 'datastores':
        need(1, 'a list like ds1,ds2');
        scn.datastores = splitList(args[0]!, line, 'datastores');
        break;
      case 'host':
        need(1, 'host-N [datastores LIST] [memory MB] [cpus N]');
        p.hostLines.push({ line, id: args[0]!, args: args.slice(1) });
        break;
      case 'heartbeat-datastores':
        need(1, 'a list like ds1,ds2');
        scn.heartbeatDatastores = splitList(args[0]!, line, 'heartbeat-datastores');
        break;
      case 'vms':
        need(1, 'a number of VMs');
        if (!/^[0-9]{1,4}$/.test(args[0]!)) throw new ScenarioError(line, `vms: expected a number, not ${args[0]}`);
        p.vmCount = Number(args[0]);
        break;
      case 'vm':
        need(2, 'NAME DATASTORE [memory MB] [cpus N] [priority P] [response R] [poweron TIME] [shutdown TIME]');
        p.vmLines.push({ line, args });
        break;
      case 'unprotected':
        need(1, 'a VM name');
        for (const n of args) p.unprotected.push({ line, name: n });
        break;
      case 'profile':
        need(1, 'fast, default or fdm');
        if (args[0] !== 'fast' && args[0] !== 'default' && args[0] !== 'fdm') throw new ScenarioError(line, `profile: expected fast, default or fdm, not ${args[0]}`);
        scn.profile = args[0];
        break;
      case 'timing': {
        need(2, 'FIELD VALUE (ms, or a time like 3s)');
        const v = parseDuration(args[1]!) ?? (/^[0-9]+$/.test(args[1]!) ? Number(args[1]) : null);
        if (v === null) throw new ScenarioError(line, `timing: bad value ${args[1]}`);
        (scn.timing as Record<string, number>)[args[0]!] = v;
        break;
      }
      case 'isolation-response':
        need(1, ISOLATION_RESPONSE_VALUES.join(', '));
        if (!ISOLATION_RESPONSE_VALUES.includes(args[0] as IsolationResponse)) throw new ScenarioError(line, `isolation-response: expected one of ${ISOLATION_RESPONSE_VALUES.join(', ')}, not ${args[0]}`);
        scn.isolationResponse = args[0] as IsolationResponse;
        break;
      case 'restart-order':
        need(1, 'allocated or poweredOn');
        if (args[0] !== 'allocated' && args[0] !== 'poweredOn') throw new ScenarioError(line, `restart-order: expected allocated or poweredOn, not ${args[0]}`);
        scn.nextPriorityWhen = args[0];
        break;
      case 'converge-check':
        need(1, 'on or off');
        if (args[0] !== 'on' && args[0] !== 'off') throw new ScenarioError(line, `converge-check: expected on or off, not ${args[0]}`);
        scn.autoConverge = args[0] === 'on';
        break;
      case 'watcher':
        need(1, 'on or off');
        if (args[0] !== 'on' && args[0] !== 'off') throw new ScenarioError(line, `watcher: expected on or off, not ${args[0]}`);
        scn.watcher = args[0] === 'on';
        break;
      case 'storage-slow': {
        need(1, 'a probability (a healthy call is slow, up to 1.5 x its deadline)');
        const pr = Number(args[0]);
        if (!Number.isFinite(pr) || pr < 0 || pr > 1) throw new ScenarioError(line, `storage-slow: expected a probability from 0 to 1, not ${args[0]}`);
        scn.storage = { ...scn.storage, slowCallChance: pr };
        break;
      }
      case 'storage-latency': {
        need(1, 'A-B (e.g. 1ms-4ms)');
        const r = parseRange(args[0]!, line, 'storage-latency');
        scn.storage = { ...scn.storage, minLatencyMs: r[0], maxLatencyMs: r[1] };
        break;
      }
      case 'network':
        scn.network = parseNetwork(args, line, scn.network);
        break;
      case 'skew': {
        need(2, 'HOST +5m');
        const ms = parseDuration(args[1]!, true);
        if (ms === null) throw new ScenarioError(line, `skew: bad time ${args[1]} (e.g. +5m, -30s)`);
        p.skews.push({ line, host: args[0]!, ms });
        break;
      }
      case 'drift': {
        need(2, 'HOST RATE (e.g. 0.001)');
        const rate = Number(args[1]);
        if (!Number.isFinite(rate) || Math.abs(rate) >= 0.5) throw new ScenarioError(line, `drift: bad rate ${args[1]}`);
        p.drifts.push({ line, host: args[0]!, rate });
        break;
      }
      case 'duration': {
        need(1, 'a time (e.g. 60s)');
        const d = parseDuration(args[0]!);
        if (d === null) throw new ScenarioError(line, `duration: bad time ${args[0]}`);
        p.duration = d;
        break;
      }
      case 'at': {
        need(2, 'TIME COMMAND');
        const at = parseDuration(args[0]!);
        if (at === null) throw new ScenarioError(line, `at: bad time ${args[0]} (e.g. 5s, 500ms, 2m)`);
        p.timed.push({ line, at, words: args.slice(1) });
        break;
      }
      default:
        throw new ScenarioError(line, `unknown line "${kw}" (setup: name, known-issue, seed, hosts, datastores, host, heartbeat-datastores, vms, vm, unprotected, profile, timing, isolation-response, restart-order, watcher, converge-check, storage-latency, storage-slow, network, skew, drift, duration; timed: at TIME COMMAND)`);
    }
  });
  // The name: a `name` line, else the first comment, else the caller's (e.g. the file name).
  if (!named && firstComment !== null) scn.name = firstComment;

  // Hosts.
  const count = p.hostCount ?? (p.hostLines.length > 0 ? 0 : 3);
  const hosts = new Map<string, SimHostSpec>();
  for (let i = 1; i <= count; i++) hosts.set(`host-${i}`, { id: `host-${i}`, datastores: [...scn.datastores], capacity: { memoryMB: 16384, cpus: 16 } });
  for (const h of p.hostLines) {
    if (!/^host-[0-9]{1,9}$/.test(h.id)) throw new ScenarioError(h.line, `host: bad host id ${h.id} (host-N)`);
    const spec = hosts.get(h.id) ?? { id: h.id, datastores: [...scn.datastores], capacity: { memoryMB: 16384, cpus: 16 } };
    for (let i = 0; i < h.args.length; i += 2) {
      const k = h.args[i]!;
      const v = h.args[i + 1];
      if (v === undefined) throw new ScenarioError(h.line, `host: ${k} needs a value`);
      if (k === 'datastores') spec.datastores = v === 'none' ? [] : splitList(v, h.line, 'datastores');
      else if (k === 'memory') spec.capacity = { ...spec.capacity!, memoryMB: positive(v, h.line, 'memory') };
      else if (k === 'cpus') spec.capacity = { ...spec.capacity!, cpus: positive(v, h.line, 'cpus') };
      else throw new ScenarioError(h.line, `host: unknown setting ${k} (datastores, memory, cpus)`);
      for (const d of spec.datastores) if (!scn.datastores.includes(d)) throw new ScenarioError(h.line, `host: unknown datastore ${d} (datastores: ${scn.datastores.join(', ')})`);
    }
    hosts.set(h.id, spec);
  }
  scn.hosts = [...hosts.values()];
  if (scn.hosts.length === 0) throw new ScenarioError(0, 'no hosts (add a line "hosts N")');
  const hostIds = scn.hosts.map((h) => h.id);
  const host = (id: string, line: number): HostId => {
    if (!hosts.has(id)) throw new ScenarioError(line, `unknown host ${id} (hosts: ${hostIds.join(', ')})`);
    return id;
  };
  for (const s of p.skews) hosts.get(host(s.host, s.line))!.clockOffsetMs = s.ms;
  for (const d of p.drifts) hosts.get(host(d.host, d.line))!.clockDrift = d.rate;
  if (scn.heartbeatDatastores) for (const d of scn.heartbeatDatastores) if (!scn.datastores.includes(d)) throw new ScenarioError(0, `heartbeat-datastores: unknown datastore ${d}`);

  // VMs.
  const vms = new Map<string, SimVmConfig>();
  const byName = new Map<string, string>();
  const addVm = (cfg: SimVmConfig, line: number) => {
    if (byName.has(cfg.name)) throw new ScenarioError(line, `vm: a VM named ${cfg.name} already exists`);
    byName.set(cfg.name, cfg.id);
    vms.set(cfg.id, cfg);
  };
  for (let i = 1; i <= (p.vmCount ?? 0); i++) {
    const ds = scn.datastores[(i - 1) % scn.datastores.length]!;
    addVm({ id: vmId(ds, `vm-${i}`), name: `vm-${i}`, memoryMB: 512, cpus: 1, priority: 'medium', powerOnMs: 50, shutdownMs: 200 }, 0);
  }
  for (const v of p.vmLines) {
    const [nameArg, ds, ...rest] = v.args as [string, string, ...string[]];
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(nameArg)) throw new ScenarioError(v.line, `vm: bad name ${nameArg}`);
    if (!scn.datastores.includes(ds)) throw new ScenarioError(v.line, `vm: unknown datastore ${ds} (datastores: ${scn.datastores.join(', ')})`);
    const cfg: SimVmConfig = { id: vmId(ds, nameArg), name: nameArg, memoryMB: 512, cpus: 1, priority: 'medium', powerOnMs: 50, shutdownMs: 200 };
    for (let i = 0; i < rest.length; i += 2) {
      const k = rest[i]!;
      const val = rest[i + 1];
      if (val === undefined) throw new ScenarioError(v.line, `vm: ${k} needs a value`);
      if (k === 'memory') cfg.memoryMB = positive(val, v.line, 'memory');
      else if (k === 'cpus') cfg.cpus = positive(val, v.line, 'cpus');
      else if (k === 'priority') {
        if (!PRIORITIES.includes(val as Priority)) throw new ScenarioError(v.line, `vm: priority must be one of ${PRIORITIES.join(', ')}`);
        cfg.priority = val as Priority;
      } else if (k === 'response') {
        if (!ISOLATION_RESPONSE_VALUES.includes(val as IsolationResponse)) throw new ScenarioError(v.line, `vm: response must be one of ${ISOLATION_RESPONSE_VALUES.join(', ')}`);
        cfg.isolationResponse = val as IsolationResponse;
      } else if (k === 'poweron' || k === 'shutdown') {
        const ms = parseDuration(val);
        if (ms === null) throw new ScenarioError(v.line, `vm: bad time ${val}`);
        if (k === 'poweron') cfg.powerOnMs = ms;
        else cfg.shutdownMs = ms;
      } else throw new ScenarioError(v.line, `vm: unknown setting ${k} (memory, cpus, priority, response, poweron, shutdown)`);
    }
    addVm(cfg, v.line);
  }
  scn.vms = [...vms.values()];
  const vm = (nameOrId: string, line: number): string => {
    const id = vms.has(nameOrId) ? nameOrId : byName.get(nameOrId);
    if (!id) throw new ScenarioError(line, `unknown VM ${nameOrId}${byName.size ? ` (VMs: ${[...byName.keys()].slice(0, 8).join(', ')}${byName.size > 8 ? ', ...' : ''})` : ' (no VMs: add "vms N" or "vm NAME DS")'}`);
    return id;
  };
  scn.unprotected = p.unprotected.map((u) => vm(u.name, u.line));
  const dsName = (d: string, line: number, star = false): string => {
    if (star && d === '*') return d;
    if (!scn.datastores.includes(d)) throw new ScenarioError(line, `unknown datastore ${d} (datastores: ${scn.datastores.join(', ')})`);
    return d;
  };

  // Timed steps.
  for (const t of p.timed) scn.steps.push({ at: t.at, cmd: parseCommand(t.words, t.line, { host, vm, ds: dsName, hostIds }), line: t.line });
  scn.steps.sort((a, b) => a.at - b.at || a.line - b.line);
  const last = scn.steps.length > 0 ? scn.steps[scn.steps.length - 1]!.at : 0;
  scn.durationMs = p.duration ?? last + 1000;
  if (scn.durationMs < last) throw new ScenarioError(0, `duration ${formatDuration(scn.durationMs)} ends before the last step (at ${formatDuration(last)})`);
  return scn;
}

interface Resolvers {
  host: (id: string, line: number) => HostId;
  vm: (nameOrId: string, line: number) => string;
  ds: (d: string, line: number, star?: boolean) => string;
  hostIds: HostId[];
}

function parseCommand(words: string[], line: number, r: Resolvers): Command {
  const [op, ...a] = words as [string, ...string[]];
  const arg = (i: number, what: string): string => {
    const v = a[i];
    if (v === undefined) throw new ScenarioError(line, `${op}: expected ${what} (${COMMAND_HELP[op]?.trim() ?? ''})`);
    return v;
  };
  const noMore = (n: number) => {
    if (a.length > n) throw new ScenarioError(line, `${op}: unexpected "${a.slice(n).join(' ')}"`);
  };
  switch (op) {
    case 'power-off':
    case 'power-on':
    case 'crash-agent':
    case 'restart-agent':
    case 'stop-agent':
    case 'isolate':
    case 'reconnect':
      noMore(1);
      return { op, host: r.host(arg(0, 'a host'), line) };
    case 'partition': {
      const text = a.join(' ');
      if (!text.includes('/')) throw new ScenarioError(line, 'partition: expected groups separated by "/", e.g. partition host-1,host-2 / host-3,host-4');
      const groups = text.split('/').map((g) => g.split(/[\s,]+/).filter(Boolean).map((h) => r.host(h, line)));
      if (groups.some((g) => g.length === 0)) throw new ScenarioError(line, 'partition: an empty group');
      const listed = new Set(groups.flat());
      if (listed.size !== groups.flat().length) throw new ScenarioError(line, 'partition: a host is in two groups');
      const rest = r.hostIds.filter((h) => !listed.has(h));
      if (rest.length > 0) groups.push(rest);
      return { op, groups };
    }
    case 'oneway': {
      if (a.length !== 3 || a[1] !== '->') throw new ScenarioError(line, 'oneway: expected "oneway A -> B"');
      return { op, from: r.host(a[0]!, line), to: r.host(a[2]!, line) };
    }
    case 'heal':
    case 'network-down':
    case 'heal-all':
      noMore(0);
      return { op };
    case 'network':
      return { op, faults: parseNetwork(a, line, { ...CLEAN_NETWORK }) };
    case 'storage-loss': {
      noMore(3);
      const mode = a[2] ?? 'empty';
      if (mode !== 'empty' && mode !== 'error') throw new ScenarioError(line, `storage-loss: mode must be empty or error, not ${mode}`);
      return { op, host: r.host(arg(0, 'a host'), line), ds: r.ds(arg(1, 'a datastore'), line), mode: mode === 'empty' ? 'replaced' : 'lost' };
    }
    case 'hang-storage':
      noMore(2);
      return { op, host: r.host(arg(0, 'a host'), line), ds: r.ds(arg(1, 'a datastore'), line) };
    case 'storage-heal':
      noMore(2);
      return { op, host: r.host(arg(0, 'a host'), line), ds: r.ds(arg(1, 'a datastore or *'), line, true) };
    case 'latency': {
      noMore(3);
      const ms = arg(2, 'a time') === '0' ? 0 : parseDuration(arg(2, 'a time'));
      if (ms === null) throw new ScenarioError(line, `latency: bad time ${a[2]}`);
      return { op, host: r.host(arg(0, 'a host'), line), ds: r.ds(arg(1, 'a datastore'), line, true), ms };
    }
    case 'skew': {
      noMore(2);
      const ms = parseDuration(arg(1, 'a time like +5m'), true);
      if (ms === null) throw new ScenarioError(line, `skew: bad time ${a[1]} (e.g. +5m, -30s)`);
      return { op, host: r.host(arg(0, 'a host'), line), ms };
    }
    case 'drift': {
      noMore(2);
      const rate = Number(arg(1, 'a rate'));
      if (!Number.isFinite(rate) || Math.abs(rate) >= 0.5) throw new ScenarioError(line, `drift: bad rate ${a[1]}`);
      return { op, host: r.host(arg(0, 'a host'), line), rate };
    }
    case 'kill-vm': {
      noMore(2);
      const how = a[1] ?? 'killed';
      if (how !== 'killed' && how !== 'exited') throw new ScenarioError(line, `kill-vm: expected killed or exited, not ${how}`);
      return { op, vm: r.vm(arg(0, 'a VM'), line), how };
    }
    case 'vm-start':
      if (a.length === 3 && a[1] === 'on') return { op, vm: r.vm(a[0]!, line), host: r.host(a[2]!, line) };
      noMore(1);
      return { op, vm: r.vm(arg(0, 'a VM'), line) };
    case 'vm-stop':
    case 'vm-protect':
    case 'vm-unprotect':
      noMore(1);
      return { op, vm: r.vm(arg(0, 'a VM'), line) };
    case 'expect':
      return { op, what: parseExpectation(a, line, r) };
    default:
      throw new ScenarioError(line, `unknown command "${op}"; commands:\n  ${Object.values(COMMAND_HELP).join('\n  ')}`);
  }
}

function parseExpectation(a: string[], line: number, r: Resolvers): Expectation {
  const [what, ...rest] = a;
  const fixed = (n: number) => {
    if (rest.length !== n) throw new ScenarioError(line, `expect ${what}: ${n === 0 ? 'takes no argument' : `expected ${n} argument(s)`}`);
  };
  switch (what) {
    case 'one-master':
    case 'all-connected':
    case 'all-protected-running':
    case 'converged':
      fixed(0);
      return { kind: what };
    case 'master':
      fixed(1);
      return { kind: 'master', host: r.host(rest[0]!, line) };
    case 'role':
      fixed(2);
      if (!ROLES.includes(rest[1] as Role)) throw new ScenarioError(line, `expect role: role must be one of ${ROLES.join(', ')}`);
      return { kind: 'role', host: r.host(rest[0]!, line), role: rest[1] as Role };
    case 'running':
      if (rest.length === 1) return { kind: 'running', vm: r.vm(rest[0]!, line) };
      if (rest.length === 3 && rest[1] === 'on') return { kind: 'running', vm: r.vm(rest[0]!, line), host: r.host(rest[2]!, line) };
      throw new ScenarioError(line, 'expect running: expected "running VM" or "running VM on HOST"');
    case 'not-running':
      fixed(1);
      return { kind: 'not-running', vm: r.vm(rest[0]!, line) };
    case 'owner':
      fixed(2);
      return { kind: 'owner', ds: r.ds(rest[0]!, line), host: rest[1] === 'none' ? null : r.host(rest[1]!, line) };
    case 'datastores':
      fixed(2);
      return { kind: 'datastores', host: r.host(rest[0]!, line), datastores: rest[1] === 'none' ? [] : rest[1]!.split(',').map((d) => r.ds(d, line)) };
    default:
      throw new ScenarioError(line, `expect: unknown expectation "${what ?? ''}" (${COMMAND_HELP.expect!.replace(/^expect WHAT\s+/, '')})`);
  }
}

function splitList(text: string, line: number, what: string): string[] {
  const items = text.split(',').filter(Boolean);
  for (const d of items) if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(d)) throw new ScenarioError(line, `${what}: bad name ${d}`);
  if (items.length === 0) throw new ScenarioError(line, `${what}: empty list`);
  return items;
}

function positive(v: string, line: number, what: string): number {
  if (!/^[0-9]{1,9}$/.test(v) || Number(v) < 1) throw new ScenarioError(line, `${what}: expected a positive number, not ${v}`);
  return Number(v);
}

function parseRange(text: string, line: number, what: string): [number, number] {
  const [a, b] = text.split('-');
  const lo = a !== undefined ? parseDuration(a) : null;
  const hi = b !== undefined ? parseDuration(b) : lo;
  if (lo === null || hi === null || hi < lo) throw new ScenarioError(line, `${what}: expected a range like 1ms-40ms, not ${text}`);
  return [lo, hi];
}

function parseNetwork(a: string[], line: number, base: NetworkFaults): NetworkFaults {
  const f = { ...base };
  if (a.length === 0 || a.length % 2 !== 0) throw new ScenarioError(line, 'network: expected pairs: loss P, duplicate P, delay A-B (e.g. network loss 0.1 delay 1ms-40ms)');
  for (let i = 0; i < a.length; i += 2) {
    const k = a[i]!;
    const v = a[i + 1]!;
    if (k === 'loss' || k === 'duplicate') {
      const p = Number(v);
      if (!Number.isFinite(p) || p < 0 || p > 1) throw new ScenarioError(line, `network: ${k} must be a probability from 0 to 1`);
      if (k === 'loss') f.loss = p;
      else f.duplicate = p;
    } else if (k === 'delay') {
      const [lo, hi] = parseRange(v, line, 'network delay');
      f.minDelayMs = lo;
      f.maxDelayMs = hi;
    } else throw new ScenarioError(line, `network: unknown setting ${k} (loss, duplicate, delay)`);
  }
  return f;
}

// ---- printing ---------------------------------------------------------------------------------

function formatCommand(c: Command, names: Map<string, string>): string {
  const vm = (id: string) => names.get(id) ?? id;
  switch (c.op) {
    case 'partition':
      return `partition ${c.groups.map((g) => g.join(',')).join(' / ')}`;
    case 'oneway':
      return `oneway ${c.from} -> ${c.to}`;
    case 'heal':
    case 'network-down':
    case 'heal-all':
      return c.op;
    case 'network':
      return `network loss ${c.faults.loss} duplicate ${c.faults.duplicate} delay ${c.faults.minDelayMs}ms-${c.faults.maxDelayMs}ms`;
    case 'storage-loss':
      return `storage-loss ${c.host} ${c.ds} ${c.mode === 'replaced' ? 'empty' : 'error'}`;
    case 'hang-storage':
    case 'storage-heal':
      return `${c.op} ${c.host} ${c.ds}`;
    case 'latency':
      return `latency ${c.host} ${c.ds} ${c.ms === 0 ? '0' : formatDuration(c.ms)}`;
    case 'skew':
      return `skew ${c.host} ${c.ms >= 0 ? '+' : ''}${formatDuration(c.ms)}`;
    case 'drift':
      return `drift ${c.host} ${c.rate}`;
    case 'kill-vm':
      return `kill-vm ${vm(c.vm)}${c.how === 'exited' ? ' exited' : ''}`;
    case 'vm-start':
      return `vm-start ${vm(c.vm)}${c.host ? ` on ${c.host}` : ''}`;
    case 'vm-stop':
    case 'vm-protect':
    case 'vm-unprotect':
      return `${c.op} ${vm(c.vm)}`;
    case 'expect': {
      const w = c.what;
      switch (w.kind) {
        case 'master':
          return `expect master ${w.host}`;
        case 'role':
          return `expect role ${w.host} ${w.role}`;
        case 'running':
          return `expect running ${vm(w.vm)}${w.host ? ` on ${w.host}` : ''}`;
        case 'not-running':
          return `expect not-running ${vm(w.vm)}`;
        case 'owner':
          return `expect owner ${w.ds} ${w.host ?? 'none'}`;
        case 'datastores':
          return `expect datastores ${w.host} ${w.datastores.length ? w.datastores.join(',') : 'none'}`;
        default:
          return `expect ${w.kind}`;
      }
    }
    default:
      return `${c.op} ${c.host}`;
  }
}

export function describeCommand(c: Command, scn?: Scenario): string {
  return formatCommand(c, new Map((scn?.vms ?? []).map((v) => [v.id, v.name])));
}

/** The scenario as a script that parses back to the same scenario. */
export function formatScenario(scn: Scenario): string {
  const names = new Map(scn.vms.map((v) => [v.id, v.name]));
  const out: string[] = [`# ${scn.name}`, `seed ${scn.seed}`, `profile ${scn.profile}`];
  if (scn.knownIssue) out.push(`known-issue ${scn.knownIssue}`);
  for (const [k, v] of Object.entries(scn.timing)) out.push(`timing ${k} ${Array.isArray(v) ? v.join(',') : String(v)}`);
  out.push(`datastores ${scn.datastores.join(',')}`);
  if (scn.heartbeatDatastores) out.push(`heartbeat-datastores ${scn.heartbeatDatastores.join(',')}`);
  out.push(`hosts ${scn.hosts.length}`);
  scn.hosts.forEach((h, i) => {
    const parts = [`host ${h.id}`];
    if (h.id !== `host-${i + 1}`) throw new Error(`cannot print host ${h.id}: hosts must be host-1 .. host-N`);
    if (h.datastores.join(',') !== scn.datastores.join(',')) parts.push(`datastores ${h.datastores.length ? h.datastores.join(',') : 'none'}`);
    const cap = h.capacity ?? { memoryMB: 16384, cpus: 16 };
    if (cap.memoryMB !== 16384) parts.push(`memory ${cap.memoryMB}`);
    if (cap.cpus !== 16) parts.push(`cpus ${cap.cpus}`);
    if (parts.length > 1) out.push(parts.join(' '));
    if (h.clockOffsetMs) out.push(`skew ${h.id} ${h.clockOffsetMs >= 0 ? '+' : ''}${formatDuration(h.clockOffsetMs)}`);
    if (h.clockDrift) out.push(`drift ${h.id} ${h.clockDrift}`);
  });
  for (const v of scn.vms) {
    const ds = v.id.slice(0, v.id.indexOf(':'));
    const parts = [`vm ${v.name} ${ds} memory ${v.memoryMB} cpus ${v.cpus} priority ${v.priority}`];
    if (v.isolationResponse) parts.push(`response ${v.isolationResponse}`);
    parts.push(`poweron ${formatDuration(v.powerOnMs)} shutdown ${formatDuration(v.shutdownMs)}`);
    out.push(parts.join(' '));
  }
  for (const u of scn.unprotected) out.push(`unprotected ${names.get(u) ?? u}`);
  out.push(`isolation-response ${scn.isolationResponse}`);
  if (scn.nextPriorityWhen !== 'allocated') out.push(`restart-order ${scn.nextPriorityWhen}`);
  out.push(`watcher ${scn.watcher ? 'on' : 'off'}`);
  if (scn.autoConverge) out.push('converge-check on');
  out.push(`storage-latency ${formatDuration(scn.storage.minLatencyMs)}-${formatDuration(scn.storage.maxLatencyMs)}`);
  if (scn.storage.slowCallChance > 0) out.push(`storage-slow ${scn.storage.slowCallChance}`);
  const n = scn.network;
  if (n.loss || n.duplicate || n.minDelayMs !== CLEAN_NETWORK.minDelayMs || n.maxDelayMs !== CLEAN_NETWORK.maxDelayMs) {
    out.push(`network loss ${n.loss} duplicate ${n.duplicate} delay ${n.minDelayMs}ms-${n.maxDelayMs}ms`);
  }
  out.push(`duration ${formatDuration(scn.durationMs)}`);
  for (const s of scn.steps) out.push(`at ${formatDuration(s.at)} ${formatCommand(s.cmd, names)}`);
  return out.join('\n') + '\n';
}
