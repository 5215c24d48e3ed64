#!/usr/bin/env node
// `npm run bench`: failover figures with real agents, real UDP, real files and real process VMs
// on loopback. Prints the figures and the command to reproduce them; docs/performance.md keeps
// the results. Options: --quick (fast profile, 4 x 40 only), --runs N (power cuts per case),
// --no-large (skip the 16 hosts x 800 VMs cases), --writes (storage writes per host instead:
// scripts/bench-writes.mjs), --case TEXT (only the cases whose name contains TEXT).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { Lab, labVmTag } from '@vigil/cli';
import { controlRequest } from '@vigil/agent';

const args = process.argv.slice(2);
if (args.includes('--writes')) {
  // Storage writes per host for 1, 100, 1000 VMs: a separate measurement (scripts/bench-writes.mjs).
  await import('./bench-writes.mjs');
  await new Promise(() => {}); // bench-writes exits by itself
}
if (args.includes('--scale')) {
  // 128 agents and 16,000 protected stand-in VMs: a separate measurement (scripts/bench-scale.mjs).
  await import('./bench-scale.mjs');
  await new Promise(() => {}); // bench-scale exits by itself
}
const quick = args.includes('--quick');
const large = !args.includes('--no-large') && !quick;
const caseArg = args.indexOf('--case');
/** `--case TEXT`: run only the cases whose name contains TEXT (e.g. "default 4x40 slave"). */
const CASE = caseArg >= 0 ? String(args[caseArg + 1]) : null;
const runsArg = args.indexOf('--runs');
const RUNS = runsArg >= 0 ? Number(args[runsArg + 1]) : 3;
const PORT = 58182;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function events(lab, host, event) {
  try {
    return readFileSync(lab.paths.log(host), 'utf8')
      .split('\n')
      .filter((l) => l.includes(`"event":"${event}"`))
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

async function vms(lab, via) {
  for (const h of via) {
    try {
      return (await controlRequest(lab.paths.socket(h), { cmd: 'vms' }, 5000)).vms;
    } catch {
      /* election in progress: try another host */
    }
  }
  return null;
}

function copies(dir, name) {
  try {
    return Number(execFileSync('pgrep', ['-c', '-f', `^${labVmTag(dir, name)} `], { encoding: 'utf8' }).trim());
  } catch {
    return 0;
  }
}

/** One power cut: returns timings in ms from the cut. */
async function cut(lab, dir, victim, alive, names) {
  const before = await vms(lab, alive);
  const lost = before.filter((v) => v.host === victim && v.protected).map((v) => v.name);
  const t0 = Date.now();
  await lab.kill(victim);
  const back = new Map();
  while (back.size < lost.length && Date.now() - t0 < 300_000) {
    const now = await vms(lab, alive);
    for (const v of now ?? []) if (lost.includes(v.name) && !back.has(v.name) && v.state === 'running' && v.host !== victim) back.set(v.name, Date.now() - t0);
    await sleep(25);
  }
  const dead = alive.flatMap((h) => events(lab, h, 'host.dead').filter((e) => e.subject === victim && Date.parse(e.timestamp) >= t0 - 500));
  const detect = dead.length ? Math.min(...dead.map((e) => Date.parse(e.timestamp))) - t0 : null;
  const won = alive.flatMap((h) => events(lab, h, 'election.won').filter((e) => Date.parse(e.timestamp) >= t0));
  const elected = won.length ? Math.min(...won.map((e) => Date.parse(e.timestamp))) - t0 : null;
  const restarted = alive.flatMap((h) => events(lab, h, 'vm.restarted').filter((e) => Date.parse(e.timestamp) >= t0));
  const lastRestart = restarted.length ? Math.max(...restarted.map((e) => Date.parse(e.timestamp))) - t0 : null;
  const doubled = names.filter((n) => copies(dir, n) > 1).length;
  const missing = lost.length - back.size;
  return { vms: lost.length, detect, elected, allBack: back.size ? Math.max(...back.values()) : null, lastRestart, doubled, missing };
}

async function scenario({ profile, hosts, count, masterCut }) {
  // tmpfs: the shared-storage stand-in. On a disk-backed /tmp the fsyncs of 16 simulated hosts
  // queue on one local disk, which no real cluster (each host its own NFS client) would see.
  const dir = `/dev/shm/vigil-bench-${profile}-${hosts}x${count}`;
  const lab = new Lab(dir);
  await lab.down({ purge: true });
  try {
    const ids = await lab.create({ dir, hosts, datastores: 2, profile, port: PORT });
    for (const id of ids) await lab.start(id);
    const master = await lab.waitConverged(profile === 'fast' ? 30_000 : 90_000);
    if (!master) throw new Error(`${dir}: no master`);
    const names = await lab.createVms(count, { via: master, concurrency: 8 });
    const all = await vms(lab, [master]);
    const victim = masterCut ? master : ids.filter((h) => h !== master).sort((a, b) => all.filter((v) => v.host === b).length - all.filter((v) => v.host === a).length)[0];
    const alive = ids.filter((h) => h !== victim);
    return await cut(lab, dir, victim, alive, names);
  } finally {
    await lab.down({ purge: true });
  }
}

const median = (xs) => {
  const s = xs.filter((x) => x !== null).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const fmt = (ms) => (ms === null ? '-' : `${(ms / 1000).toFixed(2)} s`);

async function main() {
  console.log(`Vigil failover benchmark: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`);
  console.log(`Reproduce: npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}\n`);
  const cases = [
    { profile: 'fast', hosts: 4, count: 40, masterCut: false },
    { profile: 'fast', hosts: 4, count: 40, masterCut: true },
    ...(large
      ? [
          { profile: 'fast', hosts: 16, count: 800, masterCut: false },
          { profile: 'fast', hosts: 16, count: 800, masterCut: true },
        ]
      : []),
    ...(quick
      ? []
      : [
          { profile: 'default', hosts: 4, count: 40, masterCut: false },
          { profile: 'default', hosts: 4, count: 40, masterCut: true },
          ...(large ? [{ profile: 'default', hosts: 16, count: 800, masterCut: false }] : []),
        ]),
  ];
  const rows = [];
  const caseName = (c) => `${c.profile} ${c.hosts}x${c.count} ${c.masterCut ? 'master' : 'slave'} cut`;
  for (const c of cases.filter((c) => CASE === null || caseName(c).includes(CASE))) {
    const results = [];
    for (let i = 0; i < (c.profile === 'default' || c.count > 100 ? 1 : RUNS); i++) results.push(await scenario(c));
    const row = {
      case: caseName(c),
      runs: results.length,
      vmsLost: median(results.map((r) => r.vms)),
      detected: median(results.map((r) => r.detect)),
      elected: c.masterCut ? median(results.map((r) => r.elected)) : null,
      allRunning: median(results.map((r) => r.allBack)),
      overhead: median(results.map((r) => (r.lastRestart !== null && r.detect !== null ? r.lastRestart - r.detect : null))),
      doubled: results.reduce((a, r) => a + r.doubled, 0),
      missing: results.reduce((a, r) => a + r.missing, 0),
    };
    rows.push(row);
    console.log(
      `${row.case.padEnd(28)} runs ${row.runs}  VMs ${row.vmsLost}  detected ${fmt(row.detected)}  new master ${fmt(row.elected)}  all running ${fmt(row.allRunning)}  beyond detection ${fmt(row.overhead)}  doubled ${row.doubled}  missing ${row.missing}`,
    );
  }
  console.log('\n(medians; "beyond detection" = last vm.restarted log line minus the host.dead line)');
  if (rows.some((r) => r.doubled > 0 || r.missing > 0)) process.exitCode = 1;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
