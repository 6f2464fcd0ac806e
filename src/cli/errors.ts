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
