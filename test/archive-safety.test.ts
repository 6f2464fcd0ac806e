import { describe, expect, it } from 'vitest';
import {
  checkEntryType,
  DEFAULT_EXTRACTION_LIMITS,
  type EntryHeader,
  ExtractionBudget,
  NameLedger,
  resolveLimits,
  safeSegments,
  vetEntry,
} from '../src/archive-safety.js';
import {
  ArchiveInvalidError,
  ArchiveUnsafeError,
  type ArchiveUnsafeReason,
  InvalidOptionsError,
  PayloadCacheError,
} from '../src/errors.js';

/** The ArchiveUnsafeError `action` throws; fails the test if it throws nothing or something else. */
function refusal(action: () => unknown): ArchiveUnsafeError {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(ArchiveUnsafeError);
    expect(error).toBeInstanceOf(PayloadCacheError);
    expect((error as ArchiveUnsafeError).code).toBe('ERR_ARCHIVE_UNSAFE');
    return error as ArchiveUnsafeError;
  }
  return expect.fail('expected ArchiveUnsafeError, nothing was thrown');
}

const file = (name: string, extra: Partial<EntryHeader> = {}): EntryHeader => ({
  name,
  kind: 'file',
  declaredBytes: 10,
  typeLabel: 'File',
  ...extra,
});

describe('safeSegments refuses names that could land outside the extraction or not be one file', () => {
  const hostile: [name: string, reason: ArchiveUnsafeReason][] = [
    ['../evil.txt', 'parent-segment'],
    ['a/../../evil.txt', 'parent-segment'],
    ['a/..', 'parent-segment'],
    ['/etc/passwd', 'absolute-path'],
    ['//server/share/x', 'absolute-path'],
    ['C:\\Windows\\x', 'absolute-path'],
    ['c:/x', 'absolute-path'],
    ['C:x', 'absolute-path'],
    ['dir\\file.txt', 'backslash'],
    ['..\\evil.txt', 'backslash'],
    ['CON', 'unportable-name'],
    ['dir/aux.txt', 'unportable-name'],
    ['a:b', 'absolute-path'], // drive-relative on Windows: "b" in the current directory of drive A
    ['ab:c', 'unportable-name'],
    ['trailing.', 'unportable-name'],
    ['dir /x', 'unportable-name'],
    ['x|y', 'unportable-name'],
    ['what?', 'unportable-name'],
    ['bell\u0007', 'unportable-name'],
    ['nul\u0000byte', 'unportable-name'],
    ['max\u{10FFFF}code-point.txt', 'unportable-name'],
    [`${'a'.repeat(256)}`, 'unportable-name'],
    ['lone\uD800half', 'unportable-name'],
  ];
  it.each(hostile)('%s: %s', (name, reason) => {
    const error = refusal(() => safeSegments(name));
    expect(error.reason).toBe(reason);
    expect(error.entryName).toBe(name);
  });

  it('keeps ordinary names and drops the segments that name nothing (., empty, the trailing / of a directory)', () => {
    expect(safeSegments('data/2024/weo.csv')).toEqual(['data', '2024', 'weo.csv']);
    expect(safeSegments('./data//weo.csv')).toEqual(['data', 'weo.csv']);
    expect(safeSegments('data/')).toEqual(['data']);
    expect(safeSegments('./')).toEqual([]);
    expect(safeSegments('yarn.lock')).toEqual(['yarn.lock']);
    expect(safeSegments('x.tmp.y/z.manifest.json')).toEqual(['x.tmp.y', 'z.manifest.json']);
    expect(safeSegments('Übersicht é.csv')).toEqual(['Übersicht é.csv']);
    expect(safeSegments(`${'a'.repeat(255)}`)).toEqual(['a'.repeat(255)]);
  });
});

describe('checkEntryType lets only plain files and directories through', () => {
  it.each([
    ['symlink', 'symlink'],
    ['hard-link', 'hard-link'],
    ['special-file', 'special-file'],
  ] as const)('refuses a %s', (kind, reason) => {
    expect(refusal(() => checkEntryType(file('x', { kind }))).reason).toBe(reason);
  });

  it.each([0o4755, 0o2755, 0o6644])('refuses mode %o (setuid or setgid)', (mode) => {
    expect(refusal(() => checkEntryType(file('x', { mode }))).reason).toBe('setuid-setgid');
  });

  it('calls a type it does not read unsupported (ArchiveInvalidError), not hostile', () => {
    const header = file('x', { kind: 'unsupported', typeLabel: 'SparseFile' });
    expect(() => checkEntryType(header)).toThrow(ArchiveInvalidError);
  });

  it('accepts files and directories with ordinary or sticky modes', () => {
    expect(checkEntryType(file('x', { mode: 0o755 }))).toBe('file');
    expect(checkEntryType(file('d', { kind: 'directory', mode: 0o1777 }))).toBe('directory');
    expect(checkEntryType(file('x'))).toBe('file');
  });
});

describe('NameLedger: no two entries on one file', () => {
  it('refuses the same file name twice', () => {
    const ledger = new NameLedger();
    ledger.claim('a.txt', 'file', ['a.txt']);
    expect(refusal(() => ledger.claim('a.txt', 'file', ['a.txt'])).reason).toBe('duplicate-name');
  });

  it('refuses names that differ only in case, in a file or in a parent directory', () => {
    const files = new NameLedger();
    files.claim('README', 'file', ['README']);
    expect(refusal(() => files.claim('readme', 'file', ['readme'])).reason).toBe('case-collision');
    const parents = new NameLedger();
    parents.claim('Data/a.csv', 'file', ['Data', 'a.csv']);
    expect(refusal(() => parents.claim('data/b.csv', 'file', ['data', 'b.csv'])).reason).toBe(
      'case-collision',
    );
  });

  it('refuses names that differ only in Unicode normalisation (one file on macOS)', () => {
    const ledger = new NameLedger();
    ledger.claim('caf\u00e9', 'file', ['caf\u00e9']);
    expect(refusal(() => ledger.claim('cafe\u0301', 'file', ['cafe\u0301'])).reason).toBe('case-collision');
  });

  it('refuses a name used as a file and as a directory, in either order', () => {
    const fileFirst = new NameLedger();
    fileFirst.claim('a', 'file', ['a']);
    expect(refusal(() => fileFirst.claim('a/b', 'file', ['a', 'b'])).reason).toBe('file-directory-conflict');
    const directoryFirst = new NameLedger();
    directoryFirst.claim('a/b', 'file', ['a', 'b']);
    expect(refusal(() => directoryFirst.claim('a', 'file', ['a'])).reason).toBe('file-directory-conflict');
  });

  it('returns the directories to create once each, parents first, and accepts a directory listed again', () => {
    const ledger = new NameLedger();
    expect(ledger.claim('a/b/c.txt', 'file', ['a', 'b', 'c.txt'])).toEqual([['a'], ['a', 'b']]);
    expect(ledger.claim('a/b/', 'directory', ['a', 'b'])).toEqual([]);
    expect(ledger.claim('a/d/', 'directory', ['a', 'd'])).toEqual([['a', 'd']]);
    expect(ledger.claim('a/d/', 'directory', ['a', 'd'])).toEqual([]);
    expect(ledger.claim('./', 'directory', [])).toEqual([]);
  });

  it('refuses a file with no name at all', () => {
    expect(refusal(() => new NameLedger().claim('./', 'file', [])).reason).toBe('unportable-name');
  });
});

describe('ExtractionBudget: entries, bytes and compression ratio', () => {
  const limits = { maxEntries: 3, maxExtractedBytes: 1_000, maxCompressionRatio: 10 };

  it('refuses an entry count given up front past maxEntries, naming no entry', () => {
    const budget = new ExtractionBudget(limits, 1_000);
    budget.checkEntryCount(3);
    const error = refusal(() => budget.checkEntryCount(4));
    expect(error.reason).toBe('too-many-entries');
    expect(error.entryName).toBeUndefined();
  });

  it('refuses the entry past maxEntries as it comes', () => {
    const budget = new ExtractionBudget(limits, 1_000);
    for (const name of ['a', 'b', 'c']) budget.admit(file(name, { declaredBytes: 0 }));
    const error = refusal(() => budget.admit(file('d', { declaredBytes: 0 })));
    expect(error).toMatchObject({ reason: 'too-many-entries', entryName: 'd' });
  });

  it('refuses declared bytes past maxExtractedBytes before anything is written', () => {
    const budget = new ExtractionBudget(limits, 1_000);
    budget.admit(file('a', { declaredBytes: 600 }));
    expect(refusal(() => budget.admit(file('b', { declaredBytes: 401 }))).reason).toBe('too-many-bytes');
  });

  it('refuses written bytes past ratio × archive size, even when the declared sizes were modest', () => {
    const budget = new ExtractionBudget(limits, 50); // room for 500 bytes
    budget.admit(file('a', { declaredBytes: 10 }));
    budget.consume(500, 'a');
    const error = refusal(() => budget.consume(1, 'a'));
    expect(error.reason).toBe('compression-ratio');
    expect(error.message).toContain('maxCompressionRatio');
    expect(budget.writtenBytes).toBe(501);
  });

  it('names maxExtractedBytes, not the ratio, when both are passed', () => {
    const budget = new ExtractionBudget(limits, 1_000_000);
    expect(refusal(() => budget.consume(1_001, 'a')).reason).toBe('too-many-bytes');
  });
});

describe('resolveLimits', () => {
  it('fills in the documented defaults', () => {
    expect(resolveLimits()).toEqual(DEFAULT_EXTRACTION_LIMITS);
    expect(resolveLimits({ maxEntries: 5 })).toEqual({ ...DEFAULT_EXTRACTION_LIMITS, maxEntries: 5 });
    expect(resolveLimits({ maxExtractedBytes: Number.POSITIVE_INFINITY }).maxExtractedBytes).toBe(
      Number.POSITIVE_INFINITY,
    );
    expect(resolveLimits({ maxCompressionRatio: 2.5 }).maxCompressionRatio).toBe(2.5);
  });

  it.each([
    { maxEntries: 0 },
    { maxEntries: 1.5 },
    { maxExtractedBytes: -1 },
    { maxCompressionRatio: 0.5 },
    { maxCompressionRatio: Number.NaN },
    { maxEntries: '10' as unknown as number },
  ])('refuses %o', (options) => {
    expect(() => resolveLimits(options)).toThrow(InvalidOptionsError);
  });
});

describe('vetEntry', () => {
  it('gives a file its path, the directories to make first, and whether it is executable', () => {
    const ledger = new NameLedger();
    const budget = new ExtractionBudget(DEFAULT_EXTRACTION_LIMITS, 1_000);
    const vetted = vetEntry(file('bin/run.sh', { mode: 0o755 }), ledger, budget);
    expect(vetted).toMatchObject({
      kind: 'file',
      segments: ['bin', 'run.sh'],
      newDirectories: [['bin']],
      executable: true,
    });
    expect(vetEntry(file('bin/data.csv', { mode: 0o644 }), ledger, budget).executable).toBe(false);
  });
});
