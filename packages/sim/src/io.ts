/**
 * Simulated processes. The real agent and VM daemon are async code: a storage call is awaited,
 * other events run meanwhile, and a crash abandons whatever was awaited. Here the same code is
 * written as generators that yield what they wait for (a storage call, a delay, a callback), and
 * a `Process` resumes them from the world's scheduler: readable sequential code, deterministic
 * interleavings, and a process that dies simply never resumes.
 */
import type { Scheduler } from './scheduler.js';
import type { ProcessClock } from './clock.js';

/** A failed storage or driver call, with the errno-style code the real code would see. */
export class SimIoError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message.startsWith(`${code}:`) ? message : `${code}: ${message}`);
    this.name = 'SimIoError';
  }
}

/** The short description the real code logs (describeError). */
export function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** One storage call: `apply` runs atomically against the datastore when the call completes. */
export interface IoStep<T = unknown> {
  kind: 'io';
  ds: string;
  what: string;
  /** Deadline of the call (withTimeout); Infinity for calls the real code makes without one. */
  timeoutMs: number;
  /** `null`: something else is mounted in the datastore's place (an empty filesystem). */
  apply: (d: import('./storage.js').SimDatastore | null) => T;
  /** The probe only: get what is mounted in a lost datastore's place even before it holds a cluster directory. */
  raw?: boolean;
}

export type Step =
  | IoStep
  /** Resume at the same time, after the work in progress (an `await` of something already done). */
  | { kind: 'defer' }
  /** Resume after `ms` of this process's local time. */
  | { kind: 'sleep'; ms: number }
  /** Resume when `register`'s callback is called (first call wins). */
  | { kind: 'wait'; register: (done: (err: unknown, value?: unknown) => void) => void };

export type Proc<T> = Generator<Step, T, unknown>;

/** `yield* io(...)`: one storage call, typed. */
export function* io<T>(step: IoStep<T>): Proc<T> {
  return (yield step as IoStep) as T;
}

export function* defer(): Proc<void> {
  yield { kind: 'defer' };
}

export function* sleep(ms: number): Proc<void> {
  yield { kind: 'sleep', ms };
}

/** Wait for a callback-style completion. */
export function* wait<T>(register: (done: (err: unknown, value?: T) => void) => void): Proc<T> {
  return (yield { kind: 'wait', register: register as (done: (err: unknown, value?: unknown) => void) => void }) as T;
}

/** What a process needs from the world to run storage calls. */
export interface IoBackend {
  call(proc: Process, step: IoStep, done: (err: unknown, value?: unknown) => void): void;
}

/** Where unexpected failures of a process's code are reported (a bug in the simulator or the code it mirrors). */
export type Unhandled = (proc: Process, err: unknown) => void;

/**
 * One simulated OS process: an agent life, or a VM daemon life. Its timers and coroutines run
 * while it is alive; `kill()` stops them all at once (their storage calls may still land).
 */
export class Process {
  alive = true;
  /** Storage calls that timed out and have not returned yet, per datastore (MAX_HANGING_PER_DATASTORE). */
  readonly hanging = new Map<string, number>();

  constructor(
    readonly host: string,
    readonly name: string,
    readonly clock: ProcessClock,
    private readonly sched: Scheduler,
    private readonly backend: IoBackend,
    private readonly unhandled: Unhandled,
  ) {}

  /** This process's monotonic time. */
  now(): number {
    return this.clock.at(this.sched.now);
  }

  kill(): void {
    this.alive = false;
  }

  /** Run `fn` after `localMs` of this process's time, if it is still alive. */
  after(localMs: number, fn: () => void): void {
    this.sched.after(this.clock.toGlobal(localMs), () => {
      if (this.alive) fn();
    });
  }

  /** Run `fn` every `localMs` (setInterval), from now on, while alive. */
  every(localMs: number, fn: () => void): void {
    const tick = () => {
      if (!this.alive) return;
      this.sched.after(this.clock.toGlobal(localMs), tick);
      fn();
    };
    this.sched.after(this.clock.toGlobal(localMs), tick);
  }

  /** Run `fn` at the current time, after the work in progress (setTimeout 0 / a microtask). */
  soon(fn: () => void): void {
    this.sched.after(0, () => {
      if (this.alive) fn();
    });
  }

  /** Start a coroutine (`void asyncFn()`); `done` gets its outcome. Runs synchronously until its first yield. */
  spawn<T>(gen: Proc<T>, done?: (err: unknown, value?: T) => void): void {
    this.resume(gen, false, undefined, done as ((err: unknown, value?: unknown) => void) | undefined);
  }

  private resume(gen: Proc<unknown>, isErr: boolean, input: unknown, done?: (err: unknown, value?: unknown) => void): void {
    if (!this.alive) return;
    let r: IteratorResult<Step, unknown>;
    try {
      r = isErr ? gen.throw(input) : gen.next(input);
    } catch (err) {
      if (done) done(err);
      else this.unhandled(this, err);
      return;
    }
    if (r.done) {
      done?.(null, r.value);
      return;
    }
    const step = r.value;
    let settled = false;
    const cont = (err: unknown, value?: unknown) => {
      if (settled) return;
      settled = true;
      if (!this.alive) return;
      if (err) this.resume(gen, true, err, done);
      else this.resume(gen, false, value, done);
    };
    switch (step.kind) {
      case 'io':
        this.backend.call(this, step, cont);
        return;
      case 'defer':
        this.sched.after(0, () => cont(null));
        return;
      case 'sleep':
        this.sched.after(this.clock.toGlobal(step.ms), () => cont(null));
        return;
      case 'wait':
        step.register(cont);
        return;
    }
  }
}

/** Promise.all for coroutines of one process: results in order, the first error wins. */
export function* all<T>(proc: Process, gens: Proc<T>[]): Proc<T[]> {
  if (gens.length === 0) return [];
  return yield* wait<T[]>((done) => {
    const results: T[] = new Array<T>(gens.length);
    let left = gens.length;
    let failed = false;
    gens.forEach((g, i) =>
      proc.spawn(g, (err, v) => {
        if (failed) return;
        if (err) {
          failed = true;
          done(err);
          return;
        }
        results[i] = v as T;
        if (--left === 0) done(null, results);
      }),
    );
  });
}

/** Run a coroutine, catching its error as the real `.catch(() => {})` does. */
export function* attempt<T>(gen: Proc<T>): Proc<{ ok: true; value: T } | { ok: false; error: unknown }> {
  try {
    return { ok: true, value: yield* gen };
  } catch (error) {
    return { ok: false, error };
  }
}
