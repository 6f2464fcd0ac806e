import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { CacheManager, type HttpFetcherOptions, httpFetcher, ProxyError } from '../src/index.js';
import { makeTempDir, patternBytes, rejectionOf, sha256, tmpFilesIn } from './helpers.js';
import { isolateHttpTests, servePayload, startServer } from './http-servers.js';
import {
  acceptsConnections,
  hasTinyproxy,
  startTinyproxy,
  stopAllTinyproxies,
  type Tinyproxy,
  VIA_NAME,
} from './tinyproxy.js';

// httpFetcher behind a real tinyproxy set up as proxies ship: CONNECT to port 443 only. undici's ProxyAgent
// tunnelled every request, so an http:// download failed there with "AbortError: Proxy response (403)".

const KEY = 'payload.bin';
const quick: HttpFetcherOptions = { retryDelayMs: 5, maxRetryDelayMs: 50 };
const payload = patternBytes(300_000, 31);

let root: string;

isolateHttpTests(stopAllTinyproxies);
beforeEach(async () => {
  root = await makeTempDir('payload-cache-proxy-');
});

const cache = () => new CacheManager({ sublayer: 'proxied', root, ttl: Number.POSITIVE_INFINITY });

async function expectNothingPublished(): Promise<void> {
  const dir = path.join(root, 'proxied');
  expect(await fsp.readdir(dir).catch(() => [])).not.toContain(KEY);
  expect(await tmpFilesIn(dir)).toEqual([]);
}

/** The proxy logged exactly these request lines (waiting for them to be written, not for more). */
async function expectLogged(proxy: Tinyproxy, expected: string[]): Promise<void> {
  expect(await proxy.requests(expected.length)).toEqual(expected);
}

const payloadServer = () => startServer((req, res) => servePayload(req, res, payload, { etag: '"p"' }));

// tinyproxy is a Linux program: under Wine the Windows node.exe cannot start it (nor on Windows itself).
const noTinyproxyReason =
  process.platform === 'win32'
    ? ' [skipped: tinyproxy is a Linux program, none runs on Windows or under Wine]'
    : ' [skipped without the tinyproxy binary: apt-get install tinyproxy]';

describe.skipIf(!hasTinyproxy)(
  `httpFetcher through a real tinyproxy${hasTinyproxy ? '' : noTinyproxyReason}`,
  () => {
    for (const variable of ['HTTP_PROXY', 'http_proxy']) {
      it(`${variable}: an http:// download is forwarded by the proxy (GET http://...), not tunnelled`, async () => {
        const server = await payloadServer();
        const proxy = await startTinyproxy();
        process.env[variable] = proxy.origin;
        const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/forwarded.bin'), quick));
        expect(sha256(await fsp.readFile(returned))).toBe(sha256(payload));
        expect(server.requests).toHaveLength(1);
        expect(server.requests[0]?.headers.via).toContain(VIA_NAME);
        await expectLogged(proxy, [`GET ${server.url('/forwarded.bin')}`]);
      });
    }

    it('http_proxy wins over HTTP_PROXY, as in curl', async () => {
      const server = await payloadServer();
      const proxy = await startTinyproxy();
      process.env.HTTP_PROXY = 'http://127.0.0.1:9';
      process.env.http_proxy = proxy.origin;
      await cache().getOrFetch(KEY, httpFetcher(server.url('/lower-case-wins.bin'), quick));
      await expectLogged(proxy, [`GET ${server.url('/lower-case-wins.bin')}`]);
    });

    for (const variable of ['NO_PROXY', 'no_proxy']) {
      it(`${variable}=127.0.0.1 reaches the server directly, never through the proxy`, async () => {
        const server = await payloadServer();
        const proxy = await startTinyproxy();
        process.env.HTTP_PROXY = proxy.origin;
        process.env[variable] = '127.0.0.1';
        await cache().getOrFetch(KEY, httpFetcher(server.url('/direct.bin'), quick));
        expect(server.requests).toHaveLength(1);
        expect(server.requests[0]?.headers.via).toBeUndefined();
        await expectLogged(proxy, []);
      });
    }

    for (const variable of ['HTTPS_PROXY', 'https_proxy']) {
      it(`${variable}: an https:// URL on a port the proxy will not tunnel to is a ProxyError 403, asked once`, async () => {
        const proxy = await startTinyproxy();
        process.env[variable] = `http://user:hunter2@127.0.0.1:${proxy.port}`;
        // No server needed: the proxy refuses the tunnel before it connects anywhere.
        const url = 'https://127.0.0.1:8443/file.bin?token=SECRET';
        const error = await rejectionOf(cache().getOrFetch(KEY, httpFetcher(url, { ...quick, retries: 3 })));
        expect(error).toBeInstanceOf(ProxyError);
        expect(error).toMatchObject({
          code: 'ERR_PROXY',
          status: 403,
          proxy: proxy.origin,
          url: 'https://127.0.0.1:8443/file.bin',
        });
        const message = (error as Error).message;
        expect(message).toContain('CONNECT');
        expect(message).not.toContain('hunter2');
        expect(message).not.toContain('SECRET');
        await expectLogged(proxy, ['CONNECT 127.0.0.1:8443']);
        expect(await proxy.refusedConnects()).toBe(1);
        await expectNothingPublished();
      });
    }

    it("a tunnel the proxy cannot complete (500) is retried like a server's 500, then a ProxyError 500", async (context) => {
      // tinyproxy answers CONNECT with 500 when the target does not accept: port 443 here must be closed.
      if (await acceptsConnections(443)) context.skip('something listens on 127.0.0.1:443');
      const proxy = await startTinyproxy();
      process.env.HTTPS_PROXY = proxy.origin;
      const error = await rejectionOf(
        cache().getOrFetch(KEY, httpFetcher('https://127.0.0.1/unreachable.bin', { ...quick, retries: 2 })),
      );
      expect(error).toBeInstanceOf(ProxyError);
      expect(error).toMatchObject({ status: 500, proxy: proxy.origin });
      await expectLogged(proxy, Array(3).fill('CONNECT 127.0.0.1:443'));
    });

    it('with mirrors, a URL the proxy will not tunnel to is left for the next one, which is forwarded', async () => {
      const server = await payloadServer();
      const proxy = await startTinyproxy();
      process.env.http_proxy = proxy.origin;
      const refused = 'https://127.0.0.1:8443/mirrored.bin';
      const returned = await cache().getOrFetch(
        KEY,
        httpFetcher([refused, server.url('/mirrored.bin')], { ...quick, retries: 3 }),
      );
      expect(sha256(await fsp.readFile(returned))).toBe(sha256(payload));
      await expectLogged(proxy, ['CONNECT 127.0.0.1:8443', `GET ${server.url('/mirrored.bin')}`]);
      expect(server.requests[0]?.headers.via).toContain(VIA_NAME);
    });

    it('a proxy that wants credentials: 407 is a ProxyError, asked once; with them in the URL it works', async () => {
      const server = await payloadServer();
      const proxy = await startTinyproxy(['BasicAuth downloader s3cret']);
      process.env.HTTP_PROXY = proxy.origin;
      const error = await rejectionOf(
        cache().getOrFetch(KEY, httpFetcher(server.url('/guarded.bin'), { ...quick, retries: 3 })),
      );
      expect(error).toBeInstanceOf(ProxyError);
      expect(error).toMatchObject({ code: 'ERR_PROXY', status: 407, proxy: proxy.origin });
      expect((error as Error).message).toContain('credentials');
      await expectLogged(proxy, [`GET ${server.url('/guarded.bin')}`]);
      expect(server.requests).toHaveLength(0);
      await expectNothingPublished();

      process.env.HTTP_PROXY = `http://downloader:s3cret@127.0.0.1:${proxy.port}`;
      const returned = await cache().getOrFetch(KEY, httpFetcher(server.url('/guarded.bin'), quick));
      expect(sha256(await fsp.readFile(returned))).toBe(sha256(payload));
      expect(server.requests[0]?.headers.via).toContain(VIA_NAME);
      // The proxy's credentials are for the proxy: they never reach the server.
      expect(server.requests[0]?.headers['proxy-authorization']).toBeUndefined();
    });

    it('a tunnel refused for want of credentials (407 to CONNECT) is a ProxyError, asked once', async () => {
      const proxy = await startTinyproxy(['BasicAuth downloader s3cret']);
      process.env.https_proxy = proxy.origin;
      const error = await rejectionOf(
        cache().getOrFetch(KEY, httpFetcher('https://127.0.0.1/guarded.bin', { ...quick, retries: 3 })),
      );
      expect(error).toBeInstanceOf(ProxyError);
      expect(error).toMatchObject({ code: 'ERR_PROXY', status: 407, proxy: proxy.origin });
      expect((error as Error).message).toMatch(/CONNECT.*credentials/);
      await expectLogged(proxy, ['CONNECT 127.0.0.1:443']);
    });
  },
);
