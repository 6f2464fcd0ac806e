#!/usr/bin/env node
// Prints the top self-time functions of a V8 .cpuprofile (from `node --cpu-prof`), with their share of
// the samples, and the same totals grouped by source file.
// Usage: node bench/profile/top.mjs PROFILE.cpuprofile [--limit 25] [--filter TEXT]
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { limit: { type: 'string', default: '25' }, filter: { type: 'string' } },
});
if (positionals.length !== 1) {
  console.error('usage: node bench/profile/top.mjs PROFILE.cpuprofile [--limit N] [--filter TEXT]');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(positionals[0], 'utf8'));
const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
// Sample time deltas: each sample's duration is the delta to the next sample.
const selfUs = new Map();
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i];
  const delta = profile.timeDeltas[i + 1] ?? 0;
  selfUs.set(id, (selfUs.get(id) ?? 0) + delta);
}
const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0);
const byFunction = new Map();
const byFile = new Map();
for (const [id, us] of selfUs) {
  const { callFrame } = nodes.get(id);
  const file = callFrame.url ? shortUrl(callFrame.url) : '(native)';
  const name = `${callFrame.functionName || '(anonymous)'}  ${file}:${callFrame.lineNumber + 1}`;
  byFunction.set(name, (byFunction.get(name) ?? 0) + us);
  byFile.set(file, (byFile.get(file) ?? 0) + us);
}
const print = (title, map) => {
  console.log(`\n${title}`);
  const rows = [...map]
    .filter(([name]) => !values.filter || name.includes(values.filter))
    .sort((a, b) => b[1] - a[1])
    .slice(0, Number(values.limit));
  for (const [name, us] of rows) {
    console.log(
      `${((100 * us) / totalUs).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(1).padStart(8)} ms  ${name}`,
    );
  }
};
console.log(`${positionals[0]}: ${(totalUs / 1000).toFixed(0)} ms sampled`);
print('self time by function', byFunction);
print('self time by file', byFile);

function shortUrl(url) {
  const file = url.replace(/^file:\/\//, '');
  const nm = file.lastIndexOf('node_modules/');
  if (nm >= 0) return file.slice(nm + 'node_modules/'.length);
  if (file.startsWith('node:')) return file;
  return path.relative(process.cwd(), file);
}
