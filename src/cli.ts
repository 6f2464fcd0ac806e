#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { inspect } from 'node:util';
import { clearCommand } from './cli/clear.js';
import {
  type Command,
  commonHelp,
  EXIT_ERROR,
  EXIT_INTERRUPTED,
  EXIT_OK,
  EXIT_USAGE,
  type Io,
  parseCommandArgs,
} from './cli/command.js';
import { formatError, InterruptedError, UsageError } from './cli/errors.js';
import { fetchCommand } from './cli/fetch.js';
import { infoCommand } from './cli/info.js';
import { lsCommand } from './cli/ls.js';
import { pruneCommand } from './cli/prune.js';
import { verifyCommand } from './cli/verify.js';
import { InvalidKeyError, NotCacheRootError } from './index.js';

const COMMANDS: readonly Command[] = [
  lsCommand,
  infoCommand,
  verifyCommand,
  pruneCommand,
  clearCommand,
  fetchCommand,
];

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((command) => command.name.length));
  const list = COMMANDS.map((command) => `  ${command.name.padEnd(width)}  ${command.summary}`);
  return `payload-cache: inspect and maintain a payload-cache directory, or download into it

Usage: payload-cache <command> [options]
       payload-cache <command> --help
       payload-cache --version

Commands:
${list.join('\n')}

${commonHelp()}

Exit codes:
  0    success
  1    error: an operation failed, verify found problems, the root, an entry or a sublayer does not
       exist, a sublayer could not be read, or a confirmation was declined
  2    usage: unknown command or flag, a flag given twice, a missing or malformed argument, an invalid
       key or sublayer, prune/clear without --yes when stdin is not a terminal, or prune/clear/verify
       --fix on a root without payload-cache's CACHEDIR.TAG; nothing was changed
  130  interrupted (Ctrl-C): nothing was published or removed

prune, clear and verify --fix delete only what payload-cache can prove it wrote; anything else is
listed as "left alone". ls, info, verify and every --dry-run change nothing on disk.

Errors are one line on stderr; --debug prints the full error with its stack trace.`;
}

/** Runs one command line and resolves with its exit code; every error is reported here, as one line. */
export async function main(argv: readonly string[], io: Io): Promise<number> {
  const [name, ...rest] = argv;
  try {
    return await dispatch(name, rest, io);
  } catch (error) {
    return report(error, name, argv.includes('--debug'), io);
  }
}

async function dispatch(name: string | undefined, rest: readonly string[], io: Io): Promise<number> {
  if (name === undefined) {
    io.err(mainHelp());
    return EXIT_USAGE;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    const topic = rest[0] === undefined ? undefined : findCommand(rest[0]);
    io.out(topic ? commandHelp(topic) : mainHelp());
    return EXIT_OK;
  }
  if (name === '--version' || name === '-V') {
    io.out(packageVersion());
    return EXIT_OK;
  }
  const command = findCommand(name);
  const input = parseCommandArgs(command, rest);
  if (input.values.help === true) {
    io.out(commandHelp(command));
    return EXIT_OK;
  }
  return command.run(input, io);
}

function findCommand(name: string): Command {
  const command = COMMANDS.find((candidate) => candidate.name === name);
  if (command) return command;
  if (name.startsWith('-')) throw new UsageError(`expected a command before "${name}"`);
  throw new UsageError(`unknown command "${name}" (commands: ${COMMANDS.map((c) => c.name).join(', ')})`);
}

function commandHelp(command: Command): string {
  return `${command.help}\n\n${commonHelp()}`;
}

/**
 * One line on stderr, `payload-cache <command>: <message>`, and the exit code: 2 for usage errors and for
 * keys or sublayers the library refuses (the command line was wrong, nothing was touched), 130 for Ctrl-C,
 * 1 for the rest. `--debug` prints the whole error instead: stack, cause and fields.
 */
function report(error: unknown, name: string | undefined, debug: boolean, io: Io): number {
  const usage = error instanceof UsageError || error instanceof InvalidKeyError;
  // A root without payload-cache's marker is the wrong directory on the command line: nothing was changed.
  const refused = usage || error instanceof NotCacheRootError;
  const code = refused ? EXIT_USAGE : error instanceof InterruptedError ? EXIT_INTERRUPTED : EXIT_ERROR;
  const command = name !== undefined && COMMANDS.some((c) => c.name === name) ? ` ${name}` : '';
  if (debug) {
    io.err(`payload-cache${command}: ${inspect(error, { depth: 6 })}`);
    return code;
  }
  const hint = usage ? ` (see: payload-cache${command} --help)` : '';
  io.err(`payload-cache${command}: ${formatError(error)}${hint}`);
  return code;
}

function packageVersion(): string {
  const manifest = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return manifest.version;
}

/**
 * stdout and stderr of this process; prompts read one line from stdin. Output into a pipe that closed
 * (`payload-cache ls | head -2`) is dropped quietly: the command still finishes and exits as it would.
 */
function processIo(): Io {
  const closed = new Set<NodeJS.WriteStream>();
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE') throw error;
      closed.add(stream);
    });
  }
  const writer = (stream: NodeJS.WriteStream) => (line: string) => {
    if (!closed.has(stream)) stream.write(`${line}\n`);
  };
  return {
    out: writer(process.stdout),
    err: writer(process.stderr),
    stdinIsTTY: process.stdin.isTTY === true,
    stderr: process.stderr,
    ask: (question) =>
      new Promise((resolve, reject) => {
        const prompt = createInterface({ input: process.stdin, output: process.stderr });
        let answer = '';
        let interrupted = false;
        prompt.once('close', () =>
          interrupted ? reject(new InterruptedError('nothing was removed')) : resolve(answer),
        );
        prompt.once('SIGINT', () => {
          interrupted = true;
          process.stderr.write('\n');
          prompt.close();
        });
        prompt.question(question, (line) => {
          answer = line;
          prompt.close();
        });
      }),
  };
}

// Sets the exit code instead of calling process.exit(), so that stdout is flushed when piped.
process.exitCode = await main(process.argv.slice(2), processIo());
