import { portableNameProblem } from './entry-paths.js';
import { ArchiveInvalidError, ArchiveUnsafeError, InvalidOptionsError } from './errors.js';

/**
 * The rules an archive must follow before any of it is written, as pure functions and small in-memory
 * ledgers: no disk, no archive library. The readers (`archive-zip.ts`, `archive-tar.ts`) describe each entry
 * in the terms below and the extraction writes only what these rules let through.
 */

/** The formats the extraction reads. `gzip` is a single compressed file (not a tar inside). */
export type ArchiveFormat = 'zip' | 'tar' | 'tar.gz' | 'gzip';

export const ARCHIVE_FORMATS: readonly ArchiveFormat[] = ['zip', 'tar', 'tar.gz', 'gzip'];

/**
 * Which links an extraction creates: `none` (the default: every link refuses the archive), or `inside`:
 * symbolic links whose target, once every entry is in place, resolves inside the extraction, and hard links
 * to a regular file extracted before them.
 */
export type LinkPolicy = 'none' | 'inside';

export const LINK_POLICIES: readonly LinkPolicy[] = ['none', 'inside'];

/** Longest symbolic link target read from an archive; a real one is a short relative path. */
export const MAX_LINK_TARGET_BYTES = 4096;

/** How much one extraction may produce; the whole archive is refused past any of them. */
export interface ExtractionLimits {
  /** Most entries (files, directories and anything else the archive lists). */
  readonly maxEntries: number;
  /** Most bytes of file content, all files together. */
  readonly maxExtractedBytes: number;
  /** Most bytes of file content per byte of archive, over the whole archive. */
  readonly maxCompressionRatio: number;
}

/**
 * Defaults, each with its reason. 100,000 entries hold a data set of many small files; more is more likely
 * an attempt to exhaust inodes. 64 GiB of content stops an archive from filling a disk unasked. A ratio of
 * 200: real data sets compress 3:1 to 50:1 and sparse text a few hundred to one, while deflate alone reaches
 * about 1032:1 and overlapping-entry zip bombs millions; measured over the whole archive, it also catches
 * bombs made of many entries that each look modest.
 */
export const DEFAULT_EXTRACTION_LIMITS: ExtractionLimits = {
  maxEntries: 100_000,
  maxExtractedBytes: 64 * 1024 ** 3,
  maxCompressionRatio: 200,
};

/** The limits in `options` with the defaults for those not given; InvalidOptionsError for a bad number. */
export function resolveLimits(options: Partial<ExtractionLimits> = {}): ExtractionLimits {
  const limit = (name: keyof ExtractionLimits, min: number): number => {
    const value: unknown = options[name] ?? DEFAULT_EXTRACTION_LIMITS[name];
    const wholeNumber = name !== 'maxCompressionRatio';
    const valid =
      typeof value === 'number' &&
      value >= min && // false for NaN too
      (!wholeNumber || Number.isInteger(value) || value === Number.POSITIVE_INFINITY);
    if (!valid) {
      const kind = wholeNumber ? 'an integer' : 'a number';
      throw new InvalidOptionsError(`${name} must be ${kind} >= ${min} or Infinity, got ${String(value)}`);
    }
    return value;
  };
  return {
    maxEntries: limit('maxEntries', 1),
    maxExtractedBytes: limit('maxExtractedBytes', 0),
    maxCompressionRatio: limit('maxCompressionRatio', 1),
  };
}

/** What an archive entry is, in the terms of the rules (each reader maps its own types onto these). */
export type EntryKind = 'file' | 'directory' | 'symlink' | 'hard-link' | 'special-file' | 'unsupported';

/** One archive entry as a reader describes it, before anything of it is written. */
export interface EntryHeader {
  /** The name exactly as the archive spells it (after the format's own text decoding only). */
  readonly name: string;
  readonly kind: EntryKind;
  /** Permission bits the archive gives (`0o7777` at most), when it gives any. */
  readonly mode?: number | undefined;
  /** Content bytes the archive declares for a file (0 for anything else); `undefined` when the format
   * declares none (a single gzip file). */
  readonly declaredBytes: number | undefined;
  /** The format's own name for the entry's type, for messages (`FIFO`, `CharacterDevice`...). */
  readonly typeLabel: string;
  /** A symbolic link's target as the archive gives it, or the entry name a hard link points to. */
  readonly linkTarget?: string | undefined;
}

/** What the rules let through: where the entry goes and what must be created first. */
export interface VettedEntry {
  readonly name: string;
  readonly kind: 'file' | 'directory' | 'symlink' | 'hard-link';
  /** Path segments below the extraction directory; empty for the directory itself (`./`). */
  readonly segments: readonly string[];
  /** Directories (as segment lists, parents first) that no earlier entry has claimed yet. */
  readonly newDirectories: readonly (readonly string[])[];
  /** Whether the archive gives the file any execute bit (the only mode bit ever applied). */
  readonly executable: boolean;
  readonly declaredBytes: number | undefined;
  /** A symbolic link's target, checked for its form only (where it leads is checked once all exist). */
  readonly symlinkTarget?: string | undefined;
  /** A hard link's target: the segments of a regular file extracted before it. */
  readonly hardLinkTarget?: readonly string[] | undefined;
}

const SETUID_SETGID_BITS = 0o6000;
const ANY_EXECUTE_BITS = 0o111;
const DRIVE_LETTER = /^[A-Za-z]:/;

/**
 * The segments of a relative path that stays inside the extraction directory, or ArchiveUnsafeError.
 * `.` and empty segments (`./a`, `a//b`, the `/` a directory name ends with) name nothing and are dropped;
 * everything else must be a portable name. Backslashes are refused rather than read as separators: on
 * Windows they are separators, elsewhere name characters, and an archive must mean one tree everywhere.
 */
export function safeSegments(name: string): string[] {
  const refuse = (
    reason: 'absolute-path' | 'parent-segment' | 'backslash' | 'unportable-name',
    why: string,
  ) => {
    throw new ArchiveUnsafeError(reason, name, why);
  };
  if (name.startsWith('/')) return refuse('absolute-path', 'names an absolute path');
  if (DRIVE_LETTER.test(name)) return refuse('absolute-path', 'starts with a drive letter');
  if (name.includes('\\')) return refuse('backslash', 'contains a backslash');
  const segments: string[] = [];
  for (const segment of name.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') return refuse('parent-segment', 'contains a ".." segment');
    const problem = portableNameProblem(segment);
    if (problem !== undefined)
      return refuse('unportable-name', `segment ${JSON.stringify(segment)} ${problem}`);
    segments.push(segment);
  }
  return segments;
}

/**
 * The rules for one entry's type and mode: files and directories are extracted; links only with
 * `allowLinks: 'inside'` (a symlink followed by a file written through it is the classic escape, so by
 * default every link refuses the archive); devices, FIFOs and sockets never (opening one can block or
 * reach hardware), nor setuid or setgid bits. Entry types the extractor does not read are
 * ArchiveInvalidError (`unsupported`): not hostile, but not extractable.
 */
export function checkEntryType(
  header: EntryHeader,
  links: LinkPolicy = 'none',
): 'file' | 'directory' | 'symlink' | 'hard-link' {
  const refuse = (reason: ConstructorParameters<typeof ArchiveUnsafeError>[0], why: string): never => {
    throw new ArchiveUnsafeError(reason, header.name, why);
  };
  const linksRefused = 'links are not extracted unless allowLinks is "inside"';
  switch (header.kind) {
    case 'symlink':
      if (links !== 'inside') return refuse('symlink', `symbolic ${linksRefused}`);
      checkSymlinkTarget(header.name, header.linkTarget);
      break;
    case 'hard-link':
      if (links !== 'inside') return refuse('hard-link', `hard ${linksRefused}`);
      break;
    case 'special-file':
      return refuse('special-file', `${header.typeLabel} entries are not extracted`);
    case 'unsupported':
      // Not hostile, just beyond this extractor (sparse files, tape headers...): the archive cannot be read.
      throw new ArchiveInvalidError(
        'unsupported',
        header.name,
        `entries of type ${header.typeLabel} are not read`,
      );
  }
  if (header.mode !== undefined && (header.mode & SETUID_SETGID_BITS) !== 0) {
    refuse('setuid-setgid', `mode ${header.mode.toString(8)} has the setuid or setgid bit`);
  }
  return header.kind;
}

/**
 * A symbolic link's target, returned as it is once its form passes: relative, portable segments (`..`
 * allowed: where it leads is judged by the file system once every entry exists, since a lexical check
 * cannot see other links).
 */
function checkSymlinkTarget(name: string, target: string | undefined): string {
  const refuse = (reason: 'symlink' | 'backslash' | 'unportable-name', why: string): never => {
    throw new ArchiveUnsafeError(reason, name, why);
  };
  if (target === undefined || target === '') return refuse('symlink', 'the link has no target');
  if (Buffer.byteLength(target) > MAX_LINK_TARGET_BYTES)
    return refuse('symlink', 'the link target is too long');
  if (target.startsWith('/') || DRIVE_LETTER.test(target))
    return refuse('symlink', 'the link target is absolute');
  if (target.includes('\\')) return refuse('backslash', 'the link target contains a backslash');
  for (const segment of target.split('/')) {
    if (segment === '' || segment === '.' || segment === '..') continue;
    const problem = portableNameProblem(segment);
    if (problem !== undefined)
      refuse('unportable-name', `link target segment ${JSON.stringify(segment)} ${problem}`);
  }
  return target;
}

/**
 * Every name one extraction has claimed, so that no two entries land on one file: not the same name twice,
 * not two names that only differ in case or Unicode normalisation (one file on Windows and macOS, so which
 * bytes it held would depend on the platform), and no name used both as a file and as a directory.
 * Directories that entries imply without listing them are claimed too. Holds one small record per path.
 */
export class NameLedger {
  // Folded path -> what claimed it, under its exact spelling.
  readonly #claimed = new Map<string, { exact: string; kind: ClaimKind }>();

  /**
   * Claims the entry's path and its parent directories; returns the directories not claimed before. A
   * symlink is claimed as such, so that no later entry can be written through it (its path would have to
   * be claimed as a directory).
   */
  claim(name: string, kind: ClaimKind, segments: readonly string[]): (readonly string[])[] {
    if (segments.length === 0) {
      if (kind !== 'directory') throw new ArchiveUnsafeError('unportable-name', name, 'a file needs a name');
      return []; // `./`: the extraction directory itself
    }
    const newDirectories: (readonly string[])[] = [];
    for (let depth = 1; depth <= segments.length; depth++) {
      const claimKind = depth === segments.length ? kind : 'directory';
      const exact = segments.slice(0, depth).join('/');
      const folded = foldName(exact);
      const earlier = this.#claimed.get(folded);
      if (!earlier) {
        this.#claimed.set(folded, { exact, kind: claimKind });
        if (claimKind === 'directory') newDirectories.push(segments.slice(0, depth));
        continue;
      }
      if (earlier.exact !== exact) {
        throw new ArchiveUnsafeError(
          'case-collision',
          name,
          `"${exact}" and "${earlier.exact}" differ only in case or Unicode normalisation`,
        );
      }
      if (earlier.kind !== claimKind && (earlier.kind === 'directory' || claimKind === 'directory')) {
        throw new ArchiveUnsafeError(
          'file-directory-conflict',
          name,
          `"${exact}" is both a directory and a ${earlier.kind === 'directory' ? claimKind : earlier.kind}`,
        );
      }
      if (claimKind !== 'directory')
        throw new ArchiveUnsafeError('duplicate-name', name, `"${exact}" appears twice`);
    }
    return newDirectories;
  }

  /** Whether `segments` name a regular file claimed before (under this exact spelling). */
  isFile(segments: readonly string[]): boolean {
    const exact = segments.join('/');
    const claimed = this.#claimed.get(foldName(exact));
    return claimed?.kind === 'file' && claimed.exact === exact;
  }
}

/** What a path is claimed as: a hard link is a regular file like any other. */
type ClaimKind = 'file' | 'directory' | 'symlink';

/** The form under which case-insensitive, normalisation-insensitive file systems compare names. */
function foldName(pathText: string): string {
  return pathText.normalize('NFC').toLowerCase();
}

/**
 * Counts entries and content bytes against the limits: declared sizes before an entry is written, then
 * every chunk as it is written (a declared size can lie; the readers also hold each entry to it).
 */
export class ExtractionBudget {
  readonly #limits: ExtractionLimits;
  /** The lower of maxExtractedBytes and the ratio's allowance for this archive. */
  readonly #byteCeiling: number;
  readonly #archiveSizeBytes: number;
  #entries = 0;
  #decompressedBytes = 0;
  #declaredBytes = 0;
  #writtenBytes = 0;

  constructor(limits: ExtractionLimits, archiveSizeBytes: number) {
    this.#limits = limits;
    this.#archiveSizeBytes = archiveSizeBytes;
    this.#byteCeiling = Math.min(limits.maxExtractedBytes, limits.maxCompressionRatio * archiveSizeBytes);
  }

  /** Bytes of content written so far. */
  get writtenBytes(): number {
    return this.#writtenBytes;
  }

  /** For formats that give the entry count up front (zip): refuse before reading any entry. */
  checkEntryCount(count: number): void {
    if (count > this.#limits.maxEntries) {
      throw new ArchiveUnsafeError(
        'too-many-entries',
        undefined,
        `${count} entries, more than maxEntries (${this.#limits.maxEntries})`,
      );
    }
  }

  /** One more entry with `declaredBytes` of content: refused if either passes a limit. */
  admit(header: EntryHeader): void {
    this.#entries += 1;
    if (this.#entries > this.#limits.maxEntries) {
      throw new ArchiveUnsafeError(
        'too-many-entries',
        header.name,
        `more than maxEntries (${this.#limits.maxEntries}) entries`,
      );
    }
    this.#declaredBytes += header.declaredBytes ?? 0;
    this.#checkBytes(this.#declaredBytes, header.name, 'declares');
  }

  /**
   * `bytes` more of a decompressed stream were read (a tar.gz's tar): held to the ratio as well, so that
   * nothing decompresses without bound, not even data the tar never turns into files (a bomb appended
   * after the end-of-archive marker, say).
   */
  consumeDecompressed(bytes: number): void {
    this.#decompressedBytes += bytes;
    if (this.#decompressedBytes <= this.#limits.maxCompressionRatio * this.#archiveSizeBytes) return;
    throw new ArchiveUnsafeError(
      'compression-ratio',
      undefined,
      `the archive decompresses to more than maxCompressionRatio (${this.#limits.maxCompressionRatio}) ` +
        'times its own size; raise maxCompressionRatio if this data really compresses that well',
    );
  }

  /** `bytes` more content were produced for `entryName`; throws as soon as a limit is passed. */
  consume(bytes: number, entryName: string): void {
    this.#writtenBytes += bytes;
    this.#checkBytes(this.#writtenBytes, entryName, 'holds');
  }

  #checkBytes(totalBytes: number, entryName: string, verb: string): void {
    if (totalBytes <= this.#byteCeiling) return;
    if (totalBytes > this.#limits.maxExtractedBytes) {
      throw new ArchiveUnsafeError(
        'too-many-bytes',
        entryName,
        `the archive ${verb} more than maxExtractedBytes (${this.#limits.maxExtractedBytes}) bytes of content`,
      );
    }
    throw new ArchiveUnsafeError(
      'compression-ratio',
      entryName,
      `the archive ${verb} more than maxCompressionRatio (${this.#limits.maxCompressionRatio}) times its ` +
        'own size; raise maxCompressionRatio if this data really compresses that well',
    );
  }
}

/**
 * Vets one entry against every rule: the budget first (a flood of entries is refused even if each one is
 * harmless), then its type, its name, and the names claimed before it.
 */
export function vetEntry(
  header: EntryHeader,
  ledger: NameLedger,
  budget: ExtractionBudget,
  links: LinkPolicy = 'none',
): VettedEntry {
  budget.admit(header);
  const kind = checkEntryType(header, links);
  const segments = safeSegments(header.name);
  const hardLinkTarget = kind === 'hard-link' ? hardLinkTargetOf(header, ledger) : undefined;
  const claimKind = kind === 'hard-link' ? 'file' : kind;
  const newDirectories = ledger.claim(header.name, claimKind, segments);
  const executable = kind === 'file' && header.mode !== undefined && (header.mode & ANY_EXECUTE_BITS) !== 0;
  return {
    name: header.name,
    kind,
    segments,
    newDirectories,
    executable,
    declaredBytes: header.declaredBytes,
    ...(kind === 'symlink' ? { symlinkTarget: header.linkTarget } : {}),
    ...(hardLinkTarget ? { hardLinkTarget } : {}),
  };
}

/** A hard link's target: an entry name of a regular file extracted before it, nothing else. */
function hardLinkTargetOf(header: EntryHeader, ledger: NameLedger): string[] {
  const target = header.linkTarget ?? '';
  let segments: string[];
  try {
    segments = safeSegments(target);
  } catch {
    throw new ArchiveUnsafeError(
      'hard-link',
      header.name,
      `its target ${JSON.stringify(target)} is not a name inside`,
    );
  }
  if (!ledger.isFile(segments)) {
    throw new ArchiveUnsafeError(
      'hard-link',
      header.name,
      `its target ${JSON.stringify(target)} is not a file extracted before it`,
    );
  }
  return segments;
}
