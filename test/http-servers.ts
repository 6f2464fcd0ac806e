import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterEach, beforeEach, expect } from 'vitest';
import { removeTempDirs, watchUncaught } from './helpers.js';

/**
 * Real loopback HTTP servers for the httpFetcher tests: each records every request it receives (method,
 * URL, headers, arrival time) and every socket it accepted, so a test can assert how many requests were
 * made, which Range / If-Range / If-None-Match headers they carried, and that a connection was closed.
 */

export interface RecordedRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  /** `performance.now()` when the request arrived. */
  readonly atMs: number;
}

/** `index` is the request's position (0-based) among all requests this server received. */
export type Handler = (
  req: http.IncomingMessage,
  res: http.ServerResponse,
  index: number,
) => void | Promise<void>;

export interface TestServer {
  readonly port: number;
  /** `http://127.0.0.1:<port>` (or the host it was started on). */
  readonly origin: string;
  readonly requests: RecordedRequest[];
  /** Sockets accepted so far; `socketsClosed` counts those that have closed. */
  readonly sockets: Set<net.Socket>;
  readonly socketsClosed: () => number;
  url(pathname: string): string;
  /** Stops listening and destroys every open socket (a stalled request included). */
  close(): Promise<void>;
}

const running = new Set<TestServer>();

/** Closes every server started by {@link startServer} or {@link startProxy} that is still open. */
export async function closeAllServers(): Promise<void> {
  await Promise.all([...running].map((server) => server.close()));
}

export async function startServer(handler: Handler, host = '127.0.0.1'): Promise<TestServer> {
  const requests: RecordedRequest[] = [];
  const server = http.createServer((req, res) => {
    const index = requests.length;
    requests.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      atMs: performance.now(),
    });
    Promise.resolve()
      .then(() => handler(req, res, index))
      .catch(() => res.socket?.destroy());
  });
  return listen(server, requests, host);
}

async function listen(server: http.Server, requests: RecordedRequest[], host: string): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  let closedCount = 0;
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => {
      closedCount += 1;
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  let closing: Promise<void> | undefined;
  const testServer: TestServer = {
    port,
    origin: `http://${host}:${port}`,
    requests,
    sockets,
    socketsClosed: () => closedCount,
    url: (pathname) => `http://${host}:${port}${pathname}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        running.delete(testServer);
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
        server.closeAllConnections();
      });
      return closing;
    },
  };
  running.add(testServer);
  return testServer;
}

/**
 * A forward proxy: absolute-URI requests (httpFetcher's for `http://` URLs) are forwarded with
 * `http.request`, and `CONNECT` (for `https://`) is tunnelled. Each request or tunnel is recorded.
 */
export async function startProxy(): Promise<TestServer> {
  const requests: RecordedRequest[] = [];
  const upstreams = new Set<net.Socket>();
  const record = (req: http.IncomingMessage) =>
    requests.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      atMs: performance.now(),
    });
  const server = http.createServer((req, res) => {
    record(req);
    const forwarded = http.request(req.url ?? '', { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    forwarded.on('socket', (socket) => upstreams.add(socket));
    forwarded.on('error', () => res.socket?.destroy());
    req.pipe(forwarded);
  });
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    record(req);
    const [host = '', port = '80'] = (req.url ?? '').split(':');
    const upstream = net.connect(Number(port), host, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    upstreams.add(upstream);
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    client.on('close', () => upstream.destroy());
  });
  const proxy = await listen(server, requests, '127.0.0.1');
  const closeProxy = proxy.close.bind(proxy);
  return Object.assign(proxy, {
    close() {
      for (const socket of upstreams) socket.destroy();
      return closeProxy();
    },
  });
}

/** The variables httpFetcher takes its proxies from, in both cases. */
const PROXY_VARIABLES = ['HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'http_proxy', 'https_proxy', 'no_proxy'];

/** Clears the proxy variables for a test; the function returned puts back what was there. */
function clearProxyVariables(): () => void {
  const saved = new Map(PROXY_VARIABLES.map((name) => [name, process.env[name]]));
  for (const name of PROXY_VARIABLES) delete process.env[name];
  return () => {
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  };
}

/**
 * Registers, for every test of the file: the proxy variables cleared; afterwards `cleanUp`, every server
 * closed, the variables put back, the tmp dirs removed, and the test failed if an exception went uncaught
 * (an 'error' event without a listener, for one).
 */
export function isolateHttpTests(cleanUp: () => Promise<void> = async () => {}): void {
  let uncaught: ReturnType<typeof watchUncaught>;
  let restoreProxyVariables: () => void;
  beforeEach(() => {
    uncaught = watchUncaught();
    restoreProxyVariables = clearProxyVariables();
  });
  afterEach(async () => {
    try {
      expect(await uncaught.stop(), 'uncaught exceptions during the test').toEqual([]);
    } finally {
      await cleanUp();
      await closeAllServers();
      restoreProxyVariables();
      await removeTempDirs();
    }
  });
}

/** A URL on a port that was just closed: connecting to it is refused. */
export async function closedPortUrl(pathname: string): Promise<string> {
  const server = await startServer(() => {});
  await server.close();
  return server.url(pathname);
}

/** The first byte asked for by `Range: bytes=N-`, or `undefined` when there is no such header. */
export function requestedStart(req: { headers: http.IncomingHttpHeaders }): number | undefined {
  const match = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  return match ? Number(match[1]) : undefined;
}

export interface ServeOptions {
  etag?: string;
  lastModified?: string;
  /** Advertise `Accept-Ranges: bytes`. Default true. */
  acceptRanges?: boolean;
  /** Answer a range request with `200` and the whole payload, like a server without range support. */
  ignoreRange?: boolean;
  /** Answer a range request with a `206` starting this many bytes off where the client asked. */
  rangeShift?: number;
  /** Stop sending once the payload offset reaches this byte; what happens then is `breakWith`. */
  breakAt?: number;
  /** `destroy`: close the socket; `end`: half-close it (FIN) politely; `stall`: send nothing more. */
  breakWith?: 'destroy' | 'end' | 'stall';
  /**
   * Pause between the last byte and the break, so the client has read what was sent: a reset discards
   * data still unread in the client's socket buffer. Default 50.
   */
  breakDelayMs?: number;
}

/**
 * Serves `payload` with `Content-Length`, validators and range support (`If-Range` honoured), and can
 * break the body part-way the way a flaky server or network does.
 */
export function servePayload(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  payload: Buffer,
  options: ServeOptions = {},
): void {
  const size = payload.length;
  const { etag, lastModified } = options;
  let asked = options.ignoreRange ? undefined : requestedStart(req);
  const ifRange = req.headers['if-range'];
  if (asked !== undefined && ifRange !== undefined && ifRange !== etag && ifRange !== lastModified) {
    asked = undefined;
  }
  const start = asked === undefined ? 0 : asked + (options.rangeShift ?? 0);
  const headers: Record<string, string | number> = {
    'content-type': 'application/octet-stream',
    'content-length': size - start,
  };
  if (etag) headers.etag = etag;
  if (lastModified) headers['last-modified'] = lastModified;
  if (options.acceptRanges !== false) headers['accept-ranges'] = 'bytes';
  if (asked !== undefined) headers['content-range'] = `bytes ${start}-${size - 1}/${size}`;
  res.writeHead(asked === undefined ? 200 : 206, headers);
  if (options.breakAt === undefined || options.breakAt >= size) {
    res.end(payload.subarray(start));
    return;
  }
  const sent = payload.subarray(start, Math.max(start, options.breakAt));
  res.write(sent, () => {
    if (options.breakWith === 'stall') return;
    setTimeout(() => {
      if (options.breakWith === 'end') res.socket?.end();
      else res.socket?.destroy();
    }, options.breakDelayMs ?? 50);
  });
}

/** Resolves when `res` can take more data, or when its connection has gone. */
export function drained(res: http.ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
