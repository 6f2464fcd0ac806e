import { type Dispatcher, EnvHttpProxyAgent } from 'undici';
import { describeUrl, ProxyError } from './http-errors.js';

/** The dispatcher a fetch sends its requests through, and the proxy it uses for a URL. */
export interface Route {
  readonly dispatcher: Dispatcher;
  /** The proxy's origin (without credentials) for a URL that goes through one, for error messages. */
  proxyFor(url: URL): string | undefined;
}

/** The caller's own dispatcher: which proxy it uses, if any, is its own business. */
export function callerRoute(dispatcher: Dispatcher): Route {
  return { dispatcher, proxyFor: () => undefined };
}

/**
 * An undici `EnvHttpProxyAgent` for the proxies the environment names, read as undici reads them: the lower
 * case variable wins over the upper case one (as in curl), `https_proxy` falls back to `http_proxy`, and
 * `no_proxy`/`NO_PROXY` lists the hosts reached directly.
 *
 * It does as curl does: an `http://` URL is forwarded through an `http://` proxy (`GET http://host/path`),
 * and only `https://` is tunnelled with `CONNECT`. undici tunnels everything by default, and proxies set up
 * as Squid and tinyproxy ship refuse `CONNECT` to any port but 443: every `http://` download failed there.
 */
export function environmentRoute(timeoutMs: number): Route {
  const env = process.env;
  const httpProxy = (env.http_proxy ?? env.HTTP_PROXY) || undefined;
  const httpsProxy = (env.https_proxy ?? env.HTTPS_PROXY) || httpProxy;
  const dispatcher = new EnvHttpProxyAgent({
    // Given explicitly, so that the proxy named in a ProxyError is surely the one undici used.
    httpProxy: httpProxy ?? '',
    httpsProxy: httpsProxy ?? '',
    proxyTunnel: false,
    // undici's own connect timeout (10 s) would otherwise outlast a shorter timeoutMs; the connection to a
    // proxy takes its timeout from the proxy's TLS options, even for an http:// proxy.
    connect: { timeout: timeoutMs },
    proxyTls: { timeout: timeoutMs },
  });
  return {
    dispatcher,
    proxyFor: (url) => proxyOrigin(url.protocol === 'https:' ? httpsProxy : httpProxy),
  };
}

/**
 * The {@link ProxyError} for undici's report of a proxy's refusal, else `undefined`. undici says so only in
 * its messages: a CONNECT answered with another status than 200 is an `AbortError` (though nothing was
 * aborted), a 407 to a forwarded request an `InvalidArgumentError`.
 */
export function proxyRefusal(error: unknown, url: URL, proxy: string | undefined): ProxyError | undefined {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (typeof message !== 'string') return undefined;
  const tunnel = /^Proxy response \((\d{3})\) !== 200 when HTTP Tunneling$/.exec(message);
  if (code === 'UND_ERR_ABORTED' && tunnel) {
    return new ProxyError(Number(tunnel[1]), proxy, describeUrl(url), 'CONNECT', { cause: error });
  }
  if (code === 'UND_ERR_INVALID_ARG' && message === 'Proxy Authentication Required (407)') {
    return new ProxyError(407, proxy, describeUrl(url), 'GET', { cause: error });
  }
  return undefined;
}

/** `scheme://host:port` of a proxy URL: its credentials (`http://user:password@proxy`) are never shown. */
function proxyOrigin(proxyUrl: string | undefined): string | undefined {
  if (proxyUrl === undefined) return undefined;
  try {
    const parsed = new URL(proxyUrl);
    return `${parsed.protocol}//${parsed.host}`;
  } catch {
    return undefined;
  }
}
