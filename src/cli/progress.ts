import cliProgress from 'cli-progress';
import type { HttpProgress } from '../index.js';
import { formatBytes, formatDuration } from './units.js';

/** Shows a download's progress on stderr; `stop()` ends it (and restores the terminal line and cursor). */
export interface DownloadProgress {
  update(progress: HttpProgress): void;
  stop(): void;
}

/** A bar that redraws in place on a terminal; plain lines anywhere else (CI logs, pipes, files). */
export function createProgress(label: string, stream: NodeJS.WriteStream): DownloadProgress {
  return stream.isTTY
    ? new BarProgress(label, stream)
    : new LineProgress(label, (line) => stream.write(`${line}\n`));
}

/** Plain mode prints a line each time another 10 % of the payload has arrived. */
const LINE_STEP_PERCENT = 10;
/** Without a Content-Length there are no percents: a line per 10 MiB, about 10 % of a 100 MB download. */
const LINE_STEP_BYTES = 10 * 1024 * 1024;

/**
 * Progress as plain lines, `<label>: 40% 4.0 MiB of 10.0 MiB, 12.3 MiB/s, ETA 1s`, so that logs stay
 * readable. A download that restarts from byte 0 (the server ignored a resume) says so and counts anew.
 */
export class LineProgress implements DownloadProgress {
  readonly #label: string;
  readonly #write: (line: string) => void;
  readonly #now: () => number;
  #startMs: number;
  #lastBytes = 0;
  #nextPercent = LINE_STEP_PERCENT;
  #nextBytes = LINE_STEP_BYTES;

  constructor(label: string, write: (line: string) => void, now: () => number = Date.now) {
    this.#label = label;
    this.#write = write;
    this.#now = now;
    this.#startMs = now();
  }

  update({ receivedBytes, totalBytes }: HttpProgress): void {
    if (receivedBytes < this.#lastBytes) {
      this.#write(`${this.#label}: restarting from byte 0`);
      this.#startMs = this.#now();
      this.#nextPercent = LINE_STEP_PERCENT;
      this.#nextBytes = LINE_STEP_BYTES;
    }
    this.#lastBytes = receivedBytes;
    const rate = bytesPerSecond(receivedBytes, this.#now() - this.#startMs);
    if (totalBytes === undefined || totalBytes === 0) {
      if (receivedBytes < this.#nextBytes) return;
      this.#nextBytes = (Math.floor(receivedBytes / LINE_STEP_BYTES) + 1) * LINE_STEP_BYTES;
      this.#write(`${this.#label}: ${formatBytes(receivedBytes)}, ${formatBytes(rate)}/s`);
      return;
    }
    const percent = Math.floor((receivedBytes * 100) / totalBytes);
    if (percent < this.#nextPercent) return;
    this.#nextPercent = (Math.floor(percent / LINE_STEP_PERCENT) + 1) * LINE_STEP_PERCENT;
    const etaMs = rate > 0 ? ((totalBytes - receivedBytes) / rate) * 1_000 : Number.POSITIVE_INFINITY;
    this.#write(
      `${this.#label}: ${percent}% ${formatBytes(receivedBytes)} of ${formatBytes(totalBytes)}, ` +
        `${formatBytes(rate)}/s, ETA ${formatDuration(etaMs)}`,
    );
  }

  stop(): void {}
}

/** A cli-progress bar: `<label> [████░░░░] 40% | 4.0 MiB of 10.0 MiB | 12.3 MiB/s | ETA 1s`. */
class BarProgress implements DownloadProgress {
  readonly #label: string;
  readonly #stream: NodeJS.WriteStream;
  #bar: cliProgress.SingleBar | undefined;
  #total: number | undefined;
  #startMs = Date.now();
  #lastBytes = 0;

  constructor(label: string, stream: NodeJS.WriteStream) {
    this.#label = label;
    this.#stream = stream;
  }

  update({ receivedBytes, totalBytes }: HttpProgress): void {
    if (receivedBytes < this.#lastBytes) this.#startMs = Date.now();
    this.#lastBytes = receivedBytes;
    const payload = {
      done: formatBytes(receivedBytes),
      size: totalBytes === undefined ? '?' : formatBytes(totalBytes),
      speed: `${formatBytes(bytesPerSecond(receivedBytes, Date.now() - this.#startMs))}/s`,
    };
    if (!this.#bar || totalBytes !== this.#total) this.#start(totalBytes, receivedBytes, payload);
    else this.#bar.update(receivedBytes, payload);
  }

  #start(totalBytes: number | undefined, receivedBytes: number, payload: Record<string, string>): void {
    this.#bar?.stop();
    this.#total = totalBytes;
    const known = totalBytes !== undefined && totalBytes > 0;
    this.#bar = new cliProgress.SingleBar(
      {
        stream: this.#stream,
        hideCursor: true,
        barsize: 30,
        etaBuffer: 50,
        format: known
          ? `${this.#label} [{bar}] {percentage}% | {done} of {size} | {speed} | ETA {eta_formatted}`
          : `${this.#label} {done} | {speed}`,
      },
      cliProgress.Presets.shades_classic,
    );
    this.#bar.start(known ? totalBytes : 1, receivedBytes, payload);
  }

  stop(): void {
    this.#bar?.stop();
    this.#bar = undefined;
  }
}

function bytesPerSecond(bytes: number, elapsedMs: number): number {
  return (bytes * 1_000) / Math.max(elapsedMs, 1);
}
