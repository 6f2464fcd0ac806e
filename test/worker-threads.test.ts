import { createHash } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDirs } from './helpers.js';

// "Many threads": worker threads each load their own copy of the library, so they share no in-process
// flight; the key's lock makes them share one fetch all the same. The workers import the built dist/.

const FIXTURE = new URL('./fixtures/worker-get-or-fetch.mjs', import.meta.url);
afterEach(removeTempDirs);

describe.skipIf(!existsSync(new URL('../dist/index.js', import.meta.url)))('worker threads', () => {
  it('4 worker threads racing on one cold key run the fetcher once and all read the same bytes', async () => {
    const root = await makeTempDir('payload-cache-threads-');
    const marks = path.join(root, 'marks');
    await fsp.mkdir(marks);
    const results = await Promise.all(
      Array.from(
        { length: 4 },
        () =>
          new Promise<{ returned: string; sha256: string }>((resolve, reject) => {
            const worker = new Worker(FIXTURE, { workerData: { root, key: 'shared.bin', marks } });
            worker.once('message', resolve);
            worker.once('error', reject);
          }),
      ),
    );
    expect(await fsp.readdir(marks)).toHaveLength(1);
    const expected = createHash('sha256')
      .update(Buffer.alloc(256 * 1024, 7))
      .digest('hex');
    for (const result of results) {
      expect(result.returned).toBe(path.join(root, 'threads', 'shared.bin'));
      expect(result.sha256).toBe(expected);
    }
  });
});
