/**
 * `vigil lab`: a whole cluster on one machine (SPEC §4.4). Agents run as real background
 * processes on 127.0.0.x, port 8182, with datastores as local directories and `fast` timings.
 * With `netns: true` (root), each host runs in its own network namespace on a bridge instead
 * (NetnsLab, netns.ts), which adds isolation, partitions, one-way loss and per-host storage loss.
 * Also the harness of the end-to-end tests.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { controlRequest, type AgentStatus } from '@vigil/agent';
import { validateConfig } from '@vigil/config';
import { labAddress, labPaths, type LabPaths } from './layout.js';
import { NetnsLab, netnsPrefix, netnsSupport, type NetnsLabInfo } from './netns.js';
import { LAB_DOMAIN_MEMORY_MB, LAB_LIBVIRT_URI, LabLibvirt, labLibvirtProblem } from './libvirt.js';

export const VIGIL_BIN = fileURLToPath(new URL('../../bin/vigil.cjs', import.meta.url));

/** argv[0] of a lab VM process: `pgrep -f` on it counts the copies of a VM. */
export function labVmTag(dir: string, name: string): string {
  return `vigil-lab-vm:${dir}:${name}`;
}

/** The isolation responses a lab can be created with (SPEC §3.4). */
export const LAB_ISOLATION_RESPONSES = ['leavePoweredOn', 'powerOff', 'shutdown'] as const;
export type LabIsolationResponse = (typeof LAB_ISOLATION_RESPONSES)[number];

/**
 * A mistake of the caller (unknown host or datastore, a netns command on a lab without
 * namespaces, bad partition syntax): the CLI exits 2 on it, like on other usage errors.
 */
export class LabUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LabUsageError';
  }
}

/** What a netns lab records in lab.json, so every later command rebuilds the same NetnsLab. */
export interface LabNetnsState {
  /** NetnsLab name (the absolute lab directory, or a hash of it if it has unusual characters). */
  name: string;
  /** `10.99.X.0/24`. */
  subnet: string;
  /** Name prefix of its namespaces (`vg` + 6 hex digits), for humans. */
  prefix: string;
}

/** The NetnsLab name of a lab directory: the absolute path if NetnsLab accepts it, else a hash. */
export function netnsLabName(dir: string): string {
  const abs = resolve(dir);
  try {
    netnsPrefix(abs);
    return abs;
  } catch {
    return 'dir-' + createHash('sha256').update(abs).digest('hex').slice(0, 32);
  }
}

/** The subnet of a netns lab, `10.99.X.0/24`, X derived from the lab name (so two labs differ). */
export function netnsLabSubnet(name: string): string {
  const x = parseInt(createHash('sha256').update(`subnet:${name}`).digest('hex').slice(0, 2), 16);
  return `10.99.${x}.0/24`;
}

export interface LabOptions {
  dir: string;
  hosts: number;
  /** Number of datastores ds1..dsK (default 2). */
  datastores?: number;
  /** Per-host datastore subsets (host id -> names); default: every host mounts all. */
  hostDatastores?: Record<string, string[]>;
  profile?: 'fast' | 'default' | 'fdm';
  /** Timing overrides on top of the profile. */
  timing?: Record<string, number>;
  port?: number;
  /** Capacity each lab host offers to VMs (default 16 GiB, 256 vCPUs). */
  capacity?: { memoryMB: number; cpus: number };
  /**
   * Each host in its own network namespace on a bridge (root only; NetnsLab): addresses
   * 10.99.X.(10+N), the isolation address 10.99.X.1 on the bridge, `pingHosts` on, and every
   * agent in a mount namespace of its own (for storageLoss).
   */
  netns?: boolean;
  /** The cluster's isolation response (default: the config's default, leavePoweredOn). */
  isolationResponse?: LabIsolationResponse;
  /**
   * `libvirt`: VMs are diskless QEMU domains of this machine's libvirtd (qemu:///system), which
   * every lab host shares (libvirt.ts); default `process`.
   */
  driver?: 'process' | 'libvirt';
  /** libvirt lab: libvirtd to use, on this machine (default qemu:///system). */
  libvirtUri?: string;
}

/** Set in lab.json for a libvirt lab. */
export interface LabLibvirtState {
  uri: string;
}

export interface LabState {
  dir: string;
  hosts: string[];
  /** Host id -> pid of its agent while started through the lab. */
  pids: Record<string, number>;
  /** Set for a netns lab (`vigil lab up --netns`). */
  netns?: LabNetnsState;
  /** Set for a libvirt lab (`vigil lab up --driver libvirt`). */
  libvirt?: LabLibvirtState;
  /** netns lab: hosts whose bridge port `kill` took down (a powered-off host answers no ping); `start` brings it up. */
  poweredOff?: string[];
}

/** A VM for Lab.createVms: its command (argv[0] must be the lab tag) and per-VM settings. */
export interface LabVmSpec {
  command: string;
  args: string[];
  /** Per-VM isolation response (default: the cluster's). */
  isolationResponse?: LabIsolationResponse;
  /** Start it on this host (default: the master places it). */
  host?: string;
}

export type HostReport = { host: string; up: true; status: AgentStatus } | { host: string; up: false; pid: number | null; error: string };

export class Lab {
  readonly paths: LabPaths;
  /** Remarks of the last down() (libvirtd did not answer, ...). */
  readonly downNotes: string[] = [];

  constructor(readonly dir: string) {
    this.paths = labPaths(dir);
  }

  /** Write the config, secret and datastores of a new lab (refuses to overwrite a running one). */
  async create(opts: LabOptions): Promise<string[]> {
    if (opts.hosts < 1 || opts.hosts > 200 || !Number.isInteger(opts.hosts)) throw new Error(`--hosts must be an integer between 1 and 200, not ${opts.hosts}`);
    const existing = await this.readState();
    if (existing && existing.hosts.some((h) => this.alive(existing.pids[h]))) {
      throw new Error(`a lab is already running in ${this.dir}: run \`vigil lab down --dir ${this.dir}\` first`);
    }
    if (opts.isolationResponse !== undefined && !(LAB_ISOLATION_RESPONSES as readonly string[]).includes(opts.isolationResponse)) {
      throw new LabUsageError(`isolation response must be one of ${LAB_ISOLATION_RESPONSES.join(', ')}, not "${String(opts.isolationResponse)}"`);
    }
    // The namespaces of an earlier netns lab of this directory must be gone (lab down) first:
    // a new lab never reuses them, and lab.json is about to forget them.
    const stale = existing?.netns ? await this.netnsOf(existing.netns, existing.hosts).existingNamespaces().catch(() => []) : [];
    if (stale.length > 0) {
      throw new Error(`the network namespaces of an earlier lab in ${this.dir} still exist (${stale.join(', ')}): run \`vigil lab down --dir ${this.dir}\` first`);
    }
    // Likewise the domains of an earlier libvirt lab of this directory.
    const staleDomains = existing?.libvirt ? (await this.libvirtOf(existing)).qemus().map((q) => q.domain) : [];
    if (staleDomains.length > 0) {
      throw new Error(`libvirt domains of an earlier lab in ${this.dir} still run (${staleDomains.join(', ')}): run \`vigil lab down --dir ${this.dir}\` first`);
    }
    if (opts.driver !== undefined && opts.driver !== 'process' && opts.driver !== 'libvirt') throw new LabUsageError(`driver must be process or libvirt, not "${String(opts.driver)}"`);
    if (opts.libvirtUri !== undefined && opts.driver !== 'libvirt') throw new LabUsageError('--libvirt-uri goes with --driver libvirt');
    let libvirt: LabLibvirtState | undefined;
    if (opts.driver === 'libvirt') {
      // Before anything is written: a lab that cannot run its VMs is not created.
      const uri = opts.libvirtUri ?? LAB_LIBVIRT_URI;
      const problem = labLibvirtProblem(uri);
      if (problem) throw new Error(problem);
      libvirt = { uri };
    }
    let netns: LabNetnsState | undefined;
    if (opts.netns) {
      const support = await netnsSupport();
      if (!support.ok) throw new Error(`--netns: ${support.hint}`);
      if (opts.hosts > 200) throw new Error('--netns: at most 200 hosts');
      const name = netnsLabName(this.dir);
      netns = { name, subnet: netnsLabSubnet(name), prefix: netnsPrefix(name) };
    }
    const nds = opts.datastores ?? 2;
    if (nds < 1 || nds > 16 || !Number.isInteger(nds)) throw new Error(`--datastores must be an integer between 1 and 16, not ${nds}`);
    await mkdir(this.dir, { recursive: true });
    const dsNames = Array.from({ length: nds }, (_, i) => `ds${i + 1}`);
    const datastores: Record<string, string> = {};
    for (const d of dsNames) {
      datastores[d] = this.paths.datastore(d);
      await mkdir(datastores[d]!, { recursive: true });
    }
    const ids = Array.from({ length: opts.hosts }, (_, i) => `host-${i + 1}`);
    const net = netns ? this.netnsOf(netns, ids) : null;
    const hosts: Record<string, { address: string; datastores?: string[]; capacity: { memoryMB: number; cpus: number } }> = {};
    ids.forEach((id, i) => {
      hosts[id] = {
        address: net ? net.address(id) : labAddress(i + 1),
        ...(opts.hostDatastores?.[id] ? { datastores: opts.hostDatastores[id] } : {}),
        // Every lab host offers the same, explicit capacity, so placement is predictable.
        capacity: opts.capacity ?? { memoryMB: 16384, cpus: 256 },
      };
    });
    await writeFile(this.paths.secret, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    const config = {
      cluster: 'lab',
      secretFile: this.paths.secret,
      port: opts.port ?? 8182,
      hosts,
      datastores,
      // In namespaces: the bridge's address, which an isolated host cannot reach. On loopback
      // every 127.0.0.x answers ping even when its "host" lost power, so pings tell nothing.
      isolationAddresses: net ? [net.isolationAddress()] : ['127.0.0.1'],
      pingHosts: !!net,
      ...(opts.isolationResponse ? { isolationResponse: opts.isolationResponse } : {}),
      // One libvirtd for every lab host: each host's VM daemon names its domains vigil-<host>-...
      ...(libvirt ? { driver: { type: 'libvirt', uri: libvirt.uri } } : {}),
      timing: { profile: opts.profile ?? 'fast', ...(opts.timing ?? {}) },
      log: { level: 'info', format: 'json' },
    };
    validateConfig(config, 'lab config'); // a lab must never write a config the agent refuses
    await writeFile(this.paths.config, JSON.stringify(config, null, 2) + '\n');
    for (const id of ids) await mkdir(this.paths.hostDir(id), { recursive: true });
    // Build the namespaces once, here; `down` removes them. up() cleans up after itself on failure.
    if (net) await net.up();
    await this.writeState({ dir: this.dir, hosts: ids, pids: {}, ...(netns ? { netns } : {}), ...(libvirt ? { libvirt } : {}) });
    return ids;
  }

  /** The libvirt side of a libvirt lab (its domains and their QEMU processes), or null. */
  async libvirt(): Promise<LabLibvirt | null> {
    const s = await this.readState();
    return s?.libvirt ? this.libvirtOf(s) : null;
  }

  private async libvirtOf(s: LabState): Promise<LabLibvirt> {
    const cfg = JSON.parse(await readFile(this.paths.config, 'utf8').catch(() => '{}')) as { cluster?: string; datastores?: Record<string, string> };
    return new LabLibvirt(s.libvirt?.uri ?? LAB_LIBVIRT_URI, cfg.cluster ?? 'lab', Object.fromEntries(s.hosts.map((h) => [h, this.paths.hostDir(h)])), cfg.datastores ?? {});
  }

  private netnsOf(n: LabNetnsState, hosts: string[]): NetnsLab {
    return new NetnsLab({ name: n.name, hosts, subnet: n.subnet });
  }

  /** The NetnsLab of this lab; a LabUsageError if it is not a netns lab. */
  async netns(): Promise<NetnsLab> {
    const s = await this.requireState();
    if (!s.netns) {
      throw new LabUsageError(`the lab in ${this.dir} has no network namespaces: isolate, partition, one-way, heal, storage-loss and storage-heal need a lab started with \`vigil lab up --netns\` (as root)`);
    }
    return this.netnsOf(s.netns, s.hosts);
  }

  /** Whether the lab in this directory is a netns lab (false when there is none). */
  async isNetns(): Promise<boolean> {
    return !!(await this.readState())?.netns;
  }

  private checkHost(s: LabState, host: string): void {
    if (!s.hosts.includes(host)) throw new LabUsageError(`unknown lab host ${host} (hosts: ${s.hosts.join(', ')})`);
  }

  /** Network faults: `host` loses all network (its bridge port goes down). */
  async isolate(host: string): Promise<void> {
    const s = await this.requireState();
    const n = await this.netns();
    this.checkHost(s, host);
    await n.isolate(host);
  }

  /**
   * Partition the lab: hosts in different groups cannot exchange anything; all still reach the
   * isolation address. Every host must be in exactly one group; at least two groups. Replaces an
   * earlier partition.
   */
  async partition(groups: string[][]): Promise<void> {
    const s = await this.requireState();
    const n = await this.netns();
    if (groups.length < 2) throw new LabUsageError('a partition needs at least two groups (host-1,host-2/host-3,host-4)');
    const seen = new Set<string>();
    for (const g of groups) {
      if (g.length === 0) throw new LabUsageError('a partition group is empty (host-1,host-2/host-3,host-4)');
      for (const h of g) {
        this.checkHost(s, h);
        if (seen.has(h)) throw new LabUsageError(`${h} is in two partition groups`);
        seen.add(h);
      }
    }
    const left = s.hosts.filter((h) => !seen.has(h));
    if (left.length > 0) throw new LabUsageError(`${left.join(', ')} in no partition group: list every lab host once (hosts: ${s.hosts.join(', ')})`);
    await n.partition(groups);
  }

  /** IP traffic from `from` to `to` is dropped; the reverse direction passes. */
  async oneWay(from: string, to: string): Promise<void> {
    const s = await this.requireState();
    const n = await this.netns();
    this.checkHost(s, from);
    this.checkHost(s, to);
    if (from === to) throw new LabUsageError('one-way: FROM and TO are the same host');
    await n.oneWay(from, to);
  }

  /** Undo every isolate, partition and one-way (not storage losses: storageHeal). */
  async heal(): Promise<void> {
    const n = await this.netns();
    await n.heal();
    // A powered-off host stays silent, ping included.
    for (const h of (await this.readState())?.poweredOff ?? []) await n.isolate(h);
  }

  /** Absolute path of datastore `ds` if `host` mounts it (LabUsageError otherwise). */
  private async datastoreOf(host: string, ds: string): Promise<string> {
    const cfg = JSON.parse(await readFile(this.paths.config, 'utf8')) as { datastores: Record<string, string>; hosts: Record<string, { datastores?: string[] }> };
    const path = cfg.datastores[ds];
    if (!path) throw new LabUsageError(`unknown datastore ${ds} (datastores: ${Object.keys(cfg.datastores).join(', ')})`);
    const mounted = cfg.hosts[host]?.datastores;
    if (mounted && !mounted.includes(ds)) throw new LabUsageError(`${host} does not mount ${ds} (it mounts ${mounted.join(', ') || 'nothing'})`);
    return resolve(path);
  }

  /**
   * One process of each mount namespace the processes of `host` live in (its agent, its VM
   * daemon, its VMs): usually one, the agent's (`unshare -m` at start), which its VM daemon and
   * VMs inherit. A VM daemon that outlived an agent crash keeps the old agent's namespace.
   */
  private hostMountNamespaces(host: string, agentPid: number | undefined): number[] {
    const byNs = new Map<string, number>();
    const own = (() => {
      try {
        return readlinkSync('/proc/self/ns/mnt');
      } catch {
        return null;
      }
    })();
    const pids = [...(agentPid && this.alive(agentPid) ? [agentPid] : []), ...this.markedProcesses(host)];
    for (const pid of pids) {
      try {
        const ns = readlinkSync(`/proc/${pid}/ns/mnt`);
        if (ns !== own && !byNs.has(ns)) byNs.set(ns, pid);
      } catch {
        /* gone */
      }
    }
    return [...byNs.values()];
  }

  /**
   * Hide datastore `ds` from `host` only: an empty tmpfs over it in the mount namespace of the
   * host's agent, which its VM daemon and VMs share (so the VM daemon cannot renew its host VM
   * lease there and fences the VMs of that datastore). Returns the pids whose namespaces got it.
   */
  async storageLoss(host: string, ds: string): Promise<number[]> {
    const s = await this.requireState();
    const n = await this.netns();
    this.checkHost(s, host);
    const path = await this.datastoreOf(host, ds);
    const targets = this.hostMountNamespaces(host, s.pids[host]);
    if (targets.length === 0) throw new Error(`${host} is not running (start it with \`vigil lab start ${host}\`): storage-loss hides ${ds} inside its processes' mount namespace`);
    for (const pid of targets) await n.storageLoss(host, pid, path);
    return targets;
  }

  /** Undo storageLoss: `ds` is visible to `host` again. Returns the pids whose namespaces had it. */
  async storageHeal(host: string, ds: string): Promise<number[]> {
    const s = await this.requireState();
    const n = await this.netns();
    this.checkHost(s, host);
    const path = await this.datastoreOf(host, ds);
    const targets = this.hostMountNamespaces(host, s.pids[host]);
    for (const pid of targets) await n.storageHeal(host, pid, path);
    return targets;
  }

  /** The datastores hidden from `host` now (by storageLoss), read from its agent's mount table. */
  async hiddenDatastores(host: string): Promise<string[]> {
    const s = await this.requireState();
    if (!s.netns) return [];
    const pid = s.pids[host];
    if (!pid || !this.alive(pid)) return [];
    const tag = this.netnsOf(s.netns, s.hosts).mountTag;
    const cfg = JSON.parse(await readFile(this.paths.config, 'utf8')) as { datastores: Record<string, string> };
    let text = '';
    try {
      text = readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
    } catch {
      return [];
    }
    const points = new Set(
      text
        .split('\n')
        .filter((l) => l.includes(` - tmpfs ${tag} `))
        .map((l) => (l.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))),
    );
    return Object.entries(cfg.datastores)
      .filter(([, p]) => points.has(resolve(p)))
      .map(([d]) => d);
  }

  /** State of the namespaces (isolated hosts, nft rules), or null for a loopback lab. */
  async netnsInfo(): Promise<NetnsLabInfo | null> {
    if (!(await this.isNetns())) return null;
    return (await this.netns()).info();
  }

  async readState(): Promise<LabState | null> {
    try {
      return JSON.parse(await readFile(this.paths.state, 'utf8')) as LabState;
    } catch {
      return null;
    }
  }

  private async writeState(s: LabState): Promise<void> {
    await writeFile(this.paths.state, JSON.stringify(s, null, 2) + '\n');
  }

  private async requireState(): Promise<LabState> {
    const s = await this.readState();
    if (!s) throw new Error(`no lab in ${this.dir} (start one with \`vigil lab up\`)`);
    return s;
  }

  alive(pid: number | undefined | null): boolean {
    if (!pid) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Start the agent of `host` in the background (no-op if it runs). Returns its pid.
   * `prefix`: a command the agent runs under, which must exec it (e.g. `faketime -f +5m`,
   * `unshare -m --propagation private`), so the returned pid is the agent's own.
   */
  async start(host: string, opts: { prefix?: string[]; env?: Record<string, string> } = {}): Promise<number> {
    const s = await this.requireState();
    this.checkHost(s, host);
    const running = s.pids[host];
    if (running && this.alive(running)) return running;
    const argv = [process.execPath, VIGIL_BIN, 'agent', '--config', this.paths.config, '--host', host, '--state-dir', this.paths.hostDir(host), '--socket', this.paths.socket(host)];
    let full = [...(opts.prefix ?? []), ...argv];
    if (s.netns) {
      // In the host's network namespace, in a private mount namespace of its own (storageLoss).
      // `ip netns exec` and `unshare` exec in place: the pid is the agent's.
      const n = this.netnsOf(s.netns, s.hosts);
      if (!(await n.existingNamespaces()).includes(n.nsName(host))) {
        throw new Error(`the network namespace ${n.nsName(host)} of ${host} does not exist (the lab was taken down?): run \`vigil lab down --dir ${this.dir}\` and \`vigil lab up --netns\` again`);
      }
      full = n.wrap(host, full, { mountNs: true });
      if (s.poweredOff?.includes(host)) {
        // Powered back on: its network comes back with it (kill() took its bridge port down).
        await n.reconnect(host);
        s.poweredOff = s.poweredOff.filter((h) => h !== host);
      }
    }
    const out = openSync(this.paths.log(host), 'a');
    const [cmd, ...args] = full;
    // Every process of this lab host (agent, its VM daemon, VMs) inherits this marker, so a
    // power cut can find them all, even a VM daemon or VM started a moment ago.
    const env = { ...process.env, ...(opts.env ?? {}), VIGIL_LAB_HOST: this.hostMarker(host) };
    const child = spawn(cmd!, args, { detached: true, stdio: ['ignore', out, out], env });
    closeSync(out);
    child.unref();
    const pid = child.pid;
    if (!pid) throw new Error(`could not start the agent of ${host}`);
    s.pids[host] = pid;
    await writeFile(this.paths.pidFile(host), `${pid}\n`);
    await this.writeState(s);
    return pid;
  }

  private hostMarker(host: string): string {
    return `${this.dir}:${host}`;
  }

  /** Every live process carrying this lab host's marker in its environment (Linux /proc). */
  private markedProcesses(host: string): number[] {
    const needle = Buffer.from(`VIGIL_LAB_HOST=${this.hostMarker(host)}\0`);
    const pids: number[] = [];
    let entries: string[] = [];
    try {
      entries = readdirSync('/proc');
    } catch {
      return pids;
    }
    for (const e of entries) {
      if (!/^[0-9]+$/.test(e) || Number(e) === process.pid) continue;
      try {
        if (readFileSync(`/proc/${e}/environ`).includes(needle)) pids.push(Number(e));
      } catch {
        /* gone, or not ours to read */
      }
    }
    return pids;
  }

  /**
   * SIGKILL, all at once, every process carrying the marker of one of `hosts` (a host's VM daemon
   * and VMs, and its agent if still there), and again until none is left: a process forked
   * meanwhile (a VM being started, a VM daemon an agent was restarting) inherits the marker.
   * Returns whether anything was found.
   */
  private async killMarked(hosts: string[], timeoutMs = 3000): Promise<boolean> {
    let found = false;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const pids = hosts.flatMap((h) => this.markedProcesses(h));
      if (pids.length === 0) return found;
      found = true;
      for (const p of pids) this.signalGroup(p, 'SIGKILL');
      if (Date.now() > deadline) return found;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Power cut: the agent, its VM daemon and every VM of the host die at once. The agent goes
   * first, so it cannot start a new VM daemon; then everything carrying the host's marker (the
   * VMs would also die with their daemon: pdeathsig).
   */
  async kill(host: string): Promise<boolean> {
    const s = await this.requireState();
    this.checkHost(s, host);
    const pid = s.pids[host];
    const agent = !!pid && this.alive(pid);
    // A libvirt lab host's domains are children of the shared libvirtd, not of the host: kill
    // their QEMU processes with the rest (libvirtd would destroy them anyway once the VM daemon's
    // connection closes, but a real power cut takes them at the same instant).
    const lv = s.libvirt ? await this.libvirtOf(s) : null;
    const qemus = lv ? lv.qemus([host]) : [];
    if (agent) this.signalGroup(pid, 'SIGKILL');
    for (const q of qemus) this.signalGroup(q.pid, 'SIGKILL');
    let others = await this.killMarked([host]);
    if (lv) {
      // And any domain that was being created as the VM daemon died.
      const deadline = Date.now() + 3000;
      while (lv.killQemus([host]) > 0 && Date.now() < deadline) {
        others = true;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    others = others || qemus.length > 0;
    if (s.netns) {
      // The namespace outlives the processes and would go on answering ping, which tells the
      // master the host is up (agentUnreachable: nothing restarted). A powered-off host's NIC is
      // silent: take its bridge port down (unless an isolate already did), until `lab start`.
      const n = this.netnsOf(s.netns, s.hosts);
      if (!(await n.info()).isolated.includes(host)) {
        await n.isolate(host);
        s.poweredOff = [...new Set([...(s.poweredOff ?? []), host])];
      }
    }
    delete s.pids[host];
    await rm(this.paths.pidFile(host), { force: true });
    await this.writeState(s);
    return agent || others;
  }

  /**
   * Stop every agent (SIGTERM, then SIGKILL after `graceMs`) and kill every VM daemon and VM of
   * the lab; no process of it is left behind. Optionally delete the lab directory.
   */
  async down(opts: { purge?: boolean; graceMs?: number } = {}): Promise<string[]> {
    const s = await this.readState();
    const stopped: string[] = [];
    let leftDomains: string[] = [];
    this.downNotes.length = 0;
    if (s) {
      const pids = Object.entries(s.pids).filter(([, pid]) => this.alive(pid));
      for (const [, pid] of pids) this.signalGroup(pid, 'SIGTERM');
      // VMs are not stopped by an agent's SIGTERM (they outlive it, under their VM daemon): power them off too.
      // (Not the agents themselves, which carry the marker too: they get their grace period.)
      const agents = new Set(pids.map(([, pid]) => pid));
      for (const h of s.hosts) for (const g of this.markedProcesses(h)) if (!agents.has(g)) this.signalGroup(g, 'SIGKILL');
      const deadline = Date.now() + (opts.graceMs ?? 5000);
      while (pids.some(([, pid]) => this.alive(pid)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      for (const [host, pid] of pids) {
        this.signalGroup(pid, 'SIGKILL');
        stopped.push(host);
      }
      // Agents are gone now: a VM daemon one of them started meanwhile is the last thing to kill.
      await this.killMarked(s.hosts);
      s.pids = {};
      delete s.poweredOff;
      await this.writeState(s).catch(() => {});
      // The VM daemons are dead, so libvirtd is destroying their domains (--autodestroy): make
      // sure, and kill and destroy what is left of them.
      if (s.libvirt) {
        const r = await (await this.libvirtOf(s)).destroyAll();
        if (r.note) this.downNotes.push(r.note);
        if (r.left.length > 0) leftDomains = r.left;
      }
      // Namespaces, links, nft rules and storage-loss mounts; and anything still inside them.
      if (s.netns) await this.netnsOf(s.netns, s.hosts).down();
    }
    if (opts.purge) await rm(this.dir, { recursive: true, force: true });
    if (leftDomains.length > 0) throw new Error(`libvirt domains of the lab are still there after 15 s: ${leftDomains.join(', ')} (see \`virsh -c ${s?.libvirt?.uri ?? LAB_LIBVIRT_URI} list --all\`)`);
    return stopped;
  }

  private signalGroup(pid: number, sig: NodeJS.Signals): void {
    try {
      process.kill(-pid, sig);
    } catch {
      try {
        process.kill(pid, sig);
      } catch {
        /* already gone */
      }
    }
  }

  async status(host: string): Promise<HostReport> {
    const s = await this.requireState();
    const pid = s.pids[host] ?? null;
    try {
      const status = (await controlRequest(this.paths.socket(host), { cmd: 'status' }, 2000)) as AgentStatus;
      return { host, up: true, status };
    } catch (err) {
      return { host, up: false, pid, error: (err as Error).message };
    }
  }

  async statusAll(): Promise<HostReport[]> {
    const s = await this.requireState();
    return Promise.all(s.hosts.map((h) => this.status(h)));
  }

  /**
   * Poll until every running agent is master or slave and all follow one master (or `timeoutMs`).
   * Returns the master, or null on timeout.
   */
  async waitConverged(timeoutMs: number, hosts?: string[]): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const reports = (await this.statusAll()).filter((r) => !hosts || hosts.includes(r.host));
      const up = reports.filter((r): r is Extract<HostReport, { up: true }> => r.up);
      const masters = up.filter((r) => r.status.role === 'master');
      if (up.length > 0 && masters.length === 1 && up.length === reports.length) {
        const m = masters[0]!.status.host;
        if (up.every((r) => r.status.role === 'master' || (r.status.role === 'slave' && r.status.master === m))) return m;
      }
      if (Date.now() > deadline) return null;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Create `count` process-driver VMs (names vm-1...; datastores round-robin; priorities cycle
   * through high/medium/low) and start them through the master, which places and protects them.
   * Each VM is a `sleep` whose argv[0] is `vigil-lab-vm:<lab dir>:<name>`, so processes can be
   * counted with `pgrep -f`. Returns the VM names.
   */
  async createVms(
    count: number,
    opts: {
      via?: string;
      concurrency?: number;
      memoryMB?: number;
      priorities?: string[];
      /** Another VM than the default `sleep` (its argv[0] must be labVmTag(dir, name)), per-VM settings, placement. */
      vm?: (name: string, index: number) => Partial<LabVmSpec>;
      /** First VM number (default 1: vm-1, vm-2, ...). */
      first?: number;
    } = {},
  ): Promise<string[]> {
    const s = await this.requireState();
    const cfg = JSON.parse(await readFile(this.paths.config, 'utf8')) as { datastores: Record<string, string> };
    const dsNames = Object.keys(cfg.datastores);
    const via = opts.via ?? s.hosts.find((h) => this.alive(s.pids[h])) ?? s.hosts[0]!;
    const socket = this.paths.socket(via);
    const prios = opts.priorities ?? ['high', 'medium', 'low'];
    // VM operations need the master to hold every datastore's protectedlist: wait for that.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const st = (await controlRequest(socket, { cmd: 'status' }, 5000).catch(() => null)) as AgentStatus | null;
      const master = st?.master ? ((await controlRequest(this.paths.socket(st.master), { cmd: 'status' }, 5000).catch(() => null)) as AgentStatus | null) : null;
      if (master && dsNames.every((d) => master.ownedDatastores.includes(d))) break;
      if (Date.now() > deadline) throw new Error('the master did not take every datastore within 30 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    const first = opts.first ?? 1;
    const names = Array.from({ length: count }, (_, i) => `vm-${i + first}`);
    const specs = new Map<string, Partial<LabVmSpec>>();
    for (const [i, name] of names.entries()) {
      const spec = opts.vm?.(name, i) ?? {};
      specs.set(name, spec);
      // A libvirt lab's VM is a small diskless domain the agent writes (XML + JSON on the datastore).
      const what = s.libvirt
        ? { memoryMB: opts.memoryMB ?? LAB_DOMAIN_MEMORY_MB }
        : { command: spec.command ?? 'bash', args: spec.args ?? ['-c', `exec -a ${labVmTag(this.dir, name)} sleep 2147483647`], memoryMB: opts.memoryMB ?? 64 };
      await controlRequest(
        socket,
        {
          cmd: 'vm',
          op: 'create',
          datastore: dsNames[(i + first - 1) % dsNames.length],
          name,
          ...what,
          cpus: 1,
          priority: prios[(i + first - 1) % prios.length],
          ...(spec.isolationResponse ? { isolationResponse: spec.isolationResponse } : {}),
        },
        30_000,
      );
    }
    const queue = [...names];
    const worker = async () => {
      for (let name = queue.shift(); name; name = queue.shift()) {
        // The master may lose a datastore for a moment under load: retry what it says to retry.
        for (let attempt = 1; ; attempt++) {
          try {
            const host = specs.get(name)?.host;
            await controlRequest(socket, { cmd: 'vm', op: 'start', vm: name, ...(host ? { host } : {}) }, 120_000);
            break;
          } catch (err) {
            if (attempt >= 20 || !/retry shortly/.test((err as Error).message)) throw err;
            await new Promise((r) => setTimeout(r, 500));
          }
        }
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency ?? 8 }, worker));
    return names;
  }

  /** Last lines of a host's agent log. */
  tail(host: string, lines = 20): string {
    const f = this.paths.log(host);
    if (!existsSync(f)) return '';
    return readFileSync(f, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  }
}
