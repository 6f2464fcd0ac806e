import { crc32, deflateRawSync, gzipSync } from 'node:zlib';
import { Header, Pax } from 'tar';

/**
 * Archive writers for tests, small and deterministic, that write exactly what they are told: the hostile
 * headers a careful archiver would never produce (`../x`, a symlink's mode, a lying size) included.
 */

/** One zip entry. A `name` given as bytes is written as is; a string is written as UTF-8 (flag bit 11). */
export interface ZipEntrySpec {
  name: string | Buffer;
  content?: Buffer | string;
  /** Default `deflate` for content, `store` for empty entries. */
  method?: 'store' | 'deflate';
  /** A full Unix `st_mode` (type and permission bits); the entry is then marked as made on Unix. */
  unixMode?: number;
  /** Declare this uncompressed size instead of the real one (a lying header). */
  declaredSize?: number;
  /** Write this CRC-32 instead of the real one (damaged content). */
  crc32?: number;
  /** Set the traditional-encryption flag (the content is not actually encrypted). */
  encrypted?: boolean;
  /** Write this compression method number instead (an unsupported one, say). */
  methodNumber?: number;
}

const DOS_TIME = 0; // 00:00:00
const DOS_DATE = ((2026 - 1980) << 9) | (1 << 5) | 1; // 2026-01-01
const UTF8_FLAG = 0x800;
const ENCRYPTED_FLAG = 0x1;
const MADE_BY_UNIX = (3 << 8) | 20;
const MADE_BY_DOS = 20;

/** A zip of `entries`, in order, with zip64 end records when there are more than 65,535 entries. */
export function buildZip(entries: readonly ZipEntrySpec[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const spec of entries) {
    const name = typeof spec.name === 'string' ? Buffer.from(spec.name, 'utf8') : spec.name;
    const content = Buffer.from(spec.content ?? '');
    const method = spec.method ?? (content.length > 0 ? 'deflate' : 'store');
    const data = method === 'deflate' ? deflateRawSync(content) : content;
    const methodNumber = spec.methodNumber ?? (method === 'deflate' ? 8 : 0);
    const checksum = spec.crc32 ?? crc32(content);
    const size = spec.declaredSize ?? content.length;
    const flags = (typeof spec.name === 'string' ? UTF8_FLAG : 0) | (spec.encrypted ? ENCRYPTED_FLAG : 0);

    // The local header and the central record share one run of fields; the central one has "version made
    // by" before it, and the Unix mode and the local header's offset after it.
    const fields = {
      flags,
      methodNumber,
      checksum,
      compressedBytes: data.length,
      size,
      nameBytes: name.length,
    };
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    writeSharedFields(local, 4, fields);
    locals.push(local, name, data);

    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(spec.unixMode === undefined ? MADE_BY_DOS : MADE_BY_UNIX, 4);
    writeSharedFields(central, 6, fields);
    central.writeUInt32LE(((spec.unixMode ?? 0) << 16) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    centrals.push(central, name);

    offset += local.length + name.length + data.length;
  }
  const centralDirectory = Buffer.concat(centrals);
  const tail: Buffer[] = [];
  const zip64 = entries.length > 0xffff;
  if (zip64) {
    const record = Buffer.alloc(56);
    record.writeUInt32LE(0x06064b50, 0);
    record.writeBigUInt64LE(44n, 4);
    record.writeUInt16LE(45, 12);
    record.writeUInt16LE(45, 14);
    record.writeBigUInt64LE(BigInt(entries.length), 24);
    record.writeBigUInt64LE(BigInt(entries.length), 32);
    record.writeBigUInt64LE(BigInt(centralDirectory.length), 40);
    record.writeBigUInt64LE(BigInt(offset), 48);
    const locator = Buffer.alloc(20);
    locator.writeUInt32LE(0x07064b50, 0);
    locator.writeBigUInt64LE(BigInt(offset + centralDirectory.length), 8);
    locator.writeUInt32LE(1, 16);
    tail.push(record, locator);
  }
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(zip64 ? 0xffff : entries.length, 8);
  end.writeUInt16LE(zip64 ? 0xffff : entries.length, 10);
  end.writeUInt32LE(centralDirectory.length, 12);
  end.writeUInt32LE(offset, 16);
  tail.push(end);
  return Buffer.concat([...locals, centralDirectory, ...tail]);
}

interface SharedFields {
  flags: number;
  methodNumber: number;
  checksum: number;
  compressedBytes: number;
  size: number;
  nameBytes: number;
}

/** Version needed, flags, method, time, date, CRC-32, sizes, name and extra lengths: 26 bytes at `at`. */
function writeSharedFields(header: Buffer, at: number, fields: SharedFields): void {
  header.writeUInt16LE(20, at);
  header.writeUInt16LE(fields.flags, at + 2);
  header.writeUInt16LE(fields.methodNumber, at + 4);
  header.writeUInt16LE(DOS_TIME, at + 6);
  header.writeUInt16LE(DOS_DATE, at + 8);
  header.writeUInt32LE(fields.checksum >>> 0, at + 10);
  header.writeUInt32LE(fields.compressedBytes, at + 14);
  header.writeUInt32LE(fields.size, at + 18);
  header.writeUInt16LE(fields.nameBytes, at + 22);
  header.writeUInt16LE(0, at + 24); // no extra field
}

/** One tar entry. Types are `tar`'s names: `File`, `Directory`, `SymbolicLink`, `Link`, `FIFO`... */
export interface TarEntrySpec {
  path: string;
  type?: string;
  content?: Buffer | string;
  /** Permission bits (and setuid/setgid); default 0o644 for files, 0o755 for directories. */
  mode?: number;
  linkpath?: string;
  /** Write the path in a pax extended header (as archivers do for long or non-ASCII names). */
  paxPath?: boolean;
  /** Declare this size instead of the real one. */
  declaredSize?: number;
}

const BLOCK_BYTES = 512;

/**
 * A tar of `entries`, each header encoded by `tar`'s own Header class (checksums right), followed by the
 * two end-of-archive blocks unless `endBlocks` is false.
 */
export function buildTar(entries: readonly TarEntrySpec[], options: { endBlocks?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const spec of entries) {
    const type = spec.type ?? 'File';
    const content = Buffer.from(spec.content ?? '');
    const mode = spec.mode ?? (type === 'Directory' ? 0o755 : 0o644);
    if (spec.paxPath) parts.push(new Pax({ path: spec.path }).encode());
    const header = new Header({
      path: spec.paxPath ? 'pax-named-entry' : spec.path,
      mode,
      uid: 1000,
      gid: 1000,
      size: spec.declaredSize ?? content.length,
      mtime: new Date('2026-01-01T00:00:00Z'),
      type: type as never,
      linkpath: spec.linkpath ?? '',
      uname: 'user',
      gname: 'user',
    });
    const block = Buffer.alloc(BLOCK_BYTES);
    header.encode(block, 0);
    parts.push(block, content, Buffer.alloc(padding(content.length)));
  }
  if (options.endBlocks !== false) parts.push(Buffer.alloc(2 * BLOCK_BYTES));
  return Buffer.concat(parts);
}

function padding(length: number): number {
  return (BLOCK_BYTES - (length % BLOCK_BYTES)) % BLOCK_BYTES;
}

/** `tar` bytes gzipped, as a .tar.gz. */
export function gzipped(bytes: Buffer): Buffer {
  return gzipSync(bytes);
}
