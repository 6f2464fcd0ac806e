import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Shared plumbing of the root-only fault lanes: can this lane run here (and if not, why), running a child in
// a private mount namespace or as an unprivileged uid, capturing its JSON lines, and proving afterwards that
// nothing was left mounted or running.

/** The child script every lane runs: a list of cache operations in, one JSON line per operation out. */
export const CACHE_OPS_FIXTURE = fileURLToPath(new URL('./fixtures/cache-ops.mjs', import.meta.url));

/** `nobody`: an unprivileged uid and gid that owns nothing in a cache root made by root. */
export const UNPRIVILEGED_ID = 65534;

export interface LaneProbe {
  readonly canRun: boolean;
  /** Why the lane cannot run here; empty when it can. */
  readonly reason: string;
}

const RUNS: LaneProbe = { canRun: true, reason: '' };
const PROBE_TIMEOUT_MS = 20_000;

function isRoot(): LaneProbe {
  if (process.platform !== 'linux') return { canRun: false, reason: `not Linux (${process.platform})` };
  if (process.getuid?.() !== 0) return { canRun: false, reason: `not root (uid ${process.getuid?.()})` };
  return RUNS;
}

function failed(run: ReturnType<typeof spawnSync>, command: string): string | undefined {
  if ((run.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return `no \`${command}\` on PATH`;
  if (run.error) return run.error.message;
  if (run.status !== 0) return `exit ${run.status ?? run.signal}: ${String(run.stderr).trim()}`;
  return undefined;
}

/**
 * Whether this process may mount inside `unshare -m`: root on Linux, `unshare` present, and a tmpfs mount in a
 * private namespace succeeds (a container without CAP_SYS_ADMIN fails there).
 */
export function probeMountNamespace(): LaneProbe {
  const root = isRoot();
  if (!root.canRun) return root;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-probe-'));
  try {
    const problem = failed(
      spawnSync(
        'unshare',
        ['-m', '--propagation', 'private', 'mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', scratch],
        { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS },
      ),
      'unshare',
    );
    if (problem) return { canRun: false, reason: `no mounts in unshare -m (${problem})` };
    return RUNS;
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/**
 * Whether uid 65534 can run the fixture through `setpriv`: root on Linux, `setpriv` present, and `nobody` can
 * read the fixture, the built library and its dependencies (a checkout under a 0700 home directory cannot).
 */
export function probeUnprivilegedNode(): LaneProbe {
  const root = isRoot();
  if (!root.canRun) return root;
  const run = spawnSync(
    'setpriv',
    [...dropPrivileges(), process.execPath, CACHE_OPS_FIXTURE, JSON.stringify({ probe: true })],
    { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS, cwd: '/' },
  );
  const problem = failed(run, 'setpriv');
  if (problem) return { canRun: false, reason: `uid ${UNPRIVILEGED_ID} cannot run the fixture (${problem})` };
  if (!run.stdout.includes('"probe":"ok"'))
    return { canRun: false, reason: `fixture probe printed ${JSON.stringify(run.stdout)}` };
  return RUNS;
}

/** The describe title: says why the lane is skipped, so that a skip never reads as a pass. */
export function laneTitle(title: string, probe: LaneProbe): string {
  if (probe.canRun) return title;
  console.warn(`fault lane "${title}" skipped: ${probe.reason}`);
  return `${title} [skipped: ${probe.reason}]`;
}

function dropPrivileges(): string[] {
  return [`--reuid=${UNPRIVILEGED_ID}`, `--regid=${UNPRIVILEGED_ID}`, '--clear-groups'];
}

/** `command` run as uid/gid 65534 with no supplementary groups. */
export function asUnprivileged(command: string[]): string[] {
  return ['setpriv', ...dropPrivileges(), ...command];
}

/**
 * `command` run in a new mount namespace with private propagation, after `mountScript` (POSIX sh, `set -eu`,
 * reading its operands as "$1", "$2", ...). Every mount dies with the namespace when its last process exits,
 * and none ever propagates to the host.
 */
export function inPrivateMounts(mountScript: string, operands: string[], command: string[]): string[] {
  const script = `${mountScript}\nshift ${operands.length}\nexec "$@"`;
  return ['unshare', '-m', '--propagation', 'private', 'sh', '-euc', script, 'sh', ...operands, ...command];
}

/** `node <cache-ops fixture> <config>` */
export function cacheOps(config: unknown): string[] {
  return [process.execPath, CACHE_OPS_FIXTURE, JSON.stringify(config)];
}

export interface Captured {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON lines. */
  lines: Record<string, unknown>[];
}

const running = new Set<ChildProcess>();

/**
 * Runs `command` to completion and captures its output. It gets its own process group, so a timeout (or
 * {@link killLeftovers}) reaches everything it started: unshare, sh and node alike.
 */
export function runCaptured(command: string[], timeoutMs: number): Promise<Captured> {
  const [file, ...args] = command;
  if (!file) throw new Error('empty command');
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, cwd: '/' });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (text: string) => {
    stdout += text;
  });
  child.stderr?.setEncoding('utf8').on('data', (text: string) => {
    stderr += text;
  });
  const timer = setTimeout(() => killGroup(child), timeoutMs);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    // 'close', not 'exit': by then every byte of output has been read.
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      const lines = stdout
        .split('\n')
        .filter((line) => line.trim() !== '')
        .map((line) => JSON.parse(line) as Record<string, unknown>);
      resolve({ code, signal, stdout, stderr, lines });
    });
  });
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {}
}

/** SIGKILLs every child still running (a failed assertion can leave one) and waits until each has exited. */
export async function killLeftovers(): Promise<void> {
  const children = [...running];
  await Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once('close', () => resolve());
          killGroup(child);
        }),
    ),
  );
  running.clear();
}

/** Mount points of THIS (the host's) namespace at or under `dir`: must stay empty, or a mount leaked. */
export function hostMountsUnder(dir: string): string[] {
  const prefix = path.resolve(dir);
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .map((mountPoint) =>
      mountPoint.replace(/\\(\d{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8))),
    )
    .filter((mountPoint) => mountPoint === prefix || mountPoint.startsWith(`${prefix}/`));
}

export interface TreeNode {
  type: 'file' | 'dir' | 'other';
  mode: number;
  uid: number;
  ino: string;
  sizeBytes: string;
  mtimeNs: string;
  ctimeNs: string;
  sha256?: string;
}

/**
 * Every file and directory under `dir` with its metadata (mtime and ctime in ns, inode) and content hash: two
 * equal snapshots mean nothing was written, touched, renamed, created or removed in between.
 */
export function snapshotTree(dir: string): Record<string, TreeNode> {
  const out: Record<string, TreeNode> = {};
  const visit = (absolute: string, relative: string) => {
    const stats = fs.lstatSync(absolute, { bigint: true });
    const type = stats.isFile() ? 'file' : stats.isDirectory() ? 'dir' : 'other';
    out[relative] = {
      type,
      mode: Number(stats.mode),
      uid: Number(stats.uid),
      ino: String(stats.ino),
      sizeBytes: String(stats.size),
      mtimeNs: String(stats.mtimeNs),
      ctimeNs: String(stats.ctimeNs),
      ...(type === 'file'
        ? { sha256: createHash('sha256').update(fs.readFileSync(absolute)).digest('hex') }
        : {}),
    };
    if (type === 'dir') {
      for (const name of fs.readdirSync(absolute).sort()) {
        visit(path.join(absolute, name), relative === '.' ? name : `${relative}/${name}`);
      }
    }
  };
  visit(dir, '.');
  return out;
}

/** One operation's line from the cache-ops fixture. */
export interface OpResult {
  index: number;
  op: string;
  label: string;
  key?: string;
  ok: boolean;
  error?: { name?: string; code?: string; message: string };
  path?: string | null;
  sizeBytes?: number;
  sha256?: string;
  fetchCalls?: number;
  /** getOrExtract: every file and directory under the directory served. */
  files?: string[];
  value?: unknown;
  freeBytes?: number;
  payload?: { sizeBytes: number; sha256: string; ino: number; mtimeMs: number } | null;
  manifest?: string | null;
}

/** The fixture's lines in operation order; throws with the child's stderr if it printed fewer than `expected`. */
export function opResults(run: Captured, expected: number): OpResult[] {
  const results = run.lines as unknown as OpResult[];
  if (run.code !== 0 || results.length !== expected) {
    throw new Error(
      `cache-ops child: exit ${run.code ?? run.signal}, ${results.length} of ${expected} results; ` +
        `stderr ${JSON.stringify(run.stderr)}; stdout ${JSON.stringify(run.stdout)}`,
    );
  }
  return results;
}

/** The line of the operation labelled `label`. */
export function byLabel(results: OpResult[], label: string): OpResult {
  const found = results.find((result) => result.label === label);
  if (!found) throw new Error(`no result labelled "${label}"`);
  return found;
}
