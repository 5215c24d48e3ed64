/**
 * The `vigil lab --netns` commands through the real CLI (SPEC §4.4; issue 5 item 5): `lab up
 * --netns` builds the namespaces and starts every agent in its own network and mount namespace;
 * `isolate`, `partition`, `one-way`, `heal`, `storage-loss` and `storage-heal` change the
 * lab, which `lab status` reports; usage mistakes exit 2 with a clear message; `lab kill` still
 * powers a host off and `lab start` brings it back in its namespace; `lab down` leaves no
 * namespace, link, rule, mount or process behind.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Lab, labTempDir, runCli, waitFor } from './helpers/lab.js';
import { Timeline } from './helpers/vms.js';
import { hostProcesses, netnsLeftovers, netnsSkipReason, nsOf, statuses } from './helpers/netns.js';
import type { NetnsLab } from '@vigil/cli';

const skip = await netnsSkipReason();
if (skip) console.log(`SKIPPED netns-cli: ${skip}`);

describe.skipIf(!!skip)('vigil lab --netns (the real CLI)', () => {
  let dir = '';
  let plain = '';
  let lab: Lab;
  let netns: NetnsLab | undefined;
  const tl = new Timeline('vigil lab --netns');

  const vigil = (...args: string[]) => runCli([...args], { timeoutMs: 60_000 });
  const labCmd = (...args: string[]) => vigil('lab', ...args, '--dir', dir);

  beforeAll(async () => {
    dir = await labTempDir('netns-cli');
    plain = await labTempDir('netns-cli-plain');
    lab = new Lab(dir);
  });

  afterAll(async () => {
    tl.print();
    if (dir) await runCli(['lab', 'down', '--purge', '--dir', dir]).catch(() => undefined);
    if (netns) await netns.down().catch(() => undefined);
    if (plain) await rm(plain, { recursive: true, force: true });
  }, 60_000);

  it('lab up --netns: namespaces, namespaced addresses, the isolation address, every agent in its host namespace', async () => {
    const bad = await vigil('lab', 'up', '--netns', '--isolation-response', 'bogus', '--dir', dir);
    expect(bad.code, bad.stderr).toBe(2);
    expect(bad.stderr).toMatch(/--isolation-response must be one of leavePoweredOn, powerOff, shutdown/);

    const up = await labCmd('up', '--netns', '--hosts', '3', '--vms', '2', '--isolation-response', 'shutdown');
    tl.mark('lab up --netns --hosts 3 --vms 2 --isolation-response shutdown');
    expect(up.code, up.stderr + up.stdout).toBe(0);
    expect(up.stdout).toMatch(/network namespaces vg[0-9a-f]{6}-h1 \.\.\. vg[0-9a-f]{6}-h3 on bridge vg[0-9a-f]{6}-br, subnet 10\.99\.[0-9]+\.0\/24, isolation address 10\.99\.[0-9]+\.1/);
    expect(up.stdout).toMatch(/created, started and protected 2 VMs/);
    expect(up.stdout).toContain(`npx vigil lab isolate host-N --dir ${dir}`);
    netns = await lab.netns();
    const cfg = JSON.parse(readFileSync(lab.paths.config, 'utf8')) as { hosts: Record<string, { address: string }>; isolationAddresses: string[]; pingHosts: boolean; isolationResponse: string };
    expect(cfg.isolationAddresses).toEqual([netns.isolationAddress()]);
    expect(cfg.pingHosts).toBe(true);
    expect(cfg.isolationResponse).toBe('shutdown');
    for (const h of ['host-1', 'host-2', 'host-3']) {
      expect(cfg.hosts[h]!.address).toBe(netns.address(h));
      // Every process of the host (agent, VM daemon, VMs) in the host's network namespace and in
      // one private mount namespace.
      const procs = hostProcesses(dir, h);
      expect(procs.length).toBeGreaterThan(0);
      const netIno = statSync(`/run/netns/${netns.nsName(h)}`).ino;
      for (const p of procs) expect(p.net, `${p.cmd} in ${netns.nsName(h)}`).toBe(`net:[${netIno}]`);
      expect(new Set(procs.map((p) => p.mnt)).size).toBe(1);
      expect(procs[0]!.mnt).not.toBe(nsOf('self', 'mnt'));
    }
    const st = await labCmd('status');
    expect(st.code).toBe(0);
    expect(st.stdout).toMatch(new RegExp(`host-1\\s+${netns.address('host-1').replace(/\./g, '\\.')}\\s+up`));
    expect(st.stdout).toMatch(/netns: vg[0-9a-f]{6} \(4 namespaces\)\n {2}isolated: +-\n {2}partition: +-\n {2}one-way: +-\n {2}storage-loss: +-/);
    const again = await labCmd('up', '--netns');
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/a lab is already running/);
  }, 90_000);

  it('usage mistakes exit 2 with a clear message', async () => {
    const cases: [string[], RegExp][] = [
      [['isolate', 'host-9'], /unknown lab host host-9 \(hosts: host-1, host-2, host-3\)/],
      [['partition', 'host-1,host-2'], /partition: expected groups of hosts separated by "\/"/],
      [['partition', 'host-1,/host-2,host-3'], /partition: expected groups/],
      [['partition', 'host-1/host-2'], /host-3 in no partition group/],
      [['partition', 'host-1,host-2/host-2,host-3'], /host-2 is in two partition groups/],
      [['partition', 'host-1,host-2/host-7'], /unknown lab host host-7/],
      [['one-way', 'host-1', 'host-1'], /FROM and TO are the same host/],
      [['storage-loss', 'host-1', 'ds9'], /unknown datastore ds9 \(datastores: ds1, ds2\)/],
      [['storage-heal', 'host-4', 'ds1'], /unknown lab host host-4/],
    ];
    for (const [args, msg] of cases) {
      const r = await labCmd(...args);
      expect(r.code, `lab ${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr, `lab ${args.join(' ')}`).toMatch(msg);
    }
    // A lab without namespaces.
    await new Lab(plain).create({ dir: plain, hosts: 2 });
    for (const args of [['isolate', 'host-1'], ['heal'], ['partition', 'host-1/host-2'], ['storage-loss', 'host-1', 'ds1']]) {
      const r = await vigil('lab', ...args, '--dir', plain);
      expect(r.code, `lab ${args.join(' ')} on a loopback lab: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/has no network namespaces: .* `vigil lab up --netns`/);
    }
    const none = await vigil('lab', 'heal', '--dir', `${plain}-missing`);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no lab in/);
  }, 60_000);

  it('isolate, partition, one-way, heal, storage-loss and storage-heal change the lab; status shows them', async () => {
    const footer = async () => (await labCmd('status')).stdout.split('\n').filter((l) => /^ {2}[a-z-]+:/.test(l)).map((l) => l.trim().replace(/\s+/g, ' '));

    expect((await labCmd('isolate', 'host-2')).code).toBe(0);
    tl.mark('lab isolate host-2');
    expect(await footer()).toEqual(['isolated: host-2', 'partition: -', 'one-way: -', 'storage-loss: -']);
    expect(await netns!.ping('host-2', netns!.isolationAddress())).toBe(false);
    expect((await labCmd('heal')).code).toBe(0);
    expect(await netns!.ping('host-2', netns!.isolationAddress())).toBe(true);

    const p = await labCmd('partition', 'host-1', '/', 'host-2,host-3');
    expect(p.code, p.stderr).toBe(0);
    expect(p.stdout).toContain('partitioned: host-1 / host-2,host-3');
    tl.mark('lab partition host-1 / host-2,host-3');
    expect(await footer()).toEqual(['isolated: -', 'partition: host-1 / host-2,host-3', 'one-way: -', 'storage-loss: -']);
    expect(await netns!.ping('host-1', netns!.address('host-2'))).toBe(false);
    expect(await netns!.ping('host-1', netns!.isolationAddress()), 'a partitioned host still reaches the isolation address').toBe(true);
    expect((await labCmd('one-way', 'host-3', 'host-2')).code).toBe(0);
    expect(await footer()).toEqual(['isolated: -', 'partition: host-1 / host-2,host-3', 'one-way: host-3 -> host-2', 'storage-loss: -']);
    expect((await labCmd('heal')).code).toBe(0);
    tl.mark('lab heal');
    expect(await footer()).toEqual(['isolated: -', 'partition: -', 'one-way: -', 'storage-loss: -']);
    const m = await waitFor('one master after the heal', () => lab.waitConverged(500), { timeoutMs: 20_000 });
    tl.mark(`converged on ${m}`);

    const sl = await labCmd('storage-loss', 'host-1', 'ds1');
    expect(sl.code, sl.stderr).toBe(0);
    tl.mark('lab storage-loss host-1 ds1');
    expect(await footer()).toEqual(['isolated: -', 'partition: -', 'one-way: -', 'storage-loss: host-1: ds1']);
    await waitFor('host-1 to lose ds1', async () => (await statuses(lab, ['host-1'])).get('host-1')?.datastores.join(',') === 'ds2', { timeoutMs: 10_000, intervalMs: 100 });
    tl.mark('host-1 status: datastores ds2');
    expect(readFileSync(`${lab.paths.datastore('ds1')}/vms/vm-1.json`, 'utf8'), 'the test (and the other hosts) still see ds1').toContain('vm-1');
    expect((await labCmd('storage-heal', 'host-1', 'ds1')).code).toBe(0);
    await waitFor('host-1 to see ds1 again', async () => (await statuses(lab, ['host-1'])).get('host-1')?.datastores.join(',') === 'ds1,ds2', { timeoutMs: 10_000, intervalMs: 100 });
    tl.mark('lab storage-heal host-1 ds1: host-1 sees ds1 again');
    expect(await footer()).toEqual(['isolated: -', 'partition: -', 'one-way: -', 'storage-loss: -']);
  }, 90_000);

  it('lab kill powers a host off (nothing of it left); lab start brings it back in its namespace; lab down leaves nothing', async () => {
    const k = await labCmd('kill', 'host-2');
    expect(k.code).toBe(0);
    tl.mark('lab kill host-2');
    await waitFor('no process of host-2 left', () => hostProcesses(dir, 'host-2').length === 0, { timeoutMs: 5000, intervalMs: 50 });
    const s = await labCmd('start', 'host-2');
    expect(s.code, s.stderr).toBe(0);
    const m = await waitFor('host-2 to rejoin', () => lab.waitConverged(500), { timeoutMs: 20_000 });
    tl.mark(`host-2 back; ${m} master`);
    const pid = Number(/pid ([0-9]+)/.exec(s.stdout)![1]);
    expect(nsOf(pid, 'net')).toBe(`net:[${statSync(`/run/netns/${netns!.nsName('host-2')}`).ino}]`);

    const d = await labCmd('down');
    expect(d.code, d.stderr).toBe(0);
    tl.mark('lab down');
    expect(await netnsLeftovers(netns!, dir)).toEqual([]);
    const again = await labCmd('down', '--purge');
    expect(again.code).toBe(0);
  }, 60_000);
});
