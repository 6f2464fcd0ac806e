// Where the stampede row's time goes (docs/benchmarks.md section 3): 8 processes ask for one cold key at a
// common instant, with a 300 ms fetcher and a 1 MiB payload, as the bench row does; each prints its own
// timeline in ms from that instant, from the library's diagnostics channels: `start` (its call began),
// `miss` (the unlocked hit check found nothing), `fetch:start`/`fetcher` (the lock winner), `fetch:end`
// (its entry written and published), `lock:wait`/`hit` (a waiter served what the winner published) and
// `done` (the call returned).
// node bench/profile/stampede.mjs [rounds]
import { fork } from 'node:child_process';
import diagnosticsChannel from 'node:diagnostics_channel';
import { fileURLToPath } from 'node:url';
import { distUrl, MiB, makeScratch, nowNs, removeScratch, sleep, waitUntil } from '../lib/common.mjs';

const PROCESSES = 8;
const FETCH_MS = 300;
const CHANNELS = ['miss', 'fetch:start', 'fetch:end', 'lock:wait', 'hit'];

async function child() {
  const { root } = JSON.parse(process.argv[3]);
  const { CacheManager } = await import(distUrl('index.js'));
  const cache = new CacheManager({ sublayer: 'stampede', ttl: Number.POSITIVE_INFINITY, root });
  const payload = Buffer.alloc(MiB, 1);
  const marks = [];
  let startNs = 0n;
  const mark = (name) => marks.push(`${name}@${(Number(nowNs() - startNs) / 1e6).toFixed(1)}`);
  for (const name of CHANNELS) diagnosticsChannel.subscribe(`payload-cache:${name}`, () => mark(name));
  process.send('ready');
  startNs = BigInt(await new Promise((resolve) => process.once('message', resolve)));
  await waitUntil(startNs);
  mark('start');
  await cache.getOrFetch('cold.bin', async () => {
    mark('fetcher');
    await sleep(FETCH_MS);
    return payload;
  });
  mark('done');
  process.send(marks.join(' '));
  process.disconnect();
}

async function main() {
  const rounds = Number(process.argv[2] ?? 3);
  const script = fileURLToPath(import.meta.url);
  for (let round = 1; round <= rounds; round++) {
    const root = makeScratch('profile-stampede');
    const children = Array.from({ length: PROCESSES }, () =>
      fork(script, ['child', JSON.stringify({ root })]),
    );
    const exited = children.map((c) => new Promise((resolve) => c.once('exit', resolve)));
    await Promise.all(children.map((c) => new Promise((resolve) => c.once('message', resolve))));
    const timelines = children.map((c) => new Promise((resolve) => c.once('message', resolve)));
    const startNs = nowNs() + 100_000_000n;
    for (const c of children) c.send(startNs.toString());
    console.log(`round ${round}:\n  ${(await Promise.all(timelines)).join('\n  ')}`);
    await Promise.all(exited);
    removeScratch(root);
  }
}

if (process.argv[2] === 'child') await child();
else await main();
