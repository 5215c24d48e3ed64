/**
 * The network-namespace lab (SPEC §4.4 `--netns`, issue 5 item 5): puts every lab host in its
 * own Linux network namespace on a bridge, so isolation, partitions, one-way loss and per-host
 * storage loss can be produced for real, on one machine, as root.
 *
 * Why it is a separate module: this is the only code in Vigil that changes the machine's network
 * and mount state. It keeps all of it in one place, behind names it derives from the lab (a short
 * hash prefix), so `down()` can find and remove everything it made, even after a crash, and never
 * touches anything it did not make. See docs/netns-lab.md for the picture and how to inspect it.
 *
 * Layout, for a lab whose prefix is P (`vg` + 6 hex digits of sha256(name)) and subnet 10.99.X.0/24:
 *   - namespace `P-br`: bridge `br0` holding the isolation address 10.99.X.1/24 (answers ping,
 *     does not forward: IP forwarding stays off in a new namespace), and one veth `P-hN` per host
 *     attached to br0; nftables table `bridge vigil` filters frames between the bridge ports.
 *   - namespace `P-hN` per host `host-N`: `lo` up, `eth0` (the other end of veth `P-hN`) with
 *     10.99.X.(10+N)/24, default route via the isolation address.
 * Nothing is created in the default namespace: the veth pairs are created inside `P-br`.
 *
 * Faults:
 *   - isolate(host): the bridge-side veth goes down; the host hears nothing and reaches nothing.
 *   - partition(groups) / oneWay(from, to): nftables rules in the bridge namespace, chain
 *     `forward` of the bridge family, matching bridge ports by name (iifname/oifname). Traffic to
 *     the isolation address goes to br0 itself (bridge `input`, not `forward`), so a partitioned
 *     host still reaches it and is not isolated.
 *   - storageLoss(host, pid, path): an empty tmpfs mounted over `path` in the mount namespace of
 *     process `pid` (environment.md §3). Its source is tagged `vigil-P` so `down()` finds it.
 *
 * Every command runs through `execFile` with an argv array (never a shell); host names, lab
 * names, subnets, pids and paths are validated first. A failing command rejects with a
 * `NetnsCommandError` naming the command and its stderr.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { access, readdir, readFile, readlink, stat } from 'node:fs/promises';
import { delimiter, isAbsolute, join, normalize } from 'node:path';

/** Default subnet: the addresses exist only inside the lab's namespaces, so labs may share it. */
export const DEFAULT_NETNS_SUBNET = '10.99.0.0/24';
/** Name of the nftables table (bridge family) in the bridge namespace. */
export const NFT_TABLE = 'vigil';
/** Default timeout of one command. */
const COMMAND_TIMEOUT_MS = 15_000;
/** Highest host number: host-N gets 10.99.X.(10+N), which must stay below .255. */
const MAX_HOST_NUMBER = 244;

/** The tools the lab runs, and the Debian package that provides each. */
export const NETNS_TOOLS: Readonly<Record<string, string>> = {
  ip: 'iproute2',
  nft: 'nftables',
  ping: 'iputils-ping',
  nsenter: 'util-linux',
  unshare: 'util-linux',
};

/** A command the lab ran failed: names the command, its exit status and its stderr. */
export class NetnsCommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | string | null,
    readonly stderr: string,
  ) {
    const why = stderr.trim() || '(no stderr)';
    super(`command failed (${String(exitCode)}): ${argv.join(' ')}: ${why}`);
    this.name = 'NetnsCommandError';
  }
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/**
 * Run argv (no shell). Resolves with its output; rejects with a NetnsCommandError when it
 * cannot start, exits non-zero, or runs past the timeout. `input` is written to its stdin.
 */
export function runCommand(
  argv: readonly string[],
  opts: { input?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  const [file, ...args] = argv;
  if (file === undefined) return Promise.reject(new Error('runCommand: empty argv'));
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { timeout: opts.timeoutMs ?? COMMAND_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (!err) return resolve({ stdout, stderr });
        const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null };
        const code =
          typeof e.code === 'number' || typeof e.code === 'string' ? e.code : (e.signal ?? null);
        const detail = e.killed ? `timed out after ${opts.timeoutMs ?? COMMAND_TIMEOUT_MS} ms` : e.message;
        reject(new NetnsCommandError(argv, code, stderr || detail));
      },
    );
    // Without input, close stdin so nothing waits on it.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input ?? '');
  });
}

// ---------------------------------------------------------------------------------------------
// Preflight

export interface NetnsSupport {
  ok: boolean;
  /** What is missing: `root`, or tool names (`ip`, `nft`, `ping`, `nsenter`, `unshare`). */
  missing: string[];
  /** One line for an error message: what is missing and how to get it. Empty when ok. */
  hint: string;
}

async function onPath(tool: string): Promise<boolean> {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '');
  for (const dir of dirs) {
    try {
      await access(join(dir, tool), constants.X_OK);
      return true;
    } catch {
      // try the next directory
    }
  }
  return false;
}

/**
 * Can this process run a namespace lab? Needs root (creating namespaces, mounting) and the tools
 * of NETNS_TOOLS on PATH. Callers use `hint` for a clear error; tests use it to skip.
 */
export async function netnsSupport(): Promise<NetnsSupport> {
  const missing: string[] = [];
  if (process.platform !== 'linux') missing.push('linux');
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) missing.push('root');
  for (const tool of Object.keys(NETNS_TOOLS)) {
    if (!(await onPath(tool))) missing.push(tool);
  }
  let hint = '';
  if (missing.length > 0) {
    const parts: string[] = [];
    if (missing.includes('linux')) parts.push('network namespaces need Linux');
    if (missing.includes('root')) parts.push('run as root');
    const tools = missing.filter((m) => m in NETNS_TOOLS);
    if (tools.length > 0) {
      const pkgs = [...new Set(tools.map((t) => NETNS_TOOLS[t]))].join(' ');
      parts.push(`missing ${tools.join(', ')} (apt-get install -y ${pkgs})`);
    }
    hint = `network-namespace lab unavailable: ${parts.join('; ')}`;
  }
  return { ok: missing.length === 0, missing, hint };
}

// ---------------------------------------------------------------------------------------------
// Names and validation

const HOST_RE = /^host-([1-9][0-9]{0,2})$/;
/** Lab names: a short id or a lab directory path; hashed, so only the character set matters. */
const LAB_NAME_RE = /^[A-Za-z0-9._/:-]{1,255}$/;
const SUBNET_RE = /^10\.99\.([0-9]{1,3})\.0\/24$/;

/** host-N -> N; throws on anything else. */
export function hostNumber(host: string): number {
  const m = HOST_RE.exec(host);
  const n = m ? Number(m[1]) : NaN;
  if (!m || n > MAX_HOST_NUMBER) {
    throw new Error(`invalid host name ${JSON.stringify(host)}: expected host-N with N in 1..${MAX_HOST_NUMBER}`);
  }
  return n;
}

/**
 * The name prefix of a lab's namespaces and links: `vg` + 6 hex digits of sha256(name). Short
 * enough that `P-h244` (13 characters) fits an interface name (at most 15).
 */
export function netnsPrefix(name: string): string {
  if (!LAB_NAME_RE.test(name)) {
    throw new Error(
      `invalid lab name ${JSON.stringify(name)}: 1-255 characters of A-Z a-z 0-9 . _ / : -`,
    );
  }
  return 'vg' + createHash('sha256').update(name).digest('hex').slice(0, 6);
}

/** Unescape a mountinfo field (spaces and friends are written as \ooo octal). */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

interface MountEntry {
  id: number;
  mountPoint: string;
  optional: string[];
  fsType: string;
  source: string;
}

function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const [left, right] = line.split(' - ');
    if (left === undefined || right === undefined) continue;
    const l = left.split(' ');
    const r = right.split(' ');
    out.push({
      id: Number(l[0]),
      mountPoint: unescapeMountField(l[4] ?? ''),
      optional: l.slice(6),
      fsType: r[0] ?? '',
      source: unescapeMountField(r[1] ?? ''),
    });
  }
  return out;
}

function validatePid(pid: number): void {
  if (!Number.isSafeInteger(pid) || pid <= 1) throw new Error(`invalid pid ${String(pid)}`);
}

function validatePath(path: string): string {
  if (typeof path !== 'string' || !isAbsolute(path) || path.includes('\0')) {
    throw new Error(`invalid path ${JSON.stringify(path)}: expected an absolute path`);
  }
  const p = normalize(path);
  if (p === '/') throw new Error('refusing to hide /');
  return p.replace(/\/+$/, '');
}

/** Inode of a namespace file (/run/netns/NAME or /proc/PID/ns/KIND), or null if it is gone. */
async function nsInode(path: string): Promise<number | null> {
  try {
    return (await stat(path)).ino;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// The lab

export interface NetnsLabOptions {
  /** Short id of the lab, e.g. its directory; hashed into the name prefix. */
  name: string;
  /** The hosts, `host-N` each. */
  hosts: string[];
  /** `10.99.X.0/24` (default 10.99.0.0/24). */
  subnet?: string;
}

export interface NetnsLabInfo {
  prefix: string;
  /** Namespaces of this lab that exist now. */
  namespaces: string[];
  /** Hosts whose bridge-side veth is down (isolated). */
  isolated: string[];
  /** `nft list table bridge vigil` in the bridge namespace, or '' when there is none. */
  rules: string;
}

export class NetnsLab {
  readonly name: string;
  readonly prefix: string;
  readonly hosts: readonly string[];
  /** First three octets of the subnet, e.g. `10.99.0`. */
  private readonly net: string;

  constructor(opts: NetnsLabOptions) {
    this.name = opts.name;
    this.prefix = netnsPrefix(opts.name);
    if (!Array.isArray(opts.hosts) || opts.hosts.length === 0) {
      throw new Error('a netns lab needs at least one host');
    }
    for (const h of opts.hosts) hostNumber(h);
    const dup = opts.hosts.find((h, i) => opts.hosts.indexOf(h) !== i);
    if (dup !== undefined) throw new Error(`host ${dup} listed twice`);
    this.hosts = [...opts.hosts];
    const subnet = opts.subnet ?? DEFAULT_NETNS_SUBNET;
    const m = SUBNET_RE.exec(subnet);
    if (!m || Number(m[1]) > 255) {
      throw new Error(`invalid subnet ${JSON.stringify(subnet)}: expected 10.99.X.0/24 with X in 0..255`);
    }
    this.net = `10.99.${Number(m[1])}`;
  }

  // ---- names and addresses ----

  /** The bridge namespace. */
  get bridgeNs(): string {
    return `${this.prefix}-br`;
  }

  /** The namespace of a host: `P-hN`. */
  nsName(host: string): string {
    return `${this.prefix}-h${this.checkHost(host)}`;
  }

  /** The bridge-side veth of a host (in the bridge namespace): also `P-hN`. */
  bridgePort(host: string): string {
    return `${this.prefix}-h${this.checkHost(host)}`;
  }

  /** host-N -> 10.99.X.(10+N). */
  address(host: string): string {
    return `${this.net}.${10 + this.checkHost(host)}`;
  }

  /** The isolation address: 10.99.X.1 on br0 in the bridge namespace. */
  isolationAddress(): string {
    return `${this.net}.1`;
  }

  /** argv that runs `argv` inside the host's network namespace. */
  exec(host: string, argv: readonly string[]): string[] {
    return this.wrap(host, argv);
  }

  /**
   * argv that runs `argv` inside the host's network namespace and, with `mountNs`, in a private
   * mount namespace of its own (needed for storageLoss to hide a datastore from that host only).
   * Both `ip netns exec` and `unshare` exec in place: the pid of the spawned child is the pid of
   * `argv[0]`, which is what storageLoss takes.
   */
  wrap(host: string, argv: readonly string[], opts: { mountNs?: boolean } = {}): string[] {
    if (argv.length === 0) throw new Error('wrap: empty argv');
    const inner = opts.mountNs ? ['unshare', '-m', '--propagation', 'private', ...argv] : [...argv];
    return ['ip', 'netns', 'exec', this.nsName(host), ...inner];
  }

  /** Run a command inside the host's network namespace and wait for it. */
  run(host: string, argv: readonly string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
    return runCommand(this.exec(host, argv), opts);
  }

  /** Does `address` answer one ping from inside the host's namespace (1 s wait)? */
  async ping(host: string, address: string): Promise<boolean> {
    if (!/^[0-9.]{7,15}$/.test(address)) throw new Error(`invalid address ${JSON.stringify(address)}`);
    try {
      await this.run(host, ['ping', '-n', '-q', '-c', '1', '-W', '1', address]);
      return true;
    } catch (err) {
      if (err instanceof NetnsCommandError && err.exitCode === 1) return false; // no reply
      if (err instanceof NetnsCommandError && err.exitCode === 2) return false; // unreachable
      throw err;
    }
  }

  // ---- life cycle ----

  /** This lab's namespaces that exist now (found by name prefix, so also a crashed lab's). */
  async existingNamespaces(): Promise<string[]> {
    const { stdout } = await runCommand(['ip', 'netns', 'list']);
    const re = new RegExp(`^${this.prefix}-(br|h[0-9]+)$`);
    return stdout
      .split('\n')
      .map((l) => l.split(' ')[0] ?? '')
      .filter((n) => re.test(n));
  }

  /**
   * Build the lab. If any namespace of this lab already exists, rejects naming them (call
   * `down()` first): re-using a half-built or differently-sized lab would hide mistakes. If
   * building fails half-way, removes what it made and rejects with the first error.
   */
  async up(): Promise<void> {
    const existing = await this.existingNamespaces();
    if (existing.length > 0) {
      throw new Error(
        `netns lab ${this.prefix} (${this.name}) already exists: ${existing.join(', ')}; run down() / \`vigil lab down\` first`,
      );
    }
    try {
      await this.build();
    } catch (err) {
      await this.down().catch(() => undefined);
      throw err;
    }
  }

  private async build(): Promise<void> {
    const br = this.bridgeNs;
    await runCommand(['ip', 'netns', 'add', br]);
    await runCommand(['ip', '-n', br, 'link', 'set', 'lo', 'up']);
    // STP off and no forward delay: a port that comes back up (heal) forwards at once.
    await runCommand([
      'ip', '-n', br, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0',
    ]);
    await runCommand(['ip', '-n', br, 'addr', 'add', `${this.isolationAddress()}/24`, 'dev', 'br0']);
    await runCommand(['ip', '-n', br, 'link', 'set', 'br0', 'up']);
    // The filter table: forward jumps to the partition and oneway chains, both empty for now.
    await this.nft(
      [
        `table bridge ${NFT_TABLE} {`,
        '  chain forward { type filter hook forward priority 0; policy accept; jump partition; jump oneway; }',
        '  chain partition { }',
        '  chain oneway { }',
        '}',
      ].join('\n'),
    );
    for (const host of this.hosts) {
      const ns = this.nsName(host);
      const port = this.bridgePort(host);
      await runCommand(['ip', 'netns', 'add', ns]);
      // Created inside the bridge namespace with its peer placed straight into the host
      // namespace: no interface ever appears in the default namespace.
      await runCommand(['ip', '-n', br, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await runCommand(['ip', '-n', br, 'link', 'set', port, 'master', 'br0']);
      await runCommand(['ip', '-n', br, 'link', 'set', port, 'up']);
      await runCommand(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
      await runCommand(['ip', '-n', ns, 'addr', 'add', `${this.address(host)}/24`, 'dev', 'eth0']);
      await runCommand(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
      await runCommand(['ip', '-n', ns, 'route', 'add', 'default', 'via', this.isolationAddress()]);
    }
  }

  /**
   * Remove everything this lab made, found by its name prefix (so it also cleans up after a
   * crash, from a fresh NetnsLab with the same name): storage-loss tmpfs mounts in any process,
   * processes still inside the lab's namespaces (SIGKILL, unless `killProcesses: false`: a
   * process left inside keeps the namespace and its links alive after `ip netns del`), the
   * namespaces (with them their veths, bridge and nft table), and any stray `P-*` link in the
   * default namespace. Safe to call twice. Tries every step; rejects at the end if one failed.
   */
  async down(opts: { killProcesses?: boolean } = {}): Promise<void> {
    const errors: string[] = [];
    const attempt = async (f: () => Promise<unknown>): Promise<void> => {
      try {
        await f();
      } catch (err) {
        errors.push((err as Error).message);
      }
    };
    await attempt(() => this.unmountAllHidden());
    const namespaces = await this.existingNamespaces().catch((err: Error) => {
      errors.push(err.message);
      return [] as string[];
    });
    if (opts.killProcesses ?? true) {
      for (const ns of namespaces) await attempt(() => this.killInside(ns));
    }
    // Host namespaces first, the bridge last (order does not matter to the kernel; it keeps the
    // lab recognisable if a step fails).
    const ordered = [...namespaces.filter((n) => n !== this.bridgeNs), ...namespaces.filter((n) => n === this.bridgeNs)];
    for (const ns of ordered) {
      await attempt(async () => {
        try {
          await runCommand(['ip', 'netns', 'del', ns]);
        } catch (err) {
          // Removed meanwhile (a concurrent down): fine.
          if (!(await this.existingNamespaces()).includes(ns)) return;
          throw err;
        }
      });
    }
    await attempt(() => this.deleteStrayLinks());
    if (errors.length > 0) throw new Error(`netns lab ${this.prefix} down: ${errors.join('; ')}`);
  }

  private async killInside(ns: string): Promise<void> {
    const { stdout } = await runCommand(['ip', 'netns', 'pids', ns]);
    for (const tok of stdout.split(/\s+/)) {
      const pid = Number(tok);
      if (!Number.isSafeInteger(pid) || pid <= 1 || pid === process.pid) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  private async deleteStrayLinks(): Promise<void> {
    const { stdout } = await runCommand(['ip', '-o', 'link', 'show']);
    const re = new RegExp(`^[0-9]+: (${this.prefix}-[a-z0-9]+)[@:]`);
    for (const line of stdout.split('\n')) {
      const m = re.exec(line);
      if (m?.[1]) await runCommand(['ip', 'link', 'del', m[1]]);
    }
  }

  /** State of the lab right now, for `vigil lab status` and debugging. */
  async info(): Promise<NetnsLabInfo> {
    const namespaces = await this.existingNamespaces();
    const isolated: string[] = [];
    let rules = '';
    if (namespaces.includes(this.bridgeNs)) {
      for (const host of this.hosts) {
        const { stdout } = await runCommand(['ip', '-n', this.bridgeNs, '-o', 'link', 'show', this.bridgePort(host)]);
        if (!/[<,]UP[,>]/.test(stdout)) isolated.push(host);
      }
      rules = (await this.nftIn(['list', 'table', 'bridge', NFT_TABLE])).stdout;
    }
    return { prefix: this.prefix, namespaces, isolated, rules };
  }

  // ---- network faults ----

  /** The host loses all network: its bridge-side veth goes down (packets vanish, sends succeed). */
  async isolate(host: string): Promise<void> {
    await runCommand(['ip', '-n', this.bridgeNs, 'link', 'set', this.bridgePort(host), 'down']);
  }

  /**
   * Bring a host isolated by `isolate` back (heal() does this for all hosts). Also forgets the
   * ARP entries left half-resolved while it was cut off (in its namespace and on br0): the kernel
   * would otherwise retry them only on its 1 s probe timer, so the first packets after a heal
   * could be late or lost.
   */
  async reconnect(host: string): Promise<void> {
    await runCommand(['ip', '-n', this.bridgeNs, 'link', 'set', this.bridgePort(host), 'up']);
    await this.flushNeighbours();
  }

  /** Flush the non-permanent neighbour (ARP) entries of every host namespace and of br0. */
  private async flushNeighbours(): Promise<void> {
    await Promise.all([
      runCommand(['ip', '-n', this.bridgeNs, 'neigh', 'flush', 'dev', 'br0']),
      ...this.hosts.map((h) => runCommand(['ip', '-n', this.nsName(h), 'neigh', 'flush', 'dev', 'eth0'])),
    ]);
  }

  /**
   * Hosts in different groups cannot exchange any frame (ARP included); every group still
   * reaches the isolation address. Every lab host must appear in exactly one group, and there
   * must be at least two groups. Replaces any earlier partition (atomically, one nft
   * transaction); leaves oneWay rules and isolated hosts as they are.
   */
  async partition(groups: string[][]): Promise<void> {
    if (!Array.isArray(groups) || groups.length < 2) throw new Error('partition: needs at least two groups');
    const seen = new Set<string>();
    for (const g of groups) {
      if (!Array.isArray(g) || g.length === 0) throw new Error('partition: empty group');
      for (const h of g) {
        this.checkHost(h);
        if (seen.has(h)) throw new Error(`partition: ${h} is in two groups`);
        seen.add(h);
      }
    }
    const left = this.hosts.filter((h) => !seen.has(h));
    if (left.length > 0) throw new Error(`partition: ${left.join(', ')} in no group (list every host once)`);
    const ports = groups.map((g) => `{ ${g.map((h) => `"${this.bridgePort(h)}"`).join(', ')} }`);
    const lines = [`flush chain bridge ${NFT_TABLE} partition`];
    groups.forEach((_, i) =>
      groups.forEach((__, j) => {
        if (i === j) return;
        lines.push(
          `add rule bridge ${NFT_TABLE} partition iifname ${ports[i]} oifname ${ports[j]} drop comment "partition ${i + 1}>${j + 1}"`,
        );
      }),
    );
    await this.nft(lines.join('\n'));
  }

  /**
   * Frames from `from` to `to` are dropped; the reverse direction passes. ARP passes both ways
   * (otherwise `to` could not resolve `from`'s address and the reverse direction would die too):
   * every other frame (IPv4, IPv6) from `from`'s port to `to`'s port is dropped. Adding the same
   * pair twice is a no-op.
   */
  async oneWay(from: string, to: string): Promise<void> {
    const a = this.bridgePort(from);
    const b = this.bridgePort(to);
    if (a === b) throw new Error('oneWay: from and to are the same host');
    const tag = `oneway ${from}>${to}`;
    const { stdout } = await this.nftIn(['list', 'chain', 'bridge', NFT_TABLE, 'oneway']);
    if (stdout.includes(`comment "${tag}"`)) return;
    await this.nft(
      `add rule bridge ${NFT_TABLE} oneway iifname "${a}" oifname "${b}" ether type != arp drop comment "${tag}"`,
    );
  }

  /** Undo every isolate, partition and oneWay: all bridge ports up, both nft chains empty. */
  async heal(): Promise<void> {
    await this.nft([`flush chain bridge ${NFT_TABLE} partition`, `flush chain bridge ${NFT_TABLE} oneway`].join('\n'));
    for (const host of this.hosts) {
      await runCommand(['ip', '-n', this.bridgeNs, 'link', 'set', this.bridgePort(host), 'up']);
    }
    await this.flushNeighbours();
  }

  private nft(script: string): Promise<RunResult> {
    return runCommand(['ip', 'netns', 'exec', this.bridgeNs, 'nft', '-f', '-'], { input: script + '\n' });
  }

  private nftIn(args: string[]): Promise<RunResult> {
    return runCommand(['ip', 'netns', 'exec', this.bridgeNs, 'nft', ...args]);
  }

  // ---- storage faults ----

  /** The tmpfs source name that marks this lab's storage-loss mounts in /proc/PID/mountinfo. */
  get mountTag(): string {
    return `vigil-${this.prefix}`;
  }

  /**
   * Hide `path` from process `pid` (and everything sharing its mount namespace) by mounting an
   * empty tmpfs over it there: reads give ENOENT, as if the datastore were lost. Refuses when the
   * process is not in the host's network namespace, shares this process's mount namespace, or
   * sits under a shared mount (the mount would propagate to other namespaces): start it with
   * `wrap(host, argv, { mountNs: true })`. Hiding an already hidden path is a no-op.
   */
  async storageLoss(host: string, pid: number, path: string): Promise<void> {
    const p = await this.checkStorageTarget(host, pid, path);
    const mounts = parseMountinfo(await readFile(`/proc/${pid}/mountinfo`, 'utf8'));
    if (mounts.some((m) => m.mountPoint === p && m.source === this.mountTag)) return;
    const parent = mounts
      .filter((m) => p === m.mountPoint || p.startsWith(m.mountPoint === '/' ? '/' : m.mountPoint + '/'))
      .sort((x, y) => y.mountPoint.length - x.mountPoint.length || y.id - x.id)[0];
    if (parent?.optional.some((o) => o.startsWith('shared:'))) {
      throw new Error(
        `storageLoss: ${parent.mountPoint} is a shared mount in process ${pid}: a mount there would reach other namespaces; start the process with unshare -m --propagation private`,
      );
    }
    await runCommand([
      'nsenter', '-t', String(pid), '-m', '--',
      'mount', '-t', 'tmpfs', '-o', 'size=64k,mode=0755', this.mountTag, p,
    ]);
  }

  /**
   * Undo storageLoss: unmount this lab's tmpfs from `path` in the mount namespace of `pid`.
   * A no-op when nothing is hidden there or the process is gone (its mount namespace went with it).
   */
  async storageHeal(host: string, pid: number, path: string): Promise<void> {
    this.checkHost(host);
    validatePid(pid);
    const p = validatePath(path);
    let text: string;
    try {
      text = await readFile(`/proc/${pid}/mountinfo`, 'utf8');
    } catch {
      return; // process gone
    }
    const ours = parseMountinfo(text).filter((m) => m.mountPoint === p && m.source === this.mountTag);
    for (let i = 0; i < ours.length; i++) {
      await runCommand(['nsenter', '-t', String(pid), '-m', '--', 'umount', p]);
    }
  }

  private async checkStorageTarget(host: string, pid: number, path: string): Promise<string> {
    const ns = this.nsName(host);
    validatePid(pid);
    const p = validatePath(path);
    const procNet = await nsInode(`/proc/${pid}/ns/net`);
    if (procNet === null) throw new Error(`storageLoss: no process ${pid}`);
    const hostNet = await nsInode(`/run/netns/${ns}`);
    if (hostNet === null) throw new Error(`storageLoss: namespace ${ns} does not exist (lab not up?)`);
    if (procNet !== hostNet) throw new Error(`storageLoss: process ${pid} is not in ${host}'s namespace ${ns}`);
    const [own, theirs] = await Promise.all([nsInode('/proc/self/ns/mnt'), nsInode(`/proc/${pid}/ns/mnt`)]);
    if (own !== null && own === theirs) {
      throw new Error(
        `storageLoss: process ${pid} shares this process's mount namespace: hiding ${p} would hide it from everyone`,
      );
    }
    return p;
  }

  /** down(): unmount every storage-loss tmpfs of this lab in every process's mount namespace. */
  private async unmountAllHidden(): Promise<void> {
    const done = new Set<string>();
    for (const ent of await readdir('/proc')) {
      if (!/^[0-9]+$/.test(ent)) continue;
      let mnt: string;
      let text: string;
      try {
        mnt = await readlink(`/proc/${ent}/ns/mnt`);
        if (done.has(mnt)) continue;
        text = await readFile(`/proc/${ent}/mountinfo`, 'utf8');
      } catch {
        continue; // gone, or a kernel thread
      }
      done.add(mnt);
      // Latest mounts first, so stacked mounts come off in order.
      const ours = parseMountinfo(text)
        .filter((m) => m.source === this.mountTag && m.fsType === 'tmpfs')
        .sort((a, b) => b.id - a.id);
      for (const m of ours) {
        try {
          await runCommand(['nsenter', '-t', ent, '-m', '--', 'umount', m.mountPoint]);
        } catch (err) {
          if (existsProc(ent)) throw err; // the process exiting meanwhile is fine
        }
      }
    }
  }

  private checkHost(host: string): number {
    const n = hostNumber(host);
    if (!this.hosts.includes(host)) throw new Error(`${host} is not a host of netns lab ${this.prefix}`);
    return n;
  }
}

function existsProc(pid: string): boolean {
  try {
    process.kill(Number(pid), 0);
    return true;
  } catch {
    return false;
  }
}
