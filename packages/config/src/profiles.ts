/**
 * Timing profiles. `fdm` carries FDM's values; `default` detects failures and expires leases
 * faster than FDM (a dead slave's VMs run elsewhere in about 7 s) under the same safety
 * inequalities; `fast` is about 1/10 of FDM's values, for the lab and tests. Each field says what it trades off. Any field can be overridden per cluster, e.g.
 * `timing: { "profile": "fast", "electionWindowMs": 3000 }`; the loader then re-checks the safety
 * inequalities (validate.ts), so an override that breaks one is refused (raising hostTimeoutMs
 * alone, for instance, also needs deadMs and deadNoHeartbeatDatastoreMs raised).
 */
import type { Timing } from '@vigil/core';

export type ProfileName = 'default' | 'fast' | 'fdm';

export interface FieldDoc {
  /** What the field does. */
  what: string;
  /** What raising or lowering it costs. */
  tradeOff: string;
}

/** Documentation for every timing field, rendered into docs/configuration.md and `vigil config profiles`. */
export const TIMING_DOCS: Record<keyof Timing, FieldDoc> = {
  electionWindowMs: {
    what: 'How long an election gathers candidates before the best one is chosen (FDM: about 15 s).',
    tradeOff: 'Shorter elects sooner after a master loss; too short and hosts that start a little later or whose messages are delayed are missed, so a worse host may win and be left running.',
  },
  heartbeatIntervalMs: {
    what: 'Period of master<->slave network heartbeats and of election messages (FDM: 1 s).',
    tradeOff: 'Shorter detects silence with finer resolution and costs more datagrams (the master sends one per host per interval).',
  },
  hostTimeoutMs: {
    what: 'Network silence after which a slave re-elects, and after which the master declares a slave unreachable and starts pinging it (FDM: das.config.fdm.hostTimeout = 10 s).',
    tradeOff: 'Shorter fails over sooner; too short turns a loaded host or a short network blip into a false failure (must cover several lost heartbeats).',
  },
  storageWatchAfterMs: {
    what: 'Network silence after which the master starts watching the slave\'s storage heartbeat (FDM: 3 s).',
    tradeOff: 'Earlier costs a few more storage reads for hosts that are only briefly silent; later leaves less time to see the heartbeat change before the dead decision.',
  },
  icmpPingTimeoutMs: {
    what: 'How long the master pings a silent host\'s management address before concluding it does not answer (FDM: das.config.fdm.icmpPingTimeout = 5 s).',
    tradeOff: 'Longer tolerates a slow or lossy path; it adds directly to failover time.',
  },
  deadNoHeartbeatDatastoreMs: {
    what: 'Network silence after which a host with no heartbeat datastore is declared dead (FDM: T+15 s).',
    tradeOff: 'Without a storage heartbeat a partitioned host cannot be told from a dead one; the VM lease is then the only guard against a double start.',
  },
  deadMs: {
    what: 'Network silence after which a host whose storage heartbeat stopped is declared dead and its VMs are restarted (FDM: T+18 s).',
    tradeOff: 'Shorter restarts sooner; must leave time to see at least a few storage renewals fail (>= storageWatchAfterMs + leaseTimeoutMs).',
  },
  storageHeartbeatIntervalMs: {
    what: 'Period at which a host renews its host-N-hb heartbeat and, through it, all its VM leases (FDM NFS: 5 s).',
    tradeOff: 'Shorter lets others see a dead host sooner (a shorter leaseTimeoutMs is then safe) and costs one small write per heartbeat datastore per period.',
  },
  leaseTimeoutMs: {
    what: 'A lock, heartbeat or lease whose mtime or counter an observer has seen unchanged this long (on the observer\'s own monotonic clock) is dead and may be taken over.',
    tradeOff: 'Shorter fails over sooner; it must exceed selfFenceDeadlineMs + leaseSafetyMarginMs so a holder that lost storage has stopped before anyone takes over, and cover several renewal periods.',
  },
  selfFenceDeadlineMs: {
    what: 'A holder that has not completed a renewal for this long (counted from the start of its last successful renewal) stops what the lease protects: VMs are killed, protectedlist ownership is dropped.',
    tradeOff: 'Shorter kills VMs sooner on a storage hiccup (false fencing); longer forces a longer leaseTimeoutMs and so a slower failover.',
  },
  leaseSafetyMarginMs: {
    what: 'Slack required between the self-fence deadline and the lease timeout (time to kill a VM, scheduling delays, clock rate differences).',
    tradeOff: 'Larger is safer and makes failover slower by as much.',
  },
  storageCallTimeoutMs: {
    what: 'Upper bound on any single storage call (read, write, lock, rename); a call that takes longer is treated as failed.',
    tradeOff: 'Shorter notices hung storage sooner; too short fails healthy but slow storage. Must be below selfFenceDeadlineMs.',
  },
  datastoreProbeIntervalMs: {
    what: 'How often each host re-checks which datastores it can read and write (the count sent in election messages).',
    tradeOff: 'Shorter reacts sooner to storage loss and costs one tiny write per datastore per period.',
  },
  slaveIsolationMs: {
    what: 'Silence (no agent traffic and no isolation address answering) after which a slave declares itself isolated (FDM: T+30 s).',
    tradeOff: 'Shorter applies the isolation response sooner; too short risks powering VMs off on a network blip.',
  },
  masterIsolationMs: {
    what: 'Silence after which a master declares itself isolated and releases its protectedlist locks (FDM: T+5 s).',
    tradeOff: 'Shorter lets a new master in the rest of the cluster take over sooner; too short releases ownership on a blip.',
  },
  isolationResponseDelayMs: {
    what: 'Delay between declaring isolation and applying the isolation response (FDM: fdm.isolationPolicyDelaySec, at least 30 s).',
    tradeOff: 'Longer gives the network time to come back before VMs are stopped; it delays their restart elsewhere by as much.',
  },
  isolationShutdownTimeoutMs: {
    what: 'For the shutdown isolation response: how long the guest gets to shut down before it is forced off (FDM: das.isolationShutdownTimeout = 300 s).',
    tradeOff: 'Longer gives guests a clean shutdown; the VM is restarted elsewhere only after it is off.',
  },
  rescanIntervalMs: {
    what: 'Fallback full rescan of poweron and poweredoff files, for filesystems that drop change events (FDM polls every 30 s).',
    tradeOff: 'Shorter bounds the reaction time when events are lost, at the cost of reading every host\'s files each period.',
  },
  restartRetryDelaysMs: {
    what: 'Waits before restart attempts 2..5, each counted from the previous failed attempt (FDM: das.maxvmrestartcount = 5 attempts at T0, +2, +6, +14, +30 min, i.e. waits of 2, 4, 8 and 16 min).',
    tradeOff: 'Shorter retries sooner; many quick retries on a broken VM waste capacity and fill logs.',
  },
  vmMonitorWindowMs: {
    what: 'VM monitoring: at most 3 resets of a VM within this window; after that it is reported failed (FDM medium sensitivity: 24 h).',
    tradeOff: 'Longer gives up on crash-looping VMs sooner in wall time; shorter keeps restarting them.',
  },
  statsIntervalMs: {
    what: 'Period of VM statistics sampling (CPU, memory, disk, network).',
    tradeOff: 'Shorter gives fresher figures (CPU % is the average over the last period) and costs one driver query per host per period (one virsh domstats, or a read of /proc per VM).',
  },
};

const S = 1000;
const MIN = 60 * S;

/**
 * FDM's own values (vSphere HA: NFS heartbeat datastores, das.config.fdm.hostTimeout 10 s,
 * slave declared dead at T+18 s, a new master after about T+25 s). Available as profile `fdm`
 * for operators who want FDM's exact timeline; `default` is faster (below).
 */
export const FDM_TIMING: Readonly<Timing> = Object.freeze({
  electionWindowMs: 15 * S,
  heartbeatIntervalMs: 1 * S,
  hostTimeoutMs: 10 * S,
  storageWatchAfterMs: 3 * S,
  icmpPingTimeoutMs: 5 * S,
  deadNoHeartbeatDatastoreMs: 15 * S,
  deadMs: 18 * S,
  storageHeartbeatIntervalMs: 5 * S,
  leaseTimeoutMs: 15 * S,
  selfFenceDeadlineMs: 10 * S,
  leaseSafetyMarginMs: 3 * S,
  storageCallTimeoutMs: 4 * S,
  datastoreProbeIntervalMs: 5 * S,
  slaveIsolationMs: 30 * S,
  masterIsolationMs: 5 * S,
  isolationResponseDelayMs: 30 * S,
  isolationShutdownTimeoutMs: 300 * S,
  rescanIntervalMs: 30 * S,
  restartRetryDelaysMs: [2 * MIN, 4 * MIN, 8 * MIN, 16 * MIN],
  vmMonitorWindowMs: 24 * 60 * MIN,
  statsIntervalMs: 60 * S,
});

/**
 * The default: FDM's design with shorter failure detection and leases, so that a dead slave's
 * VMs run elsewhere within about 7 s and a dead master's within about 10 s (FDM: restarts begin
 * at T+18 s and T+35 s). Why it is still safe is in docs/performance.md ("Default timings") and
 * docs/configuration.md: the lease inequality (leaseTimeoutMs 5.5 s > selfFenceDeadlineMs 4 s +
 * leaseSafetyMarginMs 1 s) keeps every holder's VMs stopped before anyone may take a lease over,
 * whatever the load; a shorter detection only costs availability when storage stalls for
 * seconds (false fencing), never a second copy. Isolation keeps FDM's values.
 */
export const DEFAULT_TIMING: Readonly<Timing> = Object.freeze({
  ...FDM_TIMING,
  electionWindowMs: 5 * S,
  hostTimeoutMs: 4 * S,
  storageWatchAfterMs: 1 * S,
  icmpPingTimeoutMs: 2 * S,
  deadNoHeartbeatDatastoreMs: 6500,
  deadMs: 6500,
  storageHeartbeatIntervalMs: 1 * S,
  leaseTimeoutMs: 5500,
  selfFenceDeadlineMs: 4 * S,
  leaseSafetyMarginMs: 1 * S,
  storageCallTimeoutMs: 2 * S,
});

/** About 1/10 of FDM's values: for the lab, the demo and the tests. */
export const FAST_TIMING: Readonly<Timing> = Object.freeze({
  electionWindowMs: 1500,
  heartbeatIntervalMs: 100,
  hostTimeoutMs: 1000,
  storageWatchAfterMs: 300,
  icmpPingTimeoutMs: 500,
  deadNoHeartbeatDatastoreMs: 1500,
  deadMs: 2000,
  storageHeartbeatIntervalMs: 500,
  // Storage keeps FDM's margins in absolute terms rather than 1/10: an fsync on a loaded
  // 2-core lab machine can take several hundred milliseconds.
  leaseTimeoutMs: 1700,
  selfFenceDeadlineMs: 1300,
  leaseSafetyMarginMs: 300,
  storageCallTimeoutMs: 700,
  datastoreProbeIntervalMs: 500,
  slaveIsolationMs: 3000,
  masterIsolationMs: 500,
  isolationResponseDelayMs: 3000,
  isolationShutdownTimeoutMs: 30 * S,
  rescanIntervalMs: 3000,
  restartRetryDelaysMs: [12 * S, 24 * S, 48 * S, 96 * S],
  vmMonitorWindowMs: 60 * MIN,
  statsIntervalMs: 6 * S,
});

export const PROFILES: Record<ProfileName, Readonly<Timing>> = {
  default: DEFAULT_TIMING,
  fast: FAST_TIMING,
  fdm: FDM_TIMING,
};
