/**
 * `vigil datastore show`: read a datastore's `.vigil-ha/<cluster>/` files and report them
 * (docs/datastore-format.md). Read-only: works whether or not an agent runs on this machine.
 *
 * Liveness is judged by change, never by clock (SPEC §3.3): the lease records (`host-N-hb`,
 * `protectedlist.owner`) are sampled for a window, and a ChangeTracker notes on this process's
 * monotonic clock (performance.now()) when each one changed. A record seen changing is alive; one
 * seen unchanged for at least the lease timeout is dead; one seen unchanged for less is unknown.
 * No file timestamp is ever read, let alone compared with the local clock.
 *
 * Every storage call runs under a timeout: on a hung mount a read reports `timeout`, and the
 * command still prints what it could read. The hung call itself cannot be cancelled: it holds a
 * libuv thread, and a Node process with such a thread cannot even exit (exit() joins the pool).
 * So the command does the reading in a child process (runWorker below) and kills it when done.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { ChangeTracker, CLUSTER_ID_PATTERN, type Liveness } from '@vigil/core';
import { ConfigError, DEFAULT_TIMING, heartbeatDatastoresFor, loadConfig, type ClusterConfig } from '@vigil/config';
import {
  clusterDir,
  describeError,
  isVmId,
  LeaseFile,
  listPoweredOff,
  parsePoweron,
  parseProtectedList,
  poweredoffDir,
  sampleOf,
  StorageTimeoutError,
  VIGIL_DIR,
  vmIdFromFileName,
  vmLeaseDir,
  withTimeout,
  type LeaseSnapshot,
} from '@vigil/datastore';
import { CliError, EXIT_FAILURE, EXIT_USAGE } from './errors.js';

export const DEFAULT_CONFIG_FILE = '/etc/vigil/cluster.json';
/** Longest window accepted by --window. */
export const MAX_WINDOW_MS = 10 * 60 * 1000;
/** The CLI is an observer, not a holder: it allows each storage call at least this long. */
export const MIN_CALL_TIMEOUT_MS = 1000;

// ---- resolution -------------------------------------------------------------------------------

export interface ResolveOptions {
  /** --config; when absent, `defaultConfigFile` is used if it exists. */
  config?: string;
  /** --cluster */
  cluster?: string;
  /** Default config file (tests point it elsewhere). */
  defaultConfigFile?: string;
}

export interface ResolvedDatastore {
  /** Datastore name from the config, or null when given by path and not in a config. */
  name: string | null;
  /** Absolute path of the datastore. */
  path: string;
  cluster: string;
  /** `<path>/.vigil-ha/<cluster>` */
  clusterDir: string;
  /** The config file whose timing and hosts apply (same cluster), or null. */
  configFile: string | null;
  /** Lease timeout used to call an unchanged record dead. */
  leaseTimeoutMs: number;
  /** Where leaseTimeoutMs came from: the config, or assumed (the default profile's value). */
  leaseTimeoutSource: 'config' | 'assumed';
  /** Storage heartbeat renewal period (config's, or the default profile's). */
  storageHeartbeatIntervalMs: number;
  /** Upper bound on each storage call. */
  callTimeoutMs: number;
  /** Hosts the config makes heartbeat on this datastore; null when unknown (no config or no name). */
  heartbeatHosts: string[] | null;
  /** Remarks for the reader (ignored default config, assumed timing...). */
  notes: string[];
}

function isTimeout(err: unknown): boolean {
  return err instanceof StorageTimeoutError || (err as { code?: string } | null)?.code === 'ETIMEDOUT';
}

/** A storage error as shown to the reader: `timeout: ...` for a call that never answered. */
export function describeReadError(err: unknown): string {
  if (err instanceof StorageTimeoutError) return `timeout: ${err.message}`;
  const e = err as NodeJS.ErrnoException | null;
  // Node's messages already start with the code ("EISDIR: illegal operation ...").
  if (e instanceof Error && e.code && e.message.startsWith(`${e.code}:`)) return e.message;
  return describeError(err);
}

function timed<T>(what: string, ms: number, op: () => Promise<T>): Promise<T> {
  return withTimeout(what, ms, op);
}

function loadConfigOrUsage(file: string): ClusterConfig {
  try {
    return loadConfig(file);
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(err.message, EXIT_USAGE);
    throw err;
  }
}

/**
 * Find the datastore and cluster for NAME|PATH. Throws CliError: exit 2 for what the user got
 * wrong (unknown name, missing path, ambiguous cluster), exit 1 when storage does not answer.
 */
export async function resolveDatastore(arg: string, opts: ResolveOptions = {}): Promise<ResolvedDatastore> {
  const notes: string[] = [];
  if (opts.cluster !== undefined && !CLUSTER_ID_PATTERN.test(opts.cluster)) {
    throw new CliError(`--cluster: "${opts.cluster}" is not a cluster id (1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit)`, EXIT_USAGE);
  }
  let config: ClusterConfig | null = null;
  let configFile: string | null = null;
  let configProblem: string | null = null;
  if (opts.config !== undefined) {
    config = loadConfigOrUsage(opts.config);
    configFile = opts.config;
  } else {
    const def = opts.defaultConfigFile ?? DEFAULT_CONFIG_FILE;
    if (existsSync(def)) {
      try {
        config = loadConfig(def);
        configFile = def;
      } catch (err) {
        configProblem = err instanceof Error ? err.message : String(err);
        notes.push(`ignoring ${def}: ${configProblem.split('\n').join(' ')}`);
      }
    }
  }
  const callTimeoutMs = Math.max(config?.timing.storageCallTimeoutMs ?? DEFAULT_TIMING.storageCallTimeoutMs, MIN_CALL_TIMEOUT_MS);

  let name: string | null = null;
  let path: string;
  if (config && Object.hasOwn(config.datastores, arg)) {
    name = arg;
    path = config.datastores[arg]!;
  } else {
    path = resolve(arg);
    let st;
    try {
      st = await timed(`stat ${path}`, callTimeoutMs, () => stat(path));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        if (config) {
          const names = Object.keys(config.datastores);
          throw new CliError(
            `"${arg}" is neither a datastore of ${configFile} (${names.length > 0 ? names.join(', ') : 'none configured'}) nor an existing directory`,
            EXIT_USAGE,
          );
        }
        throw new CliError(
          `${arg}: no such directory${configProblem ? '' : ` (to use datastore names, pass --config FILE; ${opts.defaultConfigFile ?? DEFAULT_CONFIG_FILE} does not exist)`}`,
          EXIT_USAGE,
        );
      }
      throw new CliError(`cannot read ${path}: ${describeReadError(err)}`, EXIT_FAILURE);
    }
    if (!st.isDirectory()) throw new CliError(`${arg} is not a directory (give a datastore name or the path of a datastore)`, EXIT_USAGE);
    if (config) {
      for (const [n, p] of Object.entries(config.datastores)) if (resolve(p) === path) name = n;
    }
  }

  let cluster: string;
  if (opts.cluster !== undefined) {
    cluster = opts.cluster;
  } else if (config && name !== null) {
    cluster = config.cluster;
  } else {
    const vigilDir = join(path, VIGIL_DIR);
    let entries: string[];
    try {
      entries = (await timed(`list ${vigilDir}`, callTimeoutMs, () => readdir(vigilDir, { withFileTypes: true })))
        .filter((e) => e.isDirectory())
        .map((e) => e.name)
        .sort();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new CliError(`${path} has no ${VIGIL_DIR}/ directory: not a Vigil datastore (or not mounted)`, EXIT_USAGE);
      throw new CliError(`cannot read ${vigilDir}: ${describeReadError(err)}`, EXIT_FAILURE);
    }
    if (config && entries.includes(config.cluster)) cluster = config.cluster;
    else if (entries.length === 1) cluster = entries[0]!;
    else if (entries.length === 0) throw new CliError(`${vigilDir} holds no cluster directory: no agent has used this datastore`, EXIT_USAGE);
    else throw new CliError(`${vigilDir} holds several clusters (${entries.join(', ')}): choose one with --cluster`, EXIT_USAGE);
  }
  if (opts.cluster !== undefined) {
    // A cluster given by hand: say so clearly if it is not there.
    const vigilDir = join(path, VIGIL_DIR);
    const there = await timed(`stat ${clusterDir(path, cluster)}`, callTimeoutMs, () => stat(clusterDir(path, cluster))).then(
      (s) => s.isDirectory(),
      (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return false;
        throw new CliError(`cannot read ${clusterDir(path, cluster)}: ${describeReadError(err)}`, EXIT_FAILURE);
      },
    );
    if (!there) {
      const present = await timed(`list ${vigilDir}`, callTimeoutMs, () => readdir(vigilDir)).catch(() => [] as string[]);
      throw new CliError(
        `${clusterDir(path, cluster)} does not exist (clusters on this datastore: ${present.length > 0 ? present.sort().join(', ') : 'none'})`,
        EXIT_USAGE,
      );
    }
  }

  // The config's timing and hosts apply only to its own cluster.
  const applies = config !== null && config.cluster === cluster;
  if (config && !applies) notes.push(`${configFile} is for cluster ${config.cluster}, not ${cluster}: its timing and hosts are not used`);
  const timing = applies ? config!.timing : DEFAULT_TIMING;
  const heartbeatHosts =
    applies && name !== null ? Object.keys(config!.hosts).filter((h) => heartbeatDatastoresFor(config!, h).includes(name!)) : null;
  if (!applies) {
    notes.push(
      `no config for this cluster: assuming the default profile's lease timeout (${DEFAULT_TIMING.leaseTimeoutMs} ms); pass --config to use the cluster's timing`,
    );
  }
  return {
    name: applies ? name : null,
    path,
    cluster,
    clusterDir: clusterDir(path, cluster),
    configFile: applies ? configFile : null,
    leaseTimeoutMs: timing.leaseTimeoutMs,
    leaseTimeoutSource: applies ? 'config' : 'assumed',
    storageHeartbeatIntervalMs: timing.storageHeartbeatIntervalMs,
    callTimeoutMs,
    heartbeatHosts,
    notes,
  };
}

/**
 * The default window: with the cluster's timing, max(2 x storageHeartbeatIntervalMs,
 * leaseTimeoutMs), long enough to call a silent holder dead. Without it, 2 x the default
 * profile's renewal period (10 s): long enough to see a live heartbeat of either profile
 * change, but shorter than the assumed lease timeout, so an unchanged record stays `unknown`
 * (pass --window or --config to get `dead`).
 */
export function defaultWindowMs(r: Pick<ResolvedDatastore, 'leaseTimeoutSource' | 'leaseTimeoutMs' | 'storageHeartbeatIntervalMs'>): number {
  if (r.leaseTimeoutSource === 'config') return Math.max(2 * r.storageHeartbeatIntervalMs, r.leaseTimeoutMs);
  return 2 * DEFAULT_TIMING.storageHeartbeatIntervalMs;
}

/** Sampling period: about window/8, between 50 ms and 1 s (the verdict needs only the first and last samples; the rest show when a change happened). */
export function sampleIntervalMs(windowMs: number): number {
  return Math.min(1000, Math.max(50, Math.floor(windowMs / 8)));
}

// ---- the report ------------------------------------------------------------------------------

export type HeartbeatVerdict = 'alive' | 'dead' | 'unknown';

export interface FileProblem {
  /** Path relative to the cluster directory. */
  file: string;
  error: string;
}

export interface ProtectedListReport {
  /** Holder of the protectedlist lease (protectedlist.owner, state held), or null. */
  owner: string | null;
  /** Generation of the lease record (also when released), or null. */
  generation: number | null;
  /** The lease record changed during the window. */
  alive: boolean;
  /** Liveness of the lease record, judged by change. */
  lease: Liveness;
  /** State of the lease record. */
  state: 'held' | 'released' | null;
  /** Whether protectedlist.lock/ exists (null if it could not be read). */
  lock: boolean | null;
  /** Owner and generation named in the protectedlist file's header. */
  listOwner: string | null;
  listGeneration: number | null;
  /** Protected VMs listed in the protectedlist file. */
  vms: string[];
  error?: string;
}

export interface DatastoreHostReport {
  host: string;
  heartbeat: HeartbeatVerdict;
  /** The heartbeat record says released: the host stopped cleanly (heartbeat is then `dead`). */
  released: boolean;
  generation: number | null;
  counter: number | null;
  /** Whether host-N-hb.lock/ exists (null if it could not be read). */
  lock: boolean | null;
  /** Whether the config makes this host heartbeat on this datastore (null: no config). */
  heartbeatDatastore: boolean | null;
  /** Isolation bit from host-N-poweron (null if absent or unreadable). */
  isolated: boolean | null;
  /** VMs listed in host-N-poweron. */
  vms: string[];
  error?: string;
}

export interface DatastoreReport {
  datastore: string | null;
  path: string;
  cluster: string;
  clusterDir: string;
  config: string | null;
  /** Content of datastore-id (trimmed), or null if absent. */
  datastoreId: string | null;
  windowMs: number;
  /** Time between the end of the first sample and the start of the last (local monotonic clock). */
  observedMs: number;
  samples: number;
  leaseTimeoutMs: number;
  leaseTimeoutSource: 'config' | 'assumed';
  protectedlist: ProtectedListReport;
  hosts: DatastoreHostReport[];
  poweredoff: string[];
  /** VMs with a lease file in vms/. */
  vmLeases: string[];
  /** Names that are not valid where they were found (paths relative to the cluster directory). */
  invalid: string[];
  /** Every file that could not be read or parsed. */
  errors: FileProblem[];
  /** Some storage call did not answer within callTimeoutMs. */
  timedOut: boolean;
  notes: string[];
}

export interface SampleOptions {
  windowMs: number;
  intervalMs?: number;
  /** Monotonic clock in ms (default performance.now). */
  now?: () => number;
}

/** The datastore (cluster) directory itself cannot be read: the only failure of `datastore show` (exit 1). */
export class DatastoreUnreadableError extends CliError {
  constructor(message: string) {
    super(message, EXIT_FAILURE);
    this.name = 'DatastoreUnreadableError';
  }
}

const HOST_FILE_RE = /^(host-[0-9]{1,9})-(hb|hb\.lock|hb\.claims|poweron)$/;

function hostNumber(h: string): number {
  return Number(h.slice(5));
}

function isTempName(n: string): boolean {
  return n.startsWith('.') && n.endsWith('.tmp');
}

/** A LeaseFile error without its path prefix, and without the doubled code of describeError ("EISDIR: EISDIR: ..."). */
function stripPath(msg: string, path: string): string {
  const m = msg.startsWith(`${path}: `) ? msg.slice(path.length + 2) : msg;
  return m.replace(/^(E[A-Z]+): \1: /, '$1: ');
}

interface LeaseTrack {
  lease: LeaseFile;
  snap: LeaseSnapshot | null;
  /** Local time at which the last successful read started. */
  lastOkStart: number | null;
  readError?: string;
  /** A read timed out: the key is not read again (each hung call holds a libuv thread). */
  stuck: boolean;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.max(0, ms)));
}

/** Sleep until the monotonic clock reaches `target` (timers may fire a little early). */
async function sleepUntil(now: () => number, target: number): Promise<void> {
  for (let left = target - now(); left > 0; left = target - now()) await sleep(Math.ceil(left));
}

/**
 * Sample the datastore for `windowMs` and build the report. Never throws for a bad file (it
 * becomes an `errors` entry); throws DatastoreUnreadableError only if the cluster directory
 * itself cannot be listed.
 */
export async function sampleDatastore(r: ResolvedDatastore, opts: SampleOptions): Promise<DatastoreReport> {
  const now = opts.now ?? (() => performance.now());
  const dir = r.clusterDir;
  const ms = r.callTimeoutMs;
  const windowMs = Math.max(0, opts.windowMs);
  const intervalMs = Math.max(1, opts.intervalMs ?? sampleIntervalMs(windowMs));
  const errors: FileProblem[] = [];
  const invalid: string[] = [];
  const notes = [...r.notes];
  let timedOut = false;
  const note = (err: unknown) => {
    if (isTimeout(err)) timedOut = true;
    return describeReadError(err).split(`${dir}/`).join('');
  };

  const listDir = async (): Promise<string[]> => {
    try {
      return await timed(`list ${dir}`, ms, () => readdir(dir));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const hint =
        code === 'ENOENT'
          ? r.name !== null
            ? ` (no agent of cluster ${r.cluster} has initialized this datastore, or it is not mounted at ${r.path})`
            : ''
          : '';
      throw new DatastoreUnreadableError(`cannot read the datastore directory ${dir}: ${note(err)}${hint}`);
    }
  };

  const hosts = new Set<string>(r.heartbeatHosts ?? []);
  const addHostsFrom = (names: string[]) => {
    for (const n of names) {
      const m = HOST_FILE_RE.exec(n);
      if (m) hosts.add(m[1]!);
    }
  };
  const firstNames = await listDir();
  addHostsFrom(firstNames);

  const tracker = new ChangeTracker(r.leaseTimeoutMs);
  const tracks = new Map<string, LeaseTrack>();
  const track = (key: string, name: string, recordName?: string) => {
    if (tracks.has(key)) return;
    const lease = new LeaseFile({ dir, name, ...(recordName ? { recordName } : {}), host: 'host-0', timeoutMs: ms });
    tracks.set(key, { lease, snap: null, lastOkStart: null, stuck: false });
  };
  const PL = 'protectedlist';
  track(PL, 'protectedlist', 'protectedlist.owner');
  const hbKey = (h: string) => `hb:${h}`;
  for (const h of hosts) track(hbKey(h), `${h}-hb`);

  const sampleKeys = async (keys: string[]) => {
    await Promise.all(
      keys.map(async (key) => {
        const t = tracks.get(key)!;
        if (t.stuck) return;
        const start = now();
        try {
          const snap = await t.lease.read();
          // A corrupt record is a value too: if its holder is alive, it is rewritten (a change).
          const s = snap.error !== undefined ? { value: `corrupt:${snap.error}:${snap.lockExists}:${snap.maxClaim}` } : sampleOf(snap);
          tracker.observe(key, s, now());
          t.snap = snap;
          t.lastOkStart = start;
          delete t.readError;
        } catch (err) {
          if (isTimeout(err)) t.stuck = true;
          t.readError = note(err);
        }
      }),
    );
  };

  // First sample; the window is counted from its end, so the last sample starts at least
  // windowMs after every first observation. Then one sample per interval, the last at the end.
  await sampleKeys([...tracks.keys()]);
  let samples = 1;
  const t0 = now();
  const end = t0 + windowMs;
  let lastStart = t0;
  for (let next = t0; windowMs > 0; ) {
    next = Math.min(Math.max(next + intervalMs, now()), end);
    await sleepUntil(now, next);
    lastStart = now();
    await sampleKeys([...tracks.keys()]);
    samples++;
    if (next >= end) break;
  }
  const observedMs = Math.round(lastStart - t0);

  // Hosts whose files appeared during the window get one read (their heartbeat stays unknown).
  const lastNames = await listDir().catch((err: unknown) => {
    errors.push({ file: '.', error: err instanceof Error ? err.message : String(err) });
    return firstNames;
  });
  const before = new Set(hosts);
  addHostsFrom(lastNames);
  const late = [...hosts].filter((h) => !before.has(h));
  for (const h of late) track(hbKey(h), `${h}-hb`);
  if (late.length > 0) await sampleKeys(late.map(hbKey));

  const readText = async (file: string): Promise<{ text: string | null; error?: string }> => {
    const p = join(dir, file);
    try {
      return { text: await timed(`read ${p}`, ms, () => readFile(p, 'utf8')) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { text: null };
      return { text: null, error: note(err) };
    }
  };
  const leaseError = (t: LeaseTrack): string | undefined => {
    if (t.readError !== undefined) return t.readError;
    if (t.snap?.error !== undefined) return stripPath(t.snap.error, t.lease.recordPath);
    return undefined;
  };
  const liveness = (key: string): Liveness => {
    const t = tracks.get(key)!;
    return t.lastOkStart === null ? 'unknown' : tracker.state(key, t.lastOkStart);
  };

  // protectedlist: the lease record (who owns the datastore) and the list itself.
  const plTrack = tracks.get(PL)!;
  const plRec = plTrack.snap?.record ?? null;
  const plLive = liveness(PL);
  const plErrors: string[] = [];
  const recErr = leaseError(plTrack);
  if (recErr !== undefined) {
    plErrors.push(`protectedlist.owner: ${recErr}`);
    errors.push({ file: 'protectedlist.owner', error: recErr });
  }
  const pl: ProtectedListReport = {
    owner: plRec && plRec.state === 'held' ? plRec.host : null,
    generation: plRec?.generation ?? null,
    alive: plLive === 'alive',
    lease: plLive,
    state: plRec?.state ?? null,
    lock: plTrack.snap ? plTrack.snap.lockExists : null,
    listOwner: null,
    listGeneration: null,
    vms: [],
  };
  const [plText, dsId, poweredoff, vmNames] = await Promise.all([
    readText('protectedlist'),
    readText('datastore-id'),
    listPoweredOff(poweredoffDir(r.path, r.cluster), ms).then(
      (v) => ({ ...v, error: undefined as string | undefined }),
      (err: unknown) => ({ vms: [] as string[], invalid: [] as string[], error: note(err) }),
    ),
    timed(`list ${vmLeaseDir(r.path, r.cluster)}`, ms, () => readdir(vmLeaseDir(r.path, r.cluster))).then(
      (names) => ({ names, error: undefined as string | undefined }),
      (err: NodeJS.ErrnoException) => ({ names: [] as string[], error: err.code === 'ENOENT' ? undefined : note(err) }),
    ),
  ]);
  if (plText.error !== undefined) {
    plErrors.push(`protectedlist: ${plText.error}`);
    errors.push({ file: 'protectedlist', error: plText.error });
  } else if (plText.text !== null) {
    const p = parseProtectedList(plText.text);
    if (p.ok) {
      pl.listOwner = p.value.owner;
      pl.listGeneration = p.value.generation;
      pl.vms = p.value.vms;
    } else {
      plErrors.push(`protectedlist: ${p.error}`);
      errors.push({ file: 'protectedlist', error: p.error });
    }
  }
  if (plErrors.length > 0) pl.error = plErrors.join('; ');

  let datastoreId: string | null = null;
  if (dsId.error !== undefined) errors.push({ file: 'datastore-id', error: dsId.error });
  else if (dsId.text !== null) datastoreId = dsId.text.trim() || null;
  if (dsId.text === null && dsId.error === undefined) notes.push('no datastore-id file: no agent has probed this datastore yet');

  if (poweredoff.error !== undefined) errors.push({ file: 'poweredoff/', error: poweredoff.error });
  for (const n of poweredoff.invalid) invalid.push(`poweredoff/${n}`);

  const vmLeases: string[] = [];
  if (vmNames.error !== undefined) errors.push({ file: 'vms/', error: vmNames.error });
  for (const n of vmNames.names) {
    if (isTempName(n)) continue;
    const m = /^(.*)\.(lease|lock|claims)$/.exec(n);
    const id = m ? vmIdFromFileName(m[1]!) : null;
    if (!m || id === null || !isVmId(id)) invalid.push(`vms/${n}`);
    else if (m[2] === 'lease') vmLeases.push(id);
  }
  vmLeases.sort();

  // Hosts: heartbeat verdict by change, and the poweron file.
  const sortedHosts = [...hosts].sort((a, b) => hostNumber(a) - hostNumber(b));
  const poweron = await Promise.all(sortedHosts.map((h) => readText(`${h}-poweron`)));
  const hostReports: DatastoreHostReport[] = sortedHosts.map((host, i) => {
    const t = tracks.get(hbKey(host))!;
    const rec = t.snap?.record ?? null;
    const live = liveness(hbKey(host));
    const configured = r.heartbeatHosts === null ? null : r.heartbeatHosts.includes(host);
    let heartbeat: HeartbeatVerdict;
    if (live === 'alive') heartbeat = 'alive';
    else if (live === 'dead' || live === 'released') heartbeat = 'dead';
    else if (live === 'absent') heartbeat = configured ? 'dead' : 'unknown';
    else heartbeat = 'unknown';
    const problems: string[] = [];
    const hbErr = leaseError(t);
    if (hbErr !== undefined) {
      problems.push(`${host}-hb: ${hbErr}`);
      errors.push({ file: `${host}-hb`, error: hbErr });
    }
    const pw = poweron[i]!;
    let isolated: boolean | null = null;
    let vms: string[] = [];
    if (pw.error !== undefined) {
      problems.push(`${host}-poweron: ${pw.error}`);
      errors.push({ file: `${host}-poweron`, error: pw.error });
    } else if (pw.text !== null) {
      const p = parsePoweron(pw.text);
      if (p.ok) {
        isolated = p.value.isolated;
        vms = p.value.vms;
      } else {
        problems.push(`${host}-poweron: ${p.error}`);
        errors.push({ file: `${host}-poweron`, error: p.error });
      }
    }
    return {
      host,
      heartbeat,
      released: live === 'released',
      generation: rec?.generation ?? null,
      counter: rec?.counter ?? null,
      lock: t.snap ? t.snap.lockExists : null,
      heartbeatDatastore: configured,
      isolated,
      vms,
      ...(problems.length > 0 ? { error: problems.join('; ') } : {}),
    };
  });

  if (windowMs < r.leaseTimeoutMs) {
    notes.push(
      `window ${windowMs} ms < lease timeout ${r.leaseTimeoutMs} ms: a record unchanged for the whole window is reported unknown, not dead (use --window ${r.leaseTimeoutMs} or more)`,
    );
  }
  if (late.length > 0) notes.push(`appeared during the window (seen once, heartbeat unknown): ${late.join(', ')}`);

  return {
    datastore: r.name,
    path: r.path,
    cluster: r.cluster,
    clusterDir: dir,
    config: r.configFile,
    datastoreId,
    windowMs,
    observedMs,
    samples,
    leaseTimeoutMs: r.leaseTimeoutMs,
    leaseTimeoutSource: r.leaseTimeoutSource,
    protectedlist: pl,
    hosts: hostReports,
    poweredoff: poweredoff.vms,
    vmLeases,
    invalid: invalid.sort(),
    errors,
    timedOut: timedOut || [...tracks.values()].some((t) => t.stuck),
    notes,
  };
}

// ---- human output --------------------------------------------------------------------------------

function secs(msv: number): string {
  return msv < 1000 ? `${Math.round(msv)} ms` : `${(msv / 1000).toFixed(1)} s`;
}

function pad(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}

const PROTECTED_SHOWN = 20;

/** The human report: owner line, hosts table, protected VMs, poweredoff, problems. */
export function formatReport(rep: DatastoreReport): string {
  const out: string[] = [];
  out.push(`datastore   ${rep.datastore ?? '(by path)'}  ${rep.path}`);
  out.push(`cluster     ${rep.cluster}  (${rep.clusterDir})`);
  out.push(`identity    ${rep.datastoreId ?? '(no datastore-id)'}`);
  out.push(
    `watched     ${secs(rep.observedMs)} (${rep.samples} sample${rep.samples === 1 ? '' : 's'}); lease timeout ${secs(rep.leaseTimeoutMs)} (${rep.leaseTimeoutSource === 'config' ? `from ${rep.config}` : 'assumed: no config'})`,
  );
  out.push('');

  const pl = rep.protectedlist;
  let owner: string;
  if (pl.owner) {
    const how =
      pl.lease === 'alive'
        ? 'alive (renewed during the window)'
        : pl.lease === 'dead'
          ? `DEAD (unchanged for ${secs(rep.observedMs)}, at least the lease timeout)`
          : 'unknown (not seen changing; window shorter than the lease timeout)';
    owner = `owned by ${pl.owner}, generation ${pl.generation}: ${how}`;
  } else if (pl.state === 'released') {
    owner = `no owner (released by the master of generation ${pl.generation})`;
  } else if (pl.lock) {
    owner = `lock held but no readable protectedlist.owner record (${pl.lease})`;
  } else {
    owner = pl.error ? 'unknown (unreadable)' : 'no owner (no master has taken this datastore)';
  }
  out.push(`protectedlist  ${owner}`);
  if (pl.listOwner !== null) {
    const stale = pl.owner !== null && (pl.listOwner !== pl.owner || pl.listGeneration !== pl.generation);
    out.push(`               list written by ${pl.listOwner} at generation ${pl.listGeneration}${stale ? ' (not the current owner)' : ''}; ${pl.vms.length} protected VM${pl.vms.length === 1 ? '' : 's'}`);
  }
  out.push('');

  if (rep.hosts.length === 0) out.push('hosts: none (no host-N-hb or host-N-poweron file)');
  else {
    const rows = [['HOST', 'HEARTBEAT', 'GENERATION', 'ISOLATED', 'VMS', 'NOTE']];
    for (const h of rep.hosts) {
      rows.push([
        h.host,
        h.released ? 'dead (released)' : h.heartbeat,
        h.generation === null ? '-' : String(h.generation),
        h.isolated === null ? '-' : h.isolated ? 'yes' : 'no',
        String(h.vms.length),
        h.error ? 'see problems' : h.generation === null && h.heartbeatDatastore ? 'no heartbeat file' : h.heartbeatDatastore === false ? 'not a heartbeat datastore of this host' : '',
      ]);
    }
    out.push(...pad(rows));
  }
  out.push('');

  out.push(`protected VMs (${pl.vms.length})${pl.vms.length === 0 ? ': none' : ':'}`);
  for (const v of pl.vms.slice(0, PROTECTED_SHOWN)) out.push(`  ${v}`);
  if (pl.vms.length > PROTECTED_SHOWN) out.push(`  ... and ${pl.vms.length - PROTECTED_SHOWN} more (--json lists all)`);
  out.push(`powered off by isolation response (${rep.poweredoff.length})${rep.poweredoff.length === 0 ? ': none' : ':'}`);
  for (const v of rep.poweredoff) out.push(`  ${v}`);
  if (rep.vmLeases.length > 0) out.push(`VM leases: ${rep.vmLeases.length} (vms/)`);

  if (rep.errors.length > 0 || rep.invalid.length > 0) {
    out.push('');
    out.push('problems:');
    for (const e of rep.errors) out.push(`  ${e.file}: ${e.error}`);
    for (const n of rep.invalid) out.push(`  ${n}: not a valid name here (ignored)`);
  }
  if (rep.notes.length > 0) {
    out.push('');
    for (const n of rep.notes) out.push(`note: ${n}`);
  }
  return out.join('\n') + '\n';
}

// ---- the reader process ---------------------------------------------------------------------------

export interface WorkerRequest {
  arg: string;
  config?: string;
  cluster?: string;
  windowMs?: number;
}

export type WorkerMessage =
  | { type: 'start'; clusterDir: string; windowMs: number; callTimeoutMs: number }
  | { type: 'report'; report: DatastoreReport }
  | { type: 'error'; message: string; exitCode: number };

/** Environment variable that makes this module, run as a forked child, act as the reader. */
export const WORKER_ENV = 'VIGIL_DATASTORE_SHOW_WORKER';
export const WORKER_MODULE = fileURLToPath(import.meta.url);

/** The child: resolve, sample, send the result over IPC, then wait to be killed (it may hold hung calls). */
function runWorker(): void {
  const send = (m: WorkerMessage) => process.send!(m);
  process.once('disconnect', () => process.exit(0));
  process.once('message', (req: WorkerRequest) => {
    void (async () => {
      try {
        const resolved = await resolveDatastore(req.arg, {
          ...(req.config !== undefined ? { config: req.config } : {}),
          ...(req.cluster !== undefined ? { cluster: req.cluster } : {}),
        });
        const windowMs = req.windowMs ?? defaultWindowMs(resolved);
        send({ type: 'start', clusterDir: resolved.clusterDir, windowMs, callTimeoutMs: resolved.callTimeoutMs });
        const report = await sampleDatastore(resolved, { windowMs, intervalMs: sampleIntervalMs(windowMs) });
        send({ type: 'report', report });
      } catch (err) {
        send({
          type: 'error',
          message: err instanceof Error ? err.message : String(err),
          exitCode: err instanceof CliError ? err.exitCode : EXIT_FAILURE,
        });
      }
    })();
  });
}

if (process.env[WORKER_ENV] === '1' && typeof process.send === 'function' && process.argv[1] !== undefined && resolve(process.argv[1]) === WORKER_MODULE) {
  runWorker();
}
