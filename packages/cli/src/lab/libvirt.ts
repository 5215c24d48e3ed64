/**
 * The libvirt side of a lab (`vigil lab up --driver libvirt`): its hosts share this machine's one
 * libvirtd, each host's VM daemon naming its domains `vigil-<host>-<vm>-<8 hex>` (the hex from the
 * cluster, the daemon's state directory and the VM id: packages/drivers/src/libvirt/backend.ts),
 * so hosts, and labs in other directories, never collide.
 *
 * A lab knows its domains by name: every (lab host, VM file on a lab datastore) pair gives the one
 * name that host's VM daemon would use. From that it finds the QEMU processes of a lab host in
 * /proc (a power cut kills them with the host's other processes, as a real one would; libvirtd
 * then drops the dead transient domains) and, at `lab down`, every domain of the lab.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkLibvirt, domainName, domainPrefix, virsh, vmdId } from '@vigil/drivers';

export const LAB_LIBVIRT_URI = 'qemu:///system';
/** Memory of a lab's diskless domains, MiB. */
export const LAB_DOMAIN_MEMORY_MB = 32;

export interface LabDomainRef {
  host: string;
  /** VM id, `ds1:vms/vm-1.json`. */
  vm: string;
  /** VM name, `vm-1`. */
  name: string;
  domain: string;
}

export interface LabQemu extends LabDomainRef {
  pid: number;
}

/** Why `lab up --driver libvirt` cannot run here, or null. */
export function labLibvirtProblem(uri: string): string | null {
  const p = checkLibvirt(uri);
  if (!p) return null;
  return `--driver libvirt: ${p}. Prepare this machine first: as root, scripts/libvirt-setup.sh (installs and starts libvirtd and QEMU on Debian without systemd), or see "Preparing a host" in docs/libvirt.md`;
}

/** `guest=NAME,debug-threads=on` (QEMU doubles commas inside a value) -> NAME. */
function qemuGuestName(v: string): string {
  const s = v.startsWith('guest=') ? v.slice(6) : v;
  let out = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] === ',') {
      if (s[i + 1] !== ',') break;
      i++;
    }
    out += s[i];
  }
  return out;
}

/** Every live QEMU process with its domain name (from `-name guest=...`), from /proc. */
export function qemuProcesses(): { pid: number; domain: string }[] {
  const out: { pid: number; domain: string }[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      if (!argv[0]?.includes('qemu')) continue;
      const i = argv.indexOf('-name');
      if (i < 0 || argv[i + 1] === undefined) continue;
      if (/^\d+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${e}/stat`, 'utf8'))) continue;
      out.push({ pid: Number(e), domain: qemuGuestName(argv[i + 1]!) });
    } catch {
      /* gone, or not ours to read */
    }
  }
  return out;
}

export class LabLibvirt {
  constructor(
    readonly uri: string,
    private readonly cluster: string,
    /** Lab host -> its agent's state directory. */
    private readonly stateDirs: Record<string, string>,
    /** Datastore name -> path. */
    private readonly datastores: Record<string, string>,
  ) {}

  /** The VMs on the lab's datastores (`<ds>/vms/*.json` with a `name`), as VM id -> name. */
  vms(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [ds, path] of Object.entries(this.datastores)) {
      let files: string[] = [];
      try {
        files = readdirSync(join(path, 'vms')).filter((f) => f.endsWith('.json'));
      } catch {
        continue;
      }
      for (const f of files.sort()) {
        try {
          const j = JSON.parse(readFileSync(join(path, 'vms', f), 'utf8')) as { name?: unknown };
          if (typeof j.name === 'string') out.set(`${ds}:vms/${f}`, j.name);
        } catch {
          /* not a VM file (or half written): it has no domain yet */
        }
      }
    }
    return out;
  }

  /** Every domain name the lab's hosts may give its VMs -> which host and VM. */
  domainNames(hosts = Object.keys(this.stateDirs)): Map<string, LabDomainRef> {
    const out = new Map<string, LabDomainRef>();
    const vms = this.vms();
    for (const host of hosts) {
      const dir = this.stateDirs[host];
      if (!dir) continue;
      const daemon = vmdId(dir);
      for (const [vm, name] of vms) {
        const domain = domainName(host, this.cluster, daemon, vm, name);
        out.set(domain, { host, vm, name, domain });
      }
    }
    return out;
  }

  /** The live QEMU processes of the lab's domains (of `hosts` only, if given). */
  qemus(hosts?: string[]): LabQemu[] {
    const names = this.domainNames(hosts);
    return qemuProcesses()
      .filter((q) => names.has(q.domain))
      .map((q) => ({ ...names.get(q.domain)!, pid: q.pid }))
      .sort((a, b) => (a.name === b.name ? a.pid - b.pid : a.name < b.name ? -1 : 1));
  }

  /** SIGKILL the QEMU processes of these hosts' domains; returns how many were found. */
  killQemus(hosts: string[]): number {
    const found = this.qemus(hosts);
    for (const q of found) {
      try {
        process.kill(q.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    return found.length;
  }

  /**
   * The lab's domains libvirtd still lists (running or defined): by name, plus any `vigil-<host>-*`
   * domain whose Vigil metadata names this lab's cluster, host and VM daemon (a VM file deleted
   * meanwhile). Rejects if libvirtd does not answer.
   */
  async listed(timeoutMs = 10_000): Promise<string[]> {
    const names = this.domainNames();
    const all = (await virsh(this.uri, ['list', '--all', '--name'], timeoutMs))
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
    const out: string[] = [];
    for (const d of all) {
      if (names.has(d)) {
        out.push(d);
        continue;
      }
      const host = Object.keys(this.stateDirs).find((h) => d.startsWith(domainPrefix(h)));
      if (!host) continue;
      const xml = await virsh(this.uri, ['dumpxml', d], timeoutMs).catch(() => '');
      const daemon = vmdId(this.stateDirs[host]!);
      if (xml.includes(`daemon="${daemon}"`) && xml.includes(`host="${host}"`) && xml.includes(`cluster="${this.cluster}"`)) out.push(d);
    }
    return out;
  }

  /**
   * Make sure no domain of the lab is left: kill their QEMU processes, destroy (and undefine)
   * what libvirtd still lists, until nothing is left or `timeoutMs`. Returns what was still
   * there at the end (empty: clean) and a note if libvirtd could not be asked.
   */
  async destroyAll(timeoutMs = 15_000): Promise<{ left: string[]; note: string | null }> {
    const deadline = Date.now() + timeoutMs;
    let note: string | null = null;
    for (;;) {
      const qemus = this.qemus();
      for (const q of qemus) {
        try {
          process.kill(q.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      let listed: string[] = [];
      try {
        listed = await this.listed();
        note = null;
      } catch (err) {
        note = `libvirtd on ${this.uri} did not answer (${(err as Error).message}): only the QEMU processes were checked`;
      }
      for (const d of listed) {
        await virsh(this.uri, ['destroy', d], 10_000).catch(() => {});
        await virsh(this.uri, ['undefine', d], 10_000).catch(() => {});
      }
      const left = [...new Set([...this.qemus().map((q) => `${q.domain} (QEMU pid ${q.pid})`), ...(note ? [] : await this.listed().catch(() => []))])];
      if (left.length === 0 || Date.now() > deadline) return { left, note };
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
