/** Host ids have the form `host-N` (FDM's managed object id). */
export type HostId = string;

export const HOST_ID_PATTERN = /^host-[0-9]{1,9}$/;

export function isHostId(value: unknown): value is HostId {
  return typeof value === 'string' && HOST_ID_PATTERN.test(value);
}

/** Datastore names: short, filesystem- and log-safe. */
export const DATASTORE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Cluster ids: used in paths (`.vigil-ha/<cluster>/`) and in every datagram. */
export const CLUSTER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** VM ids: `datastore:relative/path` of the VM's config file (ASCII, at most 578 bytes). */
export const VM_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}:[A-Za-z0-9._][A-Za-z0-9._/-]{0,511}$/;

export function isVmId(v: unknown): v is string {
  return typeof v === 'string' && VM_ID_PATTERN.test(v) && !v.slice(v.indexOf(':') + 1).split('/').some((seg) => seg === '..' || seg === '' || seg === '.');
}

/** The datastore part of a VM id. */
export function vmDatastore(vm: string): string {
  return vm.slice(0, vm.indexOf(':'));
}
