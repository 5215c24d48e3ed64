/**
 * The timings the core runs on, in milliseconds of the host's own monotonic clock.
 * Values and the trade-off each makes are documented in @vigil/config (profiles.ts) and
 * docs/configuration.md; the core only reads them.
 */
export interface Timing {
  /** How long an election gathers candidates before the best one is chosen (FDM: ~15 s). */
  electionWindowMs: number;
  /** Network heartbeat period, master <-> slave, and the period of election messages (FDM: 1 s). */
  heartbeatIntervalMs: number;
  /** Silence after which a slave re-elects and a master starts treating a slave as failed (FDM: 10 s). */
  hostTimeoutMs: number;
  /** Silence after which the master starts watching a slave's storage heartbeat (FDM: 3 s). */
  storageWatchAfterMs: number;
  /** How long the master pings a silent host's management address (FDM: 5 s). */
  icmpPingTimeoutMs: number;
  /** Silence after which a host with no heartbeat datastore is declared dead (FDM: 15 s). */
  deadNoHeartbeatDatastoreMs: number;
  /** Silence after which a host with heartbeat datastores is declared dead (FDM: 18 s). */
  deadMs: number;
  /** Period of storage heartbeat (host-N-hb) and lease renewals (FDM NFS: 5 s). */
  storageHeartbeatIntervalMs: number;
  /** A lock, heartbeat or lease seen unchanged this long is dead and may be taken over. */
  leaseTimeoutMs: number;
  /** A holder that has not renewed for this long stops using what the lease protects. */
  selfFenceDeadlineMs: number;
  /** Required slack: leaseTimeoutMs must exceed selfFenceDeadlineMs + leaseSafetyMarginMs. */
  leaseSafetyMarginMs: number;
  /** Upper bound on any single storage call; a call that takes longer counts as failed. */
  storageCallTimeoutMs: number;
  /** How often each host re-checks which datastores it can read and write. */
  datastoreProbeIntervalMs: number;
  /** Slave: silence (no agent traffic, no isolation address) before declaring itself isolated (FDM: 30 s). */
  slaveIsolationMs: number;
  /** Master: silence before declaring itself isolated and releasing its locks (FDM: 5 s). */
  masterIsolationMs: number;
  /** Delay between declaring isolation and applying the isolation response (FDM: >= 30 s). */
  isolationResponseDelayMs: number;
  /** Graceful shutdown isolation response: forced off after this (FDM: 300 s). */
  isolationShutdownTimeoutMs: number;
  /** Fallback rescan of poweron / poweredoff files when change events are missed (FDM polls every 30 s). */
  rescanIntervalMs: number;
  /** Waits before restart attempt 2..5 (FDM: +2, +6, +14, +30 min after the first). */
  restartRetryDelaysMs: number[];
  /** Window in which at most 3 VM-monitoring resets happen (FDM medium sensitivity: 24 h). */
  vmMonitorWindowMs: number;
  /** VM statistics sampling period. */
  statsIntervalMs: number;
}
