/**
 * `poweredoff/<vm>` files (SPEC §3.4): an isolated host writes one BEFORE it powers a VM off by
 * isolation response; the master restarts exactly those VMs, then removes the file.
 */
import { mkdir, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from './atomic.js';
import { isVmId } from './records.js';
import { vmFileName, vmIdFromFileName } from './layout.js';
import { withTimeout } from './timeout.js';

export interface PoweredOffEntry {
  vm: string;
  /** Host that powered it off. */
  host: string;
}

export function formatPoweredOff(e: PoweredOffEntry): string {
  return `${e.vm} powered off by ${e.host} (isolation response)\n`;
}

export async function writePoweredOff(dir: string, e: PoweredOffEntry, timeoutMs: number): Promise<void> {
  if (!isVmId(e.vm)) throw new Error(`not a VM id: ${JSON.stringify(e.vm)}`);
  // Never recursive: on a datastore that is gone (something mounted over it), this must fail
  // rather than build a fresh tree there.
  await withTimeout(`mkdir ${dir}`, timeoutMs, () =>
    mkdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    }),
  );
  await writeFileAtomic(join(dir, vmFileName(e.vm)), formatPoweredOff(e), timeoutMs);
}

export async function removePoweredOff(dir: string, vm: string, timeoutMs: number): Promise<void> {
  await withTimeout(`unlink poweredoff ${vm}`, timeoutMs, () =>
    unlink(join(dir, vmFileName(vm))).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    }),
  );
}

/** VM ids listed in a poweredoff directory; names that are not VM ids are reported, not guessed. */
export async function listPoweredOff(dir: string, timeoutMs: number): Promise<{ vms: string[]; invalid: string[] }> {
  const names = await withTimeout(`list ${dir}`, timeoutMs, () =>
    readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw err;
    }),
  );
  const vms: string[] = [];
  const invalid: string[] = [];
  for (const n of names) {
    if (n.startsWith('.') && n.endsWith('.tmp')) continue;
    const id = vmIdFromFileName(n);
    if (id && isVmId(id)) vms.push(id);
    else invalid.push(n);
  }
  return { vms: vms.sort(), invalid };
}
