/**
 * `vigil lab`: a whole cluster on one machine (SPEC §4.4). Agents run as real background
 * processes on 127.0.0.x, port 8182, with datastores as local directories and `fast` timings.
 * Also the harness of the end-to-end tests.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { controlRequest, type AgentStatus } from '@vigil/agent';
import { validateConfig } from '@vigil/config';
import { labAddress, labPaths, type LabPaths } from './layout.js';

export const VIGIL_BIN = fileURLToPath(new URL('../../bin/vigil.cjs', import.meta.url));

/** argv[0] of a lab VM process: `pgrep -f` on it counts the copies of a VM. */
export function labVmTag(dir: string, name: string): string {
  return `vigil-lab-vm:${dir}:${name}`;
}

export interface LabOptions {
  dir: string;
  hosts: number;
  /** Number of datastores ds1..dsK (default 2). */
  datastores?: number;
  /** Per-host datastore subsets (host id -> names); default: every host mounts all. */
  hostDatastores?: Record<string, string[]>;
  profile?: 'fast' | 'default';
  /** Timing overrides on top of the profile. */
  timing?: Record<string, number>;
  port?: number;
  /** Capacity each lab host offers to VMs (default 16 GiB, 256 vCPUs). */
  capacity?: { memoryMB: number; cpus: number };
}

export interface LabState {
  dir: string;
  hosts: string[];
  /** Host id -> pid of its agent while started through the lab. */
  pids: Record<string, number>;
}

export type HostReport = { host: string; up: true; status: AgentStatus } | { host: string; up: false; pid: number | null; error: string };

export class Lab {
  readonly paths: LabPaths;

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
    const hosts: Record<string, { address: string; datastores?: string[]; capacity: { memoryMB: number; cpus: number } }> = {};
    ids.forEach((id, i) => {
      hosts[id] = {
        address: labAddress(i + 1),
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
      isolationAddresses: ['127.0.0.1'],
      // On loopback every 127.0.0.x answers ping even when its "host" lost power.
      pingHosts: false,
      timing: { profile: opts.profile ?? 'fast', ...(opts.timing ?? {}) },
      log: { level: 'info', format: 'json' },
    };
    validateConfig(config, 'lab config'); // a lab must never write a config the agent refuses
    await writeFile(this.paths.config, JSON.stringify(config, null, 2) + '\n');
    for (const id of ids) await mkdir(this.paths.hostDir(id), { recursive: true });
    await this.writeState({ dir: this.dir, hosts: ids, pids: {} });
    return ids;
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
    if (!s.hosts.includes(host)) throw new Error(`unknown lab host ${host} (hosts: ${s.hosts.join(', ')})`);
    const running = s.pids[host];
    if (running && this.alive(running)) return running;
    const out = openSync(this.paths.log(host), 'a');
    const argv = [process.execPath, VIGIL_BIN, 'agent', '--config', this.paths.config, '--host', host, '--state-dir', this.paths.hostDir(host), '--socket', this.paths.socket(host)];
    const [cmd, ...args] = [...(opts.prefix ?? []), ...argv];
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
    if (!s.hosts.includes(host)) throw new Error(`unknown lab host ${host} (hosts: ${s.hosts.join(', ')})`);
    const pid = s.pids[host];
    const agent = !!pid && this.alive(pid);
    if (agent) this.signalGroup(pid, 'SIGKILL');
    const others = await this.killMarked([host]);
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
    if (s) {
      const pids = Object.entries(s.pids).filter(([, pid]) => this.alive(pid));
      for (const [, pid] of pids) this.signalGroup(pid, 'SIGTERM');
      // VMs are not stopped by an agent's SIGTERM (they outlive it, under their VM daemon): power them off too.
      for (const h of s.hosts) for (const g of this.markedProcesses(h)) this.signalGroup(g, 'SIGKILL');
      const deadline = Date.now() + (opts.graceMs ?? 5000);
      while (pids.some(([, pid]) => this.alive(pid)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      for (const [host, pid] of pids) {
        this.signalGroup(pid, 'SIGKILL');
        stopped.push(host);
      }
      // Agents are gone now: a VM daemon one of them started meanwhile is the last thing to kill.
      await this.killMarked(s.hosts);
      s.pids = {};
      await this.writeState(s).catch(() => {});
    }
    if (opts.purge) await rm(this.dir, { recursive: true, force: true });
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
  async createVms(count: number, opts: { via?: string; concurrency?: number; memoryMB?: number; priorities?: string[] } = {}): Promise<string[]> {
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
    const names = Array.from({ length: count }, (_, i) => `vm-${i + 1}`);
    for (const [i, name] of names.entries()) {
      await controlRequest(
        socket,
        {
          cmd: 'vm',
          op: 'create',
          datastore: dsNames[i % dsNames.length],
          name,
          command: 'bash',
          args: ['-c', `exec -a ${labVmTag(this.dir, name)} sleep 2147483647`],
          memoryMB: opts.memoryMB ?? 64,
          cpus: 1,
          priority: prios[i % prios.length],
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
            await controlRequest(socket, { cmd: 'vm', op: 'start', vm: name }, 120_000);
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
