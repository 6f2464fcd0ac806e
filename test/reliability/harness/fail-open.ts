import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { failOpenSha256, identifyPayload, type PayloadIdentity } from '../fixtures/fail-open-payload.mjs';
import { type ChildEvent, JsonLinesChild, killChildren, within } from './json-lines-child.js';

/**
 * Scenario 3, the lock fails open (DESIGN.md principle 1): every child runs with
 * PAYLOAD_CACHE_TEST_LOCK_FAIL_OPEN=1, so each lock attempt succeeds at once and several writers publish
 * the same key at the same moment, round after round, while readers loop on get(). Each writer's payload
 * is different but of the same size and names itself in every 64-byte block (fixtures/fail-open-payload.mjs),
 * so torn or mixed bytes cannot pass a size check unnoticed. The harness measures and reports, it asserts
 * nothing; the test states what must hold.
 */

const FIXTURE = fileURLToPath(new URL('../fixtures/fail-open-child.mjs', import.meta.url));
const KEY = 'payload.bin';
const MiB = 1024 * 1024;
// 1 MiB in 64 KiB pieces 2 ms apart: each write streams for ~30 ms, and the start jitter below is shorter,
// so the writers of a round overlap and their commits interleave.
const DEFAULT_PAYLOAD_BYTES = 1 * MiB;
const DEFAULT_CHUNK_BYTES = 64 * 1024;
const DEFAULT_CHUNK_DELAY_MS = 2;
const START_JITTER_MS = 10;
// Starting node on two busy cores can take seconds; a step that takes this long is stuck.
const DEFAULT_STEP_TIMEOUT_MS = 60_000;

export interface FailOpenOptions {
  /** Process i (writers first, then readers) uses `roots[i % roots.length]`. */
  roots: string[];
  writers: number;
  readers: number;
  rounds: number;
  /** A multiple of 64; default 1 MiB. */
  payloadBytes?: number;
  chunkBytes?: number;
  chunkDelayMs?: number;
  stepTimeoutMs?: number;
}

/** The key as found once every writer of a round has returned. */
export interface FailOpenRound {
  round: number;
  /** Whose payload the payload path holds, or what is wrong with it. */
  payload: PayloadIdentity | { ok: false; reason: string };
  /** `withdrawn`: none (a writer saw its payload replaced and withdrew its manifest: a miss, not a lie). */
  manifest: 'matches' | 'mismatch' | 'withdrawn' | 'invalid';
  /** At least two writers were inside getOrFetch at once (they could only be with the lock open). */
  writersOverlapped: boolean;
  /** Writers that found another writer's payload at the path getOrFetch returned them. */
  writersReadOthers: number;
}

export interface FailOpenResult {
  processes: number;
  rounds: FailOpenRound[];
  writerReads: number;
  readerReads: number;
  readerMisses: number;
  bytesVerified: number;
  /** Reads (by a writer or a reader) of a path that did not hold one writer's complete payload. */
  badReads: string[];
  /** Writers that read, at the path just returned to them, a payload of another round. */
  staleWriterReads: string[];
  /** After a round: a valid manifest whose size or sha256 is not the payload's, or a broken payload. */
  roundMismatches: string[];
  writerErrors: string[];
  /**
   * Windows only: writers that could not rename over the payload because a reader held it open past the
   * retries (`ERR_FILE_BUSY`, the previous entry kept). A promised outcome there, not an error.
   */
  busyWriters: string[];
  /** Tmp files and lock directories in the sublayer at the end. */
  leftovers: string[];
  roundsWithOverlap: number;
  roundsWithoutManifest: number;
}

interface WriterDone extends ChildEvent {
  round: number;
  path: string;
  startedAt: string;
  returnedAt: string;
  found: PayloadIdentity;
}

/** Runs scenario 3 and reports what it found; kills and awaits every child it started, whatever happens. */
export async function runLockFailsOpen(options: FailOpenOptions): Promise<FailOpenResult> {
  if (options.roots.length === 0) throw new Error('runLockFailsOpen needs at least one root');
  const sizeBytes = options.payloadBytes ?? DEFAULT_PAYLOAD_BYTES;
  const stepTimeoutMs = options.stepTimeoutMs ?? DEFAULT_STEP_TIMEOUT_MS;
  const sublayer = `fail-open-${randomBytes(4).toString('hex')}`;
  const rootOf = (i: number) => options.roots[i % options.roots.length] as string;
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('PAYLOAD_CACHE_TEST_')) env[name] = value;
  }
  env.PAYLOAD_CACHE_TEST_LOCK_FAIL_OPEN = '1';
  const common = {
    sublayer,
    key: KEY,
    sizeBytes,
    chunkBytes: options.chunkBytes ?? DEFAULT_CHUNK_BYTES,
    chunkDelayMs: options.chunkDelayMs ?? DEFAULT_CHUNK_DELAY_MS,
    startJitterMs: START_JITTER_MS,
    rounds: options.rounds,
  };
  const writers = Array.from(
    { length: options.writers },
    (_, i) => new JsonLinesChild(FIXTURE, { ...common, mode: 'writer', index: i, root: rootOf(i) }, env),
  );
  const readers = Array.from({ length: options.readers }, (_, j) => {
    const i = options.writers + j;
    return new JsonLinesChild(FIXTURE, { ...common, mode: 'reader', index: i, root: rootOf(i) }, env);
  });
  const children = [...writers, ...readers];

  const result: FailOpenResult = {
    processes: children.length,
    rounds: [],
    writerReads: 0,
    readerReads: 0,
    readerMisses: 0,
    bytesVerified: 0,
    badReads: [],
    staleWriterReads: [],
    roundMismatches: [],
    writerErrors: [],
    busyWriters: [],
    leftovers: [],
    roundsWithOverlap: 0,
    roundsWithoutManifest: 0,
  };
  try {
    await Promise.all(readers.map((reader) => reader.waitFor(is('ready'), stepTimeoutMs, 'ready')));
    for (let round = 0; round < options.rounds; round++) {
      const atRound = (event: ChildEvent) => event.round === round;
      await Promise.all(
        writers.map((writer) =>
          writer.waitFor((e) => e.event === 'ready' && atRound(e), stepTimeoutMs, `ready for round ${round}`),
        ),
      );
      for (const writer of writers) writer.send(`go ${round}`);
      const answers = await Promise.all(
        writers.map((writer) =>
          writer.waitFor(
            (e) => (e.event === 'done' || e.event === 'error') && atRound(e),
            stepTimeoutMs,
            `round ${round} done`,
          ),
        ),
      );
      const done: WriterDone[] = [];
      for (const [i, answer] of answers.entries()) {
        const described = `writer ${i}, round ${round}: ${JSON.stringify(answer)}`;
        if (answer.event === 'done') done.push(answer as WriterDone);
        else if (process.platform === 'win32' && answer.code === 'ERR_FILE_BUSY')
          result.busyWriters.push(described);
        else result.writerErrors.push(described);
      }
      result.rounds.push(checkRound(round, done, sizeBytes, path.join(rootOf(0), sublayer), result));
    }

    for (const reader of readers) reader.send('stop');
    const summaries = await within(
      Promise.all(readers.map((reader) => reader.waitFor(is('summary'), stepTimeoutMs, 'summary'))),
      stepTimeoutMs,
      () => 'readers did not stop',
    );
    for (const summary of summaries) {
      result.readerReads += Number(summary.reads);
      result.readerMisses += Number(summary.misses);
      result.bytesVerified += Number(summary.bytesVerified);
    }
    for (const reader of readers) {
      for (const bad of reader.events.filter(is('bad'))) {
        result.badReads.push(`reader ${reader.pid}: ${bad.path}: ${bad.reason}`);
      }
    }
    await within(
      Promise.all(children.map((child) => child.exited)),
      stepTimeoutMs,
      () => 'children did not exit',
    );

    const names = fs.readdirSync(path.join(rootOf(0), sublayer));
    result.leftovers = names.filter((name) => name.includes('.tmp.') || name.endsWith('.lock')).sort();
    return result;
  } finally {
    await killChildren(children);
  }
}

/** What the writers of one round got, and the key as they left it. */
function checkRound(
  round: number,
  done: WriterDone[],
  sizeBytes: number,
  dir: string,
  result: FailOpenResult,
): FailOpenRound {
  let writersReadOthers = 0;
  for (const answer of done) {
    const { found } = answer;
    if (!found.ok) {
      result.badReads.push(`writer ${answer.index}, round ${round}: ${answer.path}: ${found.reason}`);
      continue;
    }
    result.writerReads += 1;
    result.bytesVerified += sizeBytes;
    if (found.round !== round) {
      result.staleWriterReads.push(
        `writer ${answer.index}, round ${round}: read w${found.writer} r${found.round}`,
      );
    }
    if (found.writer !== answer.index) writersReadOthers += 1;
  }

  const payload = readPayload(path.join(dir, KEY), sizeBytes);
  if (payload.ok) {
    result.bytesVerified += sizeBytes;
    // Every writer of the round busy (Windows): the previous round's entry is what must be left.
    const expectedRound = done.length > 0 ? round : undefined;
    if (expectedRound === undefined ? payload.round >= round : payload.round !== round) {
      result.roundMismatches.push(`after round ${round} the payload is w${payload.writer} r${payload.round}`);
    }
  } else result.roundMismatches.push(`after round ${round} the payload is broken: ${payload.reason}`);

  const manifest = readManifestVerdict(path.join(dir, `${KEY}.manifest.json`), payload, sizeBytes);
  if (manifest === 'mismatch' || manifest === 'invalid') {
    result.roundMismatches.push(`after round ${round} the manifest is ${manifest} for the payload beside it`);
  }
  if (manifest === 'withdrawn') result.roundsWithoutManifest += 1;

  // Two writers were inside getOrFetch at once: only an open lock lets that happen.
  const spans = done
    .map((d) => [BigInt(d.startedAt), BigInt(d.returnedAt)] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const writersOverlapped = spans.some((span, i) => i > 0 && span[0] < (spans[i - 1]?.[1] ?? 0n));
  if (writersOverlapped) result.roundsWithOverlap += 1;
  return { round, payload, manifest, writersOverlapped, writersReadOthers };
}

function readPayload(file: string, sizeBytes: number): FailOpenRound['payload'] {
  try {
    return identifyPayload(fs.readFileSync(file), sizeBytes);
  } catch (error) {
    return { ok: false, reason: `unreadable: ${(error as NodeJS.ErrnoException).code ?? String(error)}` };
  }
}

function readManifestVerdict(
  file: string,
  payload: FailOpenRound['payload'],
  sizeBytes: number,
): FailOpenRound['manifest'] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return 'withdrawn';
  }
  try {
    const manifest = JSON.parse(text) as { size_bytes?: unknown; sha256?: unknown };
    if (typeof manifest.sha256 !== 'string' || !Number.isInteger(manifest.size_bytes)) return 'invalid';
    if (!payload.ok) return 'mismatch';
    const payloadSha = failOpenSha256(payload.writer, payload.round, sizeBytes);
    return manifest.sha256 === payloadSha && manifest.size_bytes === sizeBytes ? 'matches' : 'mismatch';
  } catch {
    return 'invalid';
  }
}

function is(...events: string[]) {
  return (event: ChildEvent) => events.includes(event.event);
}
