#!/usr/bin/env node
// `npm run bench -- --writes`: a host's steady-state writes to shared storage per second, for
// 1, 100 and 1,000 VMs on that host (issue 8: they must not grow with the number of VMs).
//
// One-host lab (fast profile, so a renewal every 500 ms), N process VMs on it. Once every VM
// runs and the cluster is quiet, the agent and its VM daemon are traced for 10 s with strace
// (`-f`, file syscalls), and every call that changes something under the datastores is counted:
// renames (each atomic write ends with one; its temporary file is not counted again), other
// file creations (O_EXCL claims, files opened for writing), mkdir, rmdir, unlink. The counts
// include everything the host writes there: storage heartbeats, host VM leases, probe files,
// and any poweron, protectedlist or VM lease change. Needs strace (`apt-get install strace`).
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Lab } from '@vigil/cli';
import { vmdRequest } from '@vigil/drivers';

const PORT = 58282;
const TRACE_MS = 10_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function hasStrace() {
  try {
    execFileSync('strace', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const MUTATING = /^(?:\[pid\s+\d+\]\s+|\d+\s+)?(rename|renameat|renameat2|mkdir|mkdirat|rmdir|unlink|unlinkat|openat|open|creat)\(/;

/** Count the storage-mutating syscalls of `pids` (and their threads) under `root` for `ms`. */
async function trace(pids, root, ms) {
  const out = `/tmp/vigil-bench-writes-${process.pid}.strace`;
  const args = ['-f', '-qq', '-e', 'trace=rename,renameat,renameat2,mkdir,mkdirat,rmdir,unlink,unlinkat,openat,open,creat', '-o', out, ...pids.flatMap((p) => ['-p', String(p)])];
  const st = spawn('strace', args, { stdio: 'ignore' });
  await sleep(ms);
  st.kill('SIGINT');
  await new Promise((r) => st.on('exit', r));
  const counts = {};
  let total = 0;
  for (const line of readFileSync(out, 'utf8').split('\n')) {
    const m = MUTATING.exec(line);
    if (!m || !line.includes(root)) continue;
    // openat/open count only when they create or write.
    if ((m[1] === 'openat' || m[1] === 'open') && !/O_CREAT|O_WRONLY|O_RDWR/.test(line)) continue;
    // An atomic write creates a temporary file and renames it: count it once, as the rename.
    if ((m[1] === 'openat' || m[1] === 'open') && /\.tmp"/.test(line)) continue;
    if (/= -1 /.test(line)) continue; // failed calls changed nothing
    const kind = m[1].replace(/at2?$/, '').replace(/^open$/, 'create');
    counts[kind] = (counts[kind] ?? 0) + 1;
    total++;
  }
  return { total, counts };
}

async function measure(n) {
  const dir = `/tmp/vigil-bench-writes-${n}`;
  const lab = new Lab(dir);
  await lab.down({ purge: true });
  try {
    const [host] = await lab.create({ dir, hosts: 1, datastores: 2, profile: 'fast', port: PORT, capacity: { memoryMB: 1_000_000, cpus: 100_000 } });
    await lab.start(host);
    if (!(await lab.waitConverged(30_000))) throw new Error('no master');
    await lab.createVms(n, { via: host, concurrency: 8, memoryMB: 8 });
    // Quiet: no VM start in flight, every write caused by the starts done.
    await sleep(3000);
    const agent = (await lab.readState()).pids[host];
    const vmd = (await vmdRequest(lab.paths.hostDir(host), { op: 'list' })).pid;
    const { total, counts } = await trace([agent, vmd], `${dir}/datastores`, TRACE_MS);
    return { n, perSecond: total / (TRACE_MS / 1000), counts };
  } finally {
    await lab.down({ purge: true });
  }
}

async function main() {
  if (!hasStrace()) {
    console.error('bench --writes needs strace (apt-get install strace)');
    process.exit(2);
  }
  console.log('Storage writes per second of one host (agent + VM daemon), fast profile (renewal every 500 ms), 2 datastores');
  console.log('Reproduce: npm run bench -- --writes\n');
  for (const n of [1, 100, 1000]) {
    const r = await measure(n);
    const detail = Object.entries(r.counts).map(([k, v]) => `${k} ${v}`).join(', ');
    console.log(`${String(r.n).padStart(5)} VMs: ${r.perSecond.toFixed(1)} writes/s  (${detail} in ${TRACE_MS / 1000} s)`);
  }
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
