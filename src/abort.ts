/** Settles like `promise`, or rejects with the signal's reason as soon as `signal` aborts. */
export function raceAbort<T>(promise: PromiseLike<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) {
      Promise.resolve(promise).catch(() => {});
      reject(signal.reason);
      return;
    }
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    Promise.resolve(promise).then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/**
 * Resolves after `ms`, or earlier when the function handed to `exposeWake` is called; rejects with the
 * signal's reason when `signal` aborts first.
 */
export function sleep(
  ms: number,
  signal?: AbortSignal,
  exposeWake?: (wake: () => void) => void,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const settle = (failure?: { reason: unknown }) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (failure) reject(failure.reason);
      else resolve();
    };
    const onAbort = () => settle({ reason: signal?.reason });
    const timer = setTimeout(settle, ms);
    exposeWake?.(() => settle());
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
  });
}
