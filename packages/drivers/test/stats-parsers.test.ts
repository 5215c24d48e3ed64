/**
 * The parsers behind VM statistics: /proc/<pid>/stat and /io for process VMs (proc-stats.ts),
 * `virsh domstats --raw` for libvirt VMs (domstats.ts), with real outputs, odd command names and
 * malformed input: a clear error or a null field, never a made-up number.
 */
import { describe, expect, it } from 'vitest';
import { countersFromDomstats, DomstatsError, parseDomstats, parseProcIo, parseProcStat, processCounters } from '@vigil/drivers';

// A real line (cat), and one whose command name has spaces and parentheses.
const STAT = '2224 (cat) R 2215 2215 25054 0 -1 4194304 100 0 0 0 7 3 2 1 20 0 1 0 1971005 3133440 389 18446744073709551615 94337089564672 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0';
const ODD = '77 (a) b (c) S 1 77 77 0 -1 4194560 5 0 0 0 250 50 100 0 20 0 1 0 99 1000 12 18446744073709551615';

const IO = `rchar: 1077312
wchar: 1048673
syscr: 57
syscw: 19
read_bytes: 102400
write_bytes: 1056768
cancelled_write_bytes: 0
`;

describe('/proc parsers', () => {
  it('reads utime, stime, cutime, cstime, starttime and rss from /proc/<pid>/stat', () => {
    expect(parseProcStat(STAT)).toEqual({ pid: 2224, comm: 'cat', state: 'R', ppid: 2215, utime: 7, stime: 3, cutime: 2, cstime: 1, starttime: 1971005, rss: 389 });
    expect(parseProcStat(ODD)).toMatchObject({ pid: 77, comm: 'a) b (c', state: 'S', utime: 250, stime: 50, cutime: 100, starttime: 99, rss: 12 });
  });

  it('refuses a malformed stat line with a clear error', () => {
    expect(() => parseProcStat('')).toThrow(/malformed \/proc stat line/);
    expect(() => parseProcStat('12 (x) S 1 2 3')).toThrow(/malformed \/proc stat line: \d+ fields/);
    expect(() => parseProcStat(STAT.replace(' 7 3 2 1 ', ' 7 x 2 1 '))).toThrow(/stime is "x"/);
  });

  it('reads read_bytes and write_bytes from /proc/<pid>/io, and refuses a file without them', () => {
    expect(parseProcIo(IO)).toEqual({ readBytes: 102400, writeBytes: 1056768 });
    expect(() => parseProcIo('rchar: 1\nwchar: 2\n')).toThrow(/read_bytes is missing/);
    expect(() => parseProcIo(IO.replace('write_bytes: 1056768', 'write_bytes: -1'))).toThrow(/write_bytes is "-1"/);
  });

  it('turns them into counters: CPU time in ns (USER_HZ), RSS in bytes, disk bytes; no ops, no network', () => {
    const files: Record<string, string> = { '/proc/2224/stat': STAT, '/proc/2224/io': IO };
    const read = (p: string) => {
      const f = files[p];
      if (f === undefined) throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' });
      return f;
    };
    expect(processCounters('ds1:vms/a.json', 2224, { clockTicks: 100, pageSize: 4096 }, read)).toEqual({
      vm: 'ds1:vms/a.json',
      incarnation: '2224:1971005',
      cpuTimeNs: (7 + 3 + 2 + 1) * 10_000_000,
      memoryBytes: 389 * 4096,
      diskReadBytes: 102400,
      diskWriteBytes: 1056768,
      diskReadOps: null,
      diskWriteOps: null,
      netRxBytes: null,
      netTxBytes: null,
    });
  });

  it('a vanished process gives null fields and says why; an unreadable io file gives null disk fields', () => {
    const gone = (p: string): string => {
      throw Object.assign(new Error(`ENOENT: no such file ${p}`), { code: 'ENOENT' });
    };
    const c = processCounters('v', 4242, { clockTicks: 100, pageSize: 4096 }, gone);
    expect(c).toMatchObject({ vm: 'v', incarnation: '', cpuTimeNs: null, memoryBytes: null, diskReadBytes: null, error: 'its process 4242 is gone' });
    const noIo = (p: string): string => {
      if (p.endsWith('/stat')) return STAT;
      throw Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' });
    };
    expect(processCounters('v', 2224, { clockTicks: 100, pageSize: 4096 }, noIo)).toMatchObject({ cpuTimeNs: 130_000_000, diskReadBytes: null, diskWriteBytes: null, error: expect.stringMatching(/io is not readable/) });
    const zombie = () => STAT.replace(' R ', ' Z ');
    expect(processCounters('v', 2224, { clockTicks: 100, pageSize: 4096 }, zombie)).toMatchObject({ cpuTimeNs: null, error: 'its process 2224 has exited' });
    expect(processCounters('v', 0)).toMatchObject({ cpuTimeNs: null, error: expect.stringMatching(/no process id/) });
  });

  it('reads this very process', () => {
    const c = processCounters('self', process.pid);
    expect(c.incarnation).toMatch(new RegExp(`^${process.pid}:\\d+$`));
    expect(c.cpuTimeNs).toBeGreaterThan(0);
    expect(c.memoryBytes).toBeGreaterThan(1024 * 1024);
  });
});

// Captured from libvirt 9.0 / QEMU 7.2: a domain with a disk and a tap, and a diskless one with user-mode networking.
const DOMSTATS = `Domain: 'vigil-host-1-web-1a2b3c4d'
  cpu.time=473058000
  cpu.user=283860000
  cpu.system=189198000
  cpu.cache.monitor.count=0
  balloon.current=65536
  balloon.maximum=65536
  balloon.last-update=0
  balloon.rss=42876
  net.count=2
  net.0.name=vigtap0
  net.0.rx.bytes=90
  net.0.rx.pkts=1
  net.0.tx.bytes=0
  net.1.name=vigtap1
  net.1.rx.bytes=10
  net.1.tx.bytes=5
  block.count=2
  block.0.name=vda
  block.0.path=/tmp/statsprobe/disk.raw
  block.0.rd.reqs=1
  block.0.rd.bytes=512
  block.0.wr.reqs=3
  block.0.wr.bytes=4096
  block.1.name=hdc
  block.1.rd.reqs=2
  block.1.rd.bytes=2048
  block.1.wr.reqs=0
  block.1.wr.bytes=0
Domain: 'other-domain'
  cpu.time=650700000
  balloon.current=65536
  balloon.rss=42672
  net.count=1
  block.count=0

`;

describe('virsh domstats parser', () => {
  it('parses every domain and sums disks and interfaces; counts zero without devices; null where libvirt gives nothing', () => {
    const m = parseDomstats(DOMSTATS);
    expect([...m.keys()]).toEqual(['vigil-host-1-web-1a2b3c4d', 'other-domain']);
    expect(countersFromDomstats('ds1:vms/web.json', '100:5', m.get('vigil-host-1-web-1a2b3c4d')!)).toEqual({
      vm: 'ds1:vms/web.json',
      incarnation: '100:5',
      cpuTimeNs: 473058000,
      memoryBytes: 42876 * 1024,
      diskReadBytes: 2560,
      diskWriteBytes: 4096,
      diskReadOps: 3,
      diskWriteOps: 3,
      netRxBytes: 100,
      netTxBytes: 5,
    });
    // No disk: 0 bytes (nothing to read); user-mode networking: one interface without counters: null.
    expect(countersFromDomstats('x', 'i', m.get('other-domain')!)).toMatchObject({ cpuTimeNs: 650700000, diskReadBytes: 0, diskWriteOps: 0, netRxBytes: null, netTxBytes: null, error: 'virsh domstats gave no netRxBytes' });
  });

  it('gives null for a missing or non-numeric field, never a made-up number', () => {
    const f = parseDomstats("Domain: 'd'\n  cpu.time=abc\n  balloon.rss=-5\n  block.count=1\n  block.0.rd.bytes=99999999999999999999\n");
    expect(countersFromDomstats('v', 'i', f.get('d')!)).toMatchObject({ cpuTimeNs: null, memoryBytes: null, diskReadBytes: null, netRxBytes: null });
  });

  it('refuses output it does not understand, naming the line', () => {
    expect(() => parseDomstats('cpu.time=1\n')).toThrow(DomstatsError);
    expect(() => parseDomstats("Domain: 'd'\n  cpu.time=1\nerror: failed to connect to the hypervisor\n")).toThrow(/unexpected line 3 of virsh domstats: "error: failed to connect/);
    expect(parseDomstats('')).toEqual(new Map());
  });
});
