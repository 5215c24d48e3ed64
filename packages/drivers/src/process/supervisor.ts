/**
 * The per-VM supervisor of the process driver. It outlives an agent crash (it runs in its own
 * session), and it holds the VM's lease for as long as the VM runs:
 *   1. acquire the VM's lease (a host powers a VM on only after acquiring its lease);
 *   2. start the VM process and renew the lease every storageHeartbeatIntervalMs;
 *   3. if the lease cannot be renewed before the self-fence deadline: SIGKILL the VM at once;
 *   4. when the VM exits (or is stopped): release the lease and record why.
 * Signals: SIGTERM = graceful shutdown (VM gets SIGTERM, SIGKILL after the timeout);
 * SIGUSR2 = hard power off. SIGINT and SIGHUP are ignored (a closed terminal must not kill VMs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import { LeaseError, LeaseKeeper, vmLease, writeFileAtomic } from '@vigil/datastore';
import { readProcessVm } from './spec.js';
import type { SupervisorPhase, SupervisorState } from './state.js';

export interface SupervisorArgs {
  vm: string;
  host: string;
  cluster: string;
  datastorePath: string;
  specPath: string;
  stateFile: string;
  logFile: string;
  storageHeartbeatIntervalMs: number;
  selfFenceDeadlineMs: number;
  storageCallTimeoutMs: number;
  shutdownTimeoutMs: number;
  /** Take over a lease record of this host's own (an earlier life of this host). */
  takeoverOwn: boolean;
  /** The record the master judged dead (`host:generation:token:counter`, `orphan`, or ''). */
  takeover: string;
}

export async function runSupervisor(a: SupervisorArgs): Promise<number> {
  const now = () => performance.now();
  let state: SupervisorState = { vm: a.vm, phase: 'starting', supervisorPid: process.pid };
  const save = async (patch: Partial<SupervisorState> & { phase: SupervisorPhase }) => {
    state = { ...state, ...patch };
    await writeFileAtomic(a.stateFile, JSON.stringify(state) + '\n', 5000).catch(() => {});
  };
  mkdirSync(dirname(a.stateFile), { recursive: true });
  process.on('SIGINT', () => {});
  process.on('SIGHUP', () => {});
  await save({ phase: 'starting' });

  let config;
  try {
    config = await readProcessVm(a.specPath);
  } catch (err) {
    await save({ phase: 'failed', detail: (err as Error).message });
    return 5;
  }

  const lease = vmLease({ datastorePath: a.datastorePath, cluster: a.cluster, vm: a.vm, host: a.host, timeoutMs: a.storageCallTimeoutMs, onCompromised: () => {} });
  const started = now();
  try {
    const snap = await lease.read();
    const r = snap.record;
    const own = a.takeoverOwn && r?.host === a.host && r.state === 'held' ? { ...r, maxClaim: snap.maxClaim } : undefined;
    // A takeover is allowed only of the exact state the master saw unchanged for the lease timeout.
    const parts = a.takeover.split(':');
    const judged =
      r && parts.length === 5 && parts.slice(0, 4).join(':') === `${r.host}:${r.generation}:${r.token}:${r.counter}` ? { ...r, maxClaim: Number(parts[4]) } : undefined;
    if (a.takeover === 'orphan' && !r) await lease.acquire('orphan');
    else await lease.acquire(own ?? judged);
  } catch (err) {
    const held = err instanceof LeaseError && (err.code === 'ELOCKED' || err.code === 'ECHANGED');
    await save({ phase: held ? 'leaseHeld' : 'failed', detail: `VM lease: ${(err as Error).message}` });
    return held ? 3 : 5;
  }

  let child: ChildProcess | null = null;
  let stopping: 'graceful' | 'hard' | null = null;
  let fenced = false;
  const done = new Promise<number>((resolve) => {
    const keeper = new LeaseKeeper({
      intervalMs: a.storageHeartbeatIntervalMs,
      selfFenceDeadlineMs: a.selfFenceDeadlineMs,
      now,
      onEvent: (ev) => {
        if (ev.type !== 'lost') return;
        // Self-fence: the lease may be taken elsewhere soon; the VM must be gone first.
        fenced = true;
        child?.kill('SIGKILL');
        void save({ phase: 'fenced', detail: ev.reason }).then(() => resolve(4));
      },
    });
    keeper.add('vm', lease, started);
    keeper.start();

    const out = openSync(a.logFile, 'a');
    child = spawn(config.command, config.args, { env: { ...process.env, ...config.env, VIGIL_VM: a.vm }, stdio: ['ignore', out, out] });
    child.on('error', (err) => {
      void keeper.stop(true).then(() => save({ phase: 'failed', detail: `cannot start ${config.command}: ${err.message}` })).then(() => resolve(5));
    });
    child.on('spawn', () => {
      void save({ phase: 'running', vmPid: child!.pid!, leaseGeneration: lease.held?.generation ?? 0, startedAt: new Date().toISOString() });
    });
    child.on('exit', (code, signal) => {
      if (fenced) return;
      const phase: SupervisorPhase = stopping ? 'stopped' : 'exited';
      const detail = stopping ? `${stopping} stop through Vigil` : signal ? `killed by ${signal}` : `exited with code ${code}`;
      void keeper
        .stop(true)
        .then(() => save({ phase, detail, code, signal }))
        .then(() => resolve(0));
    });
    process.on('SIGTERM', () => {
      if (stopping || !child) return;
      stopping = 'graceful';
      child.kill('SIGTERM');
      setTimeout(() => child?.kill('SIGKILL'), a.shutdownTimeoutMs).unref();
    });
    process.on('SIGUSR2', () => {
      stopping = 'hard';
      child?.kill('SIGKILL');
    });
  });
  return done;
}
