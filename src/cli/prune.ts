import type { PruneReport } from '../index.js';
import {
  type Command,
  type CommandInput,
  EXIT_ERROR,
  EXIT_OK,
  flag,
  type Io,
  limitsOf,
  rootOf,
  stringOption,
  ttlOf,
} from './command.js';
import { confirm } from './confirm.js';
import { type PrunePlan, planPrune } from './prune-plan.js';
import { listEntries, openSublayer, targetSublayers } from './sublayers.js';
import { plural, renderTable } from './table.js';
import { formatAgo, formatBytes } from './units.js';

interface SublayerPlan {
  readonly name: string;
  readonly plan: PrunePlan;
}

export const pruneCommand: Command = {
  name: 'prune',
  summary: 'Remove expired entries and orphans, evict down to --keep-n/--max-bytes',
  help: `Usage: payload-cache prune [--sublayer S] [--ttl DURATION] [--keep-n N] [--max-bytes SIZE]
                           [--dry-run] [--yes] [--json] [--root DIR]

In each sublayer (or only S): removes entries expired under --ttl, evicts the least recently used entries
while the sublayer holds more than --keep-n entries or --max-bytes bytes, and sweeps orphans (tmp files
and payloads without manifest older than 24 h, manifests without payload, locks of dead processes).
Entries used in the last 70 s and entries whose lock a writer holds are never removed.

It first lists the entries that will go and asks for confirmation; without a terminal on stdin it
refuses (exit 2) unless --yes is given. The list is a forecast by the same rules: orphans are not listed
in advance, and an entry a writer locks meanwhile is kept. The report printed afterwards is what was
actually removed.

Options:
  --sublayer S       Only this sublayer (default: every sublayer under the root)
  --ttl DURATION     Entries older than this are expired: 7d, 12h, 30m, 45s, 500ms or Infinity.
                     Default Infinity: no entry expires (the cache stores no ttl)
  --keep-n N         At most N entries per sublayer. Default: no limit
  --max-bytes SIZE   At most SIZE payload bytes per sublayer: 500MiB, 2GiB, 10GB, 1048576. Default: no
                     limit (the CLI cannot know the limits your application passes to CacheManager)
  --dry-run          Only list the entries that would go; remove nothing, ask nothing
  -y, --yes          Do not ask for confirmation
  --json             Print JSON: with --dry-run { root, dryRun: true, remove: [{ sublayer, key, path,
                     sizeBytes, reason }], keep: [...] }, else { root, dryRun: false,
                     removed: [{ sublayer, key, path, reason }], kept: [{ sublayer, key, reason }] }`,
  options: {
    sublayer: { type: 'string' },
    ttl: { type: 'string' },
    'keep-n': { type: 'string' },
    'max-bytes': { type: 'string' },
    'dry-run': { type: 'boolean' },
    yes: { type: 'boolean', short: 'y' },
    json: { type: 'boolean' },
  },
  positionals: [],
  run: runPrune,
};

async function runPrune(input: CommandInput, io: Io): Promise<number> {
  const root = rootOf(input);
  const ttlMs = ttlOf(input);
  const limits = limitsOf(input);
  const json = flag(input, 'json');
  const names = await targetSublayers(root, stringOption(input, 'sublayer'));
  if (names.length === 0) {
    if (json)
      io.out(JSON.stringify({ root, dryRun: flag(input, 'dry-run'), removed: [], kept: [] }, null, 2));
    else io.out(`No sublayers under ${root}: nothing to prune.`);
    return EXIT_OK;
  }
  const plans: SublayerPlan[] = [];
  for (const name of names) {
    const entries = await listEntries(name, root, ttlMs);
    plans.push({ name, plan: planPrune(entries, limits, Date.now()) });
  }
  if (flag(input, 'dry-run')) {
    if (json) io.out(JSON.stringify({ root, dryRun: true, ...planJson(plans) }, null, 2));
    else
      for (const line of [...renderPlan(plans, 'Would remove'), 'Dry run: nothing was removed.'])
        io.out(line);
    return EXIT_OK;
  }
  // With --json, stdout carries only the final report; the forecast goes with the question, on stderr.
  const show = (line: string) => (json ? io.err(line) : io.out(line));
  for (const line of renderPlan(plans, 'Will remove')) show(line);
  const planned = plans.flatMap(({ plan }) => plan.remove);
  const question = `Prune ${plural(planned.length, 'entry', 'entries')} (${formatBytes(sum(planned))}) and old orphans in ${plural(names.length, 'sublayer')}?`;
  if (!(await confirm(io, question, flag(input, 'yes')))) {
    io.err('Aborted: nothing was removed.');
    return EXIT_ERROR;
  }
  const reports: { name: string; report: PruneReport }[] = [];
  for (const name of names) {
    reports.push({ name, report: await openSublayer(name, { root, ttlMs, ...limits }).prune() });
  }
  const removed = reports.flatMap(({ name, report }) =>
    report.removed.map((item) => ({ sublayer: name, ...item })),
  );
  const kept = reports.flatMap(({ name, report }) =>
    report.kept.map((item) => ({ sublayer: name, ...item })),
  );
  if (json) {
    io.out(JSON.stringify({ root, dryRun: false, removed, kept }, null, 2));
    return EXIT_OK;
  }
  if (removed.length > 0) {
    const rows = removed.map((item) => [item.sublayer, item.key ?? '-', item.reason, item.path]);
    io.out('Removed:');
    for (const line of renderTable(['SUBLAYER', 'KEY', 'REASON', 'PATH'], rows, [], '  ')) io.out(line);
  }
  for (const item of kept) io.out(`Kept ${item.sublayer}/${item.key} (${item.reason})`);
  io.out(`Pruned ${plural(removed.length, 'file')} in ${plural(names.length, 'sublayer')}.`);
  return EXIT_OK;
}

function renderPlan(plans: readonly SublayerPlan[], title: string): string[] {
  const nowMs = Date.now();
  const remove = plans.flatMap(({ name, plan }) => plan.remove.map((item) => ({ name, ...item })));
  const keep = plans.flatMap(({ name, plan }) => plan.keep.map((item) => ({ name, ...item })));
  const lines: string[] = [];
  if (remove.length === 0) lines.push(`${title}: no entries.`);
  else {
    const rows = remove.map(({ name, entry, reason }) => [
      name,
      entry.key,
      formatBytes(entry.sizeBytes),
      reason,
      formatAgo(nowMs - entry.lastUsedAt.getTime()),
    ]);
    lines.push(`${title}:`);
    lines.push(
      ...renderTable(
        ['SUBLAYER', 'KEY', 'SIZE', 'REASON', 'LAST USED'],
        rows,
        ['left', 'left', 'right'],
        '  ',
      ),
    );
  }
  for (const { name, entry } of keep) lines.push(`Keeping ${name}/${entry.key}: used in the last 70 s`);
  lines.push(
    `Total: ${plural(remove.length, 'entry', 'entries')}, ${formatBytes(sum(remove))}; ` +
      'orphans older than 24 h and stale locks go too (not listed in advance).',
  );
  return lines;
}

function planJson(plans: readonly SublayerPlan[]) {
  const item = (name: string, entry: PrunePlan['remove'][number]['entry'], reason: string) => ({
    sublayer: name,
    key: entry.key,
    path: entry.path,
    sizeBytes: entry.sizeBytes,
    reason,
  });
  return {
    remove: plans.flatMap(({ name, plan }) =>
      plan.remove.map(({ entry, reason }) => item(name, entry, reason)),
    ),
    keep: plans.flatMap(({ name, plan }) => plan.keep.map(({ entry, reason }) => item(name, entry, reason))),
  };
}

function sum(items: readonly { entry: { sizeBytes: number } }[]): number {
  return items.reduce((total, { entry }) => total + entry.sizeBytes, 0);
}
