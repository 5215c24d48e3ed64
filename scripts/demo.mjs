#!/usr/bin/env node
// `npm run demo`: a 4-host lab with 12 VMs; a slave loses power, then the master does; prints
// when each failure was detected, when each VM ran again and where, and the totals. The lab is
// left running at the end so you can look around (vigil lab status / vigil vms), then
// `npx vigil lab down --dir <dir>`.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Lab, labVmTag } from '@vigil/cli';
import { controlRequest } from '@vigil/agent';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const dir = opt('dir', '/tmp/vigil-demo');
const HOSTS = Number(opt('hosts', 4));
const VMS = Number(opt('vms', 12));
const keep = !args.includes('--down');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t = (ms) => `${(ms / 1000).toFixed(2).padStart(6)} s`;
const lab = new Lab(dir);

function copies(name) {
  try {
    return Number(execFileSync('pgrep', ['-c', '-f', `^${labVmTag(dir, name)} `], { encoding: 'utf8' }).trim());
  } catch {
    return 0;
  }
}

async function vms(via) {
  for (const h of via) {
    try {
      return (await controlRequest(lab.paths.socket(h), { cmd: 'vms' }, 3000)).vms;
    } catch {
      /* that host cannot answer now (election in progress?): try another */
    }
  }
  return null;
}

function logEvents(host, event) {
  try {
    return readFileSync(lab.paths.log(host), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        try {
          return JSON.parse(l);
        } catch {
          return null;
        }
      })
      .filter((e) => e && e.event === event);
  } catch {
    return [];
  }
}

async function powerCut(victim, alive, allVms, label) {
  const before = await vms(alive);
  const lost = before.filter((v) => v.host === victim && v.protected).map((v) => v.name);
  const t0 = Date.now();
  await lab.kill(victim);
  console.log(`\n== ${label}: ${victim} loses power (${lost.length} VMs on it: ${lost.join(', ')})`);
  const back = new Map();
  const deadline = t0 + 120_000;
  while (back.size < lost.length && Date.now() < deadline) {
    const now = await vms(alive);
    if (now) {
      for (const v of now) {
        if (lost.includes(v.name) && !back.has(v.name) && v.host && v.host !== victim && v.state === 'running') back.set(v.name, { at: Date.now() - t0, host: v.host, priority: v.priority });
      }
    }
    await sleep(50);
  }
  // Detection, from the master's own log line (it may be a new master).
  const deadLines = alive.flatMap((h) => logEvents(h, 'host.dead').filter((e) => e.subject === victim && Date.parse(e.timestamp) >= t0 - 1000).map((e) => ({ ...e, by: h })));
  const detected = deadLines.length ? Math.min(...deadLines.map((e) => Date.parse(e.timestamp))) - t0 : null;
  const elected = alive.flatMap((h) => logEvents(h, 'election.won').filter((e) => Date.parse(e.timestamp) >= t0).map((e) => ({ h, at: Date.parse(e.timestamp) - t0 })));
  console.log(`   ${t(0)}  power cut of ${victim}`);
  for (const e of elected) console.log(`   ${t(e.at)}  ${e.h} elected master`);
  if (detected !== null) console.log(`   ${t(detected)}  ${victim} declared dead by ${deadLines[0].by} (${deadLines[0].reason})`);
  for (const [name, b] of [...back].sort((a, b) => a[1].at - b[1].at)) console.log(`   ${t(b.at)}  ${name} (priority ${b.priority}) running again on ${b.host}`);
  const missing = lost.filter((n) => !back.has(n));
  const doubles = allVms.filter((n) => copies(n) > 1);
  const gone = allVms.filter((n) => copies(n) === 0);
  const last = Math.max(0, ...[...back.values()].map((b) => b.at));
  console.log(
    `   totals: ${back.size}/${lost.length} VMs back, all within ${t(last).trim()} of the power cut` +
      (detected !== null ? ` (${t(last - detected).trim()} after detection)` : '') +
      `; copies running: ${allVms.length - gone.length}/${allVms.length} VMs, ${doubles.length} running twice`,
  );
  if (missing.length || doubles.length || gone.length) {
    console.log(`   PROBLEM: missing=${missing.join(',') || '-'} doubled=${doubles.join(',') || '-'} not running=${gone.join(',') || '-'}`);
    process.exitCode = 1;
  }
}

async function main() {
  console.log(`Vigil demo: ${HOSTS} hosts, ${VMS} VMs, fast timings, lab in ${dir}`);
  await lab.down({ purge: true });
  const ids = await lab.create({ dir, hosts: HOSTS, datastores: 2, profile: 'fast' });
  for (const id of ids) await lab.start(id);
  const master = await lab.waitConverged(30_000);
  if (!master) throw new Error(`no master elected; see ${dir}/hosts/*/agent.log`);
  console.log(`${master} is master (most datastores, then the highest host id as a string)`);
  const names = await lab.createVms(VMS, { via: master });
  const all = await vms([master]);
  console.log(`${names.length} VMs started and protected:`);
  for (const h of ids) console.log(`   ${h}${h === master ? ' (master)' : ''}: ${all.filter((v) => v.host === h).map((v) => v.name).join(', ')}`);

  // 1. A slave: the one with the most VMs.
  const slaves = ids.filter((h) => h !== master);
  const victim = slaves.sort((a, b) => all.filter((v) => v.host === b).length - all.filter((v) => v.host === a).length)[0];
  await powerCut(victim, ids.filter((h) => h !== victim), names, 'slave failure');

  // 2. The master.
  const alive = ids.filter((h) => h !== victim && h !== master);
  await powerCut(master, alive, names, 'master failure');

  // Bring both back: they rejoin as slaves; nothing moves.
  await lab.start(victim);
  await lab.start(master);
  const m2 = await lab.waitConverged(30_000);
  console.log(`\n${victim} and ${master} powered on again: they rejoin as slaves of ${m2}; no VM moves or doubles.`);
  if (keep) {
    console.log(`\nThe lab keeps running. Try:\n  npx vigil lab status --dir ${dir}\n  npx vigil vms --socket ${lab.paths.socket(m2 ?? ids[0])}\n  npx vigil lab down --dir ${dir}`);
  } else {
    await lab.down({ purge: true });
  }
}

main().catch(async (err) => {
  console.error(`demo failed: ${err.stack ?? err}`);
  await lab.down().catch(() => {});
  process.exit(1);
});
