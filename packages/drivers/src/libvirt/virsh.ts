/**
 * Talking to libvirtd through `virsh` (child processes, never a shell command line built from
 * data: every variable part is an argv element):
 *
 *   - virsh():        one command, `virsh -q -c URI <args>` (destroy, shutdown, list, dumpxml...);
 *   - VirshShell:     a long-lived interactive `virsh -q -c URI` whose libvirt connection creates
 *                     domains with `create FILE --autodestroy`: libvirtd destroys them as soon as
 *                     that connection closes, i.e. when the VM daemon that owns the shell dies
 *                     (the shell runs under `setpriv --pdeathsig SIGKILL`, and exits at the EOF
 *                     of its stdin anyway). This is what makes a domain die with its lease holder,
 *                     as pdeathsig does for process VMs;
 *   - VirshEvents:    `virsh event --all --loop`, parsed into domain events;
 *   - isDomainProcess / findDomainProcess: the QEMU process of a domain, from /proc.
 * Every virsh runs with LC_ALL=C: its messages are parsed.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export const VIRSH = 'virsh';

function virshEnv(): NodeJS.ProcessEnv {
  return { ...process.env, LC_ALL: 'C', LANG: 'C', LANGUAGE: 'C' };
}

export class VirshError extends Error {
  constructor(
    message: string,
    /** The command timed out (libvirtd does not answer). */
    readonly timedOut = false,
  ) {
    super(message);
  }
}

/** The `error: ...` lines of virsh's output, joined (without the prefix). */
export function virshErrors(out: string): string {
  return out
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('error: '))
    .map((l) => l.slice(7))
    .join('; ');
}

/** Run `virsh -q -c uri ...args`; resolves with stdout, rejects with VirshError (virsh's own message). */
export function virsh(uri: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(VIRSH, ['-q', '-c', uri, ...args], { env: virshEnv(), timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) {
        resolve(stdout);
        return;
      }
      const e = err as NodeJS.ErrnoException & { killed?: boolean };
      if (e.code === 'ENOENT') reject(new VirshError(`${VIRSH} is not installed (apt-get install libvirt-clients)`));
      else if (e.killed) reject(new VirshError(`virsh ${args[0]} did not answer within ${timeoutMs} ms (libvirtd hung?)`, true));
      else reject(new VirshError(virshErrors(stderr) || stderr.trim() || e.message));
    });
  });
}

/**
 * Can this machine run libvirt VMs on `uri`? null if `virsh -c uri version` answers, else why not.
 * Synchronous (the agent calls it once at its start).
 */
export function checkLibvirt(uri: string, timeoutMs = 15_000): string | null {
  const r = spawnSync(VIRSH, ['-q', '-c', uri, 'version'], { env: virshEnv(), timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') return `${VIRSH} is not installed (apt-get install libvirt-clients; see docs/libvirt.md)`;
  if (r.error) return `virsh -c ${uri} version: ${r.error.message}`;
  if (r.status !== 0) {
    const why = virshErrors(r.stderr ?? '') || (r.stderr ?? '').trim() || `exit status ${r.status}`;
    return `libvirtd does not answer on ${uri}: ${why} (is libvirtd running? see docs/libvirt.md)`;
  }
  if (!/running hypervisor/i.test(r.stdout ?? '')) return `libvirtd on ${uri} reports no running hypervisor (is the QEMU driver installed? apt-get install libvirt-daemon-driver-qemu qemu-system-x86)`;
  return null;
}

// ---- the interactive shell -----------------------------------------------------------------------

interface ShellCommand {
  n: number;
  cmd: string;
  resolve: (out: string) => void;
  reject: (err: Error) => void;
}

const MARK = 'VIGIL-DONE';
const PROMPT = 'virsh # ';

/**
 * One interactive `virsh` with its own libvirt connection. Commands run one at a time; each is
 * followed by `echo "VIGIL-DONE" <n>`, whose output (`VIGIL-DONE <n>`, never the same text as
 * the echoed command line) ends the command's output. stderr is merged into stdout (through
 * `sh -c 'exec "$0" "$@" 2>&1'`, a constant script; the arguments are argv) so that an error is
 * read before the marker that follows it.
 */
export class VirshShell {
  private static nextId = 1;
  readonly id = VirshShell.nextId++;
  private readonly child: ChildProcess;
  private buf = '';
  private readonly queue: ShellCommand[] = [];
  private current: ShellCommand | null = null;
  private n = 0;
  private dead: string | null = null;

  /**
   * `onLost`: the shell's libvirt connection was lost (libvirtd stopped or restarted) or the
   * shell exited: the domains it created are either destroyed (libvirtd closed the connection)
   * or no longer tied to it (libvirtd crashed and came back). Called once.
   */
  constructor(
    uri: string,
    cwd: string,
    setpriv: string | null,
    private readonly onLost: (shell: VirshShell, why: string) => void,
  ) {
    const argv = ['-c', 'exec "$0" "$@" 2>&1', VIRSH, '-q', '-c', uri];
    const [cmd, args] = setpriv ? [setpriv, ['--pdeathsig', 'SIGKILL', '--', 'sh', ...argv]] : ['sh', argv];
    this.child = spawn(cmd, args, { cwd, env: virshEnv(), stdio: ['pipe', 'pipe', 'ignore'] });
    this.child.stdin!.on('error', () => {});
    this.child.stdout!.setEncoding('utf8');
    this.child.stdout!.on('data', (d: string) => this.onData(d));
    this.child.on('error', (err) => this.lost(`virsh shell: ${err.message}`));
    this.child.on('exit', (code, signal) => this.lost(`the virsh shell exited (${signal ?? `code ${code}`})`));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get busy(): number {
    return this.queue.length + (this.current ? 1 : 0);
  }

  get alive(): boolean {
    return this.dead === null;
  }

  /** Run one command; resolves with its output (prompts and echoed commands removed). */
  run(cmd: string): Promise<string> {
    if (/[\n\r]/.test(cmd)) return Promise.reject(new VirshError('a virsh shell command must be one line'));
    if (this.dead) return Promise.reject(new VirshError(this.dead));
    return new Promise((resolve, reject) => {
      this.queue.push({ n: 0, cmd, resolve, reject });
      this.next();
    });
  }

  private next(): void {
    if (this.current || this.dead) return;
    const c = this.queue.shift();
    if (!c) return;
    c.n = ++this.n;
    this.current = c;
    this.child.stdin!.write(`${c.cmd}\necho "${MARK}" ${c.n}\n`);
  }

  private onData(d: string): void {
    this.buf += d;
    if (/error: Disconnected from /.test(this.buf) && !this.current) {
      this.lost('its connection to libvirtd was closed (libvirtd stopped or restarted)');
      return;
    }
    for (;;) {
      const c = this.current;
      if (!c) {
        // Nothing asked: keep only a possibly incomplete last line.
        this.buf = this.buf.slice(this.buf.lastIndexOf('\n') + 1);
        return;
      }
      const re = new RegExp(`(?:^|\\n|${PROMPT.replace(/[#]/g, '\\#')})${MARK} ${c.n}(?!\\d)`);
      const m = re.exec(this.buf);
      if (!m) return;
      const out = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      this.current = null;
      const lines = out
        .split('\n')
        .map((l) => {
          while (l.startsWith(PROMPT)) l = l.slice(PROMPT.length);
          return l;
        })
        .filter((l) => l !== c.cmd && l !== `echo "${MARK}" ${c.n}` && l.trim() !== '');
      const text = lines.join('\n');
      if (/^error: (Disconnected from|Reconnected to) /m.test(text)) {
        // The connection changed under this command: its outcome is uncertain (a create may have
        // run on a new connection), and domains of the old one are no longer tied to it.
        c.reject(new VirshError(`uncertain outcome, the connection to libvirtd changed: ${virshErrors(text)}`));
        this.lost('its connection to libvirtd was closed (libvirtd stopped or restarted)');
        return;
      }
      c.resolve(text);
      this.next();
    }
  }

  private lost(why: string): void {
    if (this.dead) return;
    this.dead = why;
    for (const c of [this.current, ...this.queue.splice(0)]) c?.reject(new VirshError(`virsh shell: ${why}`));
    this.current = null;
    try {
      this.child.kill('SIGKILL');
    } catch {
      /* gone */
    }
    this.onLost(this, why);
  }

  /** Close the shell: every domain it created with --autodestroy is destroyed by libvirtd. */
  close(): void {
    this.lost('closed');
  }
}

// ---- events --------------------------------------------------------------------------------------

export interface DomainEvent {
  /** lifecycle, reboot, watchdog, ... (virsh's event names). */
  type: string;
  domain: string;
  /** After the colon: "Stopped Failed", "reset", ... ('' if none). */
  detail: string;
}

const EVENT_LINE = /^event '([a-z0-9-]+)' for domain '([^']*)'(?:: (.*))?$/;

export function parseEventLine(line: string): DomainEvent | null {
  const m = EVENT_LINE.exec(line.trim());
  return m ? { type: m[1]!, domain: m[2]!, detail: (m[3] ?? '').trim() } : null;
}

/** `virsh event --all --loop`, restarted (after `restartMs`) whenever it ends. */
export class VirshEvents {
  private child: ChildProcess | null = null;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private failures = 0;

  constructor(
    private readonly uri: string,
    private readonly setpriv: string | null,
    private readonly h: {
      onEvent: (ev: DomainEvent) => void;
      /** The watcher (re)started: events may have been missed before, so reconcile. */
      onStart: () => void;
      onProblem: (why: string) => void;
    },
    private readonly restartMs = 1000,
  ) {}

  start(): void {
    if (this.stopped || this.child) return;
    const args = ['-q', '-c', this.uri, 'event', '--all', '--loop'];
    const [cmd, argv] = this.setpriv ? [this.setpriv, ['--pdeathsig', 'SIGKILL', '--', VIRSH, ...args]] : [VIRSH, args];
    const child = spawn(cmd, argv, { env: virshEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    let buf = '';
    let errBuf = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const ev = parseEventLine(line);
        if (ev) this.h.onEvent(ev);
      }
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => (errBuf = (errBuf + d).slice(-2000)));
    child.on('error', (err) => this.h.onProblem(`virsh event: ${err.message}`));
    const startedAt = Date.now();
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      this.child = null;
      if (this.stopped) return;
      // Back off while libvirtd is away (1 s, 2 s, ... 5 s); at once again after a good run.
      this.failures = Date.now() - startedAt > 10_000 ? 1 : this.failures + 1;
      const delay = Math.min(this.restartMs * this.failures, 5 * this.restartMs);
      this.h.onProblem(`virsh event exited (${signal ?? `code ${code}`})${errBuf.trim() ? `: ${virshErrors(errBuf) || errBuf.trim()}` : ''}; restarting it in ${delay} ms`);
      this.timer = setTimeout(() => this.start(), delay);
    });
    this.h.onStart();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.child?.kill('SIGKILL');
    this.child = null;
  }
}

// ---- QEMU processes ------------------------------------------------------------------------------

/**
 * True if `pid` is the QEMU process of libvirt domain `domain` (its command line has
 * `-name guest=<domain>,...`, as libvirt starts QEMU). Guards against a recycled pid.
 */
export function isDomainProcess(pid: number, domain: string): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 1) return false;
  let argv: string[];
  try {
    argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    if (/^\d+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) return false;
  } catch {
    return false;
  }
  const i = argv.indexOf('-name');
  if (i < 0) return false;
  const v = argv[i + 1] ?? '';
  // QEMU option syntax: commas in the value are doubled.
  const name = v.startsWith('guest=') ? v.slice(6) : v;
  const esc = domain.replace(/,/g, ',,');
  return name === esc || (name.startsWith(`${esc},`) && !name.startsWith(`${esc},,`));
}

/** Pids of the live QEMU processes of `domain` (normally 0 or 1). */
export function findDomainProcesses(domain: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(e)) continue;
    if (isDomainProcess(Number(e), domain)) out.push(Number(e));
  }
  return out;
}
