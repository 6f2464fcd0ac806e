import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { makeTempDir } from './helpers.js';

/**
 * A real tinyproxy on loopback, configured as it ships (and as Squid is): `CONNECT` only to port 443, plain
 * `http://` requests forwarded. The proxy tests need the binary (`apt-get install tinyproxy`) and skip
 * without it.
 */

export const hasTinyproxy = (() => {
  try {
    execFileSync('tinyproxy', ['-v'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/** The name tinyproxy puts in the `Via` header it adds to forwarded requests. */
export const VIA_NAME = 'payload-cache-test-proxy';

export interface Tinyproxy {
  readonly port: number;
  /** `http://127.0.0.1:<port>`. */
  readonly origin: string;
  /**
   * The request lines it logged, in order (`GET http://127.0.0.1:8080/file`, `CONNECT 127.0.0.1:8443`), once
   * there are `atLeast` of them or 10 s have passed: tinyproxy logs a request before it answers, but the
   * test need not rely on that.
   */
  requests(atLeast: number): Promise<string[]>;
  /** How many tunnels it refused (`CONNECT` to a port other than 443). */
  refusedConnects(): Promise<number>;
  stop(): Promise<void>;
}

const running = new Set<Tinyproxy>();

/** Stops every tinyproxy started by {@link startTinyproxy} that still runs. */
export async function stopAllTinyproxies(): Promise<void> {
  await Promise.all([...running].map((proxy) => proxy.stop()));
}

/**
 * Starts tinyproxy in the foreground with a config of its own (plus `extraConfig` lines, e.g. `BasicAuth
 * user secret`) and resolves once its port accepts connections. tinyproxy cannot listen on port 0, so a
 * free port is picked first; another process may take it in between, and then the start is tried again.
 */
export async function startTinyproxy(extraConfig: string[] = []): Promise<Tinyproxy> {
  const dir = await makeTempDir('payload-cache-tinyproxy-');
  const logPath = path.join(dir, 'tinyproxy.log');
  let lastFailure = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const config = [
      `Port ${port}`,
      'Listen 127.0.0.1',
      'Timeout 60',
      `LogFile "${logPath}"`,
      'LogLevel Info',
      'MaxClients 50',
      'Allow 127.0.0.1',
      'ConnectPort 443',
      `ViaProxyName "${VIA_NAME}"`,
      ...extraConfig,
    ];
    const configPath = path.join(dir, 'tinyproxy.conf');
    await fsp.rm(logPath, { force: true });
    await fsp.writeFile(configPath, `${config.join('\n')}\n`);
    const child = spawn('tinyproxy', ['-d', '-c', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    if (await listens(port, logPath, exited)) return track(child, exited, port, logPath);
    child.kill('SIGKILL');
    lastFailure = `${output}${await fsp.readFile(logPath, 'utf8').catch(() => '')}`;
  }
  throw new Error(`tinyproxy did not start:\n${lastFailure}`);
}

function track(child: ChildProcess, exited: Promise<void>, port: number, logPath: string): Tinyproxy {
  const log = () => fsp.readFile(logPath, 'utf8');
  const proxy: Tinyproxy = {
    port,
    origin: `http://127.0.0.1:${port}`,
    async requests(atLeast) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const lines = (await log()).split('\n').flatMap((line) => {
          const match = /Request \(file descriptor \d+\): (\S+ \S+) HTTP\/1\.[01]$/.exec(line);
          return match ? [match[1] as string] : [];
        });
        if (lines.length >= atLeast || Date.now() > deadline) return lines;
        await delay(20);
      }
    },
    async refusedConnects() {
      return (await log()).split('\n').filter((line) => line.includes('Refused CONNECT method')).length;
    },
    async stop() {
      running.delete(proxy);
      // Killed outright: what the tests read is in its log already, written before each answer.
      child.kill('SIGKILL');
      await exited;
    },
  };
  running.add(proxy);
  return proxy;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Whether tinyproxy listens: its log says it reached its main loop (it bound the port: not some other
 * process that took the port meanwhile) and the port accepts a connection, before the process exits.
 */
async function listens(port: number, logPath: string, exited: Promise<void>): Promise<boolean> {
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  // Bounded so that a tinyproxy that neither listens nor exits fails the test instead of hanging it.
  const deadline = Date.now() + 20_000;
  while (!gone && Date.now() < deadline) {
    const log = await fsp.readFile(logPath, 'utf8').catch(() => '');
    if (log.includes('Accepting connections') && (await acceptsConnections(port))) return true;
    await delay(20);
  }
  return false;
}

/** Whether something on 127.0.0.1 accepts a connection on `port`. */
export function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
