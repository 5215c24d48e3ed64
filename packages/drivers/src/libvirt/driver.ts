/**
 * The libvirt driver: a VM is a libvirt domain whose XML lives on a datastore (spec.ts). It is the
 * process driver's client of the host's VM daemon, with the daemon's `libvirt` backend: the same
 * daemon holds the host VM lease and the VM leases, creates the domains through virsh (with
 * --autodestroy, so they die with it), watches them through `virsh event`, and destroys every
 * domain of a datastore at once when it self-fences (../process/vmd.ts, backend.ts).
 */
import { ProcessDriver, type ProcessDriverOptions } from '../process/driver.js';
import type { VmSpec } from '../types.js';
import { libvirtSpecOf, readLibvirtVm } from './spec.js';

export interface LibvirtDriverOptions extends Omit<ProcessDriverOptions, 'backend'> {
  /** libvirtd to use, on this machine: qemu:///system (default) or qemu:///session. */
  uri: string;
}

export class LibvirtDriver extends ProcessDriver {
  override readonly type: string = 'libvirt';

  constructor(opts: LibvirtDriverOptions) {
    const { uri, ...rest } = opts;
    super({ ...rest, backend: { type: 'libvirt', uri } });
  }

  override async loadSpec(vmId: string, path: string): Promise<VmSpec> {
    return libvirtSpecOf(vmId, path, await readLibvirtVm(path));
  }
}
