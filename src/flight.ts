/**
 * In-process single flight: concurrent callers for the same entry share one operation. A caller that
 * aborts leaves alone; the shared operation is aborted only when every caller has left, and the last one
 * to leave is answered only after the operation has cleaned up (so no tmp file outlives its rejection).
 */
export class Flight<T> {
  readonly promise: Promise<T>;
  #controller = new AbortController();
  #callers = 0;
  #onAbandoned: () => void;

  constructor(start: (signal: AbortSignal) => Promise<T>, onAbandoned: () => void) {
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

/**
 * Flights by entry path, shared by every manager in the process: one fetch per process per entry. A plain
 * lookup and a `refresh` are separate flights: a refresh never waits behind a lookup (its wait would not
 * be bounded by its own signal and lock timeout), and a lookup joins a refresh already running, whose
 * result is as fresh as can be.
 */
export class FlightTable<T> {
  #lookups = new Map<string, Flight<T>>();
  #refreshes = new Map<string, Flight<T>>();

  has(id: string): boolean {
    return this.#lookups.has(id) || this.#refreshes.has(id);
  }

  /** Joins the flight for `id` (a refresh flight, for a caller that asks to refresh) or starts one. */
  run(
    id: string,
    refresh: boolean,
    signal: AbortSignal | undefined,
    start: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    const running = this.#refreshes.get(id) ?? (refresh ? undefined : this.#lookups.get(id));
    if (running) return running.join(signal);
    const table = refresh ? this.#refreshes : this.#lookups;
    const forget = () => {
      if (table.get(id) === flight) table.delete(id);
    };
    const flight: Flight<T> = new Flight(start, forget);
    table.set(id, flight);
    flight.promise.then(forget, forget);
    return flight.join(signal);
  }
}
