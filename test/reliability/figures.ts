import { appendFileSync } from 'node:fs';

/** What one reliability scenario did and found; `npm run reliability` sums these into one table. */
export interface Figures {
  processes: number;
  rounds: number;
  killsSurvived: number;
  overlapsFound: number;
  hostileInputs: number;
  bytesVerified: number;
  /** Committed entries that vanished or went bad when they should have survived: must be 0. */
  entriesLost: number;
}

/**
 * Records a scenario's figures as one JSON line in `$PAYLOAD_CACHE_FIGURES_FILE` (set by
 * scripts/reliability.mjs); a no-op otherwise, so plain `npm test` runs are unaffected.
 */
export function recordFigures(scenario: string, figures: Partial<Figures>): void {
  const file = process.env.PAYLOAD_CACHE_FIGURES_FILE;
  if (!file) return;
  appendFileSync(file, `${JSON.stringify({ scenario, ...figures })}\n`);
}
