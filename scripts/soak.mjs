#!/usr/bin/env node
/**
 * Soak the simulator: run many random worlds (packages/sim) and report every seed that violates
 * SPEC §5, with the command that replays it, and the throughput in simulated hours per
 * wall-clock second.
 *
 *   npm run soak -- --seeds 1000 [--from 100000] [--hosts 8] [--vms 60] [--duration 30m]
 *                   [--profile default|fast] [--faults all|LIST] [--jobs N]
 *
 * Needs a build (`npm run soak` builds first). Exit 0 when no seed violated, 1 otherwise, 2 on
 * bad arguments. The CI runs a fixed set of seeds (test/unit/sim-seeds.test.ts); this runs more.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';

const USAGE = 'usage: npm run soak -- --seeds N [--from S] [--hosts H] [--vms V] [--duration 30m] [--profile default|fast] [--faults LIST] [--jobs J]';

function parseArgs(argv) {
  const o = { seeds: 100, from: 100000, hosts: 8, vms: 60, duration: '30m', profile: 'default', faults: 'all', jobs: 1 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    const num = (name) => {
      if (v === undefined || !/^[0-9]+$/.test(v)) throw new Error(`${k}: expected a number`);
      o[name] = Number(v);
      i++;
    };
    switch (k) {
      case '--seeds': num('seeds'); break;
      case '--from': num('from'); break;
      case '--hosts': num('hosts'); break;
      case '--vms': num('vms'); break;
      case '--jobs': num('jobs'); break;
      case '--duration': o.duration = v; i++; break;
      case '--profile': o.profile = v; i++; break;
      case '--faults': o.faults = v; i++; break;
      case '-h':
      case '--help':
        console.log(USAGE);
        process.exit(0);
      default:
        throw new Error(`unknown argument ${k}`);
    }
  }
  if (o.profile !== 'default' && o.profile !== 'fast') throw new Error('--profile: default or fast');
  if (o.jobs < 1) throw new Error('--jobs: at least 1');
  return o;
}

async function worker() {
  const { runSim, parseDuration, parseFaultKinds, replayCommand } = await import('@vigil/sim');
  const { seeds, o } = workerData;
  const durationMs = /^[0-9]+$/.test(o.duration) ? Number(o.duration) : parseDuration(o.duration);
  const faults = parseFaultKinds(o.faults);
  for (const seed of seeds) {
    const t0 = performance.now();
    const r = runSim({ seed, hosts: o.hosts, vms: o.vms, durationMs, faults, profile: o.profile });
    const v = r.violations[0];
    parentPort.postMessage({
      seed,
      ok: r.ok,
      simulatedMs: r.endedAt,
      wallMs: performance.now() - t0,
      violation: v ? `invariant ${v.invariant} at step ${v.step}: ${v.message.slice(0, 400)}` : null,
      replay: replayCommand(r),
      notes: r.notes,
    });
  }
}

async function main() {
  let o;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`soak: ${err.message}\n${USAGE}`);
    process.exit(2);
  }
  const seeds = Array.from({ length: o.seeds }, (_, i) => o.from + i);
  const jobs = Math.min(o.jobs, seeds.length);
  console.log(`soak: ${seeds.length} random worlds (seeds ${o.from}..${o.from + seeds.length - 1}), ${o.hosts} hosts, ${o.vms} VMs, ${o.duration}, ${o.profile} profile, faults ${o.faults}, ${jobs} job(s)`);
  const start = performance.now();
  let done = 0;
  let simMs = 0;
  const bad = [];
  const report = () => {
    const wall = (performance.now() - start) / 1000;
    return `${done}/${seeds.length} seeds, ${bad.length} violation(s), ${(simMs / 3_600_000).toFixed(1)} simulated hours in ${wall.toFixed(1)} s: ${(simMs / 3_600_000 / wall).toFixed(2)} simulated hours per wall-clock second`;
  };
  await Promise.all(
    Array.from({ length: jobs }, (_, j) =>
      new Promise((resolve, reject) => {
        const w = new Worker(fileURLToPath(import.meta.url), { workerData: { seeds: seeds.filter((_, i) => i % jobs === j), o } });
        w.on('message', (m) => {
          done += 1;
          simMs += m.simulatedMs;
          if (!m.ok) {
            bad.push(m);
            console.log(`VIOLATION seed ${m.seed}: ${m.violation}\n  replay: ${m.replay}`);
          }
          if (done % 10 === 0 && done !== seeds.length) console.log(report());
        });
        w.on('error', reject);
        w.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`worker exited with ${code}`))));
      }),
    ),
  );
  console.log(`\n${report()}`);
  if (bad.length > 0) console.log(`violating seeds: ${bad.map((b) => b.seed).join(' ')}`);
  process.exit(bad.length > 0 ? 1 : 0);
}

if (isMainThread) {
  main().catch((err) => {
    console.error(`soak: ${err.stack ?? err.message}`);
    process.exit(1);
  });
} else {
  worker().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
