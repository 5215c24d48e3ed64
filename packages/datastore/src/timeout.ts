/**
 * Every storage call gets a deadline: on hung storage (all paths down, a dead NFS or sshfs
 * server) a filesystem call may never return, and the caller must be able to act regardless.
 * The call itself cannot be cancelled; it is left to finish or hang in libuv's pool.
 */
export class StorageTimeoutError extends Error {
  readonly code = 'ETIMEDOUT';
  constructor(what: string, ms: number) {
    super(`${what}: no answer from storage within ${ms} ms`);
    this.name = 'StorageTimeoutError';
  }
}

/**
 * Calls that timed out but have not returned yet, per storage key (a datastore). While
 * MAX_HANGING_PER_DATASTORE of them are outstanding, new calls with the same key fail at once:
 * a hung mount must not fill libuv's thread pool and stall every other datastore.
 */
const hanging = new Map<string, number>();

/**
 * New calls to a datastore fail at once while this many calls to it have timed out and not
 * returned: one slow call is tolerated, a hung mount is cut off before it takes the thread pool.
 */
export const MAX_HANGING_PER_DATASTORE = 4;

export function hangingCalls(key?: string): number {
  if (key !== undefined) return hanging.get(key) ?? 0;
  let n = 0;
  for (const v of hanging.values()) n += v;
  return n;
}

/** The storage key of a path: the datastore root (everything before `/.vigil-ha`). */
export function storageKeyOf(path: string): string {
  const i = path.indexOf('/.vigil-ha');
  return i >= 0 ? path.slice(0, i) : path;
}

export function withTimeout<T>(what: string, ms: number, op: () => Promise<T>, key?: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (key !== undefined && (hanging.get(key) ?? 0) >= MAX_HANGING_PER_DATASTORE) {
      reject(new StorageTimeoutError(`${what} (an earlier call to this datastore is still hanging)`, ms));
      return;
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (key !== undefined) hanging.set(key, (hanging.get(key) ?? 0) + 1);
      reject(new StorageTimeoutError(what, ms));
    }, ms);
    timer.unref?.();
    const settle = () => {
      if (timedOut && key !== undefined) {
        const n = (hanging.get(key) ?? 1) - 1;
        if (n <= 0) hanging.delete(key);
        else hanging.set(key, n);
      }
    };
    let p: Promise<T>;
    try {
      p = op();
    } catch (err) {
      clearTimeout(timer);
      reject(err);
      return;
    }
    p.then(
      (v) => {
        clearTimeout(timer);
        settle();
        resolve(v);
      },
      (err) => {
        clearTimeout(timer);
        settle();
        reject(err);
      },
    );
  });
}

/** A short description of a storage error for log lines. */
export function describeError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e === 'object' && 'code' in e && e.code) return e.message.startsWith(`${e.code}:`) ? e.message : `${e.code}: ${e.message}`;
  return err instanceof Error ? err.message : String(err);
}
