import type { Io } from './command.js';
import { UsageError } from './errors.js';

/**
 * Asks before a deletion. `--yes` skips the question. Without a terminal on stdin there is nobody to ask,
 * and a script that forgot `--yes` must not delete by default: that is a UsageError (exit 2).
 * Resolves `true` only for an answer of y or yes; Ctrl-C at the prompt rejects with InterruptedError.
 */
export async function confirm(io: Io, question: string, yes: boolean): Promise<boolean> {
  if (yes) return true;
  if (!io.stdinIsTTY) {
    throw new UsageError('refusing to delete without confirmation: stdin is not a terminal, pass --yes');
  }
  const answer = await io.ask(`${question} [y/N] `);
  return /^y(es)?$/i.test(answer.trim());
}
