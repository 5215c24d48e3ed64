/**
 * The operator at the CLI: `vigil vm start|stop|protect|unprotect`, typed on a random live host
 * (which forwards to its master, as the real CLI does). A command that fails (no master yet, a
 * partition, an aborted request) is typed again a few seconds later until it succeeds or the
 * operator changes their mind. What the operator wants, and when Vigil confirmed it, is what
 * SPEC §5.3 and §5.4 are checked against.
 */
import type { HostId } from '@vigil/core';
import type { Rng } from './rng.js';
import type { World } from './world.js';
import type { OperatorRequest } from './agent.js';

/** What the operator wants for a VM. */
export type Desired = 'protected' | 'unprotected' | 'stopped' | 'never';

export interface VmIntent {
  desired: Desired;
  /** Global time Vigil confirmed the last command (ok reply), null while not confirmed. */
  confirmedAt: number | null;
  /** Global time the current command was first issued. */
  issuedAt: number;
  /** Until when a `vm start` may still be powering the VM on (issued, not yet answered, plus a grace). */
  startOpenUntil: number;
  attempts: number;
}

const DESIRED: Record<OperatorRequest['op'], Desired> = { start: 'protected', protect: 'protected', unprotect: 'unprotected', stop: 'stopped' };

export class Operator {
  readonly intents = new Map<string, VmIntent>();

  constructor(
    private readonly world: World,
    private readonly rng: Rng,
    /** How long a `vm start` may still land after its answer (the master's power-on timeout). */
    private readonly startGraceMs: number,
  ) {}

  /** Told when Vigil confirms a command (the invariant checker). */
  onConfirmed: ((op: OperatorRequest['op'], vm: string) => void) | null = null;

  intent(vm: string): VmIntent {
    return this.intents.get(vm) ?? { desired: 'never', confirmedAt: null, issuedAt: 0, startOpenUntil: -Infinity, attempts: 0 };
  }

  /** Every VM the operator wants protected and Vigil confirmed. */
  protectedVms(): string[] {
    return [...this.intents].filter(([, i]) => i.desired === 'protected' && i.confirmedAt !== null).map(([vm]) => vm).sort();
  }

  /** Whether every command so far was confirmed. */
  get settled(): boolean {
    return [...this.intents.values()].every((i) => i.confirmedAt !== null || i.desired === 'never');
  }

  /** Type a command; retried until confirmed or superseded by another command for the VM. */
  command(op: OperatorRequest['op'], vm: string, host?: HostId): void {
    const now = this.world.now;
    const prev = this.intents.get(vm);
    const intent: VmIntent = {
      desired: DESIRED[op],
      confirmedAt: null,
      issuedAt: now,
      // A `vm start` superseded before its answer may still land for a while.
      startOpenUntil: op === 'start' ? Infinity : Math.min(prev?.startOpenUntil ?? -Infinity, now + this.startGraceMs),
      attempts: 0,
    };
    this.intents.set(vm, intent);
    this.world.record(null, 'operator.command', `vigil vm ${op} ${vm}${host ? ` --host ${host}` : ''}`);
    this.issue(op, vm, intent, host);
  }

  private issue(op: OperatorRequest['op'], vm: string, intent: VmIntent, host: HostId | undefined): void {
    if (this.intents.get(vm) !== intent) return;
    intent.attempts += 1;
    const live = this.world.hostIds.filter((h) => this.world.isUp(h));
    if (live.length === 0) {
      this.world.sched.after(this.rng.int(2000, 5000), () => this.issue(op, vm, intent, host));
      return;
    }
    const entry: HostId = this.rng.pick(live);
    this.world.request(entry, { op, vm, ...(host ? { host } : {}) }, (ok, message) => {
      if (this.intents.get(vm) !== intent) return;
      if (ok) {
        intent.confirmedAt = this.world.now;
        // Confirmed: that start has landed (a superseded one keeps a grace, see command()).
        if (op === 'start') intent.startOpenUntil = this.world.now;
        this.world.record(entry, 'operator.ok', `vigil vm ${op} ${vm}: ${message}`);
        this.onConfirmed?.(op, vm);
        return;
      }
      this.world.record(entry, 'operator.failed', `vigil vm ${op} ${vm} (attempt ${intent.attempts}): ${message}`);
      this.world.sched.after(this.rng.int(2000, 5000), () => this.issue(op, vm, intent, host));
    });
  }
}
