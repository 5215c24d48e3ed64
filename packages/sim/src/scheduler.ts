/**
 * Virtual time. Everything that happens in a world is a closure scheduled at a global time; ties
 * run in the order they were scheduled, so a run is a pure function of its seed. A "step" is one
 * scheduled closure: the unit in which violations are reported.
 */
import { EventQueue } from './queue.js';

export class Scheduler {
  private readonly queue = new EventQueue<() => void>();
  private halted = false;
  /** Global virtual time in ms. */
  now = 0;
  /** Number of closures run so far. */
  steps = 0;

  /** Run `fn` at global time `t` (never in the past). */
  at(t: number, fn: () => void): void {
    this.queue.push(t > this.now ? t : this.now, fn);
  }

  after(ms: number, fn: () => void): void {
    this.at(this.now + (ms > 0 ? ms : 0), fn);
  }

  /** Stop the current run after the closure being run (a violation was found). */
  halt(): void {
    this.halted = true;
  }

  get isHalted(): boolean {
    return this.halted;
  }

  /** Run everything due up to `until` (inclusive); time then stands at `until`. */
  run(until: number): void {
    while (!this.halted) {
      const next = this.queue.peek();
      if (!next || next.at > until) break;
      this.queue.pop();
      this.now = next.at;
      this.steps += 1;
      next.item();
    }
    if (!this.halted && until > this.now) this.now = until;
  }

  /** Run until `pred` holds (checked after each step) or `limitMs` passes: the time, or null. */
  runUntil(pred: () => boolean, limitMs: number): number | null {
    const end = this.now + limitMs;
    if (pred()) return this.now;
    while (!this.halted) {
      const next = this.queue.peek();
      if (!next || next.at > end) {
        this.now = end;
        return null;
      }
      this.queue.pop();
      this.now = next.at;
      this.steps += 1;
      next.item();
      if (pred()) return this.now;
    }
    return null;
  }
}
