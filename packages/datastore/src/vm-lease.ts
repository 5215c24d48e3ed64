/**
 * Per-VM leases (SPEC §3.6), the sanlock way:
 * - `host-N-vm` (per datastore) is the host VM lease of host N's VM daemon: one LeaseFile
 *   renewed every storage heartbeat interval, whatever the number of VMs.
 * - `vms/<vm>.lease` beside a lock `vms/<vm>.lock` and claims is the VM's lease: acquired (with
 *   the same claim rules as every LeaseFile) before the VM is powered on, released when it
 *   stops, and never renewed: its record names the holder's host VM lease generation
 *   (`hostLease`), and the VM lease lives exactly as long as that host lease is renewed with
 *   that generation. Storage writes per host do not grow with the number of VMs it runs.
 * A host powers a VM on only after acquiring its lease under a valid host VM lease.
 */
import { LeaseFile } from './lease.js';
import { clusterDir, vmFileName, vmLeaseDir } from './layout.js';

export function vmLease(opts: { datastorePath: string; cluster: string; vm: string; host: string; timeoutMs: number; hostLease?: number; onCompromised?: (err: Error) => void }): LeaseFile {
  const name = vmFileName(opts.vm);
  return new LeaseFile({
    dir: vmLeaseDir(opts.datastorePath, opts.cluster),
    name,
    recordName: `${name}.lease`,
    host: opts.host,
    timeoutMs: opts.timeoutMs,
    ...(opts.hostLease !== undefined ? { hostLease: opts.hostLease } : {}),
    ...(opts.onCompromised ? { onCompromised: opts.onCompromised } : {}),
  });
}

/** Name of host N's VM lease on a datastore. */
export function hostVmLeaseName(host: string): string {
  return `${host}-vm`;
}

/** The host VM lease `host-N-vm` of host N's VM daemon on one datastore. */
export function hostVmLease(opts: { datastorePath: string; cluster: string; host: string; timeoutMs: number; onCompromised?: (err: Error) => void }): LeaseFile {
  return new LeaseFile({
    dir: clusterDir(opts.datastorePath, opts.cluster),
    name: hostVmLeaseName(opts.host),
    host: opts.host,
    timeoutMs: opts.timeoutMs,
    ...(opts.onCompromised ? { onCompromised: opts.onCompromised } : {}),
  });
}
