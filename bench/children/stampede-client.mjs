// One of the stampede's processes: waits for the common start time on the shared monotonic clock, then
// calls getOrFetch on the cold key with a fetcher that takes `fetchMs`. Every fetcher run appends a line
// to the counter file (opened with 'a'), so the parent counts fetches across processes.
// argv[2]: JSON { root, key, counterFile, fetchMs, payloadBytes }. IPC: parent sends { type: 'start', atNs };
// the child answers { type: 'ready' } once imported, then { type: 'done', doneAtNs, fetchStartNs, path, fetched }.
import fs from 'node:fs';
import { distUrl, sleep, waitUntil } from '../lib/common.mjs';

const { root, key, counterFile, fetchMs, payloadBytes } = JSON.parse(process.argv[2]);
const { CacheManager } = await import(distUrl('index.js'));
const cache = new CacheManager({ sublayer: 'stampede', ttl: Number.POSITIVE_INFINITY, root });
const payload = Buffer.alloc(payloadBytes, 1);
let fetched = false;
let fetchStartNs;

const fetcher = async () => {
  fetched = true;
  fetchStartNs = process.hrtime.bigint();
  fs.appendFileSync(counterFile, `${process.pid}\n`, { flag: 'a' });
  await sleep(fetchMs);
  return payload;
};

process.once('message', async ({ atNs }) => {
  await waitUntil(BigInt(atNs));
  const servedPath = await cache.getOrFetch(key, fetcher);
  const doneAtNs = process.hrtime.bigint();
  process.send({
    type: 'done',
    doneAtNs: doneAtNs.toString(),
    fetchStartNs: fetchStartNs?.toString(),
    path: servedPath,
    fetched,
  });
  process.disconnect();
});
process.send({ type: 'ready' });
