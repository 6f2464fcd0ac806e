// npm run demo: payload-cache end to end, offline. A loopback HTTP server serves a generated ~50 MB zip;
// the demo downloads it through a CacheManager (a miss, with progress), asks again (a hit), extracts it
// with getOrExtract (no second download), then races four separate node processes on a new key and shows
// that one download served all of them.
// Nothing leaves 127.0.0.1; the cache lives in a temporary directory that is removed at the end.
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { CacheManager, httpFetcher } from 'payload-cache';
import { Agent } from 'undici';
import { buildDataset } from './dataset.mjs';
import { createProgress, formatBytes, formatMs } from './progress.mjs';
import { startServer } from './server.mjs';
import { readZip } from './zip.mjs';

const PAYLOAD_BYTES = 50 * 1024 * 1024;
// Loopback would deliver 50 MB in a blink; a cap of 50 MiB/s makes each download last about a second, long
// enough to watch the progress and for the racing processes to really wait on each other.
const BYTES_PER_SECOND = 50 * 1024 * 1024;
const RACERS = 4;
const SUBLAYER = 'imf-weo';
const MISS_KEY = 'weo_april_2024.zip';
const RACE_KEY = 'weo_october_2024.zip';
const racerScript = fileURLToPath(new URL('./racer.mjs', import.meta.url));

const failures = [];
const check = (ok, message) => {
  if (!ok) failures.push(message);
  return ok;
};
const plural = (count, noun) => `${count} ${noun}${count === 1 ? '' : 's'}`;
const children = new Set();
const cleanups = [];

async function main() {
  const totalStartedAt = performance.now();
  console.log(`payload-cache demo (node ${process.version})\n`);

  let startedAt = performance.now();
  const dataset = buildDataset(PAYLOAD_BYTES);
  console.log(
    `Generated a ${formatBytes(dataset.zip.length)} zip (stored, ${dataset.files.length} files) in ${formatMs(performance.now() - startedAt)}`,
  );
  console.log(`  sha256 ${dataset.sha256}`);

  const etag = `"${dataset.sha256.slice(0, 16)}"`;
  const server = await startServer({
    payload: dataset.zip,
    etag,
    lastModified: dataset.lastModified,
    bytesPerSecond: BYTES_PER_SECOND,
  });
  cleanups.push(() => server.close());
  console.log(
    `Serving it at ${server.origin}/data/<name>.zip (Content-Length, ETag ${etag}, Accept-Ranges: bytes, ` +
      `capped at ${formatBytes(BYTES_PER_SECOND)}/s)`,
  );

  const root = await mkdtemp(path.join(os.tmpdir(), 'payload-cache-demo-'));
  cleanups.push(() => rm(root, { recursive: true, force: true }));
  // A plain Agent, not the default EnvHttpProxyAgent: the demo must not go through a proxy.
  const dispatcher = new Agent();
  cleanups.push(() => dispatcher.close());
  const cache = new CacheManager({ root, sublayer: SUBLAYER, ttl: 60 * 60_000 });
  console.log(`Cache root ${root} (temporary), sublayer "${SUBLAYER}"\n`);

  // 1. A miss: the bytes stream from the server into a tmp file, are checked and published.
  const missPath = `/data/${MISS_KEY}`;
  console.log(`1. getOrFetch("${MISS_KEY}"): a miss, so it downloads`);
  const progress = createProgress();
  startedAt = performance.now();
  const zipPath = await cache.getOrFetch(
    MISS_KEY,
    httpFetcher(`${server.origin}${missPath}`, { dispatcher, onProgress: progress.onProgress }),
  );
  const missMs = performance.now() - startedAt;
  progress.stop();
  console.log(`   miss: ${formatMs(missMs)} -> ${zipPath}`);
  const archive = await readFile(zipPath);
  const entries = readZip(archive);
  const [entry] = await cache.list();
  check(entry?.sha256 === dataset.sha256, 'the manifest sha256 differs from the served zip');
  check(
    entries.every((e) => e.crcOk),
    'a zip entry failed its CRC-32 check',
  );
  console.log(
    `   manifest sha256 ${entry?.sha256} (${entry?.sha256 === dataset.sha256 ? 'matches' : 'DIFFERS'})`,
  );
  console.log(`   a real zip: ${entries.map((e) => `${e.name} ${formatBytes(e.size)}`).join(', ')}`);
  console.log(
    `   every CRC-32 ${entries.every((e) => e.crcOk) ? 'OK' : 'BAD'}; server requests so far: ${server.requests(missPath)}\n`,
  );

  // 2. A hit: one lstat and one manifest read, no lock, no hashing, no request.
  console.log(`2. getOrFetch("${MISS_KEY}") again: a hit`);
  let fetchedOnHit = false;
  startedAt = performance.now();
  const hitPath = await cache.getOrFetch(MISS_KEY, () => {
    fetchedOnHit = true;
    throw new Error('a hit must not fetch');
  });
  const hitMs = performance.now() - startedAt;
  check(!fetchedOnHit && hitPath === zipPath, 'the second call was not a hit');
  check(
    server.requests(missPath) === 1,
    `the hit reached the server (${server.requests(missPath)} requests)`,
  );
  console.log(`   hit: ${formatMs(hitMs)} -> same path; server requests still ${server.requests(missPath)}`);
  console.log(`   ${Math.round(missMs / hitMs).toLocaleString('en-US')}x faster than the miss\n`);

  // 3. The same archive extracted: no request (the zip is a fresh entry), one rename publishes the tree.
  console.log(`3. getOrExtract("${MISS_KEY}"): the zip already cached, extracted`);
  startedAt = performance.now();
  const extractedDir = await cache.getOrExtract(
    MISS_KEY,
    httpFetcher(`${server.origin}${missPath}`, { dispatcher }),
  );
  const extractMs = performance.now() - startedAt;
  console.log(`   extracted: ${formatMs(extractMs)} -> ${extractedDir}`);
  let filesOk = 0;
  for (const zipEntry of entries) {
    const extracted = path.join(extractedDir, zipEntry.name);
    const sizeOk = (await stat(extracted)).size === zipEntry.size;
    if (sizeOk && crc32(await readFile(extracted)) === zipEntry.crc) filesOk += 1;
  }
  check(filesOk === entries.length, `${entries.length - filesOk} extracted file(s) differ from the zip's`);
  check(server.requests(missPath) === 1, 'extracting the cached zip downloaded it again');
  startedAt = performance.now();
  const extractedAgain = await cache.getOrExtract(MISS_KEY, () => {
    throw new Error('an extraction hit must not fetch');
  });
  const extractHitMs = performance.now() - startedAt;
  check(extractedAgain === extractedDir, 'the second getOrExtract was not a hit');
  console.log(
    `   ${filesOk} of ${entries.length} files match the zip's sizes and CRC-32s; server requests still ` +
      `${server.requests(missPath)}; asked again: a hit in ${formatMs(extractHitMs)}\n`,
  );

  // 4. A stampede: separate processes, one lock per key, one download.
  const racePath = `/data/${RACE_KEY}`;
  console.log(`4. ${RACERS} node processes call getOrFetch("${RACE_KEY}") at the same moment`);
  const results = await race(root, `${server.origin}${racePath}`);
  const raceRequests = server.requests(racePath);
  for (const r of results) {
    if (r.error) {
      console.log(`   pid ${r.pid}: FAILED ${r.error}`);
      continue;
    }
    const role = r.downloaded ? 'downloaded  ' : 'waited, read';
    console.log(
      `   pid ${String(r.pid).padEnd(7)} ${role} ${formatMs(r.ms).padStart(9)}  sha256 ${r.sha256}`,
    );
  }
  const ok = results.filter((r) => !r.error);
  const downloaders = ok.filter((r) => r.downloaded).length;
  const sameBytes = ok.length === RACERS && ok.every((r) => r.sha256 === dataset.sha256);
  check(ok.length === RACERS, `${RACERS - ok.length} racing process(es) failed`);
  check(raceRequests === 1, `the race made ${raceRequests} requests, not 1`);
  check(downloaders === 1, `${downloaders} processes downloaded, not 1`);
  check(sameBytes, 'a racing process read bytes that differ from the served zip');
  console.log(
    `   server requests for ${racePath}: ${raceRequests}; processes that downloaded: ${downloaders}; ` +
      `every sha256 equals the served zip: ${sameBytes ? 'yes' : 'NO'}\n`,
  );

  const listed = await cache.list();
  console.log('Summary');
  console.log(
    `  payload          ${formatBytes(dataset.zip.length)} zip, sha256 ${dataset.sha256.slice(0, 16)}...`,
  );
  console.log(`  miss             ${formatMs(missMs)} (1 request)`);
  console.log(`  hit              ${formatMs(hitMs)} (0 requests)`);
  console.log(
    `  extraction       ${formatMs(extractMs)} (0 requests), then a hit in ${formatMs(extractHitMs)}`,
  );
  console.log(
    `  ${RACERS}-process race   ${plural(raceRequests, 'request')}, ${plural(downloaders, 'download')}, ` +
      `${ok.length} processes served ` +
      `(slowest ${formatMs(Math.max(...ok.map((r) => r.ms)))})`,
  );
  console.log(`  cache entries    ${listed.map((e) => `${e.key} (${formatBytes(e.sizeBytes)})`).join(', ')}`);
  console.log(`  total            ${formatMs(performance.now() - totalStartedAt)}`);
}

/** Forks the racers, waits until every one has loaded the library, then starts them together. */
async function race(root, url) {
  const racers = Array.from({ length: RACERS }, () => {
    const child = fork(racerScript, [root, SUBLAYER, RACE_KEY, url], { stdio: 'inherit' });
    children.add(child);
    child.once('exit', () => children.delete(child));
    const ready = new Promise((resolve, reject) => {
      child.once('message', resolve);
      child.once('exit', (code) =>
        reject(new Error(`racer ${child.pid} exited with ${code} before it was ready`)),
      );
    });
    return { child, ready };
  });
  await Promise.all(racers.map((r) => r.ready));
  const results = racers.map(async ({ child }) => {
    const exited = once(child, 'exit');
    const [result] = await Promise.race([
      once(child, 'message'),
      exited.then(([code]) => [{ pid: child.pid, error: `exited with ${code} before reporting` }]),
    ]);
    await exited;
    return result;
  });
  for (const { child } of racers) child.send('go');
  return Promise.all(results);
}

async function cleanUp() {
  for (const child of children) child.kill();
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
}

process.once('SIGINT', () => {
  void cleanUp().then(() => process.exit(130));
});

try {
  await main();
  if (failures.length > 0) {
    console.log(`\nFAILED:\n${failures.map((f) => `  - ${f}`).join('\n')}`);
    process.exitCode = 1;
  }
} catch (error) {
  console.error('\ndemo failed:', error);
  process.exitCode = 1;
} finally {
  await cleanUp();
}
