/**
 * The network-namespace lab (src/lab/netns.ts) against real namespaces, bridges, nftables and
 * mount namespaces. Needs root and iproute2, nftables, iputils-ping and util-linux (CI runs as
 * root and `.ci/run` installs them); otherwise the namespace tests are skipped with the reason.
 * The naming and validation tests run everywhere.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { NetnsCommandError, NetnsLab, netnsPrefix, netnsSupport, runCommand } from '../src/lab/netns.js';

const HOSTS = ['host-1', 'host-2', 'host-3'];
const NODE = process.execPath;

describe('netns lab: names and validation', () => {
  it('derives short, stable names from the lab name', () => {
    const lab = new NetnsLab({ name: '/tmp/vigil-lab', hosts: HOSTS, subnet: '10.99.7.0/24' });
    expect(lab.prefix).toMatch(/^vg[0-9a-f]{6}$/);
    expect(lab.prefix).toBe(netnsPrefix('/tmp/vigil-lab'));
    expect(lab.nsName('host-2')).toBe(`${lab.prefix}-h2`);
    expect(lab.bridgeNs).toBe(`${lab.prefix}-br`);
    expect(`${lab.prefix}-h244`.length).toBeLessThan(15);
    expect(lab.address('host-3')).toBe('10.99.7.13');
    expect(lab.isolationAddress()).toBe('10.99.7.1');
    expect(lab.exec('host-1', ['node', 'a.js'])).toEqual(['ip', 'netns', 'exec', `${lab.prefix}-h1`, 'node', 'a.js']);
    expect(lab.wrap('host-1', ['node'], { mountNs: true })).toEqual([
      'ip', 'netns', 'exec', `${lab.prefix}-h1`, 'unshare', '-m', '--propagation', 'private', 'node',
    ]);
  });

  it('rejects bad lab names, host names, subnets and groups', async () => {
    expect(() => new NetnsLab({ name: 'a b', hosts: HOSTS })).toThrow(/invalid lab name/);
    expect(() => new NetnsLab({ name: 'x;rm -rf /', hosts: HOSTS })).toThrow(/invalid lab name/);
    expect(() => new NetnsLab({ name: '', hosts: HOSTS })).toThrow(/invalid lab name/);
    expect(() => new NetnsLab({ name: 'x', hosts: ['host-0'] })).toThrow(/invalid host name/);
    expect(() => new NetnsLab({ name: 'x', hosts: ['h1'] })).toThrow(/invalid host name/);
    expect(() => new NetnsLab({ name: 'x', hosts: ['host-245'] })).toThrow(/invalid host name/);
    expect(() => new NetnsLab({ name: 'x', hosts: ['host-1', 'host-1'] })).toThrow(/twice/);
    expect(() => new NetnsLab({ name: 'x', hosts: [] })).toThrow(/at least one host/);
    expect(() => new NetnsLab({ name: 'x', hosts: HOSTS, subnet: '10.98.0.0/24' })).toThrow(/invalid subnet/);
    expect(() => new NetnsLab({ name: 'x', hosts: HOSTS, subnet: '10.99.256.0/24' })).toThrow(/invalid subnet/);
    const lab = new NetnsLab({ name: 'x', hosts: HOSTS });
    expect(() => lab.nsName('host-4')).toThrow(/not a host/);
    expect(() => lab.wrap('host-1', [])).toThrow(/empty argv/);
    await expect(lab.partition([['host-1'], ['host-2']])).rejects.toThrow(/host-3 in no group/);
    await expect(lab.partition([['host-1', 'host-2'], ['host-2', 'host-3']])).rejects.toThrow(/two groups/);
    await expect(lab.partition([HOSTS])).rejects.toThrow(/at least two groups/);
    await expect(lab.oneWay('host-1', 'host-1')).rejects.toThrow(/same host/);
    await expect(lab.storageLoss('host-1', 0, '/tmp/x')).rejects.toThrow(/invalid pid/);
    await expect(lab.storageLoss('host-1', 1234, 'relative/x')).rejects.toThrow(/invalid path/);
  });

  it('a failing command names the command and its stderr', async () => {
    const err = await runCommand([NODE, '-e', 'process.stderr.write("boom"); process.exit(3)']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetnsCommandError);
    expect((err as Error).message).toContain('boom');
    expect((err as Error).message).toContain(NODE);
    expect((err as NetnsCommandError).exitCode).toBe(3);
    const missing = await runCommand(['/nonexistent/tool']).catch((e: unknown) => e);
    expect((missing as Error).message).toMatch(/\/nonexistent\/tool.*ENOENT/);
  });
});

const support = await netnsSupport();
const title = support.ok ? 'netns lab: real namespaces' : `netns lab: real namespaces (skipped: ${support.hint})`;

/** A UDP listener on port 8182 inside a host namespace; collects "payload from address" lines. */
class Receiver {
  readonly lines: string[] = [];
  private constructor(readonly child: ChildProcess) {}

  static async start(lab: NetnsLab, host: string): Promise<Receiver> {
    const script =
      "const d=require('dgram').createSocket('udp4');" +
      "d.on('message',(m,r)=>process.stdout.write(m.toString()+' from '+r.address+'\\n'));" +
      "d.bind(8182,()=>process.stdout.write('ready\\n'));";
    const [cmd, ...args] = lab.exec(host, [NODE, '-e', script]);
    const child = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    const r = new Receiver(child);
    const rl = createInterface({ input: child.stdout! });
    await new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`receiver in ${host} exited (${String(code)})`)));
      rl.on('line', (line) => {
        if (line === 'ready') resolve();
        else r.lines.push(line);
      });
    });
    return r;
  }

  async waitFor(payload: string, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (this.lines.some((l) => l.startsWith(payload + ' '))) return true;
      await new Promise((r) => setTimeout(r, 25));
    }
    return this.lines.some((l) => l.startsWith(payload + ' '));
  }

  stop(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

async function sendUdp(lab: NetnsLab, from: string, to: string, payload: string): Promise<void> {
  const script =
    "const d=require('dgram').createSocket('udp4');" +
    'd.send(process.argv[1],8182,process.argv[2],(e)=>{d.close();if(e){console.error(e.message);process.exit(1)}});';
  await lab.run(from, [NODE, '-e', script, payload, lab.address(to)]);
}

/** A process in host's netns and a private mount ns that answers "yes"/"no": does `file` exist? */
class Probe {
  private readonly answers: string[] = [];
  private waiting: ((s: string) => void) | undefined;
  constructor(readonly child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (l) => {
      const w = this.waiting;
      this.waiting = undefined;
      if (w) w(l);
      else this.answers.push(l);
    });
  }

  static start(lab: NetnsLab, host: string, file: string, mountNs: boolean): Probe {
    const script =
      "const fs=require('fs');require('readline').createInterface({input:process.stdin})" +
      ".on('line',()=>process.stdout.write((fs.existsSync(process.argv[1])?'yes':'no')+'\\n'));";
    const [cmd, ...args] = lab.wrap(host, [NODE, '-e', script, file], { mountNs });
    return new Probe(spawn(cmd!, args, { stdio: ['pipe', 'pipe', 'inherit'] }));
  }

  ask(): Promise<string> {
    const p = new Promise<string>((resolve) => {
      const a = this.answers.shift();
      if (a !== undefined) resolve(a);
      else this.waiting = resolve;
    });
    this.child.stdin!.write('?\n');
    return p;
  }

  stop(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

function nftTables(): string {
  return execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' });
}

function netnsList(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((l) => l !== '');
}

describe.skipIf(!support.ok)(title, () => {
  const name = `vitest-netns-${process.pid}-${randomBytes(4).toString('hex')}`;
  const lab = new NetnsLab({ name, hosts: HOSTS, subnet: '10.99.42.0/24' });
  const started: Array<{ stop(): void }> = [];
  let tablesBefore = '';
  let tmp = '';

  /** Which of `targets` (host names, or 'iso') answer ping from `host`. */
  async function reach(host: string, targets: string[]): Promise<Record<string, boolean>> {
    const results = await Promise.all(
      targets.map((t) => lab.ping(host, t === 'iso' ? lab.isolationAddress() : lab.address(t))),
    );
    return Object.fromEntries(targets.map((t, i) => [t, results[i]!]));
  }

  beforeAll(async () => {
    tablesBefore = nftTables();
    tmp = await mkdtemp(join(tmpdir(), 'vigil-netns-'));
    await lab.up();
  }, 30_000);

  afterAll(async () => {
    for (const p of started) p.stop();
    await lab.down().catch((err: unknown) => console.error(err));
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }, 30_000);

  it('up builds the namespaces; a second up names what exists', async () => {
    const names = netnsList();
    expect(names).toEqual(expect.arrayContaining([lab.bridgeNs, ...HOSTS.map((h) => lab.nsName(h))]));
    await expect(lab.up()).rejects.toThrow(new RegExp(`already exists: .*${lab.bridgeNs}`));
    // Nothing in the default namespace.
    expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain(lab.prefix);
    const info = await lab.info();
    expect(info.isolated).toEqual([]);
    expect(info.rules).toContain('chain partition');
  });

  it('every host reaches every other host and the isolation address', async () => {
    const all = await Promise.all(HOSTS.map((h) => reach(h, [...HOSTS.filter((o) => o !== h), 'iso'])));
    for (const r of all) expect(Object.values(r).every(Boolean), JSON.stringify(all)).toBe(true);
  });

  it('a UDP datagram on port 8182 gets from host-1 to host-2', async () => {
    const rx = await Receiver.start(lab, 'host-2');
    started.push(rx);
    try {
      await sendUdp(lab, 'host-1', 'host-2', 'hello');
      expect(await rx.waitFor('hello', 3000)).toBe(true);
      expect(rx.lines).toContain(`hello from ${lab.address('host-1')}`);
    } finally {
      rx.stop();
    }
  });

  it('isolate cuts a host off from peers and the isolation address; heal brings it back', async () => {
    await lab.isolate('host-1');
    expect((await lab.info()).isolated).toEqual(['host-1']);
    const [h1, h2] = await Promise.all([reach('host-1', ['host-2', 'host-3', 'iso']), reach('host-2', ['host-1', 'host-3', 'iso'])]);
    expect(h1).toEqual({ 'host-2': false, 'host-3': false, iso: false });
    expect(h2).toEqual({ 'host-1': false, 'host-3': true, iso: true });
    await lab.heal();
    expect(await reach('host-1', ['host-2', 'host-3', 'iso'])).toEqual({ 'host-2': true, 'host-3': true, iso: true });
  });

  it('partition separates the groups, but every group still reaches the isolation address', async () => {
    await lab.partition([['host-1'], ['host-2', 'host-3']]);
    const [h1, h2] = await Promise.all([reach('host-1', ['host-2', 'host-3', 'iso']), reach('host-2', ['host-1', 'host-3', 'iso'])]);
    expect(h1).toEqual({ 'host-2': false, 'host-3': false, iso: true });
    expect(h2).toEqual({ 'host-1': false, 'host-3': true, iso: true });
    await lab.heal();
    expect(await reach('host-1', ['host-2', 'host-3'])).toEqual({ 'host-2': true, 'host-3': true });
  });

  it('oneWay drops host-1 -> host-2 while host-2 -> host-1 passes', async () => {
    const [rx1, rx2] = await Promise.all([Receiver.start(lab, 'host-1'), Receiver.start(lab, 'host-2')]);
    started.push(rx1, rx2);
    try {
      await lab.oneWay('host-1', 'host-2');
      await lab.oneWay('host-1', 'host-2'); // idempotent
      expect((await lab.info()).rules.match(/oneway host-1>host-2/g)).toHaveLength(1);
      await sendUdp(lab, 'host-1', 'host-2', 'forward');
      await sendUdp(lab, 'host-2', 'host-1', 'reverse');
      expect(await rx1.waitFor('reverse', 3000)).toBe(true);
      expect(await rx2.waitFor('forward', 700)).toBe(false);
      await lab.heal();
      await sendUdp(lab, 'host-1', 'host-2', 'healed');
      expect(await rx2.waitFor('healed', 3000)).toBe(true);
    } finally {
      rx1.stop();
      rx2.stop();
    }
  });

  it('storageLoss hides a directory from one process only; storageHeal brings it back', async () => {
    const ds = join(tmp, 'ds1');
    const file = join(ds, 'vm1.json');
    execFileSync('mkdir', ['-p', ds]);
    await writeFile(file, '{}');
    const probe = Probe.start(lab, 'host-2', file, true);
    const other = Probe.start(lab, 'host-3', file, true);
    started.push(probe, other);
    expect(await probe.ask()).toBe('yes');

    await lab.storageLoss('host-2', probe.child.pid!, ds);
    await lab.storageLoss('host-2', probe.child.pid!, ds); // idempotent: not stacked
    expect(await probe.ask()).toBe('no');
    expect(await other.ask()).toBe('yes');
    expect(existsSync(file)).toBe(true);

    // Refused: a process of another host, and this process (shared mount namespace).
    await expect(lab.storageLoss('host-2', other.child.pid!, ds)).rejects.toThrow(/not in host-2's namespace/);
    await expect(lab.storageLoss('host-2', process.pid, ds)).rejects.toThrow(/not in host-2's namespace/);
    // In host-2's network namespace but sharing this process's mount namespace (nsenter --net).
    const sharedNs = new Probe(
      spawn('nsenter', [`--net=/run/netns/${lab.nsName('host-2')}`, NODE, '-e', 'setInterval(()=>{},1e6)'], {
        stdio: ['pipe', 'pipe', 'inherit'],
      }),
    );
    // Own mount namespace, but / is shared: a mount there could propagate.
    const sharedMount = new Probe(
      spawn(
        'nsenter',
        [`--net=/run/netns/${lab.nsName('host-2')}`, 'unshare', '-m', '--propagation', 'shared', NODE, '-e', 'setInterval(()=>{},1e6)'],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      ),
    );
    started.push(sharedNs, sharedMount);
    await new Promise((r) => setTimeout(r, 300)); // let unshare exec node
    await expect(lab.storageLoss('host-2', sharedNs.child.pid!, ds)).rejects.toThrow(/shares this process's mount namespace/);
    await expect(lab.storageLoss('host-2', sharedMount.child.pid!, ds)).rejects.toThrow(/shared mount/);
    sharedNs.stop();
    sharedMount.stop();
    expect(existsSync(file)).toBe(true);

    await lab.storageHeal('host-2', probe.child.pid!, ds);
    expect(await probe.ask()).toBe('yes');
    await lab.storageHeal('host-2', probe.child.pid!, ds); // nothing hidden: no-op

    // Leave it hidden: down() must unmount it.
    await lab.storageLoss('host-2', probe.child.pid!, ds);
    expect(await probe.ask()).toBe('no');
  });

  it('down (from a fresh object, as after a crash) removes everything; twice is fine', async () => {
    const probe = started.find((p): p is Probe => p instanceof Probe);
    const fresh = new NetnsLab({ name, hosts: HOSTS, subnet: '10.99.42.0/24' });
    // Keep the probes alive to see the mount go; then they are killed by us.
    await fresh.down({ killProcesses: false });
    expect(await probe!.ask()).toBe('yes');
    for (const p of started) p.stop();
    await fresh.down();
    await lab.down();
    expect(netnsList().filter((n) => n.startsWith(lab.prefix))).toEqual([]);
    expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain(lab.prefix);
    expect(nftTables()).toBe(tablesBefore);
  });
});
