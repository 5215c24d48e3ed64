/**
 * Host clocks. Each host's clock runs at its own rate (`drift`: 0.001 is 1000 ppm fast). Every
 * process reads a monotonic clock that starts near 0 when the process starts, as
 * performance.now() does, and runs at its host's rate: the core only ever sees such local
 * times, and no two hosts' times are ever compared.
 *
 * The wall clock (`skewMs` off the world's) is what faketime changes; the agent uses it only to
 * seed its protocol incarnation (chooseIncarnation), so a skew reaches nothing else. The rate
 * can change under running processes (NTP slewing); monotonic clocks never jump.
 */

/** Wall-clock time of the world's start (any fixed value: only differences matter). */
export const WORLD_EPOCH_MS = 1_800_000_000_000;

export class HostClock {
  /** Local time (of the host's rate) at global time `baseGlobal`. */
  private baseLocal = 0;
  private baseGlobal = 0;

  constructor(
    /** How far the host's wall clock is off (faketime). */
    public skewMs: number,
    private drift: number,
  ) {}

  get rate(): number {
    return 1 + this.drift;
  }

  /** The host's clock at global time `t` (its own rate, arbitrary origin). */
  raw(t: number): number {
    return this.baseLocal + (t - this.baseGlobal) * (1 + this.drift);
  }

  /** The host's wall clock at global time `t`, ms since 1970. */
  wall(t: number): number {
    return WORLD_EPOCH_MS + this.skewMs + this.raw(t);
  }

  /** Change the rate from global time `t` on (continuously). */
  setDrift(t: number, drift: number): void {
    this.baseLocal = this.raw(t);
    this.baseGlobal = t;
    this.drift = drift;
  }

  /** Global ms for `localMs` of this host's time to pass. */
  toGlobal(localMs: number): number {
    return localMs / (1 + this.drift);
  }
}

/** The monotonic clock of one process: ms of its host's time since the process started. */
export class ProcessClock {
  private readonly origin: number;
  constructor(
    private readonly host: HostClock,
    startedAt: number,
  ) {
    this.origin = host.raw(startedAt);
  }
  at(t: number): number {
    return this.host.raw(t) - this.origin;
  }
  toGlobal(localMs: number): number {
    return this.host.toGlobal(localMs);
  }
}
