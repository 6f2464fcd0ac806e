#!/usr/bin/env node
// The benchmark suite: our figures, the floor's and the peers', side by side, with the ratios and the
// targets of issue 5. Usage: node bench/run.mjs [--short] [--only hit,miss,stampede,lock,scale,extract,http,many] [--json FILE]
// Run through `npm run bench` (which builds dist/ first): the suite measures the built library.
// --short runs every row with tiny sizes and few iterations (a few seconds) so CI keeps the suite working;
// its figures mean nothing and nothing asserts on them.
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { formatSection, formatTargets } from './lib/report.mjs';

const SECTIONS = {
  hit: './hit.mjs',
  miss: './miss.mjs',
  stampede: './stampede.mjs',
  lock: './lock-handoff.mjs',
  scale: './scale.mjs',
  extract: './extract.mjs',
  http: './http.mjs',
  many: './many-writers.mjs',
};

const { values } = parseArgs({
  options: {
    short: { type: 'boolean', default: false },
    only: { type: 'string' },
    json: { type: 'string' },
  },
});
const only = values.only ? values.only.split(',').map((name) => name.trim()) : Object.keys(SECTIONS);
for (const name of only) {
  if (!SECTIONS[name]) {
    console.error(`unknown section "${name}"; known: ${Object.keys(SECTIONS).join(', ')}`);
    process.exit(2);
  }
}

const startedAt = performance.now();
const mode = values.short ? 'short' : 'full';
console.log(
  `payload-cache benchmarks (${mode} mode): node ${process.version}, ${os.cpus().length} cores ` +
    `(${os.cpus()[0]?.model ?? 'unknown cpu'}), load average ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}, ` +
    `scratch in ${os.tmpdir()}\n`,
);
const sections = [];
for (const name of only) {
  const sectionStart = performance.now();
  const { run } = await import(SECTIONS[name]);
  const section = await run({ short: values.short });
  section.seconds = (performance.now() - sectionStart) / 1000;
  sections.push(section);
  console.log(`${formatSection(section)}\n- section time: ${section.seconds.toFixed(1)} s\n`);
}
console.log(formatTargets(sections));
if (values.short)
  console.log('\n(short mode: tiny sizes and few iterations; the verdicts above mean nothing)');
const totalSeconds = (performance.now() - startedAt) / 1000;
console.log(`\ntotal: ${totalSeconds.toFixed(1)} s (${mode} mode)`);
if (values.json) {
  writeFileSync(
    values.json,
    `${JSON.stringify({ mode, node: process.version, loadavg: os.loadavg(), totalSeconds, sections }, null, 2)}\n`,
  );
}
