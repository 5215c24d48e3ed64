/**
 * A lab is a directory: cluster.json, secret, datastores/<ds>/, hosts/<host>/ (state, socket,
 * agent.log, agent.pid) and lab.json (what was started, so `down` can remove all of it).
 */
import { join } from 'node:path';

export const DEFAULT_LAB_DIR = '/tmp/vigil-lab';

export interface LabPaths {
  dir: string;
  config: string;
  secret: string;
  state: string;
  datastore(name: string): string;
  hostDir(host: string): string;
  socket(host: string): string;
  log(host: string): string;
  pidFile(host: string): string;
}

export function labPaths(dir: string): LabPaths {
  return {
    dir,
    config: join(dir, 'cluster.json'),
    secret: join(dir, 'secret'),
    state: join(dir, 'lab.json'),
    datastore: (name) => join(dir, 'datastores', name),
    hostDir: (host) => join(dir, 'hosts', host),
    socket: (host) => join(dir, 'hosts', host, 'vigil.sock'),
    log: (host) => join(dir, 'hosts', host, 'agent.log'),
    pidFile: (host) => join(dir, 'hosts', host, 'agent.pid'),
  };
}

/** host-1 -> 127.0.0.11, host-2 -> 127.0.0.12, ... (all on port 8182). */
export function labAddress(index: number): string {
  return `127.0.0.${10 + index}`;
}
