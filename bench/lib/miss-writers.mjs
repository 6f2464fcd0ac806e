// The miss-path contenders: each stores `size` bytes from the payload stream under a key in `dir`.
import fs, { promises as fsp } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { distUrl } from './common.mjs';
import { payloadStream } from './payload-stream.mjs';

/** Each contender's "store `sizeBytes` from a stream under `key`", resolving to the stored file's path. */
export async function makeWriter(contender, dir) {
  switch (contender) {
    case 'ours': {
      const { CacheManager } = await import(distUrl('index.js'));
      const cache = new CacheManager({ sublayer: 'miss', ttl: Number.POSITIVE_INFINITY, root: dir });
      return (k, size) => cache.getOrFetch(k, () => payloadStream(size));
    }
    case 'floor':
      // createWriteStream + fsync (the stream's `flush`) + rename + directory fsync, by hand.
      return async (k, size) => {
        const target = path.join(dir, k);
        const tmp = `${target}.tmp-${process.pid}`;
        await pipeline(payloadStream(size), fs.createWriteStream(tmp, { flags: 'wx', flush: true }));
        await fsp.rename(tmp, target);
        const dirHandle = await fsp.open(dir, 'r');
        await dirHandle.sync();
        await dirHandle.close();
        return target;
      };
    case 'cacache': {
      const { default: cacache } = await import('cacache');
      const cacheDir = path.join(dir, 'cacache');
      return async (k, size) => {
        await pipeline(payloadStream(size), cacache.put.stream(cacheDir, k));
        const info = await cacache.get.info(cacheDir, k);
        return info.path;
      };
    }
    case 'write-file-atomic': {
      // Buffered: write-file-atomic takes the whole payload at once. A cache built on it also writes a
      // small metadata file (the one its hit path reads).
      const { default: writeFileAtomic } = await import('write-file-atomic');
      return async (k, size) => {
        const chunks = [];
        for await (const chunk of payloadStream(size)) chunks.push(chunk);
        const target = path.join(dir, k);
        await writeFileAtomic(target, Buffer.concat(chunks));
        await writeFileAtomic(`${target}.json`, JSON.stringify({ key: k, size, createdAt: Date.now() }));
        return target;
      };
    }
    default:
      throw new Error(`unknown contender ${contender}`);
  }
}
