/**
 * The master's view of every host's storage side: its storage heartbeat (host-N-hb on each of
 * its heartbeat datastores, judged by change) and its poweron file (isolation bit, VMs).
 */
import type { HostId } from './ids.js';
import type { CoreEvent, LogLevel, CoreAction } from './events.js';
import { ChangeTracker, type Liveness } from './liveness.js';

export type StorageHeartbeat = 'alive' | 'dead' | 'unknown';

export interface HostStorage {
  storageHeartbeat: StorageHeartbeat;
  /** Datastores where its heartbeat was seen, with their liveness. */
  heartbeats: Record<string, Liveness>;
  isolated: boolean | null;
  vms: string[] | null;
}

export class StorageView {
  private readonly tracker: ChangeTracker;
  private readonly hbDatastores = new Map<HostId, Set<string>>();
  private readonly poweron = new Map<HostId, { at: number; isolated: boolean; vms: string[] }>();
  private readonly errors = new Map<string, string>();
  private readonly poweredoff = new Map<string, string[]>();
  private out: CoreAction[] = [];

  constructor(leaseTimeoutMs: number) {
    this.tracker = new ChangeTracker(leaseTimeoutMs);
  }

  step(ev: CoreEvent): CoreAction[] {
    this.out = [];
    if (ev.type === 'heartbeatSample') {
      const key = `${ev.host}@${ev.datastore}`;
      const r = ev.record;
      // An unreadable record says nothing about liveness (it is not "gone"): no observation.
      if (!ev.error) this.tracker.observe(key, { value: r ? `${r.generation}:${r.token}:${r.counter}` : null, released: r?.state === 'released' }, ev.now);
      let set = this.hbDatastores.get(ev.host);
      if (!set) this.hbDatastores.set(ev.host, (set = new Set()));
      if (r || ev.error) set.add(ev.datastore);
      this.noteError(key, ev.error, `heartbeat of ${ev.host} on ${ev.datastore}`);
    } else if (ev.type === 'poweredoffSample') {
      const before = this.poweredoff.get(ev.datastore) ?? [];
      const added = ev.vms.filter((v) => !before.includes(v));
      if (added.length > 0) {
        this.log('warn', 'poweredoff.seen', `poweredoff/ on ${ev.datastore} lists ${added.join(', ')}`, { datastore: ev.datastore, vms: added });
      }
      this.poweredoff.set(ev.datastore, [...ev.vms]);
    } else if (ev.type === 'poweronSample') {
      const key = `poweron:${ev.host}@${ev.datastore}`;
      this.noteError(key, ev.error, `poweron file of ${ev.host} on ${ev.datastore}`);
      if (ev.isolated !== null && ev.vms !== null) {
        const prev = this.poweron.get(ev.host);
        if (prev && prev.isolated !== ev.isolated) {
          this.log(ev.isolated ? 'warn' : 'info', 'host.isolation-bit', `${ev.host} ${ev.isolated ? 'set' : 'cleared'} its isolation bit (${ev.datastore})`, { subject: ev.host, datastore: ev.datastore, isolated: ev.isolated });
        }
        this.poweron.set(ev.host, { at: ev.now, isolated: ev.isolated, vms: ev.vms });
      }
    }
    return this.out;
  }

  private noteError(key: string, error: string | undefined, what: string): void {
    const before = this.errors.get(key);
    if (error && error !== before) {
      this.errors.set(key, error);
      this.log('warn', 'storage.corrupt', `${what}: ${error}`, { file: what, error });
    } else if (!error && before) {
      this.errors.delete(key);
      this.log('info', 'storage.repaired', `${what} is readable again`, { file: what });
    }
  }

  /** VMs listed in poweredoff/ on each datastore, as last read. */
  poweredOff(): Map<string, string[]> {
    return new Map(this.poweredoff);
  }

  host(host: HostId, now: number): HostStorage {
    const heartbeats: Record<string, Liveness> = {};
    for (const d of [...(this.hbDatastores.get(host) ?? [])].sort()) heartbeats[d] = this.tracker.state(`${host}@${d}`, now);
    const states = Object.values(heartbeats);
    let storageHeartbeat: StorageHeartbeat = 'unknown';
    if (states.some((s) => s === 'alive')) storageHeartbeat = 'alive';
    else if (states.length > 0 && states.every((s) => s === 'dead' || s === 'released')) storageHeartbeat = 'dead';
    const p = this.poweron.get(host);
    return { storageHeartbeat, heartbeats, isolated: p ? p.isolated : null, vms: p ? p.vms : null };
  }

  private log(level: LogLevel, event: string, message: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, message, fields });
  }
}
