/**
 * The VM half of the runtime: performs the core's power actions through the driver, reports
 * driver events, and (on the master) reads the VM catalog and samples VM leases.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isVmId, type IsolationResponse, type CatalogVm, type CoreAction, type CoreEvent, type HostId } from '@vigil/core';
import type { ClusterConfig } from '@vigil/config';
import { describeError, poweredoffDir, vmLease, withTimeout, writeFileAtomic, writePoweredOff } from '@vigil/datastore';
import { checkLibvirt, LibvirtDriver, ProcessDriver, validateLibvirtVm, validateProcessVm, VM_NAME_RE, RESTART_PRIORITIES, type Driver, type RestartPriority } from '@vigil/drivers';
import type { Logger } from './logger.js';
import { runLimited, SAMPLE_CONCURRENCY } from './storage.js';
import { createLibvirtVm } from './libvirt-create.js';
import type { Clock } from './clock.js';

export interface VmRuntimeOptions {
  config: ClusterConfig;
  host: HostId;
  stateDir: string;
  logger: Logger;
  clock: Clock;
  feed: (ev: CoreEvent) => void;
  /** The datastores this host can read and write now (last probe). */
  accessible: () => string[];
}

/**
 * Where VM config files live on a datastore: `<datastore>/vms/<name>.json`, id `ds:vms/<name>.json`
 * (a libvirt VM's JSON names its domain XML, beside it: docs/libvirt.md).
 */
export const VM_DIR = 'vms';

export class VmRuntime {
  readonly driver: Driver;
  private readonly config: ClusterConfig;
  private readonly badFiles = new Map<string, string>();
  /** The catalog last read of each datastore (VM id -> entry), so one new VM need not rescan it. */
  private readonly catalogs = new Map<string, Map<string, CatalogVm>>();
  /**
   * Each VM config file as last read: its identity (inode, size, mtime, ctime in ns) and entry.
   * A rescan re-reads only files whose identity changed: one stat per VM instead of a read and
   * a validation (16,000 VMs every rescanIntervalMs were a large part of a master's CPU).
   */
  private readonly configSeen = new Map<string, { key: string; files: string[]; vm: CatalogVm }>();
  private lastLocal = '';
  /** Each local VM's own isolation response (null: the cluster's), read from its config. */
  private readonly responses = new Map<string, IsolationResponse | null>();
  private readonly loadingResponses = new Set<string>();

  constructor(private readonly opts: VmRuntimeOptions) {
    this.config = opts.config;
    const me = this.config.hosts[opts.host]!;
    const common = {
      host: opts.host,
      cluster: this.config.cluster,
      datastores: Object.fromEntries(me.datastores.map((d) => [d, this.config.datastores[d]!])),
      stateDir: opts.stateDir,
      timing: this.config.timing,
      ...(me.capacity ? { capacity: me.capacity } : {}),
      shutdownTimeoutMs: this.config.timing.isolationShutdownTimeoutMs,
    };
    const drv = this.config.driver;
    if (drv.type === 'libvirt') {
      // Refuse to start rather than accept VMs this host cannot run.
      const problem = checkLibvirt(drv.uri);
      if (problem) throw new Error(`driver libvirt: ${problem}`);
      this.driver = new LibvirtDriver({ ...common, uri: drv.uri });
    } else {
      this.driver = new ProcessDriver(common);
    }
  }

  start(): void {
    this.driver.onEvent((ev) => {
      this.opts.logger.log(ev.reason === 'requested' ? 'info' : 'warn', 'vm.local-stop', `${ev.vm} stopped on this host: ${ev.reason} (${ev.detail})`, { vm: ev.vm, reason: ev.reason });
      this.opts.feed({ type: 'localVmStopped', now: this.opts.clock.now(), vm: ev.vm, reason: ev.reason, detail: ev.detail });
      this.reportLocal(true);
    });
    this.reportLocal(true);
  }

  async stop(): Promise<void> {
    await this.driver.close();
  }

  /** Tell the core which VMs run here (on change, or always when `force`). */
  reportLocal(force = false): void {
    const vms = this.driver.list().map((v) => v.id);
    const responses: Record<string, IsolationResponse> = {};
    for (const vm of vms) {
      const r = this.responses.get(vm);
      if (r) responses[vm] = r;
      else if (r === undefined) this.loadResponse(vm);
    }
    const key = vms.map((v) => `${v}=${responses[v] ?? ''}`).join('\n');
    if (!force && key === this.lastLocal) return;
    this.lastLocal = key;
    this.opts.feed({ type: 'localVms', now: this.opts.clock.now(), vms, responses });
  }

  /** Read a running VM's config for its isolation response (adopted VMs), then report again. */
  private loadResponse(vm: string): void {
    const path = this.pathOf(vm);
    if (!path || this.loadingResponses.has(vm)) return;
    this.loadingResponses.add(vm);
    withTimeout(`read ${vm}`, this.config.timing.storageCallTimeoutMs, () => this.driver.loadSpec(vm, path)).then(
      (spec) => {
        this.loadingResponses.delete(vm);
        this.responses.set(vm, spec.isolationResponse ?? null);
        this.reportLocal();
      },
      () => {
        // Unreadable now: the cluster's response applies until a later read succeeds.
        this.loadingResponses.delete(vm);
      },
    );
  }

  capacity(): { memoryMB: number; cpus: number } {
    return this.driver.capacity();
  }

  /** Absolute path of a VM's config file on this host, or null if its datastore is not mounted here. */
  pathOf(vm: string): string | null {
    const i = vm.indexOf(':');
    const ds = vm.slice(0, i);
    const base = this.config.datastores[ds];
    if (!base || !this.config.hosts[this.opts.host]!.datastores.includes(ds)) return null;
    return join(base, vm.slice(i + 1));
  }

  perform(a: CoreAction): boolean {
    if (a.type === 'localPowerOn') {
      void this.powerOn(a.vm, a.req, a.replyTo, a.takeover);
      return true;
    }
    if (a.type === 'localPowerOff') {
      void this.powerOff(a.vm, a.req, a.replyTo, a.graceful, a.timeoutMs);
      return true;
    }
    if (a.type === 'isolationStop') {
      void this.isolationStop(a.vm, a.graceful, a.timeoutMs);
      return true;
    }
    return false;
  }

  private result(vm: string, req: number, replyTo: HostId, ok: boolean, leaseHeld: boolean, error: string): void {
    this.reportLocal();
    this.opts.feed({ type: 'localVmResult', now: this.opts.clock.now(), vm, req, replyTo, ok, leaseHeld, error });
  }

  private async powerOn(vm: string, req: number, replyTo: HostId, takeover: string): Promise<void> {
    const path = this.pathOf(vm);
    if (!path) return this.result(vm, req, replyTo, false, false, `datastore of ${vm} is not mounted on ${this.opts.host}`);
    try {
      const spec = await this.driver.loadSpec(vm, path);
      this.responses.set(vm, spec.isolationResponse ?? null);
      await this.driver.powerOn(spec, takeover);
      this.opts.logger.log('info', 'vm.powered-on', `${vm} powered on here (lease acquired)`, { vm });
      this.result(vm, req, replyTo, true, false, '');
    } catch (err) {
      const leaseHeld = (err as { code?: string }).code === 'ELEASEHELD';
      this.opts.logger.log('warn', 'vm.power-on-failed', `${vm} could not be powered on here: ${(err as Error).message}`, { vm, leaseHeld });
      this.result(vm, req, replyTo, false, leaseHeld, (err as Error).message);
    }
  }

  private async powerOff(vm: string, req: number, replyTo: HostId, graceful: boolean, timeoutMs: number): Promise<void> {
    try {
      if (graceful) await this.driver.shutdown(vm, timeoutMs);
      else await this.driver.powerOff(vm);
      this.result(vm, req, replyTo, true, false, '');
    } catch (err) {
      this.result(vm, req, replyTo, false, false, (err as Error).message);
    }
  }

  /**
   * The isolation response for one VM (SPEC §3.4): `poweredoff/<vm>` on its datastore first, so
   * that the master knows to restart it, then the stop; the driver's stop event drops it from
   * the poweron file. If the file cannot be written the VM is left running unless its datastore
   * is gone from this host (then it cannot keep its lease anyway, and the master's view of the
   * lease decides).
   */
  private async isolationStop(vm: string, graceful: boolean, timeoutMs: number): Promise<void> {
    const ds = vm.slice(0, vm.indexOf(':'));
    const base = this.config.datastores[ds];
    const how = graceful ? `shutdown (forced off after ${timeoutMs} ms)` : 'power off';
    try {
      if (!base) throw new Error(`unknown datastore ${ds}`);
      await writePoweredOff(poweredoffDir(base, this.config.cluster), { vm, host: this.opts.host }, this.config.timing.storageCallTimeoutMs);
    } catch (err) {
      const lost = !this.opts.accessible().includes(ds);
      this.opts.logger.log('error', 'isolation.poweredoff-failed', `could not write poweredoff/ for ${vm}: ${describeError(err)}; ${lost ? `${ds} is lost: stopping it anyway` : 'leaving it running'}`, { vm, datastore: ds, lost });
      if (!lost) return;
    }
    try {
      if (graceful) await this.driver.shutdown(vm, timeoutMs);
      else await this.driver.powerOff(vm);
      this.opts.logger.log('warn', 'isolation.stopped', `${vm} stopped by the isolation response (${how}); the master restarts it elsewhere`, { vm, graceful });
    } catch (err) {
      this.opts.logger.log('error', 'isolation.stop-failed', `isolation response ${how} of ${vm} failed: ${describeError(err)}`, { vm });
    }
    this.reportLocal();
  }

  // ---- master: catalog and leases -----------------------------------------------------------------

  /** Read every VM config on a datastore and report the catalog. Bad files are logged once. */
  async scanCatalog(ds: string): Promise<void> {
    const base = this.config.datastores[ds];
    if (!base) return;
    const dir = join(base, VM_DIR);
    const t = this.config.timing.storageCallTimeoutMs;
    let names: string[];
    try {
      names = await withTimeout(`list ${dir}`, t, () => readdir(dir));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') names = [];
      else return;
    }
    const vms: CatalogVm[] = [];
    for (const n of names.filter((x) => x.endsWith('.json')).sort()) {
      const id = `${ds}:${VM_DIR}/${n}`;
      if (!isVmId(id)) {
        if (this.badFiles.get(id) !== 'bad name') {
          this.badFiles.set(id, 'bad name');
          this.opts.logger.log('warn', 'vm.config-invalid', `ignoring ${join(dir, n)}: "${n}" cannot be part of a VM id (letters, digits, . _ - only)`, { file: join(dir, n) });
        }
        continue;
      }
      try {
        // The identity of the config file and of every file its spec was read from (a libvirt
        // VM's domain XML): a change to any of them means a fresh read.
        const identity = async (files: string[]) => {
          const keys: string[] = [];
          for (const f of files) {
            const st = await withTimeout(`stat ${f}`, t, () => stat(f, { bigint: true }));
            keys.push(`${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`);
          }
          return keys.join('/');
        };
        const seen = this.configSeen.get(id);
        if (seen && seen.key === (await identity([join(dir, n), ...seen.files]).catch(() => null))) {
          vms.push(seen.vm);
          continue;
        }
        const spec = await withTimeout(`read ${n}`, t, () => this.driver.loadSpec(id, join(dir, n)));
        const vm: CatalogVm = { id, name: spec.name, memoryMB: spec.memoryMB, cpus: spec.cpus, priority: spec.restartPriority };
        const files = spec.sourceFiles ?? [];
        vms.push(vm);
        this.configSeen.set(id, { key: await identity([join(dir, n), ...files]), files, vm });
        this.badFiles.delete(id);
      } catch (err) {
        this.configSeen.delete(id);
        const msg = describeError(err);
        if (this.badFiles.get(id) !== msg) {
          this.badFiles.set(id, msg);
          this.opts.logger.log('warn', 'vm.config-invalid', `ignoring VM config ${join(dir, n)}: ${msg}`, { vm: id, file: join(dir, n) });
        }
      }
    }
    const listed = new Set(vms.map((v) => v.id));
    for (const id of this.configSeen.keys()) if (id.startsWith(`${ds}:`) && !listed.has(id)) this.configSeen.delete(id);
    this.catalogs.set(ds, new Map(vms.map((v) => [v.id, v])));
    this.opts.feed({ type: 'vmCatalog', now: this.opts.clock.now(), datastore: ds, vms });
  }

  /**
   * Add one VM just created to its datastore's catalog, without reading the others again (a
   * rescan per creation would make creating N VMs cost N² reads on the master).
   */
  async catalogAdd(id: string): Promise<void> {
    const ds = id.slice(0, id.indexOf(':'));
    const path = this.pathOf(id);
    const known = this.catalogs.get(ds);
    if (!path || !known) return this.scanCatalog(ds);
    const spec = await withTimeout(`read ${id}`, this.config.timing.storageCallTimeoutMs, () => this.driver.loadSpec(id, path));
    known.set(id, { id, name: spec.name, memoryMB: spec.memoryMB, cpus: spec.cpus, priority: spec.restartPriority });
    this.opts.feed({ type: 'vmCatalog', now: this.opts.clock.now(), datastore: ds, vms: [...known.values()].sort((a, b) => (a.id < b.id ? -1 : 1)) });
  }

  private leaseSampling = false;

  async sampleLeases(vms: string[]): Promise<void> {
    // Bounded like the storage samples (storage.ts): a new master watches every VM lease at once.
    // One round at a time: a round slower than the period makes the next one start late.
    if (this.leaseSampling) return;
    this.leaseSampling = true;
    await runLimited(
      vms.map((vm) => async () => {
        const ds = vm.slice(0, vm.indexOf(':'));
        const base = this.config.datastores[ds];
        if (!base) return;
        try {
          const snap = await vmLease({ datastorePath: base, cluster: this.config.cluster, vm, host: this.opts.host, timeoutMs: this.config.timing.storageCallTimeoutMs }).read();
          this.opts.feed({ type: 'vmLeaseSample', now: this.opts.clock.now(), vm, record: snap.record, lockExists: snap.lockExists, maxClaim: snap.maxClaim });
        } catch {
          /* unreadable now: no sample, so it is not judged dead on this basis */
        }
      }),
      SAMPLE_CONCURRENCY,
    ).finally(() => (this.leaseSampling = false));
  }

  // ---- CLI operations done by the agent itself -------------------------------------------------

  /** `vigil vm create`: write `<ds>/vms/<name>.json` (never overwrites). */
  async create(req: Record<string, unknown>): Promise<string> {
    const ds = String(req.datastore ?? '');
    const base = this.config.datastores[ds];
    if (!base) throw new Error(`unknown datastore "${ds}" (datastores: ${Object.keys(this.config.datastores).join(', ')})`);
    if (!this.config.hosts[this.opts.host]!.datastores.includes(ds)) throw new Error(`${ds} is not mounted on ${this.opts.host}`);
    if (this.config.driver.type === 'libvirt') {
      // A domain XML (the operator's, or a small diskless one) and its JSON: libvirt-create.ts.
      const made = await createLibvirtVm(req, ds, base, this.config.driver.uri, VM_DIR);
      this.opts.logger.log('info', 'vm.created', `created libvirt VM ${String(req.name)} on ${ds}`, { vm: made.id, file: made.file, domainXml: made.xmlFile });
      return made.id;
    }
    if (req.domainXml !== undefined || req.domainType !== undefined) {
      throw new Error('--domain-xml and --domain-type make libvirt VMs; this cluster runs the process driver ("driver" in the cluster config): give the VM\'s command after --');
    }
    if (typeof req.command !== 'string' || req.command === '') {
      throw new Error('a process VM needs its command: vigil vm create --datastore DS --name NAME -- COMMAND [ARGS...]');
    }
    const body = {
      name: req.name,
      command: req.command,
      args: req.args ?? [],
      ...(req.env ? { env: req.env } : {}),
      memoryMB: req.memoryMB ?? 128,
      cpus: req.cpus ?? 1,
      restartPriority: req.priority ?? 'medium',
      ...(req.isolationResponse ? { isolationResponse: req.isolationResponse } : {}),
    };
    const valid = validateProcessVm(body, 'vm create');
    const dir = join(base, VM_DIR);
    await mkdir(dir, { recursive: true });
    const file = join(dir, `${valid.name}.json`);
    try {
      await writeFile(file, JSON.stringify(valid, null, 2) + '\n', { flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`a VM named ${valid.name} already exists on ${ds} (${file})`);
      throw err;
    }
    this.opts.logger.log('info', 'vm.created', `created VM ${valid.name} on ${ds}`, { vm: `${ds}:${VM_DIR}/${valid.name}.json`, file });
    return `${ds}:${VM_DIR}/${valid.name}.json`;
  }

  /** `vigil vm set NAME --priority P`: rewrite the VM's config file. */
  async setPriority(vm: string, priority: string): Promise<void> {
    if (!(RESTART_PRIORITIES as readonly string[]).includes(priority)) throw new Error(`priority must be one of ${RESTART_PRIORITIES.join(', ')}`);
    const path = this.pathOf(vm);
    if (!path) throw new Error(`the datastore of ${vm} is not mounted on ${this.opts.host}`);
    const raw: unknown = JSON.parse(await readFile(path, 'utf8'));
    const cfg = this.config.driver.type === 'libvirt' ? validateLibvirtVm(raw, path) : validateProcessVm(raw, path);
    cfg.restartPriority = priority as RestartPriority;
    await writeFileAtomic(path, JSON.stringify(cfg, null, 2) + '\n', this.config.timing.storageCallTimeoutMs);
  }
}

export { VM_NAME_RE };
