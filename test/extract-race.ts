import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildZip } from './archive-builders.js';
import { patternBytes, sha256 } from './helpers.js';

/**
 * N node processes racing for one new archive through `getOrExtract` (test/fixtures/get-or-extract.mjs,
 * which imports the built library): they load the library, wait for one go signal, then call it together.
 * Process i uses `roots[i % roots.length]`, so two mounts of one network directory race each other.
 */

const FIXTURE = fileURLToPath(new URL('./fixtures/get-or-extract.mjs', import.meta.url));

export interface RacerResult {
  event: 'done' | 'error';
  pid: number;
  path?: string;
  /** `relative path -> sha256` of every file under the returned directory. */
  files?: Record<string, string>;
  fetched?: boolean;
  /** Outcomes this process reported on the `payload-cache:extract` channel. */
  extractions?: string[];
  message?: string;
}

export interface ExtractRace {
  results: RacerResult[];
  /** Fetcher runs, all processes together. */
  fetches: number;
  /** `relative path -> sha256` of the archive's files: what every racer must have been served. */
  expected: Record<string, string>;
}

export async function runExtractRace(options: {
  work: string;
  roots: readonly string[];
  processes: number;
  sublayer: string;
  key: string;
}): Promise<ExtractRace> {
  const { work, roots, processes, sublayer, key } = options;
  const files = Object.fromEntries(
    Array.from({ length: 50 }, (_, index) => [`data/part-${index}.csv`, patternBytes(20_000, index + 1)]),
  );
  const source = path.join(work, 'source.zip');
  await fsp.writeFile(source, buildZip(Object.entries(files).map(([name, content]) => ({ name, content }))));
  const counterFile = path.join(work, 'fetches.txt');
  const goFile = path.join(work, 'go');
  const racers = Array.from({ length: processes }, (_, index) =>
    runRacer({
      root: roots[index % roots.length],
      sublayer,
      key,
      source,
      counterFile,
      goFile,
      chunkDelayMs: 5,
    }),
  );
  // Loading node and the library takes a moment; the go file starts them together.
  await new Promise((resolve) => setTimeout(resolve, 300));
  await fsp.writeFile(goFile, '');
  const results = await Promise.all(racers);
  const fetches = (await fsp.readFile(counterFile, 'utf8').catch(() => ''))
    .trim()
    .split('\n')
    .filter(Boolean);
  const expected = Object.fromEntries(
    Object.entries(files).map(([name, content]) => [name, sha256(content)]),
  );
  return { results, fetches: fetches.length, expected };
}

function runRacer(config: Record<string, unknown>): Promise<RacerResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FIXTURE, JSON.stringify(config)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => {
      stdout += text;
    });
    child.stderr.setEncoding('utf8').on('data', (text: string) => {
      stderr += text;
    });
    child.on('error', reject);
    child.on('close', () => {
      const line = stdout.trim().split('\n').pop();
      if (!line) return reject(new Error(`racer printed nothing; stderr: ${stderr}`));
      resolve(JSON.parse(line) as RacerResult);
    });
  });
}
