import { PayloadCacheError } from '../index.js';

/**
 * The command line itself is wrong (unknown command or flag, a missing or malformed argument, a key the
 * library refuses, a confirmation that cannot be asked): exit code 2, and nothing was changed.
 */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** The user pressed Ctrl-C: a download was aborted, or a prompt was left, and nothing was changed (exit 130). */
export class InterruptedError extends Error {
  constructor(what = 'nothing was published') {
    super(`interrupted: ${what}`);
    this.name = 'InterruptedError';
  }
}

/** An error as one line: its message, the library's code in brackets, newlines folded. */
export function formatError(error: unknown): string {
  let message = error instanceof Error ? error.message : String(error);
  if (error instanceof PayloadCacheError) message += ` [${error.code}]`;
  // Messages that quote file contents or server text may hold newlines; the report stays one line.
  return message.replace(/\s*\n\s*/g, ' ');
}
