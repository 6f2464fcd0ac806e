import path from 'node:path';
import { type Command, type CommandInput, EXIT_ERROR, EXIT_OK, flag, type Io, rootOf } from './command.js';
import { confirm } from './confirm.js';
import { listEntries, openSublayer, sublayerExists, totalBytes } from './sublayers.js';
import { plural, renderTable } from './table.js';
import { formatBytes } from './units.js';

export const clearCommand: Command = {
  name: 'clear',
  summary: 'Remove every entry of a sublayer',
  help: `Usage: payload-cache clear <sublayer> [--yes] [--json] [--root DIR]

Removes every entry of the sublayer, expired or not, and its orphans, so that every key becomes a miss.
Never a lock held by a live process nor a tmp file younger than 24 h: a download in flight may still
publish its entry afterwards. Exits 1 when the sublayer does not exist.

It first lists the entries that will go and asks for confirmation; without a terminal on stdin it
refuses (exit 2) unless --yes is given.

Options:
  -y, --yes   Do not ask for confirmation
  --json      Print JSON: { root, sublayer, removed: [{ key, path, sizeBytes }], totalBytes }`,
  options: { yes: { type: 'boolean', short: 'y' }, json: { type: 'boolean' } },
  positionals: ['sublayer'],
  run: runClear,
};

async function runClear(input: CommandInput, io: Io): Promise<number> {
  const [sublayer] = input.positionals as [string];
  const root = rootOf(input);
  const json = flag(input, 'json');
  const cache = openSublayer(sublayer, { root, ttlMs: Number.POSITIVE_INFINITY });
  if (!(await sublayerExists(root, sublayer))) {
    throw new Error(`no sublayer "${sublayer}" under ${root}: nothing to clear`);
  }
  const entries = await listEntries(sublayer, root, Number.POSITIVE_INFINITY);
  const size = formatBytes(totalBytes(entries));
  // With --json, stdout carries only the final report; the list goes with the question, on stderr.
  const show = (line: string) => (json ? io.err(line) : io.out(line));
  show(
    `Will remove from ${path.join(root, sublayer)}: ${plural(entries.length, 'entry', 'entries')}, ${size}`,
  );
  const rows = entries.map((entry) => [entry.key, formatBytes(entry.sizeBytes)]);
  if (rows.length > 0)
    for (const line of renderTable(['KEY', 'SIZE'], rows, ['left', 'right'], '  ')) show(line);
  const question = `Clear sublayer "${sublayer}" (${plural(entries.length, 'entry', 'entries')}, ${size})?`;
  if (!(await confirm(io, question, flag(input, 'yes')))) {
    io.err('Aborted: nothing was removed.');
    return EXIT_ERROR;
  }
  await cache.clear();
  if (json) {
    const removed = entries.map(({ key, path: entryPath, sizeBytes }) => ({
      key,
      path: entryPath,
      sizeBytes,
    }));
    io.out(JSON.stringify({ root, sublayer, removed, totalBytes: totalBytes(entries) }, null, 2));
  } else {
    io.out(`Cleared ${sublayer}: ${plural(entries.length, 'entry', 'entries')}, ${size}.`);
  }
  return EXIT_OK;
}
