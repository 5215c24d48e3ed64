/**
 * From parsed JSON to a ClusterConfig: schema, cross-references, and the timing inequalities
 * that keep leases safe. Pure: no file access (see load.ts).
 */
import type { Timing } from '@vigil/core';
import type { z } from 'zod';
import { configSchema } from './schema.js';
import { PROFILES, type ProfileName } from './profiles.js';
import { ConfigError, type ClusterConfig, type ConfigProblem, type HostConfig, type IsolationResponse } from './types.js';
import { canonicalAddress, ipv4Mapped } from './address.js';

/** Where each validated config came from (file name), for messages about it later (loadSecret). */
const SOURCES = new WeakMap<object, string>();

/** The source (file name) a config was validated from, if known. */
export function configSource(config: object): string | undefined {
  return SOURCES.get(config);
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.map((p) => String(p)).join('.');
}

/** The messages of nested issues (a record key's, a union member's), deduplicated. */
function nestedMessages(issues: readonly { message: string; issues?: unknown }[]): string[] {
  const out: string[] = [];
  for (const i of issues) {
    const sub = Array.isArray(i.issues) ? nestedMessages(i.issues as { message: string; issues?: unknown }[]) : [];
    for (const m of sub.length > 0 ? sub : [i.message]) if (!out.includes(m)) out.push(m);
  }
  return out;
}

function zodProblems(error: z.ZodError): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  for (const issue of error.issues) {
    const base = formatPath(issue.path);
    if (issue.code === 'invalid_key') {
      // A bad record key (host id, datastore name): the path ends with the key itself. Report
      // the key's own rule, not zod's "Invalid key in record".
      const key = issue.path[issue.path.length - 1];
      const what = issue.path.length === 2 && issue.path[0] === 'hosts' ? 'host id' : issue.path.length === 2 && issue.path[0] === 'datastores' ? 'datastore name' : 'key';
      const why = nestedMessages(issue.issues).join('; ') || issue.message;
      out.push({ key: base, problem: `invalid ${what} ${JSON.stringify(String(key))}: ${why}` });
    } else if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) out.push({ key: base ? `${base}.${k}` : k, problem: 'unknown key' });
    } else if (issue.code === 'invalid_type' && issue.input === undefined) {
      out.push({ key: base, problem: 'is required' });
    } else {
      out.push({ key: base, problem: issue.message });
    }
  }
  return out;
}

/** The safety and sanity inequalities between timings; each problem names the offending key. */
export function checkTiming(t: Timing, prefix = 'timing'): ConfigProblem[] {
  const p: ConfigProblem[] = [];
  const need = (ok: boolean, key: keyof Timing, problem: string) => {
    if (!ok) p.push({ key: `${prefix}.${key}`, problem });
  };
  need(
    t.leaseTimeoutMs > t.selfFenceDeadlineMs + t.leaseSafetyMarginMs,
    'leaseTimeoutMs',
    `unsafe: leaseTimeoutMs (${t.leaseTimeoutMs}) must be > selfFenceDeadlineMs (${t.selfFenceDeadlineMs}) + leaseSafetyMarginMs (${t.leaseSafetyMarginMs}), or a host that lost storage may still run a VM when another host takes its lease`,
  );
  need(
    t.selfFenceDeadlineMs > t.storageHeartbeatIntervalMs + t.storageCallTimeoutMs,
    'selfFenceDeadlineMs',
    `must be > storageHeartbeatIntervalMs (${t.storageHeartbeatIntervalMs}) + storageCallTimeoutMs (${t.storageCallTimeoutMs}), or one slow but successful renewal fences healthy VMs`,
  );
  need(
    t.leaseTimeoutMs >= 2 * t.storageHeartbeatIntervalMs,
    'leaseTimeoutMs',
    `must be >= 2 x storageHeartbeatIntervalMs (${t.storageHeartbeatIntervalMs}) so one missed renewal is not a death`,
  );
  need(
    t.hostTimeoutMs >= 3 * t.heartbeatIntervalMs,
    'hostTimeoutMs',
    `must be >= 3 x heartbeatIntervalMs (${t.heartbeatIntervalMs}) so a couple of lost heartbeats are not a failure`,
  );
  need(
    t.electionWindowMs >= 2 * t.heartbeatIntervalMs,
    'electionWindowMs',
    `must be >= 2 x heartbeatIntervalMs (${t.heartbeatIntervalMs}) so every candidate is heard`,
  );
  need(t.storageWatchAfterMs < t.hostTimeoutMs, 'storageWatchAfterMs', `must be < hostTimeoutMs (${t.hostTimeoutMs})`);
  need(
    t.deadMs >= t.storageWatchAfterMs + t.leaseTimeoutMs,
    'deadMs',
    `must be >= storageWatchAfterMs + leaseTimeoutMs (${t.storageWatchAfterMs + t.leaseTimeoutMs}) so a storage heartbeat is watched for a whole lease timeout before a host is declared dead`,
  );
  need(
    t.deadMs >= t.hostTimeoutMs + t.icmpPingTimeoutMs,
    'deadMs',
    `must be >= hostTimeoutMs + icmpPingTimeoutMs (${t.hostTimeoutMs + t.icmpPingTimeoutMs}) so the ping of a silent host completes first`,
  );
  need(
    t.deadNoHeartbeatDatastoreMs >= t.hostTimeoutMs + t.icmpPingTimeoutMs,
    'deadNoHeartbeatDatastoreMs',
    `must be >= hostTimeoutMs + icmpPingTimeoutMs (${t.hostTimeoutMs + t.icmpPingTimeoutMs})`,
  );
  need(t.storageCallTimeoutMs < t.selfFenceDeadlineMs, 'storageCallTimeoutMs', `must be < selfFenceDeadlineMs (${t.selfFenceDeadlineMs})`);
  need(
    t.masterIsolationMs >= 2 * t.heartbeatIntervalMs,
    'masterIsolationMs',
    `must be >= 2 x heartbeatIntervalMs (${t.heartbeatIntervalMs})`,
  );
  need(
    t.slaveIsolationMs > t.hostTimeoutMs,
    'slaveIsolationMs',
    `must be > hostTimeoutMs (${t.hostTimeoutMs}): a slave first tries an election`,
  );
  return p;
}

/** Validate parsed JSON. Throws ConfigError listing every problem, each naming its key. */
export function validateConfig(input: unknown, source = 'config'): ClusterConfig {
  const parsed = configSchema.safeParse(input);
  if (!parsed.success) throw new ConfigError(source, zodProblems(parsed.error));
  const raw = parsed.data;
  const problems: ConfigProblem[] = [];
  const dsNames = Object.keys(raw.datastores);

  /**
   * Addresses in one canonical form (canonicalAddress), so `::1` and `0:0:0:0:0:0:0:1` are one
   * address for the duplicate check and for matching the source of datagrams. IPv4-mapped IPv6
   * forms are refused: the IPv4 form is the one a datagram's source address has.
   */
  const address = (a: string, key: string): string => {
    const v4 = ipv4Mapped(a);
    if (v4 !== null) problems.push({ key, problem: `${a} is an IPv4-mapped IPv6 address: write the IPv4 address ${v4}` });
    return canonicalAddress(a);
  };
  const addresses = (list: readonly string[] | undefined, key: string): string[] => (list ?? []).map((a, i) => address(a, `${key}.${i}`));

  const hosts: Record<string, HostConfig> = {};
  const endpoints = new Map<string, string>();
  for (const [id, h] of Object.entries(raw.hosts)) {
    const port = h.port ?? raw.port;
    const addr = address(h.address, `hosts.${id}.address`);
    const endpoint = addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
    const other = endpoints.get(endpoint);
    if (other) problems.push({ key: `hosts.${id}.address`, problem: `${endpoint} is also used by ${other}${h.address !== addr ? ` (${h.address} is ${addr})` : ''}` });
    endpoints.set(endpoint, id);
    const datastores = h.datastores ?? dsNames;
    h.datastores?.forEach((d, i) => {
      if (!(d in raw.datastores)) problems.push({ key: `hosts.${id}.datastores.${i}`, problem: `unknown datastore "${d}" (not in datastores)` });
    });
    if (new Set(datastores).size !== datastores.length) problems.push({ key: `hosts.${id}.datastores`, problem: 'lists a datastore twice' });
    hosts[id] = {
      address: addr,
      port,
      datastores: [...datastores],
      isolationAddresses: addresses(h.isolationAddresses, `hosts.${id}.isolationAddresses`),
      ...(h.capacity ? { capacity: h.capacity } : {}),
    };
  }

  raw.heartbeatDatastores?.forEach((d, i) => {
    if (!(d in raw.datastores)) problems.push({ key: `heartbeatDatastores.${i}`, problem: `unknown datastore "${d}" (not in datastores)` });
  });
  if (raw.heartbeatDatastores && new Set(raw.heartbeatDatastores).size !== raw.heartbeatDatastores.length) {
    problems.push({ key: 'heartbeatDatastores', problem: 'lists a datastore twice' });
  }

  const { profile, ...overrides } = raw.timing as { profile: ProfileName } & Partial<Timing>;
  const timing: Timing = { ...PROFILES[profile], restartRetryDelaysMs: [...PROFILES[profile].restartRetryDelaysMs] };
  for (const [k, v] of Object.entries(overrides)) {
    if (v !== undefined) (timing as unknown as Record<string, unknown>)[k] = v;
  }
  problems.push(...checkTiming(timing));
  if (timing.restartRetryDelaysMs.length < raw.restart.maxAttempts - 1) {
    problems.push({
      key: 'restart.maxAttempts',
      problem: `needs ${raw.restart.maxAttempts - 1} retry delays but timing.restartRetryDelaysMs has ${timing.restartRetryDelaysMs.length}`,
    });
  }

  const isolationAddresses = addresses(raw.isolationAddresses, 'isolationAddresses');

  if (problems.length > 0) throw new ConfigError(source, problems);
  const config: ClusterConfig = {
    cluster: raw.cluster,
    secretFile: raw.secretFile,
    port: raw.port,
    hosts,
    datastores: { ...raw.datastores },
    heartbeatDatastores: raw.heartbeatDatastores ? [...raw.heartbeatDatastores] : null,
    isolationAddresses,
    pingHosts: raw.pingHosts,
    isolationResponse: raw.isolationResponse as IsolationResponse,
    driver: raw.driver,
    profile,
    timing,
    restart: raw.restart,
    log: raw.log,
  };
  SOURCES.set(config, source);
  return config;
}

/**
 * The heartbeat datastores of `host`: the configured ones it mounts, or else the 2 datastores
 * that the most hosts mount (ties by name), among those it mounts (SPEC §2; FDM default 2).
 */
export function heartbeatDatastoresFor(config: Pick<ClusterConfig, 'hosts' | 'heartbeatDatastores'>, host: string): string[] {
  const mine = config.hosts[host]?.datastores ?? [];
  if (config.heartbeatDatastores) return config.heartbeatDatastores.filter((d) => mine.includes(d));
  const seenBy = new Map<string, number>();
  for (const h of Object.values(config.hosts)) for (const d of h.datastores) seenBy.set(d, (seenBy.get(d) ?? 0) + 1);
  return [...mine].sort((a, b) => (seenBy.get(b) ?? 0) - (seenBy.get(a) ?? 0) || (a < b ? -1 : a > b ? 1 : 0)).slice(0, 2);
}
