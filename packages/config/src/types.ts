import type { HostId, Timing } from '@vigil/core';
import type { ProfileName } from './profiles.js';

export type IsolationResponse = 'leavePoweredOn' | 'powerOff' | 'shutdown';
export const ISOLATION_RESPONSES: readonly IsolationResponse[] = ['leavePoweredOn', 'powerOff', 'shutdown'];

export type DriverConfig = { type: 'process' } | { type: 'libvirt'; uri: string };

export interface HostConfig {
  /** Management address (IP literal; no DNS, like FDM). The agent binds it. */
  address: string;
  /** UDP port; defaults to the cluster's port. */
  port: number;
  /** Datastores this host mounts (resolved: all when not configured). */
  datastores: string[];
  /** Per-host isolation addresses; empty = the cluster's, or the host's default gateway. */
  isolationAddresses: string[];
  /** Capacity offered to VMs; undefined = the machine's memory and cores. */
  capacity?: { memoryMB: number; cpus: number };
}

/** A validated cluster config with every default filled in. */
export interface ClusterConfig {
  cluster: string;
  secretFile: string;
  port: number;
  hosts: Record<HostId, HostConfig>;
  /** Datastore name -> mount path (absolute). */
  datastores: Record<string, string>;
  /** Configured heartbeat datastores, or null to choose 2 automatically among those most hosts see. */
  heartbeatDatastores: string[] | null;
  isolationAddresses: string[];
  /**
   * Ping a silent host's management address before declaring it dead (FDM does). Only the
   * loopback lab turns this off: 127.0.0.x always answers, whatever happened to the "host".
   */
  pingHosts: boolean;
  isolationResponse: IsolationResponse;
  driver: DriverConfig;
  profile: ProfileName;
  timing: Timing;
  restart: {
    maxConcurrentPerHost: number;
    maxAttempts: number;
    /**
     * When lower-priority restarts may begin (vSphere 6.5+ "start next priority VMs when"):
     * `allocated` (its default, "resources allocated"): as soon as every higher-priority VM that
     * can be restarted has been placed and its power-on sent; `poweredOn`: only once they run.
     */
    nextPriorityWhen: 'allocated' | 'poweredOn';
  };
  log: { level: 'error' | 'warn' | 'info' | 'debug'; format: 'json' | 'text' };
}

/** One problem found in a config: the key (dotted path) and what is wrong with it. */
export interface ConfigProblem {
  key: string;
  problem: string;
}

export class ConfigError extends Error {
  readonly problems: ConfigProblem[];
  constructor(source: string, problems: ConfigProblem[]) {
    super(`${source}: invalid config:\n` + problems.map((p) => `  ${p.key || '(top level)'}: ${p.problem}`).join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}
