import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { getCacheDir } from '../index.js';
import { UsageError } from './errors.js';
import { parseCount, parseDuration, parseSize } from './units.js';

/** Exit codes, documented in `payload-cache --help` and the README. */
export const EXIT_OK = 0;
/** An operation failed, a check found problems (`verify`), or the user declined a confirmation. */
export const EXIT_ERROR = 1;
/** The command line was wrong; nothing was changed. */
export const EXIT_USAGE = 2;
/** Interrupted by Ctrl-C (128 + SIGINT), as shells report it. */
export const EXIT_INTERRUPTED = 130;

/** Where a command talks to: injected so that output, prompts and TTY checks stay in one place. */
export interface Io {
  /** A line on stdout (results: tables, JSON, paths). */
  out(line: string): void;
  /** A line on stderr (progress, prompts, notes, errors). */
  err(line: string): void;
  readonly stdinIsTTY: boolean;
  /** For the progress bar, which redraws its line in place when this is a TTY. */
  readonly stderr: NodeJS.WriteStream;
  /** Prints `question` on stderr and resolves with the line typed on stdin ('' at end of input). */
  ask(question: string): Promise<string>;
}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface CommandInput {
  readonly values: Readonly<Record<string, string | boolean | undefined>>;
  readonly positionals: readonly string[];
}

export interface Command {
  readonly name: string;
  /** One line for the command list in `payload-cache --help`. */
  readonly summary: string;
  /** The command's own help, without the options every command shares. */
  readonly help: string;
  readonly options: OptionSpec;
  /**
   * Names of the required positional arguments, in order (`<sublayer> <key>`). A last name ending in `...`
   * (`url...`) takes one or more arguments.
   */
  readonly positionals: readonly string[];
  run(input: CommandInput, io: Io): Promise<number>;
}

const COMMON_OPTIONS: OptionSpec = {
  root: { type: 'string' },
  shared: { type: 'string' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

export function commonHelp(): string {
  return `Options for every command:
  --root DIR    Cache root. Default: $PAYLOAD_CACHE_DIR, else the platform's user cache directory
                (here: ${getCacheDir()})
  --shared group
                The cache is shared by a Unix group: what the command creates (downloads, lock
                directories) is made group-writable whatever the umask (README: Sharing a cache)
  --debug       Print the full error with its stack trace instead of one line
  -h, --help    Show this help`;
}

/** Parses a command's arguments strictly: an unknown flag, a missing value or a stray argument is a UsageError. */
export function parseCommandArgs(command: Command, args: readonly string[]): CommandInput {
  let parsed: {
    values: Record<string, string | boolean | undefined>;
    positionals: string[];
    tokens: { kind: string; name?: string }[];
  };
  try {
    parsed = parseArgs({
      args: [...args],
      options: { ...COMMON_OPTIONS, ...command.options },
      allowPositionals: true,
      strict: true,
      tokens: true,
    }) as typeof parsed;
  } catch (error) {
    // Node's messages go on with advice about `--`; the first sentence is the useful part.
    throw new UsageError(firstSentence(error instanceof Error ? error.message : String(error)));
  }
  // parseArgs lets the last of a repeated flag win; `--keep-n 5 --keep-n 50` is more likely a mistake.
  const seen = new Set<string>();
  for (const token of parsed.tokens) {
    if (token.kind !== 'option' || token.name === undefined) continue;
    if (seen.has(token.name)) throw new UsageError(`--${token.name} is given more than once`);
    seen.add(token.name);
  }
  if (parsed.values.help) return parsed;
  sharedOf(parsed);
  const expected = command.positionals.map((name) => name.replace(/\.\.\.$/, ''));
  const takesMore = command.positionals.at(-1)?.endsWith('...') === true;
  if (parsed.positionals.length < expected.length) {
    const missing = expected.slice(parsed.positionals.length).map((name) => `<${name}>`);
    throw new UsageError(`missing ${missing.join(' ')}`);
  }
  if (parsed.positionals.length > expected.length && !takesMore) {
    throw new UsageError(`unexpected argument "${parsed.positionals[expected.length]}"`);
  }
  return parsed;
}

function firstSentence(message: string): string {
  const end = message.indexOf('. ');
  const sentence = end === -1 ? message : message.slice(0, end);
  return sentence.charAt(0).toLowerCase() + sentence.slice(1);
}

export function stringOption(input: CommandInput, name: string): string | undefined {
  const value = input.values[name];
  return typeof value === 'string' ? value : undefined;
}

export function flag(input: CommandInput, name: string): boolean {
  return input.values[name] === true;
}

/** `--shared group`, the only value there is; `undefined` without the flag. */
export function sharedOf(input: CommandInput): 'group' | undefined {
  const shared = stringOption(input, 'shared');
  if (shared === undefined) return undefined;
  if (shared !== 'group') throw new UsageError(`--shared takes only "group", got "${shared}"`);
  return shared;
}

/** `--root` made absolute, else the global root (`PAYLOAD_CACHE_DIR` or the platform default). */
export function rootOf(input: CommandInput): string {
  const root = stringOption(input, 'root');
  if (root === undefined) return getCacheDir();
  if (root.trim() === '') throw new UsageError('--root needs a directory');
  return path.resolve(root);
}

/** {@link rootOf}, which must exist as a directory: a mistyped root is an error (exit 1), not an empty cache. */
export async function existingRootOf(input: CommandInput): Promise<string> {
  const root = rootOf(input);
  const stats = await fsp.stat(root).catch(() => undefined);
  if (!stats?.isDirectory()) throw new Error(`no cache root at ${root}: nothing there to look at`);
  return root;
}

/** `--ttl` in ms; without it nothing counts as expired (the CLI cannot know the ttl your application uses). */
export function ttlOf(input: CommandInput): number {
  const ttl = stringOption(input, 'ttl');
  return ttl === undefined ? Number.POSITIVE_INFINITY : parseDuration(ttl, '--ttl');
}

/**
 * `--keep-n` and `--max-bytes`, exact limits; each defaults to no limit. Both must be at least 1: a limit of
 * 0 would remove every entry, which is what `clear` is for.
 */
export function limitsOf(input: CommandInput): { keepN: number; maxBytes: number } {
  const keepN = stringOption(input, 'keep-n');
  const maxBytes = stringOption(input, 'max-bytes');
  const bytes = maxBytes === undefined ? Number.POSITIVE_INFINITY : parseSize(maxBytes, '--max-bytes');
  if (bytes < 1)
    throw new UsageError(`--max-bytes needs at least 1 byte, got "${maxBytes}" (to empty a sublayer: clear)`);
  return {
    keepN: keepN === undefined ? Number.POSITIVE_INFINITY : parseCount(keepN, '--keep-n'),
    maxBytes: bytes,
  };
}
