import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';

// Real `node` processes sharing one cache directory (DESIGN.md sections 1 and 5). The children import the
// BUILT library from dist/, which `npm test` rebuilds first (pretest).

const FIXTURE = fileURLToPath(new URL('./fixtures/get-or-fetch.mjs', import.meta.url));
const BUILT_ENTRY = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const MiB = 1024 * 1024;
const SUBLAYER = 'mp';
const KEY = 'payload.bin';
const TEST_TIMEOUT_MS = 60_000;
const EVENT_TIMEOUT_MS = 30_000;

/** What a child does; read by test/fixtures/get-or-fetch.mjs. */
interface ChildConfig {
  root: string;
  sublayer: string;
  key: string;
  lockStaleMs: number;
  lockTimeoutMs?: number;
  /** Every fetcher run appends one line here. */
  counterFile: string;
  /** `stream`: the source file, slowly; `hang`: one chunk, then nothing ever; `throw`: fetchFn throws. */
  fetch: 'stream' | 'hang' | 'throw';
  source?: string;
  chunkBytes?: number;
  chunkDelayMs?: number;
  /** Wait for this file before calling getOrFetch, so that many children start together. */
  goFile?: string;
  /** After an error, stay alive until stdin closes. */
  lingerAfterError?: boolean;
}

interface ChildEvent {
  event: 'ready' | 'fetch-start' | 'fetch-running' | 'done' | 'error';
  at: number;
  pid: number;
  path?: string;
  sha256?: string;
  sizeBytes?: number;
  fetched?: boolean;
  startedAt?: number;
  name?: string;
  code?: string;
  message?: string;
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

class Child {
  readonly process: ChildProcessWithoutNullStreams;
  readonly events: ChildEvent[] = [];
  readonly exited: Promise<Exit>;
  #stderr = '';
  /** Exited and its output fully read. */
  #closed = false;
  #listeners = new Set<() => void>();

  constructor(config: ChildConfig) {
    this.process = spawn(process.execPath, [FIXTURE, JSON.stringify(config)], { stdio: 'pipe' });
    this.process.stderr.setEncoding('utf8').on('data', (text: string) => {
      this.#stderr += text;
    });
    readline.createInterface({ input: this.process.stdout }).on('line', (line) => {
      this.events.push(JSON.parse(line) as ChildEvent);
      for (const listener of this.#listeners) listener();
    });
    this.exited = new Promise((resolve) => {
      // 'close', not 'exit': by then every line of stdout has been read.
      this.process.on('close', (code, signal) => {
        this.#closed = true;
        resolve({ code, signal });
        for (const listener of this.#listeners) listener();
      });
    });
  }

  get running(): boolean {
    return this.process.exitCode === null && this.process.signalCode === null;
  }

  /** The first event of this kind; rejects if the child exits without it or it takes too long. */
  waitFor(event: ChildEvent['event'], timeoutMs = EVENT_TIMEOUT_MS): Promise<ChildEvent> {
    return new Promise((resolve, reject) => {
      const finish = (error?: Error) => {
        clearTimeout(timer);
        this.#listeners.delete(check);
        const found = this.events.find((e) => e.event === event);
        if (found) resolve(found);
        else
          reject(
            error ?? new Error(`child ${this.process.pid} gave no "${event}" event: ${this.describe()}`),
          );
      };
      const check = () => {
        if (this.events.some((e) => e.event === event) || this.#closed) finish();
      };
      const timer = setTimeout(
        () => finish(new Error(`no "${event}" event within ${timeoutMs} ms: ${this.describe()}`)),
        timeoutMs,
      );
      this.#listeners.add(check);
      check();
    });
  }

  describe(): string {
    const exit = this.running ? 'still running' : `exit ${this.process.exitCode ?? this.process.signalCode}`;
    return `${exit}; events ${JSON.stringify(this.events)}; stderr ${JSON.stringify(this.#stderr)}`;
  }
}

let work: string;
let root: string;
let counterFile: string;
const children = new Set<Child>();

function startChild(config: Omit<ChildConfig, 'root' | 'sublayer' | 'key' | 'counterFile'>): Child {
  const child = new Child({ root, sublayer: SUBLAYER, key: KEY, counterFile, ...config });
  children.add(child);
  return child;
}

/** Pseudo-random but reproducible bytes (xorshift32), so that two payloads never agree by accident. */
function makePayload(sizeBytes: number, seed: number): Buffer {
  const bytes = Buffer.alloc(sizeBytes);
  let state = seed >>> 0 || 1;
  for (let offset = 0; offset + 4 <= sizeBytes; offset += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes.writeUInt32LE(state >>> 0, offset);
  }
  return bytes;
}

function writeSource(name: string, bytes: Buffer): string {
  const file = path.join(work, name);
  fs.writeFileSync(file, bytes);
  return file;
}

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function sublayerDir(): string {
  return path.join(root, SUBLAYER);
}

function payloadPath(): string {
  return path.join(sublayerDir(), KEY);
}

function fetcherRuns(): string[] {
  if (!fs.existsSync(counterFile)) return [];
  return fs.readFileSync(counterFile, 'utf8').split('\n').filter(Boolean);
}

/** In-flight or orphaned tmp files and lock directories in the sublayer. */
function leftovers(): string[] {
  return fs.readdirSync(sublayerDir()).filter((name) => name.includes('.tmp.') || name.endsWith('.lock'));
}

function readManifest(): { size_bytes: number; sha256?: string } {
  return JSON.parse(fs.readFileSync(`${payloadPath()}.manifest.json`, 'utf8'));
}

beforeAll(() => {
  if (!fs.existsSync(BUILT_ENTRY)) throw new Error(`${BUILT_ENTRY} is missing: run \`npm run build\` first`);
});

beforeEach(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-mp-'));
  root = path.join(work, 'cache');
  counterFile = path.join(work, 'fetcher-runs.txt');
});

afterEach(async () => {
  const leftoverChildren = [...children].filter((child) => child.running);
  for (const child of leftoverChildren) child.process.kill('SIGKILL');
  await Promise.all(leftoverChildren.map((child) => child.exited));
  children.clear();
  fs.rmSync(work, { recursive: true, force: true });
});

describe('getOrFetch across processes', () => {
  it(
    'runs the fetcher once when 8 processes race on one cold key',
    async ({ annotate }) => {
      const payload = makePayload(4 * MiB, 0x5eed);
      const source = writeSource('source.bin', payload);
      const goFile = path.join(work, 'go');
      // 64 chunks, 15 ms apart: the download lasts about a second, so every racer arrives during it.
      const racers = Array.from({ length: 8 }, () =>
        startChild({
          lockStaleMs: 10_000,
          fetch: 'stream',
          source,
          chunkBytes: 64 * 1024,
          chunkDelayMs: 15,
          goFile,
        }),
      );
      await Promise.all(racers.map((child) => child.waitFor('ready')));
      fs.writeFileSync(goFile, '');

      const results = await Promise.all(racers.map((child) => child.waitFor('done')));
      const exits = await Promise.all(racers.map((child) => child.exited));

      expect(exits).toEqual(racers.map(() => ({ code: 0, signal: null })));
      expect(fetcherRuns()).toHaveLength(1);
      const fetcher = results.filter((result) => result.fetched);
      expect(fetcher).toHaveLength(1);
      const publishedAt = fetcher[0]?.at ?? 0;
      // Every racer called getOrFetch before the entry existed: none of them was a plain hit.
      for (const result of results) expect(result.startedAt).toBeLessThan(publishedAt);
      for (const result of results) {
        expect(result.path).toBe(payloadPath());
        expect(result.sha256).toBe(sha256(payload));
      }
      expect(leftovers()).toEqual([]);
      const startSpreadMs =
        Math.max(...results.map((r) => r.startedAt ?? 0)) - Math.min(...results.map((r) => r.startedAt ?? 0));
      await annotate(
        `racers started within ${startSpreadMs} ms; fetch took ${publishedAt - (fetcher[0]?.startedAt ?? 0)} ms`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'takes over the lock of a holder killed with SIGKILL within lockStaleMs + 1 s',
    async ({ annotate }) => {
      const lockStaleMs = 3_000;
      const bytesA = makePayload(1 * MiB, 0xa);
      const bytesB = makePayload(1 * MiB, 0xb);
      const holder = startChild({
        lockStaleMs,
        fetch: 'hang',
        source: writeSource('a.bin', bytesA),
        chunkBytes: 256 * 1024,
      });
      await holder.waitFor('fetch-running');
      // The holder is mid-download: its lock and a partly written tmp file are on disk.
      expect(fs.existsSync(`${payloadPath()}.lock`)).toBe(true);
      expect(leftovers().filter((name) => name.includes('.tmp.'))).toHaveLength(1);

      // The successor is loaded and waiting for the word before the kill: the time measured is the takeover's,
      // not node's start-up (seconds under Wine or on a loaded machine).
      const goFile = path.join(work, 'go-successor');
      const successor = startChild({
        lockStaleMs,
        fetch: 'stream',
        source: writeSource('b.bin', bytesB),
        goFile,
      });
      await successor.waitFor('ready');
      const killedAt = Date.now();
      holder.process.kill('SIGKILL');
      fs.writeFileSync(goFile, '');
      const lockTaken = await successor.waitFor('fetch-start');
      const done = await successor.waitFor('done');
      const takeoverMs = lockTaken.at - killedAt;

      expect(await holder.exited).toEqual({ code: null, signal: 'SIGKILL' });
      expect(await successor.exited).toEqual({ code: 0, signal: null });
      expect(done.fetched).toBe(true);
      expect(fetcherRuns()).toHaveLength(2);
      expect(takeoverMs).toBeLessThan(lockStaleMs + 1_000);
      // The entry holds B's exact bytes; A's partial tmp file (an orphan until swept) never became the payload.
      expect(done.sha256).toBe(sha256(bytesB));
      expect(sha256(fs.readFileSync(payloadPath()))).toBe(sha256(bytesB));
      expect(readManifest()).toMatchObject({ size_bytes: bytesB.length, sha256: sha256(bytesB) });
      expect(fs.existsSync(`${payloadPath()}.lock`)).toBe(false);
      await annotate(`takeover: the successor's fetch started ${takeoverMs} ms after the SIGKILL`);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'does not take over a live holder whose fetch lasts longer than lockStaleMs',
    async ({ annotate }) => {
      const lockStaleMs = 2_000;
      const bytesA = makePayload(1 * MiB, 0xc);
      // 16 chunks, 300 ms apart: about 5 s, well past lockStaleMs; the heartbeat alone keeps the lock. Both
      // processes are loaded before the holder starts, so that the waiter's start-up (seconds under Wine or
      // on a loaded machine) cannot outlast the holder's fetch.
      const holderGo = path.join(work, 'go-holder');
      const waiterGo = path.join(work, 'go-waiter');
      const holder = startChild({
        lockStaleMs,
        fetch: 'stream',
        source: writeSource('a.bin', bytesA),
        chunkBytes: 64 * 1024,
        chunkDelayMs: 300,
        goFile: holderGo,
      });
      const waiter = startChild({
        lockStaleMs,
        fetch: 'stream',
        source: writeSource('b.bin', makePayload(1 * MiB, 0xd)),
        goFile: waiterGo,
      });
      await Promise.all([holder.waitFor('ready'), waiter.waitFor('ready')]);
      fs.writeFileSync(holderGo, '');
      const fetchStart = await holder.waitFor('fetch-start');
      fs.writeFileSync(waiterGo, '');
      const [holderDone, waiterDone] = await Promise.all([holder.waitFor('done'), waiter.waitFor('done')]);

      expect(await holder.exited).toEqual({ code: 0, signal: null });
      expect(await waiter.exited).toEqual({ code: 0, signal: null });
      // The scenario really happened: the fetch outlasted two stale periods while the waiter waited.
      expect(holderDone.at - fetchStart.at).toBeGreaterThan(2 * lockStaleMs);
      expect(waiterDone.startedAt).toBeLessThan(holderDone.at);
      expect(waiterDone.fetched).toBe(false);
      expect(fetcherRuns()).toHaveLength(1);
      expect(waiterDone.path).toBe(payloadPath());
      expect(waiterDone.sha256).toBe(sha256(bytesA));
      expect(holderDone.sha256).toBe(sha256(bytesA));
      expect(leftovers()).toEqual([]);
      await annotate(
        `holder fetched for ${holderDone.at - fetchStart.at} ms; waiter waited ${waiterDone.at - (waiterDone.startedAt ?? 0)} ms`,
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'releases the lock when the fetcher throws, so the next process gets it at once',
    async ({ annotate }) => {
      const lockStaleMs = 10_000;
      const bytesB = makePayload(1 * MiB, 0xe);
      // The failed writer stays alive: a lock it left behind could not be taken over as a dead pid's.
      const failing = startChild({ lockStaleMs, fetch: 'throw', lingerAfterError: true });
      const failure = await failing.waitFor('error');
      expect(failure).toMatchObject({ name: 'Error', message: 'fetcher failed on purpose' });
      expect(failing.running).toBe(true);
      expect(leftovers()).toEqual([]);

      const next = startChild({ lockStaleMs, fetch: 'stream', source: writeSource('b.bin', bytesB) });
      const done = await next.waitFor('done');
      const elapsedMs = done.at - (done.startedAt ?? 0);

      expect(done.fetched).toBe(true);
      expect(done.sha256).toBe(sha256(bytesB));
      expect(elapsedMs).toBeLessThan(1_500);
      expect(fetcherRuns()).toHaveLength(2);
      expect(await next.exited).toEqual({ code: 0, signal: null });
      failing.process.stdin.end();
      expect(await failing.exited).toEqual({ code: 1, signal: null });
      expect(leftovers()).toEqual([]);
      await annotate(`next process got the lock and published in ${elapsedMs} ms`);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'processes writing into one full sublayer leave exactly keepN entries once they have exited, each entry evicted once',
    async () => {
      const writers = 4;
      const keysEach = 15;
      const keepN = 10;
      // Each child writes its keys one after another and then simply ends, never waiting for eviction: its
      // last passes run in the background and Node keeps the process alive until they are done. The exit
      // handler reports what its passes removed (synchronously: nothing may run after it).
      const script = `
        import fs from 'node:fs';
        const { CacheManager } = await import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)});
        const [root, writer] = process.argv.slice(1);
        const cache = new CacheManager({ sublayer: ${JSON.stringify(SUBLAYER)}, ttl: 60_000, root,
          keepN: ${keepN}, touchIntervalMs: 0, evictionGraceMs: 0 });
        process.on('exit', () => fs.writeSync(1, JSON.stringify({ evictions: cache.stats().evictions })));
        for (let index = 0; index < ${keysEach}; index += 1)
          await cache.getOrFetch(\`w\${writer}-\${index}\`, () => 'payload of ' + writer + '-' + index);
      `;
      const runs = Array.from({ length: writers }, (_, writer) => {
        const child = spawn(process.execPath, ['--input-type=module', '-e', script, root, String(writer)], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (chunk) => {
          stdout += chunk;
        });
        child.stderr.on('data', (chunk) => {
          stderr += chunk;
        });
        return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
          child.on('close', (code) => resolve({ code, stdout, stderr })),
        );
      });
      const results = await Promise.all(runs);
      for (const result of results) expect(result).toMatchObject({ code: 0, stderr: '' });
      const names = fs.readdirSync(path.join(root, SUBLAYER));
      expect(names.filter((name) => name.endsWith('.manifest.json'))).toHaveLength(keepN);
      expect(names.filter((name) => !name.endsWith('.manifest.json'))).toHaveLength(keepN);
      const evictions = results.map((result) => JSON.parse(result.stdout).evictions as number);
      expect(evictions.reduce((sum, count) => sum + count, 0)).toBe(writers * keysEach - keepN);
    },
    TEST_TIMEOUT_MS,
  );
});
