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

export function withTimeout<T>(what: string, ms: number, op: () => Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new StorageTimeoutError(what, ms)), ms);
    timer.unref?.();
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
        resolve(v);
      },
      (err) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/** A short description of a storage error for log lines. */
export function describeError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e === 'object' && 'code' in e && e.code) return `${e.code}: ${e.message}`;
  return String(err);
}
