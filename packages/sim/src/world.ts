/**
 * A deterministic world: N hosts running the real HostCore against a simulated network, clocks
 * and datastores, under virtual time. Everything random comes from one seeded Rng.
 */
import { HostCore, type CoreAction, type HostId, type Message, type Role, type Timing } from '@vigil/core';
import { EventQueue } from './queue.js';
import { Rng } from './rng.js';
import { SimNetwork } from './network.js';

export interface SimHostSpec {
  id: HostId;
  /** Datastores this host mounts. */
  datastores: string[];
  /** Local monotonic clock = offsetMs + global * (1 + drift). */
  clockOffsetMs?: number;
  clockDrift?: number;
}

export interface WorldOptions {
  seed: number;
  timing: Timing;
  hosts: SimHostSpec[];
  /** Tick period of each host's runtime loop (virtual ms). Default heartbeatIntervalMs / 4. */
  tickMs?: number;
}

export interface TimelineEntry {
  at: number;
  host: HostId | null;
  event: string;
  message: string;
}

interface SimHost {
  spec: SimHostSpec;
  core: HostCore | null;
  /** Datastores currently readable and writable from this host. */
  accessible: Set<string>;
  /** Incarnation, bumped at every power-on: stale timers of an earlier life are ignored. */
  life: number;
  role: Role;
  master: HostId | null;
  generation: number;
}

type SimEvent =
  | { kind: 'tick'; host: HostId; life: number }
  | { kind: 'deliver'; from: HostId; to: HostId; msg: Message }
  | { kind: 'call'; fn: () => void };

export class World {
  readonly rng: Rng;
  readonly network = new SimNetwork();
  readonly timing: Timing;
  readonly timeline: TimelineEntry[] = [];
  private readonly queue = new EventQueue<SimEvent>();
  private readonly hosts = new Map<HostId, SimHost>();
  private readonly ids: HostId[];
  private readonly tickMs: number;
  now = 0;

  constructor(opts: WorldOptions) {
    this.rng = new Rng(opts.seed);
    this.timing = opts.timing;
    this.tickMs = opts.tickMs ?? Math.max(1, Math.floor(opts.timing.heartbeatIntervalMs / 4));
    this.ids = opts.hosts.map((h) => h.id);
    for (const spec of opts.hosts) {
      this.hosts.set(spec.id, {
        spec,
        core: null,
        accessible: new Set(spec.datastores),
        life: 0,
        role: 'uninitialized',
        master: null,
        generation: 0,
      });
    }
  }

  get hostIds(): readonly HostId[] {
    return this.ids;
  }

  private host(id: HostId): SimHost {
    const h = this.hosts.get(id);
    if (!h) throw new Error(`unknown host ${id}`);
    return h;
  }

  private localTime(h: SimHost): number {
    return Math.floor((h.spec.clockOffsetMs ?? 0) + this.now * (1 + (h.spec.clockDrift ?? 0)));
  }

  // ---- faults and operations ----------------------------------------------------------------

  powerOn(id: HostId, afterMs = 0): void {
    this.at(this.now + afterMs, () => {
      const h = this.host(id);
      if (h.core) return;
      h.life += 1;
      h.core = new HostCore({ self: id, hosts: this.ids, timing: this.timing, generation: h.generation });
      this.record(id, 'power.on', `${id} powered on`);
      this.feed(h, { type: 'datastores', now: this.localTime(h), accessible: [...h.accessible].sort() });
      this.queue.push(this.now + this.rng.int(1, this.tickMs), { kind: 'tick', host: id, life: h.life });
    });
  }

  powerOff(id: HostId): void {
    const h = this.host(id);
    if (!h.core) return;
    h.core = null;
    h.role = 'uninitialized';
    h.master = null;
    this.record(id, 'power.off', `${id} lost power`);
  }

  setAccessible(id: HostId, datastores: string[]): void {
    const h = this.host(id);
    h.accessible = new Set(datastores);
    if (h.core) this.feed(h, { type: 'datastores', now: this.localTime(h), accessible: [...h.accessible].sort() });
  }

  /** Run a function at virtual time `at`. */
  at(at: number, fn: () => void): void {
    this.queue.push(Math.max(at, this.now), { kind: 'call', fn });
  }

  // ---- running --------------------------------------------------------------------------------

  run(untilMs: number): void {
    for (;;) {
      const next = this.queue.peek();
      if (!next || next.at > untilMs) break;
      this.queue.pop();
      this.now = next.at;
      this.handle(next.item);
    }
    this.now = untilMs;
  }

  /** Run until `pred` holds (checked after each event) or `limitMs` passes; returns the time or null. */
  runUntil(pred: () => boolean, limitMs: number): number | null {
    const end = this.now + limitMs;
    if (pred()) return this.now;
    for (;;) {
      const next = this.queue.peek();
      if (!next || next.at > end) {
        this.now = end;
        return null;
      }
      this.queue.pop();
      this.now = next.at;
      this.handle(next.item);
      if (pred()) return this.now;
    }
  }

  private handle(ev: SimEvent): void {
    switch (ev.kind) {
      case 'call':
        ev.fn();
        return;
      case 'tick': {
        const h = this.host(ev.host);
        if (!h.core || h.life !== ev.life) return;
        this.feed(h, { type: 'tick', now: this.localTime(h) });
        this.queue.push(this.now + this.tickMs, ev);
        return;
      }
      case 'deliver': {
        const h = this.host(ev.to);
        if (!h.core) return;
        this.feed(h, { type: 'message', now: this.localTime(h), from: ev.from, msg: ev.msg });
        return;
      }
    }
  }

  private feed(h: SimHost, ev: Parameters<HostCore['step']>[0]): void {
    if (!h.core) return;
    this.apply(h, h.core.step(ev));
  }

  private apply(h: SimHost, actions: CoreAction[]): void {
    for (const a of actions) {
      switch (a.type) {
        case 'send':
          for (const delay of this.network.deliveries(h.spec.id, a.to, this.rng)) {
            this.queue.push(this.now + delay, { kind: 'deliver', from: h.spec.id, to: a.to, msg: a.msg });
          }
          break;
        case 'role':
          h.role = a.role;
          h.master = a.master;
          h.generation = Math.max(h.generation, a.generation);
          break;
        case 'log':
          if (a.level !== 'debug') this.record(h.spec.id, a.event, a.message);
          break;
      }
    }
  }

  private record(host: HostId | null, event: string, message: string): void {
    this.timeline.push({ at: this.now, host, event, message });
  }

  // ---- observation ----------------------------------------------------------------------------

  role(id: HostId): Role {
    return this.host(id).role;
  }

  masterOf(id: HostId): HostId | null {
    return this.host(id).master;
  }

  core(id: HostId): HostCore | null {
    return this.host(id).core;
  }

  isUp(id: HostId): boolean {
    return this.host(id).core !== null;
  }

  masters(): HostId[] {
    return this.ids.filter((id) => this.host(id).role === 'master');
  }

  /** A readable timeline, for failure reports. */
  formatTimeline(last = 200): string {
    return this.timeline
      .slice(-last)
      .map((e) => `${(e.at / 1000).toFixed(3).padStart(10)}s ${(e.host ?? '-').padEnd(10)} ${e.event.padEnd(20)} ${e.message}`)
      .join('\n');
  }
}
