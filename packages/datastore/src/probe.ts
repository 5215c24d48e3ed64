/**
 * Which datastores this host can read and write right now (the count sent in election messages).
 *
 * A datastore is accessible when, within the storage call timeout, the host can read its
 * `datastore-id` file and see the identity it saw first, and write and read back its own probe
 * file. The identity check matters: when storage is lost, something else may be mounted at the
 * same path (an empty directory, a tmpfs); writing there must not count as access.
 */
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { randomUUID } from 'node:crypto';
import { clusterDir, datastoreIdFile, probeFile } from './layout.js';
import { describeError, withTimeout } from './timeout.js';
import { writeFileAtomic } from './atomic.js';
import { unlink } from 'node:fs/promises';

/** Probes that must see an empty datastore-id before it is treated as an aborted initialization. */
const EMPTY_ID_PROBES = 3;

export interface ProbeResult {
  name: string;
  accessible: boolean;
  /** Why not, when not accessible (or a note such as "initialized"). */
  detail?: string;
}

export interface DatastoreProberOptions {
  cluster: string;
  host: string;
  /** name -> path, only the datastores this host mounts. */
  datastores: Record<string, string>;
  timeoutMs: number;
}

export class DatastoreProber {
  /** Identity first seen on each datastore during this agent's life. */
  private readonly identities = new Map<string, string>();
  private probeSeq = 0;
  private readonly emptyIdSeen = new Map<string, number>();

  constructor(private readonly opts: DatastoreProberOptions) {}

  async probeAll(): Promise<ProbeResult[]> {
    return Promise.all(Object.entries(this.opts.datastores).map(([name, path]) => this.probe(name, path)));
  }

  private async probe(name: string, path: string): Promise<ProbeResult> {
    const { cluster, host, timeoutMs } = this.opts;
    try {
      return await withTimeout(`probe of ${name}`, timeoutMs, async () => {
        const st = await stat(path);
        if (!st.isDirectory()) return { name, accessible: false, detail: `${path} is not a directory` };
        const idFile = datastoreIdFile(path, cluster);
        let id: string | null = null;
        try {
          id = (await readFile(idFile, 'utf8')).trim();
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
        const known = this.identities.get(name);
        let detail: string | undefined;
        if (id === null || id === '') {
          if (known) return { name, accessible: false, detail: `${idFile} vanished (storage lost or replaced)` };
          const fresh = `${name} ${randomUUID()}`;
          await mkdir(clusterDir(path, cluster), { recursive: true });
          try {
            // O_EXCL: if another host initializes at the same moment, exactly one file wins.
            await writeFile(idFile, fresh + '\n', { flag: 'wx' });
            detail = 'initialized';
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          }
          id = (await readFile(idFile, 'utf8')).trim();
          if (id === '') {
            // A host that crashed between creating and writing it leaves it empty forever:
            // after a few probes (local count, no clock involved) remove it and start again.
            const seen = (this.emptyIdSeen.get(name) ?? 0) + 1;
            this.emptyIdSeen.set(name, seen);
            if (seen >= EMPTY_ID_PROBES) {
              await unlink(idFile).catch(() => {});
              this.emptyIdSeen.delete(name);
            }
            return { name, accessible: false, detail: `${idFile} is being initialized by another host` };
          }
          this.emptyIdSeen.delete(name);
        }
        if (known && known !== id) return { name, accessible: false, detail: `identity changed (${known} -> ${id}): not the datastore this host knew` };
        if (!known) this.identities.set(name, id);
        const pf = probeFile(path, cluster, host);
        await mkdir(dirname(pf), { recursive: true });
        const token = `${++this.probeSeq}`;
        // A new file each time (temp + rename): a full datastore fails this, as it fails real writes.
        await writeFileAtomic(pf, token + '\n', timeoutMs);
        const back = (await readFile(pf, 'utf8')).trim();
        if (back !== token) return { name, accessible: false, detail: `probe file read back "${back}", wrote "${token}"` };
        return detail ? { name, accessible: true, detail } : { name, accessible: true };
      }, path);
    } catch (err) {
      return { name, accessible: false, detail: describeError(err) };
    }
  }
}
