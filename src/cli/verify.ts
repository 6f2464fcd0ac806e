import type { ReportItem } from '../index.js';
import {
  type Command,
  type CommandInput,
  EXIT_ERROR,
  EXIT_OK,
  flag,
  type Io,
  rootOf,
  stringOption,
} from './command.js';
import { openSublayer, targetSublayers } from './sublayers.js';
import { plural, renderTable } from './table.js';

interface SublayerVerdict {
  readonly name: string;
  /** Entries re-hashed and found good. */
  readonly checked: number;
  readonly bad: readonly (ReportItem & { removed: boolean })[];
}

export const verifyCommand: Command = {
  name: 'verify',
  summary: 'Re-hash payloads against their manifests; --fix removes bad ones',
  help: `Usage: payload-cache verify [--sublayer S] [--fix] [--json] [--root DIR]

Re-hashes every payload against the sha256 in its manifest (it reads every byte, so it takes as long as
reading the whole cache) and reports each bad file with the reason: hash-mismatch, size-mismatch,
wrong-key (a manifest naming another key), orphan-tmp (a tmp file older than 24 h), orphan-payload (a
payload without manifest, older than 24 h), orphan-manifest (a manifest without payload).

Exit status: 0 when nothing bad remains; 1 when something bad remains: anything found without --fix,
or with --fix an entry left alone because a writer holds its lock.

Options:
  --sublayer S   Only this sublayer
  --fix          Remove bad entries and old orphans (never an entry whose lock is held)
  --json         Print JSON: { root, ok, sublayers: [{ name, checked,
                 bad: [{ key, path, reason, removed }] }] }`,
  options: { sublayer: { type: 'string' }, fix: { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: [],
  run: runVerify,
};

async function runVerify(input: CommandInput, io: Io): Promise<number> {
  const root = rootOf(input);
  const fix = flag(input, 'fix');
  const verdicts: SublayerVerdict[] = [];
  for (const name of await targetSublayers(root, stringOption(input, 'sublayer'))) {
    const report = await openSublayer(name, { root, ttlMs: Number.POSITIVE_INFINITY }).verify({ fix });
    const removed = new Set(report.removed.map((item) => item.path));
    verdicts.push({
      name,
      checked: report.checked,
      bad: report.bad.map((item) => ({ ...item, removed: removed.has(item.path) })),
    });
  }
  const remaining = verdicts.flatMap((verdict) => verdict.bad.filter((item) => !item.removed));
  if (flag(input, 'json')) {
    io.out(JSON.stringify({ root, ok: remaining.length === 0, sublayers: verdicts }, null, 2));
  } else {
    for (const line of renderVerdicts(root, verdicts)) io.out(line);
    if (remaining.length > 0 && !fix) {
      io.err(`${plural(remaining.length, 'bad file')} found: payload-cache verify --fix removes them`);
    }
  }
  return remaining.length === 0 ? EXIT_OK : EXIT_ERROR;
}

function renderVerdicts(root: string, verdicts: readonly SublayerVerdict[]): string[] {
  if (verdicts.length === 0) return [`No sublayers under ${root}: nothing to verify.`];
  const lines: string[] = [];
  for (const { name, checked, bad } of verdicts) {
    lines.push(`${name}/: ${checked} ok, ${bad.length} bad`);
    if (bad.length === 0) continue;
    const rows = bad.map((item) => [item.reason, item.key ?? '-', item.path, item.removed ? 'removed' : '']);
    lines.push(...renderTable(['REASON', 'KEY', 'PATH', ''], rows, [], '  '));
  }
  const ok = verdicts.reduce((sum, verdict) => sum + verdict.checked, 0);
  const bad = verdicts.flatMap((verdict) => verdict.bad);
  const removed = bad.filter((item) => item.removed).length;
  lines.push(
    `Verified ${plural(verdicts.length, 'sublayer')}: ${ok} ok, ${bad.length} bad, ${removed} removed.`,
  );
  return lines;
}
