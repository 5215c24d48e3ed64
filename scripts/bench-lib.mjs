// The power-cut experiment of `npm run bench` (scripts/bench.mjs), shared with the side-by-side
// with Pacemaker (scripts/bench-pacemaker.mjs): build a lab of real agents and process VMs, cut
// the power of one host, and time the failover from the agents' logs and `vigil vms`.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Lab, labVmTag } from '@vigil/cli';
import { controlRequest } from '@vigil/agent';

export const PORT = 58182;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function events(lab, host, event) {
  try {
    return readFileSync(lab.paths.log(host), 'utf8')
      .split('\n')
      .filter((l) => l.includes(`"event":"${event}"`))
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

export async function vms(lab, via) {
  for (const h of via) {
    try {
      return (await controlRequest(lab.paths.socket(h), { cmd: 'vms' }, 5000)).vms;
    } catch {
      /* election in progress: try another host */
    }
  }
  return null;
}

export function copies(dir, name) {
  try {
    return Number(execFileSync('pgrep', ['-c', '-f', `^${labVmTag(dir, name)} `], { encoding: 'utf8' }).trim());
  } catch {
    return 0;
  }
}

/**
 * One power cut: returns timings in ms from the cut. `powerCut(victim)` replaces the default
 * `lab.kill(victim)` (e.g. also taking the host's link down in a netns lab); `t0` is taken just
 * before it. `cutAt` is that t0 (Date.now()).
 *
 * A VM is back when it runs on another host: the `vm.powered-on` line that host logs once its
 * VM daemon has the lease and the process runs (same machine, same clock). The master's view
 * (`vigil vms`) is polled only every 200 ms, to know when to stop and to check that view agrees:
 * polling it faster loaded the master (an 800-VM answer every 25 ms) and slowed the restarts
 * being measured. `allBack` is the last of those power-ons.
 */
export async function cut(lab, dir, victim, alive, names, opts = {}) {
  const before = await vms(lab, alive);
  const lostVms = before.filter((v) => v.host === victim && v.protected);
  const lost = lostVms.map((v) => v.name);
  const t0 = Date.now();
  await (opts.powerCut ? opts.powerCut(victim) : lab.kill(victim));
  const seen = new Set();
  while (seen.size < lost.length && Date.now() - t0 < 300_000) {
    await sleep(200);
    const now = await vms(lab, alive);
    for (const v of now ?? []) if (lost.includes(v.name) && v.state === 'running' && v.host !== victim) seen.add(v.name);
  }
  const poweredOn = new Map();
  for (const h of alive) {
    for (const e of events(lab, h, 'vm.powered-on')) {
      const at = Date.parse(e.timestamp) - t0;
      if (at >= 0 && (!poweredOn.has(e.vm) || poweredOn.get(e.vm) > at)) poweredOn.set(e.vm, at);
    }
  }
  const back = new Map();
  for (const v of lostVms) if (seen.has(v.name) && poweredOn.has(v.id)) back.set(v.name, poweredOn.get(v.id));
  const dead = alive.flatMap((h) => events(lab, h, 'host.dead').filter((e) => e.subject === victim && Date.parse(e.timestamp) >= t0 - 500));
  const detect = dead.length ? Math.min(...dead.map((e) => Date.parse(e.timestamp))) - t0 : null;
  const won = alive.flatMap((h) => events(lab, h, 'election.won').filter((e) => Date.parse(e.timestamp) >= t0));
  const elected = won.length ? Math.min(...won.map((e) => Date.parse(e.timestamp))) - t0 : null;
  const allBack = back.size ? Math.max(...back.values()) : null;
  const doubled = names.filter((n) => copies(dir, n) > 1).length;
  const missing = lost.length - back.size;
  return { vms: lost.length, detect, elected, allBack, doubled, missing, cutAt: t0, victim };
}

/**
 * Build a lab, create `count` VMs, cut the power of the master or of the slave running the most
 * VMs, take the lab down. Options beyond bench.mjs's cases: `dir`, `netns` (each host in its
 * own network namespace), `vm(name, index, { master, hosts })` (a LabVmSpec: command, host...),
 * `powerCut(lab, victim)`, `settleMs` (a pause between the last VM start and the cut).
 */
export async function scenario({ profile, hosts, count, masterCut, dir, netns = false, vm, powerCut, settleMs = 0, port = PORT }) {
  // tmpfs: the shared-storage stand-in. On a disk-backed /tmp the fsyncs of 16 simulated hosts
  // queue on one local disk, which no real cluster (each host its own NFS client) would see.
  dir ??= `/dev/shm/vigil-bench-${profile}-${hosts}x${count}`;
  const lab = new Lab(dir);
  await lab.down({ purge: true });
  try {
    const ids = await lab.create({ dir, hosts, datastores: 2, profile, port, ...(netns ? { netns: true } : {}) });
    for (const id of ids) await lab.start(id);
    const master = await lab.waitConverged(profile === 'fast' ? 30_000 : 90_000);
    if (!master) throw new Error(`${dir}: no master`);
    const names = await lab.createVms(count, { via: master, concurrency: 8, ...(vm ? { vm: (name, i) => vm(name, i, { master, hosts: ids }) } : {}) });
    const all = await vms(lab, [master]);
    const victim = masterCut ? master : ids.filter((h) => h !== master).sort((a, b) => all.filter((v) => v.host === b).length - all.filter((v) => v.host === a).length)[0];
    const alive = ids.filter((h) => h !== victim);
    if (settleMs > 0) await sleep(settleMs);
    return await cut(lab, dir, victim, alive, names, powerCut ? { powerCut: (h) => powerCut(lab, h) } : {});
  } finally {
    await lab.down({ purge: true });
  }
}

export const median = (xs) => {
  const s = xs.filter((x) => x !== null).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
export const fmt = (ms) => (ms === null ? '-' : `${(ms / 1000).toFixed(2)} s`);
