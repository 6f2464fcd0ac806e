/**
 * Test-only hooks for the reliability lab; not part of the public API and inert unless the environment
 * sets them when the process starts.
 *
 * - `PAYLOAD_CACHE_TEST_PAUSE_AT=<phase>`: a writer reaching that phase of publication writes the phase's
 *   name to the file named by `PAYLOAD_CACHE_TEST_PAUSE_FILE` and then waits forever, so that a test can
 *   SIGKILL it at exactly that point.
 * - `PAYLOAD_CACHE_TEST_LOCK_FAIL_OPEN=1`: every lock attempt succeeds at once without locking anything,
 *   as a lock on a misbehaving network file system might; principle 1 must hold regardless.
 */
import { writeFileSync } from 'node:fs';

export type PublishPhase =
  | 'locked'
  | 'streaming'
  | 'sealed'
  | 'manifest-removed'
  | 'renamed'
  | 'manifest-written'
  | 'extracting'
  | 'extracted';

const pauseAt = process.env.PAYLOAD_CACHE_TEST_PAUSE_AT;
const pauseFile = process.env.PAYLOAD_CACHE_TEST_PAUSE_FILE;

export const lockFailsOpen = process.env.PAYLOAD_CACHE_TEST_LOCK_FAIL_OPEN === '1';

/** Returns at once, unless the lab asked to stop this process at `phase`. */
export async function crashPoint(phase: PublishPhase): Promise<void> {
  if (pauseAt !== phase) return;
  if (pauseFile) writeFileSync(pauseFile, phase);
  await new Promise<never>(() => {
    setInterval(() => {}, 60_000);
  });
}
