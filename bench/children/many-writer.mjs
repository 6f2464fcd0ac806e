// One of the many writers (bench/many-writers.mjs): stores `count` distinct keys of `sizeBytes` each, as
// fast as it can, from the common start instant. argv[2]: JSON { contender, dir, writer, count, sizeBytes,
// keepN }. Reports { type: 'ready' }, then { type: 'done', doneAtNs }.
import fs, { promises as fsp } from 'node:fs';
import path from 'node:path';
import { distUrl, waitUntil } from '../lib/common.mjs';
import { payloadFor } from '../lib/many-writers.mjs';

const { contender, dir, writer, count, sizeBytes, keepN } = JSON.parse(process.argv[2]);

async function makeStore() {
  switch (contender) {
    case 'ours': {
      const { CacheManager } = await import(distUrl('index.js'));
      // In-use window 0, so that every entry but the newest keepN may go (as in the scale row).
      const cache = new CacheManager({
        sublayer: 'many',
        root: dir,
        ttl: Number.POSITIVE_INFINITY,
        keepN,
        touchIntervalMs: 0,
        evictionGraceMs: 0,
      });
      return (key, bytes) => cache.getOrFetch(key, () => bytes);
    }
    case 'floor':
      // tmp file + fsync + rename + directory fsync, by hand: what any atomic write must do.
      return async (key, bytes) => {
        const target = path.join(dir, key);
        const tmp = `${target}.tmp-${process.pid}`;
        await fsp.writeFile(tmp, bytes, { flag: 'wx', flush: true });
        await fsp.rename(tmp, target);
        const handle = await fsp.open(dir, 'r');
        await handle.sync();
        await handle.close();
      };
    case 'cacache': {
      const { default: cacache } = await import('cacache');
      return (key, bytes) => cacache.put(path.join(dir, 'cacache'), key, bytes);
    }
    default:
      throw new Error(`unknown contender ${contender}`);
  }
}

fs.mkdirSync(dir, { recursive: true });
const store = await makeStore();
const keys = Array.from({ length: count }, (_, index) => `w${writer}-k${index}.bin`);
const payloads = keys.map((key) => payloadFor(key, sizeBytes));
process.send({ type: 'ready' });
const { atNs } = await new Promise((resolve) => process.once('message', resolve));
await waitUntil(BigInt(atNs));
for (let index = 0; index < count; index++) await store(keys[index], payloads[index]);
process.send({ type: 'done', doneAtNs: process.hrtime.bigint().toString() });
process.disconnect();
