// What the many-writers row stores and checks: each key's bytes follow from the key alone, so that any
// entry found afterwards can be verified without remembering anything.
import { createHash } from 'node:crypto';

export function payloadFor(key, sizeBytes) {
  const seed = createHash('sha256').update(key).digest();
  const bytes = Buffer.alloc(sizeBytes);
  for (let offset = 0; offset < sizeBytes; offset += seed.length) seed.copy(bytes, offset);
  return bytes;
}
