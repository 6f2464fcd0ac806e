import path from 'node:path';
import {
  type Command,
  type CommandInput,
  EXIT_ERROR,
  EXIT_OK,
  existingRootOf,
  flag,
  type Io,
  sharedOf,
} from './command.js';
import { confirm } from './confirm.js';
import { carryOutPlans, outcomeJson, renderForeign, renderOutcome, renderPlan } from './plan.js';
import { assertCacheRoot, openSublayer, targetSublayers } from './sublayers.js';
import { plural } from './table.js';
import { formatBytes } from './units.js';

export const clearCommand: Command = {
  name: 'clear',
  summary: 'Remove every entry of a sublayer',
  help: `Usage: payload-cache clear <sublayer> [--yes] [--json] [--root DIR]

Removes every entry of the sublayer, expired or not, and the orphans the cache left, so that every key
becomes a miss. Never a lock held by a live process nor a tmp file younger than 24 h: a download in
flight may still publish its entry afterwards. Files and directories payload-cache did not write are
listed as "left alone" and never touched. Exits 1 when the sublayer does not exist, 2 when the root has no
CACHEDIR.TAG written by payload-cache.

It first shows every file that will go and asks for confirmation; without a terminal on stdin it refuses
(exit 2) unless --yes is given. Then it removes exactly those files (each checked again just before).

Options:
  -y, --yes   Do not ask for confirmation
  --json      Print JSON of what was done: { root, sublayer, removed: [{ key, path, reason, sizeBytes }],
              kept: [{ key, reason }], foreign: [{ path, reason }], totalBytes }`,
  options: { yes: { type: 'boolean', short: 'y' }, json: { type: 'boolean' } },
  positionals: ['sublayer'],
  run: runClear,
};

async function runClear(input: CommandInput, io: Io): Promise<number> {
  const [sublayer] = input.positionals as [string];
  const json = flag(input, 'json');
  const root = await existingRootOf(input);
  openSublayer(sublayer, { root, ttlMs: Number.POSITIVE_INFINITY }); // the name rules first (exit 2)
  await assertCacheRoot(root);
  await targetSublayers(root, sublayer);
  const cache = openSublayer(sublayer, { root, ttlMs: Number.POSITIVE_INFINITY, shared: sharedOf(input) });
  const plans = [{ name: sublayer, cache, plan: await cache.planClear() }];
  const planned = plans[0]?.plan.remove ?? [];
  const bytes = planned.reduce((sum, item) => sum + item.sizeBytes, 0);
  // With --json, stdout carries only the final report; the plan goes with the question, on stderr.
  const show = (line: string) => (json ? io.err(line) : io.out(line));
  show(`Clearing ${path.join(root, sublayer)}`);
  for (const line of renderPlan(plans, 'Will remove', Date.now())) show(line);
  const question = `Clear sublayer "${sublayer}" (${plural(planned.length, 'file')}, ${formatBytes(bytes)})?`;
  if (!(await confirm(io, question, flag(input, 'yes')))) {
    io.err('Declined: nothing was removed.');
    return EXIT_ERROR;
  }
  const outcomes = await carryOutPlans(plans);
  const { removed, kept, foreign } = outcomeJson(outcomes);
  const sizeOf = new Map(planned.map((item) => [item.path, item.sizeBytes]));
  const removedBytes = removed.reduce((sum, item) => sum + (sizeOf.get(item.path) ?? 0), 0);
  if (json) {
    const strip = <T extends { sublayer: string }>({ sublayer: _, ...rest }: T) => rest;
    const report = {
      root,
      sublayer,
      removed: removed.map((item) => ({ ...strip(item), sizeBytes: sizeOf.get(item.path) ?? 0 })),
      kept: kept.map(strip),
      foreign: foreign.map(strip),
      totalBytes: removedBytes,
    };
    io.out(JSON.stringify(report, null, 2));
    return EXIT_OK;
  }
  for (const line of renderOutcome(outcomes)) io.out(line);
  for (const line of renderForeign(outcomes.flatMap(({ report }) => report.foreign))) io.out(line);
  io.out(`Cleared ${sublayer}: ${plural(removed.length, 'file')}, ${formatBytes(removedBytes)}.`);
  return EXIT_OK;
}
