/**
 * Hung storage for the e2e tests (reference/environment.md §6): a private sshd on 127.0.0.1 with
 * a temporary host key and root key authentication, and sshfs mounts (caching off) made inside a
 * host's mount namespace. Freezing the sshd session and sftp-server processes (SIGSTOP) makes
 * every filesystem call on the mount hang without an error, like an NFS all-paths-down event.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import { createServer, createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { alive, commOf, descendantsOf, killPid, run, runOk, startDaemon, waitFor, which, type Daemon } from './storage-harness.js';

/** Why sshfs-based tests cannot run here, or null if they can. */
export async function sshfsUnavailable(): Promise<string | null> {
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing (no FUSE in this kernel or container)';
  if (!readFileSync('/proc/filesystems', 'utf8').split('\n').some((l) => /\bfuse$/.test(l.trim()))) return 'the kernel does not list the fuse filesystem';
  for (const [tool, pkg] of [
    ['sshfs', 'sshfs'],
    ['sshd', 'openssh-server'],
    ['ssh', 'openssh-client'],
    ['ssh-keygen', 'openssh-client'],
    ['nsenter', 'util-linux'],
    ['unshare', 'util-linux'],
  ] as const) {
    if (!(await which(tool))) return `${tool} is not installed (apt-get install ${pkg})`;
  }
  if (!existsSync('/usr/lib/openssh/sftp-server')) return '/usr/lib/openssh/sftp-server is missing (apt-get install openssh-server)';
  return null;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection({ host: '127.0.0.1', port });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export class LoopbackSshd {
  private stopped: number[] = [];

  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly daemon: Daemon,
  ) {}

  /** Keys and config in a fresh temp dir; sshd in the foreground (-D) as our child. */
  static async start(): Promise<LoopbackSshd> {
    const dir = await mkdtemp(join(tmpdir(), 'vigil-e2e-sshd-'));
    await runOk('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host_key')]);
    await runOk('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'client_key')]);
    await copyFile(join(dir, 'client_key.pub'), join(dir, 'authorized_keys'));
    const port = await freePort();
    const config = [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host_key')}`,
      'PermitRootLogin prohibit-password',
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'StrictModes no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      `PidFile ${join(dir, 'sshd.pid')}`,
      'Subsystem sftp /usr/lib/openssh/sftp-server',
      '',
    ].join('\n');
    await writeFile(join(dir, 'sshd_config'), config);
    // sshd insists on its privilege separation directory.
    await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
    const sshd = (await which('sshd'))!;
    await runOk(sshd, ['-t', '-f', join(dir, 'sshd_config')]);
    const daemon = startDaemon(sshd, ['-D', '-e', '-f', join(dir, 'sshd_config')]);
    const s = new LoopbackSshd(dir, port, daemon);
    await waitFor(`sshd to listen on 127.0.0.1:${port}`, async () => {
      if (!alive(daemon.pid)) throw new Error(`sshd exited: ${daemon.output()}`);
      return (await canConnect(port)) ? true : undefined;
    }, { timeoutMs: 10_000, intervalMs: 50 });
    return s;
  }

  sshfsOptions(): string {
    return [
      'dir_cache=no',
      'entry_timeout=0',
      'attr_timeout=0',
      'negative_timeout=0',
      'StrictHostKeyChecking=no',
      'UserKnownHostsFile=/dev/null',
      `IdentityFile=${join(this.dir, 'client_key')}`,
      `Port=${this.port}`,
      'LogLevel=ERROR',
    ].join(',');
  }

  /** The processes serving connections (sshd sessions, sftp-server): every descendant of the listener. */
  servingProcesses(): { pid: number; cmd: string }[] {
    return descendantsOf(this.daemon.pid).map((pid) => ({ pid, cmd: commOf(pid) }));
  }

  /** Make the server stop answering: SIGSTOP every serving process. Returns what was stopped. */
  freeze(): { pid: number; cmd: string }[] {
    const procs = this.servingProcesses();
    for (const p of procs) {
      killPid(p.pid, 'SIGSTOP');
      this.stopped.push(p.pid);
    }
    return procs;
  }

  thaw(): void {
    for (const pid of this.stopped) killPid(pid, 'SIGCONT');
    this.stopped = [];
  }

  async stop(): Promise<void> {
    this.thaw();
    const procs = descendantsOf(this.daemon.pid);
    killPid(this.daemon.pid, 'SIGTERM');
    for (const pid of procs) killPid(pid, 'SIGTERM');
    const gone = await Promise.race([this.daemon.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
    if (!gone) killPid(this.daemon.pid, 'SIGKILL');
    for (const pid of procs) if (alive(pid)) killPid(pid, 'SIGKILL');
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Is `path` a mount point of type `fstype` in the mount namespace of `pid`? */
export function mountedIn(pid: number, path: string, fstype: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
      .split('\n')
      .some((l) => {
        const [pre, post] = l.split(' - ');
        return pre?.split(' ')[4] === path && post?.split(' ')[0] === fstype;
      });
  } catch {
    return false;
  }
}

/**
 * An sshfs mount of `remoteDir` (through the loopback sshd) at `mountPoint`, inside the mount
 * namespace of `nsPid`. sshfs runs in the foreground (-f) as our child, so it can be stopped by pid.
 */
export class NamespacedSshfs {
  private constructor(
    readonly nsPid: number,
    readonly mountPoint: string,
    readonly daemon: Daemon,
  ) {}

  static async mount(sshd: LoopbackSshd, nsPid: number, remoteDir: string, mountPoint: string): Promise<NamespacedSshfs> {
    const daemon = startDaemon('nsenter', ['-t', String(nsPid), '-m', 'sshfs', '-f', '-o', sshd.sshfsOptions(), `root@127.0.0.1:${remoteDir}`, mountPoint]);
    const m = new NamespacedSshfs(nsPid, mountPoint, daemon);
    await waitFor(
      `sshfs to be mounted at ${mountPoint} in the namespace of pid ${nsPid}`,
      () => {
        if (!alive(daemon.pid)) throw new Error(`sshfs exited: ${daemon.output()}`);
        return mountedIn(nsPid, mountPoint, 'fuse.sshfs') ? true : undefined;
      },
      { timeoutMs: 15_000, intervalMs: 50 },
    );
    return m;
  }

  /** Lazy unmount inside the namespace (works while the server is frozen), then stop sshfs. */
  async unmount(): Promise<void> {
    const nsPid = alive(this.nsPid) ? this.nsPid : this.daemon.pid;
    if (alive(nsPid)) {
      const r = await run('nsenter', ['-t', String(nsPid), '-m', 'fusermount', '-u', '-z', this.mountPoint], 5000).catch((err: Error) => ({ code: 1, stdout: '', stderr: err.message }));
      if (r.code !== 0) await run('nsenter', ['-t', String(nsPid), '-m', 'umount', '-l', this.mountPoint], 5000).catch(() => undefined);
    }
    const ssh = descendantsOf(this.daemon.pid);
    killPid(this.daemon.pid, 'SIGTERM');
    const gone = await Promise.race([this.daemon.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
    if (!gone) killPid(this.daemon.pid, 'SIGKILL');
    for (const pid of ssh) if (alive(pid)) killPid(pid, 'SIGKILL');
  }
}
