/**
 * One canonical text form per IP address, so that a duplicate check, an address -> host lookup
 * and a log line all agree: `::1`, `0:0:0:0:0:0:0:1` and `0::0001` are the same host.
 *
 * - IPv4 (dotted quad): unchanged.
 * - IPv6: the WHATWG URL serialisation (RFC 5952: lower case, leading zeros dropped, the longest
 *   run of zero groups compressed), e.g. `FE80:0:0::0001` -> `fe80::1`. A zone (`%eth0`) is kept
 *   as written.
 * - IPv4-mapped IPv6 (`::ffff:10.0.0.1`, `::ffff:a00:1`): the IPv4 address it maps (`10.0.0.1`).
 *   This is what a dual-stack socket reports for an IPv4 sender. The config refuses these forms
 *   (see `ipv4Mapped`), so a host is always configured under the form datagrams arrive with.
 * - anything else (not an IP address): returned unchanged.
 */
import { isIP } from 'node:net';

const MAPPED = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/;

function canonicalIpv6(addr: string): string {
  try {
    return new URL(`http://[${addr}]`).hostname.slice(1, -1);
  } catch {
    return addr;
  }
}

/** The IPv4 address an IPv4-mapped IPv6 address stands for, or null if `addr` is not one. */
export function ipv4Mapped(addr: string): string | null {
  if (isIP(addr) !== 6 || addr.includes('%')) return null;
  const m = MAPPED.exec(canonicalIpv6(addr));
  if (!m) return null;
  const hi = parseInt(m[1]!, 16);
  const lo = parseInt(m[2]!, 16);
  return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

/** The canonical form of an IP address (see the file header); non-addresses come back unchanged. */
export function canonicalAddress(addr: string): string {
  const kind = isIP(addr);
  if (kind === 4) return addr;
  if (kind !== 6) return addr;
  const pct = addr.indexOf('%');
  if (pct >= 0) return `${canonicalIpv6(addr.slice(0, pct))}${addr.slice(pct)}`;
  return ipv4Mapped(addr) ?? canonicalIpv6(addr);
}
