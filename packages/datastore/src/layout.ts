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
