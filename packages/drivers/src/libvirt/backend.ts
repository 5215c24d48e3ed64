/**
 * The libvirt side of the VM daemon (vmd.ts, backend `libvirt`): how it creates, stops, finds and
 * watches domains through virsh. The VM daemon keeps the VMs, their leases and their stories; this
 * holds the connections:
 *
 *   - a small pool of VirshShell connections that create domains with `--autodestroy`, so that a
 *     domain lives only as long as the connection that created it, i.e. as long as the VM daemon
 *     (the pdeathsig of process VMs, done by libvirtd);
 *   - one `virsh event --all --loop` (VirshEvents) for stops, resets and watchdog firings within
 *     a moment, and a poll of the running domains every LIBVIRT_POLL_MS as a safety net;
 *   - one-shot virsh commands for everything else (destroy, shutdown, list, dumpxml, undefine).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { parseDomainXml } from './domain-xml.js';
import { virsh, VirshError, VirshEvents, VirshShell, virshErrors, type DomainEvent } from './virsh.js';

/** Connections that create domains (each create takes one for about half a second). */
export const SHELL_POOL_SIZE = 4;
/** Period of the poll of running domains, the safety net under the events. */
export const LIBVIRT_POLL_MS = 5000;
/** Timeout of one-shot virsh commands. */
export const VIRSH_TIMEOUT_MS = 30_000;

/** The domain name of a VM on this host: `vigil-<host>-<vm name>-<8 hex>` (the hex tells VM ids, clusters and agents apart). */
export function domainName(host: string, cluster: string, daemonId: string, vm: string, vmName: string): string {
  const h = createHash('sha256').update(`${cluster}\0${daemonId}\0${vm}`).digest('hex').slice(0, 8);
  return `${domainPrefix(host)}${vmName}-${h}`;
}

/** Every domain of this host's VM daemons starts with this. */
export function domainPrefix(host: string): string {
  return `vigil-${host}-`;
}

export interface LibvirtHooks {
  log(level: 'info' | 'warn' | 'error', event: string, message: string, fields?: Record<string, unknown>): void;
  onEvent(ev: DomainEvent): void;
  /** The event watcher (re)started, or a poll is due: compare the running domains with what runs. */
  onPoll(): void;
  /** A shell's connection is gone: the domains it created are destroyed or no longer tied to this daemon. */
  onShellLost(shellId: number, why: string): void;
}

export class LibvirtBackend {
  private readonly shells = new Set<VirshShell>();
  private readonly events: VirshEvents;
  private pollTimer: NodeJS.Timeout | null = null;
  private readonly xmlDir: string;

  constructor(
    readonly uri: string,
    stateDir: string,
    private readonly setpriv: string | null,
    private readonly h: LibvirtHooks,
  ) {
    this.xmlDir = join(stateDir, 'libvirt');
    mkdirSync(this.xmlDir, { recursive: true, mode: 0o700 });
    this.events = new VirshEvents(uri, setpriv, {
      onEvent: (ev) => h.onEvent(ev),
      onStart: () => h.onPoll(),
      onProblem: (why) => h.log('warn', 'vmd.libvirt-events', why),
    });
  }

  start(): void {
    this.events.start();
    this.pollTimer = setInterval(() => this.h.onPoll(), LIBVIRT_POLL_MS);
  }

  /**
   * Create (start) a transient domain from `xml` on a shell connection, with --autodestroy.
   * Resolves with the id of the shell whose connection it lives by; rejects with VirshError.
   * A rejection whose outcome is uncertain (the connection changed meanwhile) leaves it to the
   * caller to make sure the domain does not run (destroy()).
   */
  async create(domain: string, xml: string): Promise<number> {
    const file = `${domain}.xml`;
    writeFileSync(join(this.xmlDir, file), xml, { mode: 0o600 });
    try {
      const shell = this.shell();
      // The file name is ours (A-Z a-z 0-9 . _ - only): nothing to quote in virsh's shell syntax.
      const out = await shell.run(`create ${file} --autodestroy`);
      const err = virshErrors(out);
      if (err) throw new VirshError(err);
      return shell.id;
    } finally {
      rmSync(join(this.xmlDir, file), { force: true });
    }
  }

  /** A live shell with the shortest queue (a new one while the pool is not full). */
  private shell(): VirshShell {
    let best: VirshShell | null = null;
    for (const s of this.shells) if (s.alive && (!best || s.busy < best.busy)) best = s;
    if (best && (best.busy === 0 || this.shells.size >= SHELL_POOL_SIZE)) return best;
    const s = new VirshShell(this.uri, this.xmlDir, this.setpriv, (shell, why) => {
      this.shells.delete(shell);
      if (why !== 'closed') this.h.onShellLost(shell.id, why);
    });
    this.shells.add(s);
    return s;
  }

  /** Hard stop. 'absent': there was no such running domain. Rejects if libvirtd refuses or hangs. */
  async destroy(domain: string, timeoutMs = VIRSH_TIMEOUT_MS): Promise<'destroyed' | 'absent'> {
    try {
      await virsh(this.uri, ['destroy', domain], timeoutMs);
      return 'destroyed';
    } catch (err) {
      if (err instanceof VirshError && /failed to get domain|domain is not running|Domain not found/i.test(err.message)) return 'absent';
      throw err;
    }
  }

  /** Ask the guest to shut down (ACPI). */
  async shutdown(domain: string, timeoutMs = VIRSH_TIMEOUT_MS): Promise<void> {
    await virsh(this.uri, ['shutdown', domain], timeoutMs);
  }

  /** Names of the running domains. */
  async running(timeoutMs = VIRSH_TIMEOUT_MS): Promise<Set<string>> {
    const out = await virsh(this.uri, ['list', '--name'], timeoutMs);
    return new Set(out.split('\n').map((l) => l.trim()).filter(Boolean));
  }

  /** Names of all domains, running or only defined. */
  async all(timeoutMs = VIRSH_TIMEOUT_MS): Promise<string[]> {
    const out = await virsh(this.uri, ['list', '--all', '--name'], timeoutMs);
    return out.split('\n').map((l) => l.trim()).filter(Boolean);
  }

  /** Vigil's metadata of a domain (null: none, or the domain is gone). */
  async metadata(domain: string, timeoutMs = VIRSH_TIMEOUT_MS): Promise<Record<string, string> | null> {
    try {
      return parseDomainXml(await virsh(this.uri, ['dumpxml', domain], timeoutMs)).vigil;
    } catch (err) {
      if (err instanceof VirshError && /failed to get domain|Domain not found/i.test(err.message)) return null;
      throw err;
    }
  }

  /** Remove a persistent definition (a transient domain vanishes when destroyed). */
  async undefine(domain: string, timeoutMs = VIRSH_TIMEOUT_MS): Promise<void> {
    try {
      await virsh(this.uri, ['undefine', domain], timeoutMs);
    } catch (err) {
      if (err instanceof VirshError && /failed to get domain|transient domain|Domain not found/i.test(err.message)) return;
      throw err;
    }
  }

  /** Stop watching and close the shells (their autodestroy domains die: call only when none runs). */
  close(): void {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.events.stop();
    for (const s of [...this.shells]) s.close();
    this.shells.clear();
  }
}
