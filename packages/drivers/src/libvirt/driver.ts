/**
 * The libvirt driver: a VM is a libvirt domain whose XML lives on a datastore (spec.ts). It is the
 * process driver's client of the host's VM daemon, with the daemon's `libvirt` backend: the same
 * daemon holds the host VM lease and the VM leases, creates the domains through virsh (with
 * --autodestroy, so they die with it), watches them through `virsh event`, and destroys every
 * domain of a datastore at once when it self-fences (../process/vmd.ts, backend.ts).
 */
import { ProcessDriver, type ProcessDriverOptions } from '../process/driver.js';
import { noCounters, processIncarnation } from '../process/proc-stats.js';
import type { VmCounters, VmSpec } from '../types.js';
import { countersFromDomstats, DOMSTATS_ARGS, parseDomstats } from './domstats.js';
import { libvirtSpecOf, readLibvirtVm } from './spec.js';
import { virsh } from './virsh.js';

/** Timeout of the domstats call of one sample. */
export const DOMSTATS_TIMEOUT_MS = 20_000;

export interface LibvirtDriverOptions extends Omit<ProcessDriverOptions, 'backend'> {
  /** libvirtd to use, on this machine: qemu:///system (default) or qemu:///session. */
  uri: string;
}

export class LibvirtDriver extends ProcessDriver {
  override readonly type: string = 'libvirt';

  private readonly uri: string;

  constructor(opts: LibvirtDriverOptions) {
    const { uri, ...rest } = opts;
    super({ ...rest, backend: { type: 'libvirt', uri } });
    this.uri = uri;
  }

  /**
   * One `virsh domstats` for every running domain (domstats.ts), matched to this host's VMs by
   * domain name; none when no VM runs here. Rejects (VirshError) if libvirtd does not answer or
   * the output cannot be parsed.
   */
  override async stats(): Promise<VmCounters[]> {
    const vms = this.list();
    if (vms.length === 0) return [];
    const byDomain = parseDomstats(await virsh(this.uri, DOMSTATS_ARGS, DOMSTATS_TIMEOUT_MS));
    return vms.map((v) => {
      if (!v.domain) return noCounters(v.id, 'its domain name is not known yet');
      // QEMU's pid and start time name this power-on (the domain name is the same after a restart here).
      const incarnation = (v.pid ? processIncarnation(v.pid) : null) ?? `${v.domain}:${v.pid ?? 0}`;
      const f = byDomain.get(v.domain);
      return f ? countersFromDomstats(v.id, incarnation, f) : noCounters(v.id, `libvirtd reports no running domain ${v.domain}`, incarnation);
    });
  }

  override async loadSpec(vmId: string, path: string): Promise<VmSpec> {
    return libvirtSpecOf(vmId, path, await readLibvirtVm(path));
  }
}
