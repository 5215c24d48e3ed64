/**
 * VM statistics, the sampling: every `statsIntervalMs` one driver query for all the VMs of this
 * host (`Driver.stats`: /proc for process VMs, one `virsh domstats` for libvirt VMs), kept in a
 * StatsBook (stats.ts). Nothing is sent anywhere: the master asks for the latest samples when
 * someone runs `vigil vms --stats` or `vigil vm stats` (agent.ts). A failed sample keeps the
 * previous one, is logged once per failure streak, and never stops the agent.
 */
import type { Driver } from '@vigil/drivers';
import type { Logger } from './logger.js';
import type { Clock } from './clock.js';
import { StatsBook, type HostStats } from './stats.js';

/** How long the master waits for a host's answer to `hostVmStats` (a host that does not answer is marked so). */
export const STATS_ASK_TIMEOUT_MS = 3000;

export interface StatsSamplerOptions {
  host: string;
  driver: Pick<Driver, 'stats' | 'list'>;
  logger: Logger;
  clock: Clock;
  intervalMs: number;
  /** Wall clock (ms since the epoch), for the samples' `sampledAt`. */
  wallClock?: () => number;
}

export class StatsSampler {
  private readonly book: StatsBook;
  private timer: NodeJS.Timeout | null = null;
  private sampling: Promise<void> | null = null;
  private stopped = false;
  /** The error of the failure streak of the whole query, if one is running. */
  private failing: string | null = null;
  /** VMs in a streak of unreadable samples (nothing read), with the first error. */
  private readonly unreadable = new Map<string, string>();
  samples = 0;

  constructor(private readonly opts: StatsSamplerOptions) {
    this.book = new StatsBook(opts.host);
  }

  /** Sample now, then every intervalMs. */
  start(): void {
    if (this.timer || this.stopped) return;
    this.timer = setInterval(() => void this.sample(), this.opts.intervalMs);
    void this.sample();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.sampling;
  }

  /** Take one sample (unless one is running: then wait for that one). Never rejects. */
  sample(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.sampling ??= this.take().finally(() => (this.sampling = null));
    return this.sampling;
  }

  private async take(): Promise<void> {
    const { clock, logger } = this.opts;
    const wall = this.opts.wallClock ?? Date.now;
    const t0 = clock.now();
    try {
      const samples = await this.opts.driver.stats();
      const t1 = clock.now();
      // The reads happened during the call: date them at its middle.
      this.book.record(samples, (t0 + t1) / 2, wall() - (t1 - t0) / 2);
      this.samples += 1;
      if (this.failing !== null) {
        logger.log('info', 'stats.sample-recovered', `VM statistics are sampled again (${samples.length} VMs)`, { vms: samples.length });
        this.failing = null;
      }
      const nowUnreadable = new Set<string>();
      for (const s of samples) {
        const nothing = s.cpuTimeNs === null && s.memoryBytes === null;
        if (!nothing) continue;
        nowUnreadable.add(s.vm);
        if (!this.unreadable.has(s.vm)) {
          const why = s.error ?? 'no counters';
          this.unreadable.set(s.vm, why);
          logger.log('warn', 'stats.vm-unreadable', `no statistics for ${s.vm}: ${why}`, { vm: s.vm, error: why });
        }
      }
      for (const vm of [...this.unreadable.keys()]) if (!nowUnreadable.has(vm)) this.unreadable.delete(vm);
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      if (this.failing === null) logger.log('warn', 'stats.sample-failed', `VM statistics could not be sampled: ${msg} (logged once until it works again)`, { error: msg });
      this.failing = msg;
      // Keep the last samples of the VMs that still run here (their age tells how old they are).
      try {
        this.book.keepOnly(new Set(this.opts.driver.list().map((v) => v.id)));
      } catch {
        /* the last samples stay */
      }
    }
  }

  /** This host's answer to `hostVmStats`: its latest sample of each VM it runs. */
  answer(): HostStats {
    return { host: this.opts.host, intervalMs: this.opts.intervalMs, error: this.failing, vms: this.book.view(this.opts.clock.now()) };
  }
}
