// Row 7, HTTP end to end (issue 16): a download through `httpFetcher` from a real loopback nginx
// (sendfile on) into the cache, against `curl -sf -o FILE` followed by `sync -d FILE` (fdatasync) from the
// same server into the same file system: the floor. Whole processes are timed, spawn to exit, and take
// turns; ours also hashes (sha256), writes the manifest and fsyncs the directory, which curl never does.
// Skipped, with the reason, where nginx or curl is not installed (`.ci/run` installs nginx-light).
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { figure, forkChild, MiB, makeScratch, removeScratch, syncDisks } from './lib/common.mjs';
import { formatRatio } from './lib/report.mjs';

const CONTENDERS = ['ours', 'floor'];
const THROUGHPUT_TARGET = 0.9;
const RSS_LIMIT_BYTES = 64 * MiB;
const GNU_TIME = '/usr/bin/time';
const NGINX_CANDIDATES = ['/usr/sbin/nginx', '/usr/bin/nginx'];

/** A file of pseudo-random bytes (incompressible, so no layer can shortcut it), written in 8 MiB blocks. */
function writePayload(filePath, sizeBytes) {
  const block = Buffer.alloc(8 * MiB);
  let state = 0x9e3779b9;
  for (let offset = 0; offset < block.length; offset += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    block.writeUInt32LE(state >>> 0, offset);
  }
  const fd = openSync(filePath, 'w');
  try {
    for (let written = 0; written < sizeBytes; ) {
      const length = Math.min(block.length, sizeBytes - written);
      written += writeSync(fd, block, 0, length);
    }
  } finally {
    closeSync(fd);
  }
}

async function freePort() {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** Starts nginx on a loopback port serving `docRoot`; resolves once it accepts connections. */
async function startNginx(binary, scratch, docRoot) {
  const port = await freePort();
  const conf = path.join(scratch, 'nginx.conf');
  const temp = (name) => path.join(scratch, name);
  writeFileSync(
    conf,
    `daemon off;
worker_processes 1;
pid ${temp('nginx.pid')};
error_log ${temp('error.log')};
user root;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path ${temp('client')};
  proxy_temp_path ${temp('proxy')};
  fastcgi_temp_path ${temp('fastcgi')};
  uwsgi_temp_path ${temp('uwsgi')};
  scgi_temp_path ${temp('scgi')};
  types { application/octet-stream bin; }
  server { listen 127.0.0.1:${port}; root ${docRoot}; }
}
`,
  );
  const server = spawn(binary, ['-c', conf, '-p', scratch], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  server.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  for (;;) {
    if (server.exitCode !== null) throw new Error(`nginx exited: ${stderr}`);
    const connected = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.end();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (connected) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return {
    url: (name) => `http://127.0.0.1:${port}/${name}`,
    stop: async () => {
      server.kill('SIGTERM');
      if (server.exitCode === null) await once(server, 'exit');
    },
  };
}

async function downloadOurs(root, url) {
  const started = performance.now();
  const { next, exited } = forkChild('http-child.mjs', [JSON.stringify({ root, url, key: 'payload.bin' })]);
  const result = await next('result');
  await exited;
  return {
    elapsedMs: performance.now() - started,
    sizeBytes: result.sizeBytes,
    peakRssBytes: result.peakRssGrowthBytes,
    rssMethod: `${result.rssMethod} (growth over the process's baseline)`,
  };
}

function downloadFloor(dir, url) {
  mkdirSync(dir, { recursive: true });
  const target = path.join(dir, 'payload.bin');
  const script = `curl -sf -o '${target}' '${url}' && sync -d '${target}'`;
  const command = existsSync(GNU_TIME) ? [GNU_TIME, '-f', '%M', 'sh', '-c', script] : ['sh', '-c', script];
  const started = performance.now();
  const run = spawnSync(command[0], command.slice(1), { encoding: 'utf8' });
  const elapsedMs = performance.now() - started;
  if (run.status !== 0) throw new Error(`curl failed: ${run.stderr}`);
  const peakKiB = existsSync(GNU_TIME) ? Number(run.stderr.trim().split('\n').at(-1)) : Number.NaN;
  return {
    elapsedMs,
    sizeBytes: statSync(target).size,
    peakRssBytes: peakKiB * 1024,
    rssMethod: 'GNU time (the largest process: curl or sync)',
  };
}

function skipped(reason) {
  return {
    id: 'http',
    title: 'HTTP end to end',
    contenders: CONTENDERS,
    rows: [],
    targets: [],
    notes: [`skipped: ${reason}`],
  };
}

export async function run({ short }) {
  const nginx = NGINX_CANDIDATES.find((candidate) => existsSync(candidate));
  if (!nginx) return skipped('nginx is not installed (apt-get install nginx-light)');
  if (spawnSync('curl', ['--version']).status !== 0) return skipped('curl is not installed');
  const plan = short
    ? [{ sizeBytes: 16 * MiB, iterations: 1 }]
    : [
        { sizeBytes: 512 * MiB, iterations: 5 },
        { sizeBytes: 1024 * MiB, iterations: 5 },
      ];
  const scratch = makeScratch('http');
  const rows = [];
  const targets = [];
  const notes = [];
  const docRoot = path.join(scratch, 'www');
  mkdirSync(docRoot);
  const server = await startNginx(nginx, scratch, docRoot);
  try {
    for (const { sizeBytes, iterations } of plan) {
      const name = `payload-${sizeBytes}.bin`;
      writePayload(path.join(docRoot, name), sizeBytes);
      const url = server.url(name);
      const mbps = { ours: [], floor: [] };
      const rss = { ours: [], floor: [] };
      const methods = {};
      for (let i = 0; i < iterations; i++) {
        const order = i % 2 === 0 ? CONTENDERS : [...CONTENDERS].reverse();
        for (const contender of order) {
          const dir = path.join(scratch, `out-${contender}`);
          rmSync(dir, { recursive: true, force: true });
          syncDisks();
          const result = contender === 'ours' ? await downloadOurs(dir, url) : downloadFloor(dir, url);
          if (result.sizeBytes !== sizeBytes)
            throw new Error(`${contender} stored ${result.sizeBytes} bytes`);
          mbps[contender].push(sizeBytes / 1e6 / (result.elapsedMs / 1000));
          rss[contender].push(result.peakRssBytes / MiB);
          methods[contender] = result.rssMethod;
          rmSync(dir, { recursive: true, force: true });
        }
      }
      rmSync(path.join(docRoot, name));
      const label = `${sizeBytes / MiB} MiB`;
      const ratio = figure(mbps.ours.map((value, i) => value / mbps.floor[i]));
      const worstRss = Math.max(...rss.ours);
      rows.push({
        metric: `${label}: throughput, whole process`,
        unit: 'MB/s',
        values: { ours: figure(mbps.ours), floor: figure(mbps.floor) },
        ratio: { ...ratio, label: 'of curl + fdatasync' },
        target: { name: `>= ${THROUGHPUT_TARGET}x floor`, pass: ratio.value >= THROUGHPUT_TARGET },
      });
      rows.push({
        metric: `${label}: peak RSS`,
        unit: 'MiB',
        values: { ours: figure(rss.ours), floor: figure(rss.floor) },
        target: { name: 'worst < 64 MiB growth', pass: worstRss * MiB < RSS_LIMIT_BYTES },
      });
      targets.push({
        name: `HTTP ${label}: MB/s >= ${THROUGHPUT_TARGET}x curl -o + fdatasync`,
        pass: ratio.value >= THROUGHPUT_TARGET,
        measured: formatRatio(ratio),
      });
      targets.push({
        name: `HTTP ${label}: peak RSS growth < 64 MiB`,
        pass: worstRss * MiB < RSS_LIMIT_BYTES,
        measured: `${worstRss.toFixed(1)} MiB (worst of ${iterations})`,
      });
      notes.push(`${label}: RSS: ours ${methods.ours}, floor ${methods.floor}.`);
    }
  } finally {
    await server.stop();
    removeScratch(scratch);
  }
  notes.push(
    'nginx 127.0.0.1, sendfile on, one worker. ours: a fresh node process, new CacheManager, getOrFetch(key, httpFetcher(url)): lock, stream + sha256, fsync, rename, manifest, directory fsync. floor: curl -sf -o FILE URL && sync -d FILE. MB/s = 10^6 bytes per second of the whole process, spawn to exit; cells: median [min–max]; the ratio is taken per round, then the median.',
  );
  return { id: 'http', title: 'HTTP end to end', contenders: CONTENDERS, rows, targets, notes };
}
