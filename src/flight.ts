/**
 * In-process single flight: concurrent callers for the same entry share one operation. A caller that
 * aborts leaves alone; the shared operation is aborted only when every caller has left, and the last one
 * to leave is answered only after the operation has cleaned up (so no tmp file outlives its rejection).
 */
export class Flight<T> {
  readonly promise: Promise<T>;
  readonly refresh: boolean;
  #controller = new AbortController();
  #callers = 0;
  #onAbandoned: () => void;

  constructor(refresh: boolean, start: (signal: AbortSignal) => Promise<T>, onAbandoned: () => void) {
    this.refresh = refresh;
    this.#onAbandoned = onAbandoned;
    this.promise = start(this.#controller.signal);
    this.promise.catch(() => {}); // callers observe the rejection; an abandoned flight must not crash the process
  }

  /** Joins the flight; resolves with its result, or rejects with `signal`'s reason when this caller aborts. */
  join(signal: AbortSignal | undefined): Promise<T> {
    this.#callers += 1;
    if (!signal) return this.promise;
    return new Promise<T>((resolve, reject) => {
      const leave = () => {
        this.#callers -= 1;
        if (this.#callers > 0) {
          reject(signal.reason);
          return;
        }
        this.#onAbandoned();
        this.#controller.abort(signal.reason);
        const answer = () => reject(signal.reason);
        this.promise.then(answer, answer);
      };
      if (signal.aborted) {
        leave();
        return;
      }
      signal.addEventListener('abort', leave, { once: true });
      this.promise.then(
        (value) => {
          signal.removeEventListener('abort', leave);
          resolve(value);
        },
        (error: unknown) => {
          signal.removeEventListener('abort', leave);
          reject(error);
        },
      );
    });
  }
}

/** Flights by entry path, shared by every manager in the process: one fetch per process per entry. */
export class FlightTable<T> {
  #flights = new Map<string, Flight<T>>();

  has(id: string): boolean {
    return this.#flights.has(id);
  }

  /**
   * Joins the flight for `id` or starts one. A caller asking for `refresh` does not settle for a plain
   * lookup already in flight: it waits that one out and starts its own.
   */
  async run(
    id: string,
    refresh: boolean,
    signal: AbortSignal | undefined,
    start: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    for (;;) {
      const current = this.#flights.get(id);
      if (current && (current.refresh || !refresh)) return current.join(signal);
      if (current) {
        await current.promise.catch(() => {});
        signal?.throwIfAborted();
        continue;
      }
      const forget = () => {
        if (this.#flights.get(id) === flight) this.#flights.delete(id);
      };
      const flight: Flight<T> = new Flight(refresh, start, forget);
      this.#flights.set(id, flight);
      flight.promise.then(forget, forget);
      return flight.join(signal);
    }
  }
}
