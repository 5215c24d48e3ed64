/** Where Vigil keeps its files on a datastore: `<datastore>/.vigil-ha/<cluster>/` (SPEC §3.3). */
import { join } from 'node:path';

export const VIGIL_DIR = '.vigil-ha';

export function clusterDir(datastorePath: string, cluster: string): string {
  return join(datastorePath, VIGIL_DIR, cluster);
}

/** Identity of the datastore, written once: lets a host tell its datastore from whatever is mounted over it. */
export function datastoreIdFile(datastorePath: string, cluster: string): string {
  return join(clusterDir(datastorePath, cluster), 'datastore-id');
}

/** Each host's private probe file, rewritten by its accessibility probe. */
export function probeFile(datastorePath: string, cluster: string, host: string): string {
  return join(clusterDir(datastorePath, cluster), 'probe', host);
}

/** `poweredoff/`: one file per VM an isolated host powered off (SPEC §3.4). */
export function poweredoffDir(datastorePath: string, cluster: string): string {
  return join(clusterDir(datastorePath, cluster), 'poweredoff');
}

/** `vms/`: per-VM leases. */
export function vmLeaseDir(datastorePath: string, cluster: string): string {
  return join(clusterDir(datastorePath, cluster), 'vms');
}

/** A VM id (`ds:path/to/vm.json`) as one file name: percent-encoded, so `cat` still tells which VM. */
export function vmFileName(vmId: string): string {
  return encodeURIComponent(vmId);
}

export function vmIdFromFileName(name: string): string | null {
  try {
    return decodeURIComponent(name);
  } catch {
    return null;
  }
}
