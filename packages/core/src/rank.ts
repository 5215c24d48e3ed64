/**
 * The election rule (SPEC §3.1): the host that can access the most datastores wins; ties go to
 * the highest host id compared as a string, left to right ("host-99" beats "host-100").
 */
import type { HostId } from './ids.js';

export interface Rank {
  host: HostId;
  datastores: number;
  /** A host in maintenance mode loses to every host that is not (it never becomes master if another can). */
  maintenance?: boolean;
}

/** True when `a` beats `b` under the election rule. */
export function beats(a: Rank, b: Rank): boolean {
  if (!!a.maintenance !== !!b.maintenance) return !a.maintenance;
  if (a.datastores !== b.datastores) return a.datastores > b.datastores;
  return a.host > b.host; // string comparison, code unit by code unit
}

/** The winner among candidates (undefined for an empty list). */
export function best(candidates: readonly Rank[]): Rank | undefined {
  let top: Rank | undefined;
  for (const c of candidates) if (!top || beats(c, top)) top = c;
  return top;
}

/** Why `winner` beat `loser`, for log lines. */
export function reason(winner: Rank, loser: Rank): string {
  if (!!winner.maintenance !== !!loser.maintenance) return `${loser.host} is in maintenance mode`;
  if (winner.datastores !== loser.datastores) {
    return `${winner.host} accesses ${winner.datastores} datastores, ${loser.host} ${loser.datastores}`;
  }
  return `both access ${winner.datastores} datastores; "${winner.host}" > "${loser.host}" as strings`;
}
