import { type EntryPaths, type ExtractionPaths, extractionPaths } from './entry-paths.js';
import { type EntryState, lookupEntry, recordSha256, touchEntry } from './entry-store.js';
import { OfflineMissError } from './errors.js';
import {
  type FoundExtraction,
  lookupExtraction,
  recheckExtraction,
  touchExtraction,
} from './extraction-on-disk.js';
import type { PreparedExtraction } from './extraction-store.js';
import { type CreateModes, sha256OfFile } from './file-system.js';
import { firstInLayers, type Layer } from './layers.js';
import type { Freshness } from './manifest.js';
import type { Observer } from './observability.js';
import type { ExtractionRequest } from './options.js';

/** Making extractions (and with it the archive libraries) is loaded by the first extraction only. */
const extractionStore = () => import('./extraction-store.js');

/** An extraction found on disk, with the paths it was found at. */
export interface LocatedExtraction {
  readonly target: ExtractionPaths;
  readonly extraction: FoundExtraction;
}

type Committed = Exclude<EntryState, { state: 'absent' }>;

/** An archive entry and its extraction, found in one of the layers. */
export interface LayeredExtraction {
  readonly layer: Layer;
  readonly paths: EntryPaths;
  readonly found: Committed;
  readonly located: LocatedExtraction;
}

/** What the flow needs of its manager's settings. */
export interface ExtractionSettings {
  readonly touchIntervalMs: number;
  readonly modes: CreateModes | undefined;
}

/**
 * getOrExtract's part of a CacheManager: finding an entry's extraction (the hit check), serving it, and
 * making it under the key's lock. The manager keeps the flow itself (flights, lock, fetch, commit) and
 * asks this class only about extractions.
 */
export class ExtractionFlow {
  readonly #settings: ExtractionSettings;
  readonly #observer: Observer;
  readonly #now: () => number;
  /**
   * The extraction last served per payload path. An extraction's name depends on the sha256 in the
   * manifest, so a first hit reads the manifest, then the marker; with the extraction remembered, the
   * marker's `lstat` runs beside the manifest's read, and a hit costs what a file hit costs.
   */
  readonly #served = new Map<string, LocatedExtraction>();

  constructor(settings: ExtractionSettings, observer: Observer, now: () => number) {
    this.#settings = settings;
    this.#observer = observer;
    this.#now = now;
  }

  /**
   * The hit check: the entry, and when it is fresh, its extraction. Returns the entry as found and, when
   * both are there, the served content directory (the use recorded on the archive and the extraction).
   */
  async hit(paths: EntryPaths, freshness: Freshness): Promise<{ found: EntryState; served?: string }> {
    const remembered = this.#served.get(paths.payload);
    const guess = remembered && relocate(remembered);
    const found = await lookupEntry(paths, freshness);
    if (found.state !== 'fresh') return { found };
    const sameArchive = remembered?.target.archiveSha256 === found.manifest.sha256;
    const located = (sameArchive && (await guess)) || (await this.find(paths, found));
    if (!located) return { found };
    return { found, served: await this.serve(paths, found, located, freshness.nowMs) };
  }

  /** The entry's extraction, when there is one: the manifest's sha256 names it, its marker confirms it. */
  async find(paths: EntryPaths, found: Committed): Promise<LocatedExtraction | undefined> {
    const sha256 = found.manifest.sha256;
    return sha256 === undefined ? undefined : locate(paths, sha256);
  }

  /** Records a use of the archive (`found`, when known) and of the extraction; returns its content directory. */
  async serve(
    paths: EntryPaths,
    found: Committed | undefined,
    located: LocatedExtraction,
    nowMs: number,
  ): Promise<string> {
    const { target, extraction } = located;
    const { touchIntervalMs } = this.#settings;
    await Promise.all([
      found && touchEntry(paths, found.lastUsedAtMs, nowMs, touchIntervalMs),
      touchExtraction(target, extraction.lastUsedAtMs, nowMs, touchIntervalMs),
    ]);
    this.#served.set(paths.payload, located);
    this.#observer.hit(paths.key, target.content);
    return target.content;
  }

  /**
   * Offline or after a failure: an existing extraction of the key as it is, from any layer (the first fresh
   * archive with its extraction in layer order, else the first expired one), or a typed miss.
   */
  async serveAsIs(
    layers: readonly Layer[],
    key: string,
    freshness: Freshness,
    sublayer: string,
  ): Promise<string> {
    const layered = await this.findInLayers(layers, key, freshness, true);
    if (layered) return this.serveLayered(layered, freshness.nowMs);
    throw new OfflineMissError(
      key,
      sublayer,
      layers.map((layer) => layer.root),
    );
  }

  /**
   * The extraction the layers offer for `key`: the first archive that is fresh and extracted, in layer order;
   * with `orExpired`, failing that, the first expired one that is extracted. `undefined` when none is. An
   * archive a read-only layer holds without its extraction is passed over: the cache cannot extract there.
   */
  async findInLayers(
    layers: readonly Layer[],
    key: string,
    freshness: Freshness,
    orExpired: boolean,
  ): Promise<LayeredExtraction | undefined> {
    return firstInLayers(layers, key, freshness, orExpired, async (entry) => {
      const located = await this.find(entry.paths, entry.found);
      return located && { ...entry, located };
    });
  }

  /** Serves an extraction from whichever layer it is in; only the own root records the use. */
  async serveLayered({ layer, paths, found, located }: LayeredExtraction, nowMs: number): Promise<string> {
    if (!layer.readOnly) return this.serve(paths, found, located, nowMs);
    this.#observer.hit(paths.key, located.target.content);
    return located.target.content;
  }

  /**
   * Under the key's lock, with the entry in place: its extraction for `sha256` (the manifest's, or the
   * payload's own hash when an old manifest has none), made from the committed payload if it is missing.
   */
  async extractUnderLock(
    paths: EntryPaths,
    sha256: string | undefined,
    request: ExtractionRequest,
    signal: AbortSignal,
  ): Promise<string> {
    const archiveSha256 = sha256 ?? (await this.#hashAndRecord(paths));
    let located = await locate(paths, archiveSha256);
    if (!located) {
      const steps = this.steps(paths, archiveSha256, request, this.#now(), signal);
      await steps.publish(await steps.prepare(paths.payload));
      located = await locate(paths, archiveSha256);
    }
    if (!located) throw new Error(`the extraction of "${paths.key}" vanished as it was published`);
    return this.serve(paths, undefined, located, this.#now());
  }

  /** The payload's sha256, for an old manifest without one; recorded in it so that this happens once. */
  async #hashAndRecord(paths: EntryPaths): Promise<string> {
    const sha256 = await sha256OfFile(paths.payload);
    await recordSha256(paths, sha256, this.#settings.modes);
    return sha256;
  }

  /**
   * The two steps of extracting `paths`' archive of `sha256`: prepare (extract into a tmp directory, out of
   * sight) and publish (one rename); each reported on the `extract` channel. A new download of the same
   * bytes (a server without validators answers each revalidation with the whole archive) finds its
   * extraction already there: `prepareUnlessPublished` then extracts nothing and resolves `undefined`,
   * since the same sha256 means the same archive, checked when that extraction was made.
   */
  steps(paths: EntryPaths, sha256: string, request: ExtractionRequest, nowMs: number, signal: AbortSignal) {
    const target = extractionPaths(paths.dir, paths.key, sha256);
    const startedAt = performance.now();
    const report = <T>(step: Promise<T>, outcome?: (value: T) => 'published' | 'already-published') =>
      step.then(
        (value) => {
          if (outcome) {
            const durationMs = performance.now() - startedAt;
            this.#observer.extracted(paths.key, target.content, outcome(value), durationMs);
          }
          return value;
        },
        (error: unknown) => {
          const durationMs = performance.now() - startedAt;
          this.#observer.extracted(paths.key, target.content, 'failed', durationMs, { error });
          throw error;
        },
      );
    const prepare = async (archivePath: string) => {
      const store = await extractionStore();
      const options = { ...request, nowMs, modes: this.#settings.modes, signal };
      return report(store.prepareExtraction(target, archivePath, options));
    };
    return {
      prepare,
      prepareUnlessPublished: async (archivePath: string): Promise<PreparedExtraction | undefined> =>
        (await lookupExtraction(target)) ? undefined : prepare(archivePath),
      publish: (prepared: PreparedExtraction) => report(prepared.publish(), (outcome) => outcome),
    };
  }
}

async function relocate(seen: LocatedExtraction): Promise<LocatedExtraction | undefined> {
  const extraction = await recheckExtraction(seen.target, seen.extraction);
  return extraction && { target: seen.target, extraction };
}

async function locate(paths: EntryPaths, sha256: string): Promise<LocatedExtraction | undefined> {
  const target = extractionPaths(paths.dir, paths.key, sha256);
  const extraction = await lookupExtraction(target);
  return extraction && { target, extraction };
}
