#!/usr/bin/env node
// `npm run bench -- --peer pacemaker`: the same three-node power-cut experiment with Pacemaker +
// Corosync (Debian's packages) and with Vigil, run alternately, median/min/max of each and the
// ratios Pacemaker / Vigil. A benchmark only, not part of CI. Needs root (namespaces, mounts).
//
// Pacemaker side: three nodes n1..n3, each the PID 1 (scripts/pacemaker/node.sh) of its own
// PID namespace, in its own network namespace (a veth on a bridge that lives in a namespace of
// its own, 10.98.0.11-13/24) and its own mount + UTS namespace (node name = host name), with its
// own /etc/corosync, /var/lib/pacemaker, /var/lib/corosync, /run, /var/log and /dev/shm
// bind-mounted from /dev/shm/vigil-pcmk-bench/<node>. Corosync 3 with the knet transport on the
// namespace addresses (no crypto), votequorum; Pacemaker with stonith-enabled=false and
// no-quorum-policy=stop (the default: two of three nodes keep quorum and recover). The resource
// is `ocf:vigilbench:Stamp` (scripts/pacemaker/ocf/Stamp), placed on a node that is not the DC.
//
// Vigil side: a netns lab (`vigil lab up --netns`: each agent in its own network namespace on a
// bridge) of three real agents and ONE protected process VM, started on a slave; scripts/bench-lib.mjs
// builds it and cuts the power, as for `npm run bench`.
//
// Power cut, both sides: t0 = Date.now(); the victim's bridge port goes down; every process of the
// victim dies at once (Pacemaker: SIGKILL to the PID namespace's init, so the kernel kills the
// whole namespace; Vigil: `vigil lab kill`, agent + VM daemon + VMs).
// Measured, both sides, from the stand-in's own start: the resource and the VM each wait 30 ms
// ("starting") and then append "<CLOCK_REALTIME seconds> <where>" (bash $EPOCHREALTIME) to a stamp
// file; the figure is the first stamp from another node minus t0 (same machine, same clock).
//
// Options: --runs N (per series, default 10), --token LIST (corosync token values, `default` =
// the option left out: 3000 ms + 650 ms per node above two; default "default,1000"), --profiles
// LIST (Vigil profiles, default "default,fast"), --only pacemaker|vigil, --lock FILE (hold an
// flock on FILE during each round, so other benchmarks on the machine interleave).
import { spawn, execFile } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync, rmSync, chownSync, chmodSync, openSync, closeSync, readdirSync, accessSync, constants } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { join, delimiter } from 'node:path';
import { labVmTag, Lab } from '@vigil/cli';
import { scenario, median, fmt, sleep } from './bench-lib.mjs';

const NODE_SH = fileURLToPath(new URL('./pacemaker/node.sh', import.meta.url));
const OCF_DIR = fileURLToPath(new URL('./pacemaker/ocf', import.meta.url));
const ROOT = '/dev/shm/vigil-pcmk-bench'; // node state (tmpfs, like the Vigil lab's datastores)
const STAMPS = '/tmp/vigil-pcmk-bench'; // stamp files: outside /dev/shm, which each node replaces
const NS = 'vpcmk';
const NODES = ['n1', 'n2', 'n3'];
const SUBNET = '10.98.0';
const addr = (node) => `${SUBNET}.${10 + Number(node.slice(1))}`;
const VIGIL_DIR = (profile) => `/dev/shm/vigil-bench-peer-${profile}`;
const RUN_TIMEOUT_MS = 120_000;

// ---------------------------------------------------------------------------------------------
// Helpers

function run(argv, { timeoutMs = 15_000, input } = {}) {
  const [file, ...args] = argv;
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { timeout: timeoutMs, encoding: 'utf8', maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')}: ${(stderr || err.message).trim()}`));
      else resolve(stdout);
    });
    child.stdin?.on('error', () => {});
    child.stdin?.end(input ?? '');
  });
}
const quiet = (p) => p.then(() => true, () => false);

function onPath(tool) {
  return (process.env.PATH ?? '').split(delimiter).some((d) => {
    try {
      accessSync(join(d, tool), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** What this benchmark needs, and how to get it; null when everything is there. */
export function missingTools() {
  const need = {
    corosync: 'corosync',
    'corosync-cfgtool': 'corosync',
    pacemakerd: 'pacemaker',
    cibadmin: 'pacemaker-cli-utils (with pacemaker)',
    crm_mon: 'pacemaker-cli-utils (with pacemaker)',
    crm_resource: 'pacemaker-cli-utils (with pacemaker)',
    ip: 'iproute2',
    unshare: 'util-linux',
    nsenter: 'util-linux',
    ping: 'iputils-ping (the Vigil netns lab)',
    nft: 'nftables (the Vigil netns lab)',
  };
  const missing = Object.keys(need).filter((t) => !onPath(t));
  const problems = [];
  if (process.getuid?.() !== 0) problems.push('run as root (namespaces and mounts)');
  if (missing.length) problems.push(`missing ${missing.map((t) => `${t} (${need[t]})`).join(', ')}`);
  if (!problems.length) return null;
  return `${problems.join('; ')}.\nInstall: apt-get install -y pacemaker corosync crmsh iproute2 iputils-ping nftables\n(crmsh is not used by the benchmark, but is the handy way to look at the cluster by hand.)`;
}

// ---------------------------------------------------------------------------------------------
// The Pacemaker cluster

function corosyncConf(token) {
  const nodes = NODES.map((n) => `    node {\n        name: ${n}\n        nodeid: ${n.slice(1)}\n        ring0_addr: ${addr(n)}\n    }\n`).join('');
  return `# Written by scripts/bench-pacemaker.mjs
totem {
    version: 2
    cluster_name: vigilbench
    transport: knet
    crypto_cipher: none
    crypto_hash: none
${token === 'default' ? '' : `    token: ${token}\n`}}
nodelist {
${nodes}}
quorum {
    provider: corosync_votequorum
}
logging {
    to_logfile: yes
    logfile: /var/log/corosync/corosync.log
    to_stderr: no
    to_syslog: no
    timestamp: hires
}
`;
}

/**
 * The CIB each node starts with: cluster options only. dc-deadtime (how long a starting node
 * waits for a DC) is cut from 20 s to 2 s to shorten the start-up; it plays no part once a DC
 * exists, and the power cut never hits the DC.
 */
function seedCib() {
  const opt = (name, value) => `        <nvpair id="opt-${name}" name="${name}" value="${value}"/>`;
  return `<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
${[opt('stonith-enabled', 'false'), opt('no-quorum-policy', 'stop'), opt('dc-deadtime', '2s')].join('\n')}
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
`;
}

const RESOURCE_XML = `<primitive id="stamp" class="ocf" provider="vigilbench" type="Stamp">
  <instance_attributes id="stamp-params"><nvpair id="stamp-params-stampfile" name="stampfile" value="${STAMPS}/pacemaker"/></instance_attributes>
  <meta_attributes id="stamp-meta"><nvpair id="stamp-meta-target-role" name="target-role" value="Stopped"/></meta_attributes>
  <operations><op id="stamp-monitor-10s" name="monitor" interval="10s" timeout="20s"/></operations>
</primitive>`;

function hacluster() {
  const passwd = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('hacluster:'));
  const group = readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.startsWith('haclient:'));
  if (!passwd || !group) throw new Error('no hacluster user / haclient group: is pacemaker installed?');
  return { uid: Number(passwd.split(':')[2]), gid: Number(group.split(':')[2]) };
}

export class PacemakerCluster {
  /** node -> host pid of its init (PID 1 of its namespace) */
  inits = new Map();
  /** node -> pid of the `ip netns exec ... unshare` wrapper */
  wrappers = new Map();

  nsName(node) {
    return `${NS}-${node}`;
  }

  async up(token) {
    await this.down();
    const { uid, gid } = hacluster();
    mkdirSync(STAMPS, { recursive: true });
    writeFileSync(`${STAMPS}/pacemaker`, '');
    const br = `${NS}-br`;
    await run(['ip', 'netns', 'add', br]);
    await run(['ip', '-n', br, 'link', 'add', 'br0', 'type', 'bridge']);
    await run(['ip', '-n', br, 'link', 'set', 'br0', 'up']);
    for (const n of NODES) {
      const ns = this.nsName(n);
      await run(['ip', 'netns', 'add', ns]);
      await run(['ip', 'link', 'add', ns, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await run(['ip', 'link', 'set', ns, 'netns', br]);
      await run(['ip', '-n', br, 'link', 'set', ns, 'master', 'br0', 'up']);
      await run(['ip', '-n', ns, 'addr', 'add', `${addr(n)}/24`, 'dev', 'eth0']);
      await run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
      await run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);

      const d = `${ROOT}/${n}`;
      for (const sub of ['etc-corosync', 'lib-corosync', 'run', 'shm', 'log/corosync', 'log/pacemaker', 'lib-pacemaker/cib', 'lib-pacemaker/pengine', 'lib-pacemaker/blackbox', 'lib-pacemaker/cores']) mkdirSync(`${d}/${sub}`, { recursive: true });
      for (const sub of ['lib-pacemaker', 'lib-pacemaker/cib', 'lib-pacemaker/pengine', 'lib-pacemaker/blackbox', 'lib-pacemaker/cores', 'log/pacemaker']) chownSync(`${d}/${sub}`, uid, gid);
      chmodSync(`${d}/shm`, 0o1777); // libqb's ring buffers, created by the hacluster daemons
      writeFileSync(`${d}/etc-corosync/corosync.conf`, corosyncConf(token));
      writeFileSync(`${d}/lib-pacemaker/cib/cib.xml`, seedCib(), { mode: 0o600 });
      chownSync(`${d}/lib-pacemaker/cib/cib.xml`, uid, gid);

      const out = openSync(`${d}/init.log`, 'a');
      const child = spawn('ip', ['netns', 'exec', ns, 'unshare', '--pid', '--fork', '--mount-proc', '--mount', '--uts', '--propagation', 'private', NODE_SH, n, d, OCF_DIR], {
        detached: true,
        stdio: ['ignore', out, out],
      });
      closeSync(out);
      child.unref();
      this.wrappers.set(n, child.pid);
    }
    // The init is the one child of the wrapper (`unshare --fork`).
    const deadline = Date.now() + 10_000;
    for (const n of NODES) {
      for (;;) {
        const pid = this.childOf(this.wrappers.get(n));
        if (pid) {
          this.inits.set(n, pid);
          break;
        }
        if (Date.now() > deadline) throw new Error(`pacemaker node ${n} did not start: ${readFileSync(`${ROOT}/${n}/init.log`, 'utf8')}`);
        await sleep(20);
      }
    }
  }

  childOf(pid) {
    try {
      const c = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
      return c ? Number(c.split(/\s+/)[0]) : null;
    } catch {
      return null;
    }
  }

  /** Run a command inside a node (its network, mount, UTS and PID namespaces). */
  exec(node, argv, opts) {
    return run(['nsenter', '-t', String(this.inits.get(node)), '-n', '-m', '-u', '-p', '--', ...argv], opts);
  }

  /** crm_mon's view from `node`: { dc, online: [...], resource: node|null }. */
  async status(node) {
    const xml = await this.exec(node, ['crm_mon', '-1', '--output-as=xml']);
    const dc = /<current_dc [^>]*present="true"[^>]*name="([^"]+)"/.exec(xml)?.[1] ?? null;
    const online = [...xml.matchAll(/<node name="([^"]+)"[^>]*online="true"/g)].map((m) => m[1]);
    const rsc = /<resource id="stamp"[^>]*role="Started"[^>]*>\s*<node name="([^"]+)"/.exec(xml)?.[1] ?? null;
    return { dc, online, resource: rsc };
  }

  async waitReady(timeoutMs = 90_000) {
    const deadline = Date.now() + timeoutMs;
    let last = null;
    for (;;) {
      last = await this.status('n1').catch((e) => ({ error: e.message }));
      if (last.dc && NODES.every((n) => last.online.includes(n))) return last;
      if (Date.now() > deadline) throw new Error(`pacemaker cluster not ready after ${timeoutMs} ms: ${JSON.stringify(last)}`);
      await sleep(200);
    }
  }

  /** Place the resource on `node` (a location preference), and wait until it runs there. */
  async place(node, via) {
    // Created stopped, so that it first starts where the constraint (which must name an existing resource) puts it.
    await this.exec(via, ['cibadmin', '--create', '-o', 'resources', '--xml-text', RESOURCE_XML]);
    await this.exec(via, ['cibadmin', '--create', '-o', 'constraints', '--xml-text', `<rsc_location id="stamp-prefers-${node}" rsc="stamp" node="${node}" score="100"/>`]);
    await this.exec(via, ['crm_resource', '--resource', 'stamp', '--meta', '--set-parameter', 'target-role', '--parameter-value', 'Started']);
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (readStamps(`${STAMPS}/pacemaker`).some((s) => s.where === node)) return;
      if (Date.now() > deadline) throw new Error(`the resource did not start on ${node}: ${JSON.stringify(await this.status(via).catch((e) => e.message))}`);
      await sleep(50);
    }
  }

  /** Power cut: the node's bridge port down, SIGKILL to its PID namespace's init. */
  async cut(node) {
    await run(['ip', '-n', `${NS}-br`, 'link', 'set', this.nsName(node), 'down']);
    process.kill(this.inits.get(node), 'SIGKILL');
  }

  /** Everything gone: processes, namespaces (with their veths and bridge), files. Safe to repeat. */
  async down() {
    for (const pid of this.inits.values()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    this.inits.clear();
    this.wrappers.clear();
    const existing = (await run(['ip', 'netns', 'list']).catch(() => '')).split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(`${NS}-`));
    for (const ns of existing) {
      // Anything still inside (e.g. a node of an interrupted earlier run).
      for (const pid of (await run(['ip', 'netns', 'pids', ns]).catch(() => '')).split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    for (const ns of existing) await quiet(run(['ip', 'netns', 'del', ns]));
    // A dying namespace frees its mounts; wait for the nodes' processes to be gone before deleting their files.
    for (let i = 0; i < 100 && this.nodeProcesses().length; i++) await sleep(20);
    rmSync(ROOT, { recursive: true, force: true });
    rmSync(STAMPS, { recursive: true, force: true });
  }

  /** Live processes running node.sh of this benchmark (host pids). */
  nodeProcesses() {
    const out = [];
    for (const e of readdirSync('/proc')) {
      if (!/^[0-9]+$/.test(e)) continue;
      try {
        if (readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(`${NODE_SH}\0`)) out.push(Number(e));
      } catch {
        /* gone */
      }
    }
    return out;
  }
}

function readStamps(file) {
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [t, where] = l.split(' ');
        return { at: Number(t) * 1000, where };
      });
  } catch {
    return [];
  }
}

/** The first stamp after t0 from anywhere but the victim, as ms after t0 (and how many there were). */
async function waitStamp(file, t0, isVictim, timeoutMs = RUN_TIMEOUT_MS) {
  for (;;) {
    const after = readStamps(file).filter((s) => s.at >= t0 && !isVictim(s.where));
    if (after.length) return { ms: Math.min(...after.map((s) => s.at)) - t0, where: after[0].where, starts: after.length };
    if (Date.now() - t0 > timeoutMs) throw new Error(`no start on another node within ${timeoutMs} ms of the power cut`);
    await sleep(5);
  }
}

const cluster = new PacemakerCluster();

/** One Pacemaker power cut with the given corosync token ("default" or ms): ms until the resource runs elsewhere. */
async function pacemakerRun(token) {
  try {
    await cluster.up(token);
    const { dc } = await cluster.waitReady();
    const target = NODES.find((n) => n !== dc);
    await cluster.place(target, dc);
    await sleep(1000); // settle: the first monitor has run, the cluster is idle
    const t0 = Date.now();
    await cluster.cut(target);
    const r = await waitStamp(`${STAMPS}/pacemaker`, t0, (w) => w === target);
    await sleep(300);
    const starts = readStamps(`${STAMPS}/pacemaker`).filter((s) => s.at >= t0).length;
    return { ms: r.ms, detail: `cut ${target} (DC ${dc}), started on ${r.where}${starts > 1 ? `, ${starts} starts!` : ''}` };
  } finally {
    await cluster.down();
  }
}

/** One Vigil power cut (netns lab, 3 agents, 1 VM on a slave): ms until the VM runs elsewhere. */
async function vigilRun(profile) {
  const dir = VIGIL_DIR(profile);
  mkdirSync(STAMPS, { recursive: true });
  const stampFile = `${STAMPS}/vigil-${profile}`;
  writeFileSync(stampFile, '');
  try {
    let t0 = 0;
    const res = await scenario({
      profile,
      hosts: 3,
      count: 1,
      masterCut: false,
      dir,
      netns: true,
      settleMs: 1000,
      // The VM: 30 ms "starting", a stamp "<time> <lab dir>:<host>" (VIGIL_LAB_HOST, inherited), then a sleep.
      vm: (name, _i, { master, hosts }) => ({
        command: 'bash',
        args: ['-c', `sleep 0.03; echo "$EPOCHREALTIME $VIGIL_LAB_HOST" >> ${stampFile}; exec -a ${labVmTag(dir, name)} sleep 2147483647`],
        host: hosts.find((h) => h !== master),
      }),
      powerCut: async (lab, victim) => {
        t0 = Date.now();
        await (await lab.netns()).isolate(victim);
        await lab.kill(victim);
      },
    });
    if (res.vms !== 1) throw new Error(`expected the one VM on the cut host, found ${res.vms}`);
    const r = await waitStamp(stampFile, t0, (w) => w.endsWith(`:${res.victim}`), 1000);
    return { ms: r.ms, detail: `cut ${res.victim}, started on ${r.where.split(':').pop()}; detected ${fmt(res.detect)}, seen running ${fmt(res.allBack)}${res.doubled ? ', DOUBLED' : ''}${r.starts > 1 ? `, ${r.starts} starts!` : ''}` };
  } finally {
    rmSync(stampFile, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Rounds

/** Hold an flock on `file` while f runs (the `flock` command holds it until its stdin closes). */
let lockHolder = null;
async function withLock(file, f) {
  if (!file) return f();
  const child = spawn('flock', [file, '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
  lockHolder = child;
  await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => d.toString().includes('locked') && resolve());
    child.on('exit', (code) => reject(new Error(`flock ${file} exited (${code})`)));
  });
  try {
    return await f();
  } finally {
    child.stdin.end();
    lockHolder = null;
  }
}

function list(args, flag, dflt) {
  const i = args.indexOf(flag);
  return (i >= 0 ? String(args[i + 1]) : dflt).split(',').map((s) => s.trim()).filter(Boolean);
}

async function cleanupAll() {
  lockHolder?.kill('SIGKILL'); // still waiting for the lock (Ctrl-C): stop waiting
  await cluster.down().catch((e) => console.error(`cleanup: ${e.message}`));
  for (const p of ['default', 'fast']) await new Lab(VIGIL_DIR(p)).down({ purge: true }).catch((e) => console.error(`cleanup: ${e.message}`));
  rmSync(STAMPS, { recursive: true, force: true });
}

export async function main(args) {
  const problem = missingTools();
  if (problem) {
    console.error(`npm run bench -- --peer pacemaker: ${problem}`);
    process.exit(2);
  }
  const runsArg = args.indexOf('--runs');
  const runs = runsArg >= 0 ? Number(args[runsArg + 1]) : 10;
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs: a positive integer, not ${args[runsArg + 1]}`);
  const only = list(args, '--only', 'pacemaker,vigil');
  const tokens = only.includes('pacemaker') ? list(args, '--token', 'default,1000') : [];
  for (const t of tokens) if (t !== 'default' && !/^[1-9][0-9]*$/.test(t)) throw new Error(`--token: "default" or milliseconds, not ${t}`);
  const profiles = only.includes('vigil') ? list(args, '--profiles', 'default,fast') : [];
  for (const p of profiles) if (!['default', 'fast'].includes(p)) throw new Error(`--profiles: default or fast, not ${p}`);
  const lockArg = args.indexOf('--lock');
  const lockFile = lockArg >= 0 ? args[lockArg + 1] : null;

  let stopping = false;
  const stop = async (sig) => {
    if (stopping) return;
    stopping = true;
    console.error(`\n${sig}: cleaning up...`);
    await cleanupAll();
    process.exit(130);
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));

  const pcmkVersion = (await run(['pacemakerd', '--version']).catch(() => '?')).split('\n')[0];
  const corosyncVersion = /version '([^']+)'/.exec(await run(['corosync', '-v']).catch(() => ''))?.[1] ?? '?';
  console.log(`Vigil vs Pacemaker power-cut benchmark: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}, ${pcmkVersion}, corosync ${corosyncVersion}`);
  console.log(`Reproduce: npm run bench -- ${args.join(' ')}`);
  console.log('Three nodes in namespaces; power cut = link down + every process of the node killed at once; figure = power cut to the stand-in started on another node.\n');

  // Series, alternated: pacemaker, vigil, pacemaker, vigil, ...
  const pSeries = tokens.map((t) => ({ key: `pacemaker:${t}`, label: `Pacemaker, token ${t === 'default' ? 'default (3650 ms)' : `${t} ms`}`, run: () => pacemakerRun(t) }));
  const vSeries = profiles.map((p) => ({ key: `vigil:${p}`, label: `Vigil, ${p} profile`, run: () => vigilRun(p) }));
  const order = [];
  for (let k = 0; k < Math.max(pSeries.length, vSeries.length); k++) {
    if (pSeries[k]) order.push(pSeries[k]);
    if (vSeries[k]) order.push(vSeries[k]);
  }
  const results = new Map(order.map((s) => [s.key, []]));
  const failures = new Map(order.map((s) => [s.key, 0]));
  try {
    for (let i = 1; i <= runs; i++) {
      await withLock(lockFile, async () => {
        for (const s of order) {
          try {
            const r = await s.run();
            results.get(s.key).push(r.ms);
            console.log(`run ${i}/${runs}  ${s.label.padEnd(36)} ${fmt(r.ms).padStart(8)}   (${r.detail})`);
          } catch (err) {
            failures.set(s.key, failures.get(s.key) + 1);
            console.log(`run ${i}/${runs}  ${s.label.padEnd(36)}   failed: ${err.message.split('\n')[0]}`);
          }
        }
      });
    }
  } finally {
    await cleanupAll();
  }

  const stats = (xs) => ({ n: xs.length, med: median(xs), min: xs.length ? Math.min(...xs) : null, max: xs.length ? Math.max(...xs) : null });
  console.log(`\n${'series'.padEnd(38)}${'runs'.padStart(5)}${'median'.padStart(10)}${'min'.padStart(10)}${'max'.padStart(10)}${'failed'.padStart(8)}`);
  for (const s of order) {
    const st = stats(results.get(s.key));
    console.log(`${s.label.padEnd(38)}${String(st.n).padStart(5)}${fmt(st.med).padStart(10)}${fmt(st.min).padStart(10)}${fmt(st.max).padStart(10)}${String(failures.get(s.key)).padStart(8)}`);
  }
  if (pSeries.length && vSeries.length) {
    console.log('\nRatio of medians, Pacemaker / Vigil (above 1: Vigil is faster):');
    for (const p of pSeries) {
      for (const v of vSeries) {
        const a = median(results.get(p.key));
        const b = median(results.get(v.key));
        console.log(`  ${p.label.padEnd(36)} / ${v.label.padEnd(22)} ${a !== null && b ? `${(a / b).toFixed(2)}x` : '-'}`);
      }
    }
  }
  console.log('\n(median = the lower middle value for an even number of runs; no fencing on either side)');
  if ([...failures.values()].some((f) => f > 0)) process.exitCode = 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch(async (err) => {
    console.error(err);
    await cleanupAll();
    process.exit(1);
  });
}
