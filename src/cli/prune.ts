import {
  type Command,
  type CommandInput,
  EXIT_ERROR,
  EXIT_OK,
  existingRootOf,
  flag,
  type Io,
  limitsOf,
  sharedOf,
  stringOption,
  ttlOf,
} from './command.js';
import { confirm } from './confirm.js';
import {
  carryOutPlans,
  outcomeJson,
  planJson,
  renderForeign,
  renderOutcome,
  renderPlan,
  type SublayerPlan,
} from './plan.js';
import { assertCacheRoot, eachSublayer, openSublayer, targetSublayers } from './sublayers.js';
import { plural } from './table.js';
import { formatBytes } from './units.js';

export const pruneCommand: Command = {
  name: 'prune',
  summary: 'Remove expired entries and orphans, evict down to --keep-n/--max-bytes',
  help: `Usage: payload-cache prune [--sublayer S] [--ttl DURATION] [--keep-n N] [--max-bytes SIZE]
                           [--dry-run] [--yes] [--json] [--root DIR]

In each sublayer (or only S): removes entries expired under --ttl, evicts the least recently used entries
while the sublayer holds more than --keep-n entries or --max-bytes bytes (exact limits), and removes
orphans the cache left (tmp files older than 24 h, payloads without manifest older than 24 h that a record
proves the cache wrote, manifests without payload, locks of dead processes). Entries whose recorded use
is within the last 130 s and entries whose lock a writer holds are never removed.

It deletes only what payload-cache can prove it wrote: anything else in a sublayer (your own files and
directories) is listed as "left alone" and never touched. It refuses (exit 2) to work on a root that has
no CACHEDIR.TAG written by payload-cache.

It first shows the plan (every file that will go, and why) and asks for confirmation; without a terminal
on stdin it refuses (exit 2) unless --yes is given. Then it carries out exactly that plan: each file is
checked again just before it goes, and one that changed meanwhile (used, renewed, republished) is kept.

Options:
  --sublayer S       Only this sublayer (default: every sublayer under the root)
  --ttl DURATION     Entries older than this are expired: 7d, 12h, 30m, 45s, 500ms or Infinity.
                     Default Infinity: no entry expires (the cache stores no ttl)
  --keep-n N         At most N entries per sublayer (N >= 1). Default: no limit
  --max-bytes SIZE   At most SIZE payload bytes per sublayer: 500MiB, 2GiB, 10GB, 1048576. Default: no
                     limit (the CLI cannot know the limits your application passes to CacheManager)
  --dry-run          Only show the plan; remove nothing, ask nothing
  -y, --yes          Do not ask for confirmation
  --json             Print JSON: with --dry-run { root, dryRun: true, remove: [{ sublayer, key, path,
                     sizeBytes, reason }], keep: [{ sublayer, key, reason }], foreign: [{ sublayer,
                     path, reason }] }, else { root, dryRun: false, removed: [{ sublayer, key, path,
                     reason }], kept: [...], foreign: [...] }`,
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
  const ttlMs = ttlOf(input);
  const limits = limitsOf(input);
  const json = flag(input, 'json');
  const dryRun = flag(input, 'dry-run');
  const root = await existingRootOf(input);
  await assertCacheRoot(root);
  const names = await targetSublayers(root, stringOption(input, 'sublayer'));
  const { done, failed } = await eachSublayer(names, io, 'prune', async (name) => {
    const cache = openSublayer(name, { root, ttlMs, ...limits, shared: sharedOf(input) });
    return { name, cache, plan: await cache.planPrune() };
  });
  const plans: SublayerPlan[] = done.map(({ value }) => value);
  const exitCode = failed > 0 ? EXIT_ERROR : EXIT_OK;
  if (dryRun) {
    if (json) io.out(JSON.stringify({ root, dryRun: true, ...planJson(plans) }, null, 2));
    else
      for (const line of [...renderPlan(plans, 'Would remove', Date.now()), 'Dry run: nothing was removed.'])
        io.out(line);
    return exitCode;
  }
  // With --json, stdout carries only the final report; the plan goes with the question, on stderr.
  const show = (line: string) => (json ? io.err(line) : io.out(line));
  for (const line of renderPlan(plans, 'Will remove', Date.now())) show(line);
  const planned = plans.flatMap(({ plan }) => plan.remove);
  const bytes = planned.reduce((sum, item) => sum + item.sizeBytes, 0);
  const question = `Prune ${plural(planned.length, 'file')} (${formatBytes(bytes)}) in ${plural(plans.length, 'sublayer')}?`;
  if (!(await confirm(io, question, flag(input, 'yes')))) {
    io.err('Declined: nothing was removed.');
    return EXIT_ERROR;
  }
  const outcomes = await carryOutPlans(plans);
  if (json) {
    io.out(JSON.stringify({ root, dryRun: false, ...outcomeJson(outcomes) }, null, 2));
    return exitCode;
  }
  for (const line of renderOutcome(outcomes)) io.out(line);
  for (const line of renderForeign(outcomes.flatMap(({ report }) => report.foreign))) io.out(line);
  const removed = outcomes.reduce((sum, { report }) => sum + report.removed.length, 0);
  io.out(`Pruned ${plural(removed, 'file')} in ${plural(plans.length, 'sublayer')}.`);
  return exitCode;
}
