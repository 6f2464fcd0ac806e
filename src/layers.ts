import { type EntryPaths, entryPaths, sublayerDir } from './entry-paths.js';
import { type EntryState, lookupEntry } from './entry-store.js';
import type { Freshness } from './manifest.js';

/**
 * The roots a manager reads, in the order it consults them: its own (written, touched, evicted, swept), then
 * its read-only roots (a site cache an admin fills), which it never changes in any way.
 */
export interface Layer {
  readonly root: string;
  readonly dir: string;
  readonly readOnly: boolean;
}

export type FoundEntry = Exclude<EntryState, { state: 'absent' }>;

/** An entry found in one of the layers. */
export interface LayeredEntry {
  readonly layer: Layer;
  readonly paths: EntryPaths;
  readonly found: FoundEntry;
}

export function layersOf(ownRoot: string, readOnlyRoots: readonly string[], sublayer: string): Layer[] {
  return [
    { root: ownRoot, dir: sublayerDir(ownRoot, sublayer), readOnly: false },
    ...readOnlyRoots.map((root) => ({ root, dir: sublayerDir(root, sublayer), readOnly: true })),
  ];
}

/**
 * The entry for `key` that the layers offer: the first fresh one in layer order; with `orExpired`, failing
 * that, the first expired one (what offline mode and `staleIfError` may serve). `undefined` when none.
 */
export function findInLayers(
  layers: readonly Layer[],
  key: string,
  freshness: Freshness,
  orExpired: boolean,
): Promise<LayeredEntry | undefined> {
  return firstInLayers(layers, key, freshness, orExpired, async (entry) => entry);
}

/**
 * What `servable` makes of the layers' entries for `key`, by the order of {@link findInLayers}: an entry for
 * which it answers `undefined` (an archive without its extraction, say) is passed over.
 */
export async function firstInLayers<T>(
  layers: readonly Layer[],
  key: string,
  freshness: Freshness,
  orExpired: boolean,
  servable: (entry: LayeredEntry) => Promise<T | undefined>,
): Promise<T | undefined> {
  let firstExpired: T | undefined;
  for (const layer of layers) {
    const paths = entryPaths(layer.dir, key);
    const found = await lookupEntry(paths, freshness);
    if (found.state === 'absent' || (found.state === 'expired' && (!orExpired || firstExpired))) continue;
    const served = await servable({ layer, paths, found });
    if (served === undefined) continue;
    if (found.state === 'fresh') return served;
    firstExpired = served;
  }
  return firstExpired;
}
