#!/usr/bin/env node
// `npm run bench -- --scale` (or `node scripts/bench-scale.mjs`): 128 real agents and 16,000
// protected VMs on one machine (issue 8, item 4). Everything is real (agents, their VM daemons,
// UDP on 127.0.0.x, files on the datastores, leases) except the VMs themselves: each VM is a
// BENCHMARK STAND-IN (`"benchmarkStandin": true` in its config, named standin-N): its VM daemon
// takes and keeps its real VM lease but starts no process (packages/drivers/src/process/vmd.ts;
// refused unless the daemon runs with VIGIL_BENCH_STANDIN=1, which only this script sets).
//
// Measures:
//   1. cold start: the VM configs and the datastores' protectedlists are written first (a cluster
//      that had 16,000 protected VMs powers up at once); then every agent starts. Time until one
//      master is followed by every host (elected), until it owns every protectedlist, and until
//      every protected VM runs, each on exactly one host (converged, from the hosts' poweron files).
//   2. steady state over --steady seconds: CPU (% of one core, /proc/<pid>/stat) and RSS
//      (/proc/<pid>/status) of the master, the slaves (median, max), the VM daemons; datagrams
//      per second at the master and the largest datagram any agent sent or received (the
//      agents' own counters, `datagrams` in their status).
//   3. a slave's power cut (its agent and VM daemon SIGKILLed at once): time until all its VMs
//      run elsewhere, each exactly once (poweron files of the live hosts and the VM leases).
// Prints a table with the targets. Everything it started is stopped and its directory removed,
// also on error or Ctrl-C.
//
// Options: --hosts N (128) --vms M (16000) --steady S (30) --dir D (/dev/shm/vigil-scale)
//          --port P (59182) --no-cut --profile fast|default (fast: the restart target is the
//            fast one; but see docs/performance.md: 128 agents at fast timings saturate 2 cores)
//          --cpu-prof host-a,host-b: run those agents under node --cpu-prof (profiles in
//            <dir>-prof/, kept); the run then ends after the steady state (no power cut), and the
//            profiled agents get SIGTERM so the profile is written.
import { readFileSync, readdirSync, mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { cpus, totalmem } from 'node:os';
import { Lab } from '@vigil/cli';
import { controlRequest } from '@vigil/agent';
import { events } from './bench-lib.mjs';

const args = process.argv.slice(2).filter((a) => a !== '--scale');
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const HOSTS = Number(opt('--hosts', 128));
const VMS = Number(opt('--vms', 16000));
const STEADY_S = Number(opt('--steady', 30));
const DIR = opt('--dir', '/dev/shm/vigil-scale');
const PORT = Number(opt('--port', 59182));
const CUT = !args.includes('--no-cut');
const PROFILE = opt('--profile', 'fast');
const PROF = (opt('--cpu-prof', '') || '').split(',').filter(Boolean);
const PROF_DIR = `${DIR}-prof`;
const DATASTORES = 2;
const CLUSTER = 'lab';
const PRIOS = ['high', 'medium', 'low'];
const CLK_TCK = 100;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

const lab = new Lab(DIR);
let cleaning = null;
async function cleanup() {
  cleaning ??= lab.down({ purge: true, graceMs: 10_000 }).catch((err) => console.error(`cleanup: ${err.message}`));
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    console.error(`\n${sig}: stopping everything`);
    void cleanup().then(() => process.exit(130));
  });
}

const hostIds = Array.from({ length: HOSTS }, (_, i) => `host-${i + 1}`);
const dsNames = Array.from({ length: DATASTORES }, (_, i) => `ds${i + 1}`);
const vmName = (i) => `standin-${i + 1}`;
const vmId = (i) => `${dsNames[i % DATASTORES]}:vms/${vmName(i)}.json`;
const allIds = Array.from({ length: VMS }, (_, i) => vmId(i));

/** The VM configs and protectedlists a cluster with VMS protected VMs has on its datastores. */
function seed() {
  for (const [d, ds] of dsNames.entries()) {
    const base = lab.paths.datastore(ds);
    mkdirSync(join(base, 'vms'), { recursive: true });
    mkdirSync(join(base, '.vigil-ha', CLUSTER), { recursive: true });
    const mine = [];
    for (let i = d; i < VMS; i += DATASTORES) {
      const cfg = { name: vmName(i), command: 'benchmark-standin', args: [], env: {}, memoryMB: 64, cpus: 1, restartPriority: PRIOS[i % PRIOS.length], benchmarkStandin: true };
      writeFileSync(join(base, 'vms', `${vmName(i)}.json`), JSON.stringify(cfg, null, 2) + '\n');
      mine.push(vmId(i));
    }
    // The list an earlier master left (owner and generation are rewritten by the next master).
    writeFileSync(join(base, '.vigil-ha', CLUSTER, 'protectedlist'), ['# vigil protectedlist owner=host-1 generation=1', ...mine].join('\n') + '\n');
  }
}

/** host -> VMs its poweron file (on ds1, its first heartbeat datastore) lists; null if unreadable. */
function poweronLists(hosts) {
  const out = new Map();
  for (const h of hosts) {
    try {
      const text = readFileSync(join(lab.paths.datastore('ds1'), '.vigil-ha', CLUSTER, `${h}-poweron`), 'utf8');
      if (!text.endsWith('\n')) continue; // being replaced (atomic writes: never, but be safe)
      out.set(h, text.slice(0, -1).split('\n').slice(1).filter(Boolean));
    } catch {
      /* not written yet */
    }
  }
  return out;
}

/** VM -> hosts listing it, among `hosts`. */
function placement(hosts) {
  const where = new Map();
  for (const [h, vms] of poweronLists(hosts)) for (const v of vms) where.set(v, [...(where.get(v) ?? []), h]);
  return where;
}

async function statusOf(h, timeout = 3000) {
  return controlRequest(lab.paths.socket(h), { cmd: 'status' }, timeout).catch(() => null);
}

async function statusAll(hosts) {
  const out = new Map();
  const queue = [...hosts];
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let h = queue.shift(); h; h = queue.shift()) out.set(h, await statusOf(h));
    }),
  );
  return out;
}

/** One master followed by every host in `hosts`: its id, else null. */
async function converged(hosts) {
  const st = await statusAll(hosts);
  const masters = [...st.values()].filter((s) => s?.role === 'master');
  if (masters.length !== 1) return null;
  const m = masters[0].host;
  return [...st.values()].every((s) => s && (s.role === 'master' || (s.role === 'slave' && s.master === m))) ? m : null;
}

/** Pids of the VM daemons, by host (from their command line: vmd-main.js <base64url args>). */
function vmdPids() {
  const out = new Map();
  for (const e of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      const i = argv.findIndex((a) => a.endsWith('vmd-main.js'));
      if (i < 0) continue;
      const a = JSON.parse(Buffer.from(argv[i + 1] ?? '', 'base64url').toString('utf8'));
      if (a.stateDir?.startsWith(DIR + '/')) out.set(a.host, Number(e));
    } catch {
      /* gone */
    }
  }
  return out;
}

function cpuTicks(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // utime + stime (fields 14, 15)
  } catch {
    return null;
  }
}

function rssMB(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

function machineBusy() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + f[4];
  return { total: f.reduce((a, b) => a + b, 0), idle };
}

const median = (xs) => {
  const s = xs.filter((x) => x !== null && Number.isFinite(x)).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const max = (xs) => Math.max(...xs.filter((x) => x !== null && Number.isFinite(x)));
const s2 = (ms) => (ms === null || ms === undefined ? '-' : `${(ms / 1000).toFixed(2)} s`);

async function main() {
  console.log(`Vigil scale benchmark: ${HOSTS} agents, ${VMS} protected VMs (benchmark stand-ins: leases, no process), ${PROFILE} profile`);
  console.log(`Machine: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`);
  console.log(`Reproduce: npm run bench -- --scale${args.length ? ` ${args.join(' ')}` : ''}\n`);
  const results = {};
  await lab.down({ purge: true });
  await lab.create({ dir: DIR, hosts: HOSTS, datastores: DATASTORES, profile: PROFILE, port: PORT, capacity: { memoryMB: 65536, cpus: 1024 } });
  seed();
  if (PROF.length) mkdirSync(PROF_DIR, { recursive: true });

  // ---- 1. cold start ----
  const t0 = now();
  for (const h of hostIds) {
    // node --cpu-prof is not allowed in NODE_OPTIONS: a shell prefix execs node with it.
    const prefix = PROF.includes(h) ? ['/bin/sh', '-c', `exec "$0" --cpu-prof --cpu-prof-dir=${PROF_DIR} --cpu-prof-name=${h}.cpuprofile "$@"`] : [];
    await lab.start(h, { env: { VIGIL_BENCH_STANDIN: '1' }, prefix });
  }
  const startedAll = now() - t0;
  console.log(`started ${HOSTS} agents in ${s2(startedAll)}`);
  let master = null;
  while (!master) {
    if (now() - t0 > 300_000) throw new Error('no converged election within 300 s');
    master = await converged(hostIds);
    if (!master) await sleep(200);
  }
  results.elected = now() - t0;
  console.log(`elected: ${master}, followed by all ${HOSTS} hosts, at ${s2(results.elected)}`);
  for (;;) {
    const st = await statusOf(master);
    if (st && dsNames.every((d) => st.ownedDatastores.includes(d))) break;
    if (now() - t0 > 300_000) throw new Error('the master did not take every protectedlist within 300 s');
    await sleep(100);
  }
  results.owned = now() - t0;
  console.log(`master owns every protectedlist at ${s2(results.owned)}`);
  let lastReport = 0;
  for (;;) {
    const where = placement(hostIds);
    const running = allIds.filter((v) => (where.get(v)?.length ?? 0) >= 1).length;
    const doubled = allIds.filter((v) => (where.get(v)?.length ?? 0) > 1).length;
    if (doubled > 0) throw new Error(`${doubled} VMs listed by two hosts`);
    if (running === VMS) break;
    if (now() - lastReport > 10_000) {
      lastReport = now();
      console.log(`  ${s2(now() - t0)}: ${running}/${VMS} running`);
    }
    if (now() - t0 > 900_000) throw new Error(`only ${running}/${VMS} VMs running after 900 s`);
    await sleep(250);
  }
  results.converged = now() - t0;
  console.log(`converged: all ${VMS} VMs running, each on one host, at ${s2(results.converged)}`);
  const view = await controlRequest(lab.paths.socket(master), { cmd: 'vms' }, 60_000);
  const okView = view.vms.filter((v) => v.state === 'running' && v.protected).length;
  console.log(`master's view: ${okView}/${VMS} running and protected`);

  // ---- 2. steady state ----
  await sleep(5000);
  const agents = new Map([...(await statusAll(hostIds))].map(([h, s]) => [h, s?.pid]).filter(([, p]) => p));
  const vmds = vmdPids();
  const procs = [...[...agents].map(([h, p]) => ({ kind: h === master ? 'master' : 'slave', host: h, pid: p })), ...[...vmds].map(([h, p]) => ({ kind: 'vmd', host: h, pid: p }))];
  const mst0 = await statusOf(master);
  const busy0 = machineBusy();
  const before = new Map(procs.map((p) => [p.pid, cpuTicks(p.pid)]));
  const w0 = now();
  const rssPeak = new Map();
  while (now() - w0 < STEADY_S * 1000) {
    for (const p of procs) rssPeak.set(p.pid, Math.max(rssPeak.get(p.pid) ?? 0, rssMB(p.pid) ?? 0));
    await sleep(1000);
  }
  const secs = (now() - w0) / 1000;
  const mst1 = await statusOf(master);
  const busy1 = machineBusy();
  for (const p of procs) {
    const a = before.get(p.pid);
    const b = cpuTicks(p.pid);
    p.cpu = a === null || b === null ? null : ((b - a) / CLK_TCK / secs) * 100;
    p.rss = rssPeak.get(p.pid) ?? null;
  }
  const of = (k) => procs.filter((p) => p.kind === k);
  const m = of('master')[0];
  results.masterCpu = m?.cpu ?? null;
  results.masterRss = m?.rss ?? null;
  results.slaveCpuMedian = median(of('slave').map((p) => p.cpu));
  results.slaveCpuMax = max(of('slave').map((p) => p.cpu));
  results.slaveRssMedian = median(of('slave').map((p) => p.rss));
  results.slaveRssMax = max(of('slave').map((p) => p.rss));
  results.vmdCpuMedian = median(of('vmd').map((p) => p.cpu));
  results.vmdCpuMax = max(of('vmd').map((p) => p.cpu));
  results.vmdRssMedian = median(of('vmd').map((p) => p.rss));
  results.vmdRssMax = max(of('vmd').map((p) => p.rss));
  results.machineBusy = (1 - (busy1.idle - busy0.idle) / (busy1.total - busy0.total)) * cpus().length * 100;
  const slowest = of('slave').sort((a, b) => b.cpu - a.cpu)[0];
  if (mst0?.datagrams && mst1?.datagrams) {
    results.masterRecvPerS = (mst1.datagrams.received - mst0.datagrams.received) / secs;
    results.masterSentPerS = (mst1.datagrams.sent - mst0.datagrams.sent) / secs;
  }
  console.log(`steady state (${secs.toFixed(1)} s): master ${results.masterCpu?.toFixed(2)} % CPU, slaves median ${results.slaveCpuMedian?.toFixed(2)} % max ${results.slaveCpuMax?.toFixed(2)} % (${slowest?.host}), VM daemons median ${results.vmdCpuMedian?.toFixed(2)} %; machine ${results.machineBusy.toFixed(0)} % of one core busy`);

  // ---- 3. power cut of a slave ----
  if (CUT && !PROF.length) {
    const lists = poweronLists(hostIds);
    const victim = hostIds.filter((h) => h !== master).sort((a, b) => (lists.get(b)?.length ?? 0) - (lists.get(a)?.length ?? 0))[0];
    const lost = lists.get(victim) ?? [];
    const alive = hostIds.filter((h) => h !== victim);
    const vstat = await statusOf(victim);
    results.largestDatagramVictim = vstat?.datagrams ? Math.max(vstat.datagrams.largestSent, vstat.datagrams.largestReceived) : 0;
    const tc = Date.now();
    const c0 = now();
    await lab.kill(victim);
    let back = 0;
    for (;;) {
      const where = placement(alive);
      back = lost.filter((v) => (where.get(v)?.length ?? 0) >= 1).length;
      if (back === lost.length || now() - c0 > 120_000) break;
      await sleep(20);
    }
    results.cutAllRunning = back === lost.length ? now() - c0 : null;
    await sleep(2000); // anything doubled would show now
    const where = placement(alive);
    results.cutVms = lost.length;
    results.cutDoubled = lost.filter((v) => (where.get(v)?.length ?? 0) > 1).length;
    results.cutMissing = lost.filter((v) => (where.get(v)?.length ?? 0) === 0).length;
    // The lease of each VM names the host that lists it.
    let leaseMismatch = 0;
    for (const v of lost) {
      const ds = v.slice(0, v.indexOf(':'));
      try {
        const rec = JSON.parse(readFileSync(join(lab.paths.datastore(ds), '.vigil-ha', CLUSTER, 'vms', `${encodeURIComponent(v)}.lease`), 'utf8'));
        if (rec.host !== where.get(v)?.[0] || rec.state !== 'held') leaseMismatch++;
      } catch {
        leaseMismatch++;
      }
    }
    results.cutLeaseMismatch = leaseMismatch;
    const dead = events(lab, master, 'host.dead').filter((e) => e.subject === victim && Date.parse(e.timestamp) >= tc - 500);
    results.cutDetected = dead.length ? Date.parse(dead[0].timestamp) - tc : null;
    const restarted = events(lab, master, 'vm.restarted').filter((e) => Date.parse(e.timestamp) >= tc);
    results.cutLastRestart = restarted.length ? Math.max(...restarted.map((e) => Date.parse(e.timestamp))) - tc : null;
    console.log(`power cut of ${victim} (${lost.length} VMs): detected ${s2(results.cutDetected)}, all running elsewhere ${s2(results.cutAllRunning)}, doubled ${results.cutDoubled}, missing ${results.cutMissing}, lease holder mismatches ${leaseMismatch}`);
  }

  // Largest datagram any agent sent or received over the whole run.
  const fin = await statusAll(hostIds);
  results.largestDatagram = Math.max(results.largestDatagramVictim ?? 0, ...[...fin.values()].filter((s) => s?.datagrams).map((s) => Math.max(s.datagrams.largestSent, s.datagrams.largestReceived)));

  // ---- report ----
  const pct = (x) => (x === null || x === undefined ? '-' : `${x.toFixed(2)} %`);
  const mb = (x) => (x === null || x === undefined ? '-' : `${x.toFixed(0)} MB`);
  const rows = [
    ['cold start: elected (one master, all follow)', s2(results.elected), '', null],
    ['cold start: master owns every protectedlist', s2(results.owned), '', null],
    [`cold start: all ${VMS} VMs running (converged)`, s2(results.converged), '', null],
    ['master CPU (steady)', pct(results.masterCpu), '< 5 %', results.masterCpu < 5],
    ['slave CPU, median (steady)', pct(results.slaveCpuMedian), '< 1 %', results.slaveCpuMedian < 1],
    ['slave CPU, max (steady)', pct(results.slaveCpuMax), '< 1 %', results.slaveCpuMax < 1],
    ['VM daemon CPU, median / max', `${pct(results.vmdCpuMedian)} / ${pct(results.vmdCpuMax)}`, '', null],
    ['machine busy (steady, % of one core)', pct(results.machineBusy), '', null],
    ['master RSS', mb(results.masterRss), '', null],
    ['slave RSS, median / max', `${mb(results.slaveRssMedian)} / ${mb(results.slaveRssMax)}`, '< 80 MB', results.slaveRssMax < 80],
    ['VM daemon RSS, median / max', `${mb(results.vmdRssMedian)} / ${mb(results.vmdRssMax)}`, '', null],
    ['datagrams/s at the master (received / sent)', results.masterRecvPerS === undefined ? '-' : `${results.masterRecvPerS.toFixed(0)} / ${results.masterSentPerS.toFixed(0)}`, '', null],
    ['largest datagram seen', `${results.largestDatagram} bytes`, '<= 1400 bytes', results.largestDatagram <= 1400],
  ];
  if (results.cutVms !== undefined) {
    rows.push(
      [`slave power cut: detected (host.dead)`, s2(results.cutDetected), '', null],
      [`slave power cut: all ${results.cutVms} VMs running elsewhere`, s2(results.cutAllRunning), PROFILE === 'fast' ? '<= 4.00 s' : '', PROFILE === 'fast' ? results.cutAllRunning !== null && results.cutAllRunning <= 4000 : null],
      ['slave power cut: doubled / missing / lease mismatch', `${results.cutDoubled} / ${results.cutMissing} / ${results.cutLeaseMismatch}`, '0 / 0 / 0', results.cutDoubled + results.cutMissing + results.cutLeaseMismatch === 0],
    );
  }
  console.log('');
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [what, val, target, pass] of rows) console.log(`${what.padEnd(w)}  ${val.padStart(16)}  ${target.padEnd(14)} ${pass === null ? '' : pass ? 'pass' : 'MISS'}`);
  writeFileSync(`${DIR}.json`, JSON.stringify({ hosts: HOSTS, vms: VMS, master, results, procs }, null, 2) + '\n');
  console.log(`\n(raw figures: ${DIR}.json)`);
  if (rows.some((r) => r[3] === false)) process.exitCode = 1;
}

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await cleanup();
  if (PROF.length && existsSync(PROF_DIR)) console.log(`CPU profiles: ${readdirSync(PROF_DIR).map((f) => join(PROF_DIR, f)).join(' ')}`);
}
process.exit(process.exitCode ?? 0);
