#!/usr/bin/env node
// Runs the reliability lab and prints one table of figures (docs/reliability.md holds the latest).
// Usage: npm run reliability [-- --write]   (--write also rewrites docs/reliability.md)
// The unprivileged scenarios always run; the root-only fault lanes (tmpfs, bind mounts, setpriv, sshfs)
// run when this process is root, and say why they skipped otherwise.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'payload-cache-figures-'));
const figuresFile = path.join(scratch, 'figures.jsonl');
writeFileSync(figuresFile, '');
const env = { ...process.env, PAYLOAD_CACHE_FIGURES_FILE: figuresFile };
const vitest = path.join(repo, 'node_modules', '.bin', 'vitest');

const lanes = [['unprivileged', [vitest, 'run', 'test/reliability']]];
if (process.getuid?.() === 0)
  lanes.push(['root-only faults', [vitest, 'run', '--config', 'vitest.faults.config.ts']]);
else console.log('root-only fault lanes skipped: they need root (mounts, unshare, setpriv)');

let failed = false;
for (const [name, [command, ...args]] of lanes) {
  console.log(`== ${name}: ${path.basename(command)} ${args.join(' ')}`);
  const run = spawnSync(command, args, { cwd: repo, env, stdio: ['ignore', 'inherit', 'inherit'] });
  if (run.status !== 0) failed = true;
}

const rows = readFileSync(figuresFile, 'utf8')
  .trim()
  .split('\n')
  .filter(Boolean)
  .map((line) => JSON.parse(line));
rmSync(scratch, { recursive: true, force: true });
const columns = [
  'processes',
  'rounds',
  'killsSurvived',
  'overlapsFound',
  'hostileInputs',
  'bytesVerified',
  'entriesLost',
];
const headers = [
  'scenario',
  'processes',
  'rounds',
  'kills survived',
  'overlaps found',
  'hostile inputs',
  'bytes verified',
  'entries lost',
];
const byScenario = new Map();
for (const row of rows) {
  const sum = byScenario.get(row.scenario) ?? Object.fromEntries(columns.map((c) => [c, 0]));
  for (const column of columns) sum[column] += row[column] ?? 0;
  byScenario.set(row.scenario, sum);
}
const total = Object.fromEntries(
  columns.map((c) => [c, [...byScenario.values()].reduce((s, r) => s + r[c], 0)]),
);
const line = (cells) => `| ${cells.join(' | ')} |`;
const table = [
  line(headers),
  line(headers.map(() => '---')),
  ...[...byScenario].map(([scenario, sums]) =>
    line([scenario, ...columns.map((c) => sums[c].toLocaleString('en-US'))]),
  ),
  line([
    `**${byScenario.size} scenarios**`,
    ...columns.map((c) => `**${total[c].toLocaleString('en-US')}**`),
  ]),
].join('\n');
console.log(`\n${table}\n`);
// Lanes where the design allows overlaps (a network file system with attribute caching) report them
// under a scenario name saying so; everywhere else an overlap is a failure.
const forbiddenOverlaps = [...byScenario].filter(([name]) => !/overlaps allowed/.test(name));
if (total.entriesLost !== 0 || forbiddenOverlaps.some(([, sums]) => sums.overlapsFound !== 0)) failed = true;

if (process.argv.includes('--write')) {
  const stamp = new Date().toISOString().slice(0, 10);
  const doc =
    `# Reliability report\n\nProduced by \`npm run reliability -- --write\` on ${stamp} (${os.cpus().length} cores, ` +
    `Node ${process.version}, ${process.getuid?.() === 0 ? 'as root: fault lanes included' : 'not root: fault lanes skipped'}).\n\n` +
    `${table}\n\nWhat each scenario does is described at the top of its test file under \`test/reliability/\` ` +
    `and \`test/faults/\`. "Entries lost" counts committed entries that vanished or went bad when they should ` +
    `have survived, and must be 0; "overlaps found" counts lock hold intervals that overlapped, and must be 0.\n`;
  // Hand-written sections below the generated part (from the first "## " heading on) are kept.
  const docPath = path.join(repo, 'docs', 'reliability.md');
  let kept = '';
  try {
    const previous = readFileSync(docPath, 'utf8');
    const at = previous.indexOf('\n## ');
    if (at >= 0) kept = previous.slice(at);
  } catch {}
  writeFileSync(docPath, doc + kept);
  console.log('wrote docs/reliability.md');
}
process.exit(failed ? 1 : 0);
