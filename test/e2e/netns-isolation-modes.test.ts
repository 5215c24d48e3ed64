/**
 * The two other isolation responses (SPEC §3.4; issue 5), real agents and process VMs in network
 * namespaces, 3 hosts; the cluster's response is the default `leavePoweredOn`:
 *  - a slave running only leavePoweredOn VMs is isolated: it declares isolation, the master shows
 *    it `isolated` (`vigil hosts`), nothing is powered off, restarted or doubled; after the heal
 *    it rejoins with its VMs where they were and its isolation bit cleared;
 *  - a slave running VMs whose own config says `isolationResponse: shutdown` is isolated: each
 *    VM gets SIGTERM (it traps it and writes a marker file) and exits by itself, before the
 *    forced-off timeout; poweredoff/ files are written; the master restarts them elsewhere, once
 *    each (the restarted copies got no SIGTERM).
 * A background pgrep watch checks that no VM ever runs twice.
 */
import { describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FAST_TIMING } from '@vigil/config';
import { describeLab, runCli, waitFor } from './helpers/lab.js';
import { Timeline, byName, holdFor, secs, timeOf, vmsVia, waitRunningElsewhere } from './helpers/vms.js';
import { PoweredOffWatch, hostStates, logLines, markLog, netnsSkipReason, offsetsNow, statuses, termTrapVm, useNetnsLab, vmLocations } from './helpers/netns.js';

const skip = await netnsSkipReason();
if (skip) console.log(`SKIPPED netns-isolation-modes: ${skip}`);

const T = FAST_TIMING;
const SLACK_MS = 1500;

/** host-1 runs vm-1..vm-3 (cluster response: leavePoweredOn), host-2 runs vm-4, vm-5 (own response: shutdown). */
const PLACEMENT: Record<string, string> = { 'vm-1': 'host-1', 'vm-2': 'host-1', 'vm-3': 'host-1', 'vm-4': 'host-2', 'vm-5': 'host-2' };

describe.skipIf(!!skip)('isolation responses leavePoweredOn and shutdown (netns, 3 hosts, 5 VMs)', () => {
  const fx = useNetnsLab('isolation-modes', {
    hosts: 3,
    vms: 5,
    vm: (name, _i, { dir }) => {
      const host = PLACEMENT[name]!;
      if (host === 'host-2') {
        mkdirSync(join(dir, 'markers'), { recursive: true });
        return { host, isolationResponse: 'shutdown', ...termTrapVm(dir, name, join(dir, 'markers')) };
      }
      return { host };
    },
  });

  it('leavePoweredOn: the isolated host keeps its VMs, the master shows it isolated and restarts nothing', async () => {
    const tl = new Timeline('slave isolated (leavePoweredOn)');
    const problems: string[] = [];
    const { lab, master, hosts, dir } = fx.v;
    const victim = 'host-1';
    try {
      expect(master, 'host-3 (highest id) is master, host-1 and host-2 run the VMs').toBe('host-3');
      const before = await vmLocations(dir);
      const mine = fx.v.names.filter((n) => PLACEMENT[n] === victim);
      for (const n of mine) expect(before.get(n)?.map((x) => x.host), `${n} runs on ${victim}`).toEqual([victim]);
      const offsets = offsetsNow(lab, hosts);
      const t0 = tl.mark(`lab isolate ${victim} (runs ${mine.join(', ')}; response leavePoweredOn)`);
      await lab.isolate(victim);

      const declared = await waitFor(`${victim} to declare itself isolated`, () => logLines(lab, [victim], offsets, /^isolation\.declared$/)[0], { timeoutMs: 30_000, intervalMs: 50, describe: () => describeLab(lab) });
      const detectMs = timeOf(declared) - t0;
      tl.mark(`${victim} isolated ${secs(detectMs)} after the cut`, timeOf(declared));
      if (detectMs > T.slaveIsolationMs + T.icmpPingTimeoutMs + SLACK_MS) problems.push(`${victim} declared isolation ${detectMs} ms after the cut, expected about slaveIsolationMs (${T.slaveIsolationMs} ms) + a ping round`);

      // `vigil hosts` on the master, the real CLI: host-1 isolated.
      const cli = await waitFor(`vigil hosts on ${master} to show ${victim} isolated`, async () => {
        const r = await runCli(['hosts', '--json', '--socket', lab.paths.socket(master)]);
        const row = (JSON.parse(r.stdout) as { host: string; state: string; isolated: boolean | null }[]).find((h) => h.host === victim);
        return row?.state === 'isolated' && row.isolated === true ? r : undefined;
      }, { timeoutMs: 20_000, intervalMs: 200 });
      expect(cli.code).toBe(0);
      tl.mark(`vigil hosts --socket ${master}: ${victim} isolated, isolation bit 1`);

      // The response is due after isolationResponseDelayMs: leavePoweredOn, logged per VM.
      const responses = await waitFor(`${victim} to apply leavePoweredOn to its ${mine.length} VMs`, () => {
        const l = logLines(lab, [victim], offsets, /^isolation\.response$/);
        return l.length >= mine.length ? l : undefined;
      }, { timeoutMs: T.isolationResponseDelayMs + 15_000, intervalMs: 100 });
      markLog(tl, responses);
      for (const l of responses) expect(String(l.response)).toBe('leavePoweredOn');

      // For a while after the response: still running there, once, nothing restarted anywhere.
      const polls = await holdFor(`${victim}'s VMs keep running there, once each; nothing is restarted`, 3000, async () => {
        const locs = await vmLocations(dir);
        for (const n of fx.v.names) {
          const l = locs.get(n) ?? [];
          if (l.length !== 1) return `${n} runs ${l.length} times`;
          if (l[0]!.pid !== before.get(n)?.[0]?.pid) return `${n} was restarted (pid ${before.get(n)?.[0]?.pid} -> ${l[0]!.pid} on ${l[0]!.host})`;
        }
        const r = logLines(lab, hosts, offsets, /^(vm\.restarting|isolation\.stopped)$/);
        return r.length > 0 ? `${r[0]!.from} logged ${String(r[0]!.event)}: ${String(r[0]!.message)}` : null;
      });
      tl.mark(`held 3 s after the response (${polls} polls): every VM still runs where it ran, once`);
      const view = byName((await vmsVia(lab, [master]))!.vms);
      for (const n of mine) tl.mark(`${master}'s vms view: ${n} ${view.get(n)?.state} ${view.get(n)?.detail ?? ''}`);
      markLog(tl, logLines(lab, [master], offsets, /^host\.(isolated|partitioned|agentUnreachable|isolation-bit)$/));

      const t1 = tl.mark('lab heal');
      await lab.heal();
      await waitFor(`${victim} back as a slave of ${master}, isolation bit cleared`, async () => {
        const st = (await statuses(lab, [victim])).get(victim);
        const hs = (await hostStates(lab, master))?.get(victim);
        return st?.role === 'slave' && st.master === master && hs?.state === 'connected' && hs.isolated === false;
      }, { timeoutMs: 15_000, intervalMs: 100, describe: () => describeLab(lab) });
      tl.mark(`${victim} slave of ${master} again, bit cleared, ${secs(Date.now() - t1)} after the heal`);
      const after = await vmLocations(dir);
      for (const n of fx.v.names) expect(after.get(n)?.map((x) => x.pid), `${n}: the same single process as before`).toEqual(before.get(n)?.map((x) => x.pid));
      expect(logLines(lab, hosts, offsets, /^vm\.restarting$/).map((l) => l.message), 'nothing restarted').toEqual([]);
      expect(problems, 'timing').toEqual([]);
    } finally {
      tl.print();
    }
  }, 90_000);

  it('shutdown (per-VM): SIGTERM, a clean exit, poweredoff/ written, then a restart elsewhere, once each', async () => {
    const tl = new Timeline('slave isolated (per-VM shutdown)');
    const { lab, master, hosts, dir } = fx.v;
    const victim = 'host-2';
    try {
      const mine = fx.v.names.filter((n) => PLACEMENT[n] === victim);
      const before = await vmLocations(dir);
      for (const n of mine) expect(before.get(n)?.map((x) => x.host), `${n} runs on ${victim}`).toEqual([victim]);
      const offsets = offsetsNow(lab, hosts);
      const pw = PoweredOffWatch.forLab(lab).start();
      const t0 = tl.mark(`lab isolate ${victim} (runs ${mine.join(', ')}; their own response: shutdown)`);
      await lab.isolate(victim);

      const back = await waitRunningElsewhere(fx.v, () => hosts.filter((h) => h !== victim), mine, [victim], t0, tl, 40_000);
      await pw.stop();
      markLog(tl, logLines(lab, [victim], offsets, /^(isolation\.(declared|response|stopped)|vm\.local-stop)$/));
      markLog(tl, logLines(lab, [master], offsets, /^(host\.isolated|vm\.restart(ing|ed))$/));
      for (const [vm, at] of pw.seen) tl.mark(`poweredoff/${vm} seen on disk`, at);

      const ids = mine.map((n) => `${n === 'vm-4' ? 'ds2' : 'ds1'}:vms/${n}.json`).sort();
      const responses = logLines(lab, [victim], offsets, /^isolation\.response$/);
      expect(responses.map((l) => `${String(l.vm)}=${String(l.response)}`).sort()).toEqual(ids.map((id) => `${id}=shutdown`));
      expect([...pw.seen.keys()].sort(), 'a poweredoff/ file for each VM it shut down').toEqual(ids);
      for (const id of ids) {
        const name = id.replace(/^.*\//, '').replace(/\.json$/, '');
        expect(pw.seen.get(id)! <= t0 + back.get(name)!.afterMs, `poweredoff/${id} written before ${name} ran again`).toBe(true);
      }
      // Graceful: each VM got SIGTERM on the isolated host and exited by itself (not forced off).
      for (const n of mine) {
        const marker = (await readFile(join(dir, 'markers', `${n}.term`), 'utf8')).trim().split('\n');
        tl.mark(`${n}: marker file says "${marker.join(' | ')}"`);
        expect(marker.map((l) => l.split(' ').slice(0, 2).join(' ')), `${n} got SIGTERM once, on ${victim}`).toEqual([`TERM ${victim}`]);
      }
      const stops = logLines(lab, [victim], offsets, /^vm\.local-stop$/);
      expect(stops.map((l) => String(l.message).replace(/^.*: /, '')).sort(), 'stopped by a graceful shutdown, not forced off').toEqual(mine.map(() => 'requested (graceful shutdown through Vigil)'));
      const restarted = [...new Set(logLines(lab, [master], offsets, /^vm\.restarting$/).map((l) => String(l.vm)))].sort();
      expect(restarted, 'restarted: exactly the shut-down VMs').toEqual(ids);
      const locs = await vmLocations(dir);
      for (const n of fx.v.names) expect(locs.get(n), `${n} runs once`).toHaveLength(1);
      for (const n of mine) expect(locs.get(n)![0]!.host, `${n} no longer on ${victim}`).not.toBe(victim);

      const t1 = tl.mark('lab heal');
      await lab.heal();
      await waitFor(`${victim} back as a slave of ${master}`, async () => {
        const st = (await statuses(lab, [victim])).get(victim);
        const hs = (await hostStates(lab, master))?.get(victim);
        return st?.role === 'slave' && st.master === master && hs?.state === 'connected' && hs.isolated === false;
      }, { timeoutMs: 15_000, intervalMs: 100, describe: () => describeLab(lab) });
      tl.mark(`${victim} slave of ${master} again, ${secs(Date.now() - t1)} after the heal`);
      await fx.watch!.stop();
      expect(fx.watch!.doubled(), 'no VM ever ran twice').toEqual([]);
      tl.mark(`copy watch: ${fx.watch!.samples} samples over the whole file, no VM ever seen twice`);
    } finally {
      tl.print();
    }
  }, 90_000);
});
