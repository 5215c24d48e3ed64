#!/usr/bin/env node
// `npm run bench -- --load`: false positives of a timing profile under load. A lab of real
// agents and process VMs (datastores on the local disk, so fsyncs queue behind the load) runs
// for a while with no fault at all, while the machine is loaded: CPU hogs (more busy processes
// than cores) and a writer doing synchronous 1 MB writes on the datastores' filesystem. Every
// failure-handling decision taken in that time is a false positive; they are counted from the
// agents' logs: hosts declared dead / unreachable, elections, lost heartbeats, self-fences,
// restarts, and the agents' own event-loop stalls.
//
// Options: --profile P (default: default), --hosts N (4), --vms N (40), --minutes M (5),
// --hogs N (CPU hogs, default cores + 2), --no-io (no disk writer), --dir DIR.
import { spawn } from 'node:child_process';
import { closeSync, fsyncSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { cpus, totalmem } from 'node:os';
import { Lab } from '@vigil/cli';

const args = process.argv.slice(2).filter((a) => a !== '--load');
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const profile = opt('--profile', 'default');
const hosts = Number(opt('--hosts', '4'));
const count = Number(opt('--vms', '40'));
const minutes = Number(opt('--minutes', '5'));
const hogs = Number(opt('--hogs', String(cpus().length + 2)));
const io = !args.includes('--no-io');
const dir = opt('--dir', `/var/tmp/vigil-bench-load-${profile}`);
const PORT = 58184;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Decisions that must not happen in a healthy (only loaded) cluster. */
const FALSE_POSITIVE = [
  'host.dead',
  'host.unreachable',
  'host.partitioned',
  'host.agentUnreachable',
  'host.isolated',
  'election.started',
  'heartbeat.lost',
  'lease.compromised',
  'vm.fenced',
  'vmd.fenced',
  'vmd.libvirt-fence',
  'vmd.host-lease-renew-failed',
  'storage.error',
  'vm.restarting',
  'vm.restarted',
];

function logFiles(root) {
  const out = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.log')) out.push(p);
    }
  };
  walk(join(root, 'hosts'));
  return out;
}

function eventsSince(root, t0) {
  const counts = new Map();
  const examples = new Map();
  const stalls = [];
  for (const f of logFiles(root)) {
    for (const line of readFileSync(f, 'utf8').split('\n')) {
      if (!line.startsWith('{')) continue;
      let e;
      try {
        e = JSON.parse(line);
      } catch {
        continue;
      }
      if (Date.parse(e.timestamp) < t0) continue;
      if (e.event === 'agent.stalled' && typeof e.lagMs === 'number') stalls.push(e.lagMs);
      if (FALSE_POSITIVE.includes(e.event)) {
        counts.set(e.event, (counts.get(e.event) ?? 0) + 1);
        if (!examples.has(e.event)) examples.set(e.event, `${e.host}: ${e.message}`);
      }
    }
  }
  return { counts, examples, stalls };
}

/**
 * What the load does to storage: every 250 ms a 512-byte write + fsync of a file on the
 * datastores' filesystem (what a lease renewal does), timed. Returns a stop function giving the
 * latencies in ms. (Timed on this process's event loop, itself slowed by the CPU hogs.)
 */
function probeStorage(file) {
  const lat = [];
  const buf = Buffer.alloc(512, 1);
  const timer = setInterval(() => {
    const t = performance.now();
    const fd = openSync(file, 'w');
    writeSync(fd, buf);
    fsyncSync(fd);
    closeSync(fd);
    lat.push(performance.now() - t);
  }, 250);
  return () => {
    clearInterval(timer);
    return lat.sort((a, b) => a - b);
  };
}

function startLoad(ioDir) {
  const procs = [];
  for (let i = 0; i < hogs; i++) procs.push(spawn(process.execPath, ['-e', 'for(;;){}'], { stdio: 'ignore', detached: true }));
  if (io) {
    // 1 MB synchronous writes, round and round a 64 MB file, on the datastores' filesystem.
    procs.push(spawn('sh', ['-c', `while :; do dd if=/dev/zero of=${ioDir}/load.bin bs=1M count=64 oflag=dsync conv=notrunc status=none; done`], { stdio: 'ignore', detached: true }));
  }
  return () => {
    for (const p of procs) {
      try {
        process.kill(-p.pid, 'SIGKILL');
      } catch {
        p.kill('SIGKILL');
      }
    }
  };
}

async function main() {
  console.log(`Vigil false positives under load: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`);
  console.log(`Reproduce: npm run bench -- --load${args.length ? ` ${args.join(' ')}` : ''}`);
  console.log(`profile ${profile}, ${hosts} hosts x ${count} VMs, ${minutes} min, ${hogs} CPU hogs, disk writer ${io ? 'on (dd oflag=dsync, 1 MB)' : 'off'}, datastores in ${dir}\n`);
  const lab = new Lab(dir);
  await lab.down({ purge: true });
  let stopLoad = () => {};
  const onSignal = () => {
    stopLoad();
    void lab.down({ purge: true }).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const ids = await lab.create({ dir, hosts, datastores: 2, profile, port: PORT });
    for (const id of ids) await lab.start(id);
    const master = await lab.waitConverged(120_000);
    if (!master) throw new Error('no master');
    await lab.createVms(count, { via: master, concurrency: 8 });
    statSync(lab.paths.datastore('ds1'));
    const t0 = Date.now();
    stopLoad = startLoad(lab.paths.datastore('ds1'));
    const stopProbe = probeStorage(join(lab.paths.datastore('ds2'), 'fsync-probe'));
    // Let the load run; the agents decide on their own. Progress every minute.
    for (let m = 1; m <= minutes; m++) {
      await sleep(60_000);
      const { counts } = eventsSince(dir, t0);
      const total = [...counts.values()].reduce((a, b) => a + b, 0);
      console.log(`  ${m} min: ${total} false-positive decisions so far`);
    }
    stopLoad();
    const lat = stopProbe();
    const pct = (q) => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))]?.toFixed(1);
    console.log(`\nstorage under load (512-byte write + fsync, every 250 ms, ${lat.length} samples): median ${pct(0.5)} ms, p99 ${pct(0.99)} ms, max ${lat[lat.length - 1]?.toFixed(1)} ms`);
    const { counts, examples, stalls } = eventsSince(dir, t0);
    console.log(`\n| decision | count | first example |\n|---|---|---|`);
    for (const ev of FALSE_POSITIVE) console.log(`| ${ev} | ${counts.get(ev) ?? 0} | ${examples.get(ev) ?? ''} |`);
    stalls.sort((a, b) => a - b);
    console.log(`\nagent event-loop stalls logged: ${stalls.length}${stalls.length ? `, longest ${stalls[stalls.length - 1]} ms, median ${stalls[Math.floor((stalls.length - 1) / 2)]} ms` : ''}`);
    const total = [...counts.values()].reduce((a, b) => a + b, 0);
    console.log(`false-positive decisions in ${minutes} min x ${hosts} hosts: ${total}`);
    if (total > 0) process.exitCode = 1;
  } finally {
    stopLoad();
    await lab.down({ purge: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
