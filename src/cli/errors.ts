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

/** The user pressed Ctrl-C: the download was aborted and nothing was published (exit code 130). */
export class InterruptedError extends Error {
  constructor() {
    super('interrupted: nothing was published');
    this.name = 'InterruptedError';
  }
}
