// The body every miss-path contender receives: a Node Readable of 64 KiB chunks generated in memory.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';

export const CHUNK_BYTES = 64 * 1024;
const PATTERN_CHUNKS = 16;

/** 16 distinct 64 KiB blocks derived from a fixed seed: the same bytes in every process and every run. */
function makePattern() {
  const blocks = [];
  let seed = Buffer.from('payload-cache bench');
  for (let i = 0; i < PATTERN_CHUNKS; i++) {
    const block = Buffer.allocUnsafe(CHUNK_BYTES);
    for (let offset = 0; offset < CHUNK_BYTES; offset += 32) {
      seed = createHash('sha256').update(seed).digest();
      seed.copy(block, offset);
    }
    blocks.push(block);
  }
  return blocks;
}
const pattern = makePattern();

/**
 * A Readable yielding `sizeBytes` in 64 KiB chunks. Each chunk is a fresh allocation, as a network
 * stream's would be, so that a consumer keeping chunks pays for them and one writing them out does not.
 */
export function payloadStream(sizeBytes) {
  let sent = 0;
  let index = 0;
  return new Readable({
    highWaterMark: 4 * CHUNK_BYTES,
    read() {
      if (sent >= sizeBytes) {
        this.push(null);
        return;
      }
      const length = Math.min(CHUNK_BYTES, sizeBytes - sent);
      const chunk = Buffer.allocUnsafe(length);
      pattern[index++ % PATTERN_CHUNKS].copy(chunk, 0, 0, length);
      sent += length;
      this.push(chunk);
    },
  });
}
