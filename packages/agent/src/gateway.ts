/**
 * The default isolation address (SPEC §3.4, FDM): the host's default gateway, read from the
 * kernel's IPv4 routing table (/proc/net/route, of the network namespace the agent runs in).
 */
import { readFileSync } from 'node:fs';

/** Gateways of the default routes in /proc/net/route text, as dotted quads. */
export function parseDefaultGateways(routeTable: string): string[] {
  const out: string[] = [];
  for (const line of routeTable.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // Iface Destination Gateway Flags ... Mask: a default route has destination and mask 0
    // and the gateway flag (0x2).
    if (f.length < 8 || f[1] !== '00000000' || f[7] !== '00000000') continue;
    const gw = f[2]!;
    const flags = parseInt(f[3]!, 16);
    if (!/^[0-9A-Fa-f]{8}$/.test(gw) || gw === '00000000' || !(flags & 0x2)) continue;
    // Little-endian hex: 0100A8C0 is 192.168.0.1.
    const n = parseInt(gw, 16);
    const ip = [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].join('.');
    if (!out.includes(ip)) out.push(ip);
  }
  return out;
}

export function defaultGateways(): string[] {
  try {
    return parseDefaultGateways(readFileSync('/proc/net/route', 'utf8'));
  } catch {
    return [];
  }
}
