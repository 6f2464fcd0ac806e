import { execFileSync, spawn } from 'node:child_process';
import { promises as fsp, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { backgroundSweep } from '../src/cache-manager.js';
import { CacheManager } from '../src/index.js';

// CLI tests run the BUILT command, as a user would: `node dist/cli.js ...` in a child process.
export const REPO = fileURLToPath(new URL('..', import.meta.url));
export const CLI = path.join(REPO, 'dist', 'cli.js');
const TSC = path.join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
export const DAY_MS = 86_400_000;

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI with stdin a pipe (so never a TTY) carrying `input`, and collects its output. */
export function runCli(
  args: string[],
  options: { input?: string; env?: Record<string, string>; command?: string[] } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const [program, ...prefix] = options.command ?? [process.execPath];
    const child = spawn(program as string, [...prefix, CLI, ...args], {
      cwd: REPO,
      env: { ...process.env, ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(options.input ?? '');
  });
}

/** Lines of `text` without the trailing empty one. */
export function lines(text: string): string[] {
  return text.split('\n').filter((line, index, all) => line !== '' || index < all.length - 1);
}

/** Publishes an entry as if it had been written (and last used) `ageMs` ago. */
export async function seed(
  root: string,
  sublayer: string,
  key: string,
  bytes: Buffer | string,
  ageMs: number,
): Promise<string> {
  const atMs = Date.now() - ageMs;
  const cache = new CacheManager({ sublayer, root, ttl: Infinity, keepN: Infinity, now: () => atMs });
  const entryPath = await cache.getOrFetch(key, () => bytes);
  await cache[backgroundSweep];
  return entryPath;
}

/** Whether dist/cli.js is missing or older than some file under src/. */
function distIsStale(): boolean {
  const builtMs = statSync(CLI, { throwIfNoEntry: false })?.mtimeMs;
  if (builtMs === undefined) return true;
  const sources = readdirSync(path.join(REPO, 'src'), { recursive: true, withFileTypes: true });
  return sources.some(
    (dirent) => dirent.isFile() && statSync(path.join(dirent.parentPath, dirent.name)).mtimeMs > builtMs,
  );
}

/**
 * `npm test` builds first; rebuilding then would rewrite dist/ under the feet of test files that spawn it
 * in parallel. A lone `vitest run test/cli.test.ts` after an edit builds here. A concurrent build by
 * someone else may make tsc fail once; one retry covers that.
 */
export function buildCliIfStale(): void {
  if (!distIsStale()) return;
  const build = () => execFileSync(process.execPath, [TSC, '-p', 'tsconfig.build.json'], { cwd: REPO });
  try {
    build();
  } catch {
    build();
  }
}

/** `script` (util-linux) runs a command on a pseudo-terminal, so the prompt path is the one a user meets. */
export const hasScript = (() => {
  try {
    execFileSync('script', ['--version'], { stdio: 'ignore' });
    return process.platform === 'linux';
  } catch {
    return false;
  }
})();

export interface Terminal {
  /** Resolves once the command has printed `text` (prompts go to the terminal like everything else). */
  waitFor(text: string): Promise<void>;
  /** Types `keys` on the terminal. */
  type(keys: string): void;
}

/**
 * Runs the CLI on a pseudo-terminal and lets `session` read its screen and type answers; resolves with the
 * exit code and everything it printed (stdout and stderr share the terminal).
 */
export function onTerminal(
  args: string[],
  session: (terminal: Terminal) => Promise<void>,
  env: Record<string, string> = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const command = [process.execPath, CLI, ...args].map(shellQuote).join(' ');
    const child = spawn('script', ['-qec', command, '/dev/null'], { env: { ...process.env, ...env } });
    let screen = '';
    const waiters: { text: string; resolve: () => void }[] = [];
    child.stdout.on('data', (chunk: Buffer) => {
      screen += chunk.toString();
      for (const waiter of waiters.filter((w) => screen.includes(w.text))) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    });
    child.on('error', reject);
    const exited = new Promise<number | null>((done) => child.on('close', done));
    const terminal: Terminal = {
      waitFor: (text) =>
        screen.includes(text)
          ? Promise.resolve()
          : new Promise<void>((done, fail) => {
              waiters.push({ text, resolve: done });
              void exited.then(() =>
                fail(new Error(`exited before printing ${JSON.stringify(text)}:\n${screen}`)),
              );
            }),
      type: (keys) => child.stdin.write(keys),
    };
    session(terminal)
      .then(async () => {
        child.stdin.end();
        resolve({ code: await exited, stdout: screen, stderr: '' });
      })
      .catch((error: unknown) => {
        child.kill();
        reject(error);
      });
  });
}

export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Every name under `dir` with its type, size and mtime: equal snapshots mean nothing changed on disk. */
export async function treeSnapshot(dir: string): Promise<string[]> {
  const found: string[] = [];
  const visit = async (current: string) => {
    for (const dirent of await fsp.readdir(current, { withFileTypes: true })) {
      const full = path.join(current, dirent.name);
      const stats = await fsp.lstat(full);
      const kind = stats.isDirectory() ? 'dir' : stats.isFile() ? 'file' : 'other';
      found.push(`${path.relative(dir, full)} ${kind} ${stats.isFile() ? stats.size : '-'} ${stats.mtimeMs}`);
      if (stats.isDirectory()) await visit(full);
    }
  };
  await visit(dir);
  return found.sort();
}
