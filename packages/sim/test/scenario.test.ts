/** The scenario format: parsing, errors that name the line, and printing back. */
import { describe, expect, it } from 'vitest';
import { ScenarioError, formatScenario, parseScenario, randomScenario } from '@vigil/sim';

function error(text: string): string {
  try {
    parseScenario(text);
  } catch (err) {
    expect(err).toBeInstanceOf(ScenarioError);
    return (err as Error).message;
  }
  throw new Error('parsed without error');
}

describe('scenario scripts', () => {
  it('parses setup and timed lines', () => {
    const s = parseScenario(`# slave power loss
hosts 4
vms 12
profile fast
isolation-response powerOff
at 5s power-off host-3
at 1.5m partition host-1,host-2 / host-3
at 20s expect all-protected-running
`);
    expect(s.name).toBe('slave power loss');
    expect(s.hosts.map((h) => h.id)).toEqual(['host-1', 'host-2', 'host-3', 'host-4']);
    expect(s.vms.length).toBe(12);
    expect(s.isolationResponse).toBe('powerOff');
    expect(s.steps.map((x) => [x.at, x.cmd.op])).toEqual([
      [5000, 'power-off'],
      [20000, 'expect'],
      [90000, 'partition'],
    ]);
    // Unlisted hosts form a group of their own.
    expect(s.steps[2]!.cmd).toEqual({ op: 'partition', groups: [['host-1', 'host-2'], ['host-3'], ['host-4']] });
  });

  it('reports errors with their line', () => {
    expect(error('hosts 3\nat 5s powr-off host-1\n')).toMatch(/^line 2: unknown command "powr-off"/);
    expect(error('hosts 3\n\nat 5s power-off host-9\n')).toMatch(/^line 3: unknown host host-9 \(hosts: host-1, host-2, host-3\)/);
    expect(error('hosts 3\nat soon heal\n')).toMatch(/^line 2: at: bad time soon/);
    expect(error('hosts 3\nvms 2\nat 1s kill-vm web\n')).toMatch(/^line 3: unknown VM web/);
    expect(error('hosts 3\nat 1s expect sunshine\n')).toMatch(/^line 2: expect: unknown expectation "sunshine"/);
    expect(error('hosts 3\nat 1s partition host-1 host-2\n')).toMatch(/^line 2: partition: expected groups separated by "\/"/);
    expect(error('hosts 3\nfrobnicate\n')).toMatch(/^line 2: unknown line "frobnicate"/);
  });

  it('prints a scenario that parses back to the same scenario (random worlds too)', () => {
    const s = randomScenario({ seed: 5, hosts: 6, vms: 20 });
    const again = parseScenario(formatScenario(s));
    expect(formatScenario(again)).toBe(formatScenario(s));
    expect(again.steps.length).toBe(s.steps.length);
    expect(again.vms).toEqual(s.vms);
  });
});
