/**
 * Every scenario script under test/scenarios/ runs in the simulator (packages/sim) and must end
 * without a violation of SPEC §5 and with every `expect` line holding. A scenario marked
 * `known-issue` documents a reported problem: it must still show a violation (when the problem
 * is fixed, this test fails: drop the `known-issue` line and keep the scenario as a regression).
 * How to add one: docs/testing.md.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { formatResult, parseScenario, runScenario } from '@vigil/sim';

const DIR = fileURLToPath(new URL('../scenarios/', import.meta.url));
const files = readdirSync(DIR).filter((f) => f.endsWith('.scn')).sort();

describe('scenario scripts (test/scenarios/*.scn)', () => {
  it('finds the scenarios', () => {
    expect(files.length).toBeGreaterThanOrEqual(15);
  });

  for (const file of files) {
    it(file, () => {
      const scn = parseScenario(readFileSync(join(DIR, file), 'utf8'), file.replace(/\.scn$/, ''));
      const r = runScenario(scn);
      if (scn.knownIssue) {
        expect(r.ok, `known issue no longer shows (${scn.knownIssue}): remove the known-issue line of ${file}\n${formatResult(r)}`).toBe(false);
        return;
      }
      expect(r.ok, `${file}\n${formatResult(r, { timelineLines: 80 })}\n${r.script}`).toBe(true);
      // Every step ran, the expectations included.
      expect(r.stats.steps).toBe(scn.steps.length);
    });
  }
});
