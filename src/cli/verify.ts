import type { ForeignItem, ReportItem } from '../index.js';
import {
  type Command,
  type CommandInput,
  EXIT_ERROR,
  EXIT_OK,
  existingRootOf,
  flag,
  type Io,
  sharedOf,
  stringOption,
} from './command.js';
import { renderForeign } from './plan.js';
import { assertCacheRoot, eachSublayer, openSublayer, targetSublayers } from './sublayers.js';
import { plural, renderTable } from './table.js';

interface SublayerVerdict {
  readonly name: string;
  /** Entries re-hashed and found good. */
  readonly checked: number;
  readonly bad: readonly (ReportItem & { removed: boolean })[];
  readonly foreign: readonly ForeignItem[];
}

export const verifyCommand: Command = {
  name: 'verify',
  summary: 'Re-hash payloads against their manifests; --fix removes bad ones',
  help: `Usage: payload-cache verify [--sublayer S] [--fix] [--json] [--root DIR]

Re-hashes every payload against the sha256 in its manifest (it reads every byte, so it takes as long as
reading the whole cache) and reports each bad file with the reason: hash-mismatch, size-mismatch,
wrong-key (a manifest naming another key), orphan-tmp (a tmp file older than 24 h), orphan-payload (a
payload without manifest that a record proves the cache wrote), orphan-manifest (a manifest without
payload), stale-lock (the lock of a process that is gone). It also lists what payload-cache did not write
("left alone": your files, directories, files with a manifest it cannot read), which nothing removes.
Without --fix it changes nothing on disk.

Exit status: 0 when nothing bad or foreign remains; 1 otherwise (also when the root or --sublayer does not
exist, or a sublayer could not be read): anything found without --fix; with --fix, an entry left alone
because a writer holds its lock, or anything foreign. --fix refuses (exit 2) a root that has no
CACHEDIR.TAG written by payload-cache.

Options:
  --sublayer S   Only this sublayer
  --fix          Remove bad entries and orphans (never an entry whose lock is held, never anything foreign)
  --json         Print JSON: { root, ok, sublayers: [{ name, checked,
                 bad: [{ key, path, reason, removed }], foreign: [{ path, reason }] }] }`,
  options: { sublayer: { type: 'string' }, fix: { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: [],
  run: runVerify,
};

async function runVerify(input: CommandInput, io: Io): Promise<number> {
  const fix = flag(input, 'fix');
  const root = await existingRootOf(input);
  if (fix) await assertCacheRoot(root);
  const names = await targetSublayers(root, stringOption(input, 'sublayer'));
  const { done, failed } = await eachSublayer(names, io, 'verify', async (name) => {
    const report = await openSublayer(name, {
      root,
      ttlMs: Number.POSITIVE_INFINITY,
      shared: sharedOf(input),
    }).verify({ fix });
    const removed = new Set(report.removed.map((item) => item.path));
    return {
      name,
      checked: report.checked,
      bad: report.bad.map((item) => ({ ...item, removed: removed.has(item.path) })),
      foreign: report.foreign,
    };
  });
  const verdicts: SublayerVerdict[] = done.map(({ value }) => value);
  const remaining = verdicts.flatMap((verdict) => verdict.bad.filter((item) => !item.removed));
  const foreign = verdicts.flatMap((verdict) => verdict.foreign);
  const ok = remaining.length === 0 && foreign.length === 0 && failed === 0;
  if (flag(input, 'json')) {
    io.out(JSON.stringify({ root, ok, sublayers: verdicts }, null, 2));
  } else {
    for (const line of renderVerdicts(root, verdicts)) io.out(line);
    if (remaining.length > 0 && !fix) {
      io.err(`${plural(remaining.length, 'bad file')} found: payload-cache verify --fix removes them`);
    }
    if (foreign.length > 0) {
      io.err(
        `${plural(foreign.length, 'file')} not written by payload-cache: remove them yourself if unwanted`,
      );
    }
  }
  return ok ? EXIT_OK : EXIT_ERROR;
}

function renderVerdicts(root: string, verdicts: readonly SublayerVerdict[]): string[] {
  if (verdicts.length === 0) return [`No sublayers under ${root}: nothing to verify.`];
  const lines: string[] = [];
  for (const { name, checked, bad, foreign } of verdicts) {
    lines.push(`${name}/: ${checked} ok, ${bad.length} bad, ${foreign.length} foreign`);
    if (bad.length > 0) {
      const rows = bad.map((item) => [
        item.reason,
        item.key ?? '-',
        item.path,
        item.removed ? 'removed' : '',
      ]);
      lines.push(...renderTable(['REASON', 'KEY', 'PATH', ''], rows, [], '  '));
    }
    lines.push(...renderForeign(foreign).map((line) => `  ${line}`));
  }
  const ok = verdicts.reduce((sum, verdict) => sum + verdict.checked, 0);
  const bad = verdicts.flatMap((verdict) => verdict.bad);
  const removed = bad.filter((item) => item.removed).length;
  const foreign = verdicts.reduce((sum, verdict) => sum + verdict.foreign.length, 0);
  lines.push(
    `Verified ${plural(verdicts.length, 'sublayer')}: ${ok} ok, ${bad.length} bad, ${removed} removed, ${foreign} foreign.`,
  );
  return lines;
}
