/**
 * Atomic file replacement: write a temp file in the same directory, fsync it, rename it over
 * the target, fsync the directory. A reader sees the old content or the new, never half a file;
 * on ENOSPC or any error the temp file is removed and the old content stays.
 */
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { storageKeyOf, withTimeout } from './timeout.js';

export async function writeFileAtomic(path: string, content: string | Buffer, timeoutMs: number): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  await withTimeout(`write ${path}`, timeoutMs, async () => {
    let done = false;
    try {
      const fh = await open(tmp, 'wx', 0o644);
      try {
        await fh.writeFile(content);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, path);
      done = true;
      try {
        const dir = await open(dirname(path), 'r');
        try {
          await dir.sync();
        } finally {
          await dir.close();
        }
      } catch {
        /* some filesystems (FUSE) refuse fsync on directories; the rename is done */
      }
    } finally {
      if (!done) await unlink(tmp).catch(() => {});
    }
  }, storageKeyOf(path));
}
