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
export async function findInLayers(
  layers: readonly Layer[],
  key: string,
  freshness: Freshness,
  orExpired: boolean,
): Promise<LayeredEntry | undefined> {
  let firstExpired: LayeredEntry | undefined;
  for (const layer of layers) {
    const paths = entryPaths(layer.dir, key);
    const found = await lookupEntry(paths, freshness);
    if (found.state === 'fresh') return { layer, paths, found };
    if (found.state === 'expired') firstExpired ??= { layer, paths, found };
  }
  return orExpired ? firstExpired : undefined;
}
