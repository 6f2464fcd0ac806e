#!/usr/bin/env node
// npm run test:pack: installs the package the way a user would and checks that it works there.
// `npm pack`s the repository, installs the tarball into a fresh temporary project (dependencies come from
// the npm registry), and in that project: imports it as ESM and does a real round trip, require()s it from
// CommonJS, type-checks TypeScript consumers with this repository's own compiler, and runs the `bin`.
// Prints PASS/FAIL per check and exits 1 if any check failed. Temporary directories are removed at the end
// (pass --keep to keep them for inspection).
// Usage: npm run test:pack [-- --keep]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const manifest = JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8'));
const keep = process.argv.includes('--keep');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'payload-cache-pack-'));
const packDir = path.join(scratch, 'pack');
const project = path.join(scratch, 'consumer');
const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
const binName = Object.keys(manifest.bin ?? {})[0];
const binTarget = binName ? manifest.bin[binName] : undefined;

// `npm run` exports its own configuration (npm_config_local_prefix points at this repository) and the
// repository's package fields; an npm started from here must see the temporary project, not the repository.
const childEnv = Object.fromEntries(
  Object.entries(process.env).filter(
    ([name]) =>
      !/^npm_(package|lifecycle)_/i.test(name) &&
      !/^npm_config_(local_prefix|prefix|global)$/i.test(name) &&
      name !== 'INIT_CWD',
  ),
);
// The consumers' loopback server must never be reached through a proxy.
childEnv.NO_PROXY = ['127.0.0.1', 'localhost', process.env.NO_PROXY].filter(Boolean).join(',');
childEnv.no_proxy = childEnv.NO_PROXY;

const results = [];

function run(command, args, options = {}) {
  const startedAt = performance.now();
  const result = spawnSync(command, args, {
    cwd: project,
    env: childEnv,
    encoding: 'utf8',
    shell: process.platform === 'win32' && command.startsWith('np'),
    timeout: 5 * 60_000,
    ...options,
  });
  return {
    ...result,
    ms: performance.now() - startedAt,
    output: `${result.stdout ?? ''}${result.stderr ?? ''}`,
  };
}

/** Records and prints one check. `detail` is shown on the line; `output` only when the check failed. */
function report(name, ok, detail = '', output = '') {
  results.push({ name, ok });
  console.log(`${ok ? 'PASS' : 'FAIL'}  ${name}${detail ? `  (${detail})` : ''}`);
  if (!ok && output.trim()) console.log(indent(output.trim()));
}

function indent(text) {
  return text
    .split('\n')
    .slice(0, 60)
    .map((line) => `      ${line}`)
    .join('\n');
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

function write(name, text) {
  const file = path.join(project, name);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, text);
  return file;
}

function packTarball() {
  mkdirSync(packDir);
  const pack = run('npm', ['pack', '--json', '--pack-destination', packDir], { cwd: repo });
  if (pack.status !== 0) {
    report('npm pack', false, `exit ${pack.status}`, pack.output);
    return undefined;
  }
  const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('[')));
  const files = info.files.map((f) => f.path);
  report(
    'npm pack',
    true,
    `${info.filename}: ${files.length} files, ${(info.size / 1024).toFixed(0)} KiB packed, ` +
      `${(info.unpackedSize / 1024).toFixed(0)} KiB unpacked, ${seconds(pack.ms)}`,
  );

  const entry = (target) => target.replace(/^\.\//, '');
  const required = ['package.json', 'README.md', 'LICENSE', entry(manifest.exports['.'].default)];
  required.push(entry(manifest.exports['.'].types));
  const missing = required.filter((file) => !files.includes(file));
  const unwanted = files.filter((file) =>
    /^(src|test|bench|demo|scripts|\.ci|\.github)\/|\.test\./.test(file),
  );
  report(
    'tarball contents',
    missing.length === 0 && unwanted.length === 0,
    missing.length || unwanted.length
      ? `missing: ${missing.join(', ') || 'none'}; should not ship: ${unwanted.join(', ') || 'none'}`
      : `has ${required.join(', ')}; no sources, tests or tooling`,
  );
  const binShipped = binTarget !== undefined && files.includes(entry(binTarget));
  return { tarball: path.join(packDir, info.filename), binShipped };
}

function install(tarball) {
  mkdirSync(project);
  write(
    'package.json',
    `${JSON.stringify({ name: 'pack-test-consumer', version: '1.0.0', private: true }, null, 2)}\n`,
  );
  // The consumer's TypeScript checks need Node's types, as any TypeScript user of this package has them.
  const typesNode = `@types/node@${manifest.devDependencies['@types/node']}`;
  const npmInstall = run('npm', [
    'install',
    tarball,
    typesNode,
    '--no-audit',
    '--no-fund',
    '--loglevel=error',
  ]);
  const installed = existsSync(path.join(project, 'node_modules', manifest.name, 'package.json'));
  report(
    `npm install <tarball> into a fresh project`,
    npmInstall.status === 0 && installed,
    npmInstall.status === 0 ? `${seconds(npmInstall.ms)}, with ${typesNode}` : `exit ${npmInstall.status}`,
    npmInstall.output,
  );
  return npmInstall.status === 0 && installed;
}

// Shared by the ESM and CommonJS consumers: the runtime exports, a real round trip through the cache on
// disk (miss, hit, list, verify), an httpFetcher download from a loopback server, and the error classes.
const ROUND_TRIP = `
const EXPORTS = ['CacheManager', 'httpFetcher', 'HttpStatusError', 'NOT_MODIFIED', 'getCacheDir', 'setCacheDir',
  'resetCacheDir', 'PayloadCacheError', 'BulkPayloadCorruptError', 'InvalidKeyError', 'InvalidOptionsError',
  'LockTimeoutError', 'ForeignFileError', 'NotCacheRootError'];

async function roundTrip(pc, fs, os, path, http, crypto, assert) {
  const missing = EXPORTS.filter((name) => pc[name] === undefined);
  assert.deepEqual(missing, [], 'missing exports: ' + missing.join(', '));
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'payload-cache-consumer-'));
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-length': '5', etag: '"v1"' });
    res.end('hello');
  });
  try {
    const cache = new pc.CacheManager({ root, sublayer: 'pack-test', ttl: 60_000 });
    const bytes = crypto.randomBytes(256 * 1024);
    const stored = await cache.getOrFetch('payload.bin', () => bytes);
    assert.ok(fs.readFileSync(stored).equals(bytes), 'the cached file differs from the bytes fetched');
    const hit = await cache.getOrFetch('payload.bin', () => { throw new Error('a hit must not fetch'); });
    assert.equal(hit, stored);
    const sha256 = crypto.createHash('sha256').update(bytes).digest('hex');
    const [entry] = await cache.list();
    assert.equal(entry.sha256, sha256);
    assert.equal((await cache.verify()).bad.length, 0);
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = 'http://127.0.0.1:' + server.address().port + '/hello.txt';
    const downloaded = await cache.getOrFetch('hello.txt', pc.httpFetcher(url, { retries: 0 }));
    assert.equal(fs.readFileSync(downloaded, 'utf8'), 'hello');
    await assert.rejects(cache.getOrFetch('../escape', () => bytes), (error) =>
      error instanceof pc.InvalidKeyError && error instanceof pc.PayloadCacheError && error.code === 'ERR_INVALID_KEY');
    return 'exports, miss, hit, list, verify, httpFetcher download and error classes';
  } finally {
    server.close();
    fs.rmSync(root, { recursive: true, force: true });
  }
}
`;

function checkEsm() {
  write(
    'esm-consumer.mjs',
    `import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import * as pc from '${manifest.name}';
${ROUND_TRIP}
console.log(await roundTrip(pc, fs, os, path, http, crypto, assert));
`,
  );
  const esm = run(process.execPath, ['esm-consumer.mjs']);
  report('ESM import + CacheManager round trip', esm.status === 0, esm.stdout.trim(), esm.output);
}

function checkRequire() {
  write(
    'cjs-consumer.cjs',
    `'use strict';
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
console.log('process.features.require_module: ' + process.features.require_module);
const pc = require('${manifest.name}');
${ROUND_TRIP}
roundTrip(pc, fs, os, path, http, crypto, assert).then(
  (done) => console.log(done),
  (error) => { console.error(error); process.exitCode = 1; },
);
`,
  );
  const cjs = run(process.execPath, ['cjs-consumer.cjs']);
  const [featureLine, ...rest] = cjs.stdout.trim().split('\n');
  const warned = /ExperimentalWarning/.test(cjs.stderr) ? '; printed an ExperimentalWarning' : '; no warning';
  let hint = '';
  if (/ERR_REQUIRE_ESM/.test(cjs.output)) {
    hint = `\nrequire(esm) is off on node ${process.version}: it needs Node 20.19+ or --experimental-require-module`;
  } else if (/ERR_REQUIRE_ASYNC_MODULE/.test(cjs.output)) {
    hint = '\nthe package (or a dependency) uses top-level await, which require(esm) cannot load';
  }
  report(
    `CommonJS require() on node ${process.version}`,
    cjs.status === 0,
    `${featureLine}${warned}; ${rest.join(' ')}`,
    cjs.output + hint,
  );
}

// Type-level checks: real API use compiles, and deliberate misuse does not (so the types are not `any`).
const TS_CONSUMER = `import {
  BulkPayloadCorruptError,
  CacheManager,
  type CacheManagerOptions,
  type EntryInfo,
  type FetchFn,
  type HttpProgress,
  httpFetcher,
  NOT_MODIFIED,
  PayloadCacheError,
} from '${manifest.name}';

const options: CacheManagerOptions = { sublayer: 'models', ttl: 24 * 60 * 60_000, keepN: 2 };
const cache = new CacheManager(options);
const fetchModel: FetchFn = async (ctx) => (ctx.previous ? NOT_MODIFIED : new Uint8Array([1, 2, 3]));

export async function use(): Promise<string> {
  const file: string = await cache.getOrFetch('model.bin', fetchModel, {
    validator: async ({ sizeBytes }) => {
      if (sizeBytes < 1) throw new Error('empty');
    },
    signal: AbortSignal.timeout(60_000),
    staleIfError: true,
  });
  const viaHttp = httpFetcher('https://example.org/model.bin', {
    onProgress: ({ receivedBytes, totalBytes }: HttpProgress) => receivedBytes / (totalBytes ?? 1),
  });
  await cache.getOrFetch('other.bin', viaHttp);
  const entries: EntryInfo[] = await cache.list();
  const sizes: number[] = entries.map((entry) => entry.sizeBytes);
  try {
    await cache.get('model.bin');
  } catch (error) {
    if (error instanceof BulkPayloadCorruptError) console.log(error.reason);
    if (error instanceof PayloadCacheError) console.log(error.code);
  }
  // @ts-expect-error ttl is a number of milliseconds, not a string
  new CacheManager({ sublayer: 'x', ttl: '1d' });
  // @ts-expect-error getOrFetch resolves to a path (string)
  const wrong: number = await cache.getOrFetch('model.bin', fetchModel);
  return file + sizes.length + wrong;
}
`;

function checkTypes() {
  write('consumer.mts', TS_CONSUMER);
  write('consumer-cjs.cts', TS_CONSUMER.replace('export async function use', 'async function use'));
  const base = { target: 'ES2022', strict: true, noEmit: true, skipLibCheck: false, types: ['node'] };
  const configs = [
    ['nodenext', ['consumer.mts', 'consumer-cjs.cts']],
    ['node16', ['consumer.mts']],
  ];
  for (const [mode, files] of configs) {
    const config = `tsconfig.${mode}.json`;
    write(
      config,
      JSON.stringify({ compilerOptions: { ...base, module: mode, moduleResolution: mode }, files }, null, 2),
    );
    const check = run(process.execPath, [tsc, '-p', config]);
    const what = files.map((f) => (f.endsWith('.cts') ? 'CommonJS .cts' : 'ESM .mts')).join(' + ');
    report(
      `tsc --noEmit, module ${mode} (${what})`,
      check.status === 0,
      check.status === 0 ? `typescript ${tscVersion()}, skipLibCheck false` : `exit ${check.status}`,
      check.output,
    );
  }
}

function tscVersion() {
  return JSON.parse(readFileSync(path.join(repo, 'node_modules', 'typescript', 'package.json'), 'utf8'))
    .version;
}

function checkBin(binShipped) {
  const name = `bin: npx ${binName ?? '<none>'} --help`;
  if (!binName) {
    report(name, false, 'package.json has no "bin"');
    return;
  }
  if (!existsSync(path.join(repo, binTarget))) {
    report(
      name,
      false,
      `${binTarget} does not exist: package.json "bin" points at it but it is not built ` +
        '(src/cli.ts missing or not compiled yet), so the tarball ships no CLI',
    );
    return;
  }
  if (!binShipped) {
    report(name, false, `${binTarget} exists but is not in the tarball (check "files")`);
    return;
  }
  // --no: never fall back to downloading a package of that name from the registry; `--` so that --help
  // reaches the CLI instead of npx.
  const help = run('npx', ['--no', '--', binName, '--help']);
  const ok = help.status === 0 && help.stdout.includes(binName);
  const firstLine = help.stdout.trim().split('\n')[0] ?? '';
  report(
    name,
    ok,
    ok ? `exit 0: "${firstLine}"` : `exit ${help.status}, expected exit 0 and a help text naming ${binName}`,
    help.output,
  );
}

try {
  console.log(`payload-cache pack test: node ${process.version}, scratch ${scratch}`);
  const packed = packTarball();
  if (packed && install(packed.tarball)) {
    checkEsm();
    checkRequire();
    checkTypes();
    checkBin(packed.binShipped);
  }
} catch (error) {
  report('pack test harness', false, String(error?.message ?? error), String(error?.stack ?? ''));
} finally {
  if (keep) console.log(`kept ${scratch}`);
  else rmSync(scratch, { recursive: true, force: true });
}

const failed = results.filter((r) => !r.ok);
console.log(
  failed.length === 0
    ? `\nall ${results.length} checks passed`
    : `\n${failed.length} of ${results.length} checks FAILED: ${failed.map((r) => r.name).join('; ')}`,
);
process.exitCode = failed.length === 0 ? 0 : 1;
