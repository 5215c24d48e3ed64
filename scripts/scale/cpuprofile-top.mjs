#!/usr/bin/env node
// Top functions of a V8 .cpuprofile (node --cpu-prof), by self and by inclusive time:
//   node scripts/scale/cpuprofile-top.mjs FILE [--last SECONDS] [--top N]
// --last: only the samples of the last SECONDS of the profile (e.g. the steady state).
import { readFileSync } from 'node:fs';

const [file, ...rest] = process.argv.slice(2);
const opt = (n, d) => (rest.includes(n) ? Number(rest[rest.indexOf(n) + 1]) : d);
const last = opt('--last', Infinity);
const top = opt('--top', 25);
const p = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const times = [];
let t = p.startTime;
for (const d of p.timeDeltas) times.push((t += d));
const from = last === Infinity ? -Infinity : p.endTime - last * 1e6;
const label = (n) => {
  const f = n.callFrame;
  const url = f.url.replace(/^file:\/\/\/work\/main\//, '').replace(/^.*node_modules\//, 'nm/');
  return `${f.functionName || '(anon)'} ${url}:${f.lineNumber + 1}`;
};
const self = new Map();
const incl = new Map();
let total = 0;
let idle = 0;
for (let i = 0; i < p.samples.length; i++) {
  if (times[i] < from) continue;
  const dt = (p.timeDeltas[i + 1] ?? 0) / 1000; // ms until the next sample
  const n = byId.get(p.samples[i]);
  total += dt;
  if (n.callFrame.functionName === '(idle)') {
    idle += dt;
    continue;
  }
  self.set(label(n), (self.get(label(n)) ?? 0) + dt);
  const seen = new Set();
  for (let id = n.id; id !== undefined; id = parent.get(id)) {
    const l = label(byId.get(id));
    if (seen.has(l)) continue;
    seen.add(l);
    incl.set(l, (incl.get(l) ?? 0) + dt);
  }
}
const secs = total / 1000;
console.log(`${file}: ${secs.toFixed(1)} s profiled, busy ${(total - idle).toFixed(0)} ms (${(((total - idle) / total) * 100).toFixed(2)} % of a core)`);
const show = (title, m) => {
  console.log(`\n${title}`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${v.toFixed(0).padStart(8)} ms ${((v / total) * 100).toFixed(2).padStart(6)} %  ${k}`);
};
show('self time', self);
show('inclusive time', incl);
