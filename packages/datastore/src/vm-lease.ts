/**
 * Per-VM leases (SPEC §3.6): `vms/<vm>.lease` beside a lock `vms/<vm>.lock` and claims, with the
 * same rules as every lease (LeaseFile): acquired before a VM is powered on, renewed while it
 * runs, judged dead by observers only after no change for the lease timeout, released when it
 * stops. A host powers a VM on only after acquiring its lease.
 */
import { LeaseFile } from './lease.js';
import { vmFileName, vmLeaseDir } from './layout.js';

export function vmLease(opts: { datastorePath: string; cluster: string; vm: string; host: string; timeoutMs: number; onCompromised?: (err: Error) => void }): LeaseFile {
  const name = vmFileName(opts.vm);
  return new LeaseFile({
    dir: vmLeaseDir(opts.datastorePath, opts.cluster),
    name,
    recordName: `${name}.lease`,
    host: opts.host,
    timeoutMs: opts.timeoutMs,
    ...(opts.onCompromised ? { onCompromised: opts.onCompromised } : {}),
  });
}
