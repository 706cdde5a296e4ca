// The process edge shared by every main.ts: load config (all problems at once, non-zero exit), log it
// redacted, serve, and stop gracefully on SIGTERM/SIGINT with a watchdog.
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { createAdaptorServer, type ServerType } from '@hono/node-server';
import {
  type Config,
  type FunctionName,
  type LoadConfigOptions,
  loadConfig,
  portOf,
  redactConfig,
} from '../config.js';
import { AppError, EXIT, errnoOf, isAppError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import type { ProjectRegistry, ReloadableRegistry } from '../registry.js';
import { notImplemented } from './methods.js';
import { acquireOwnerLocks } from './owner-lock.js';
import { createRuntime, type FunctionApp, type Runtime } from './runtime.js';

export function loadConfigOrExit(env: NodeJS.ProcessEnv, options: LoadConfigOptions = {}): Config {
  try {
    return loadConfig(env, options);
  } catch (error) {
    process.stderr.write(`flux-ops: ${isAppError(error) ? error.message : String(error)}\n`);
    process.exit(EXIT.config);
  }
}

export interface ServeOptions {
  /** The process's name in a start-up error line (`flux-ops <name>: …`). */
  name: string;
  fetch: (request: Request) => Response | Promise<Response>;
  port: number;
  /** The variable the port comes from (a port in use names it). */
  portVariable: string;
  host: string;
  log: Logger;
  config: Config;
  graceMs: number;
  start: () => Promise<void>;
  stop: () => Promise<void>;
  /** The registry of this process: read again on SIGHUP, and watched when it is the file's. */
  registry?: ProjectRegistry;
}

function isReloadable(registry: ProjectRegistry | undefined): registry is ReloadableRegistry {
  return typeof (registry as Partial<ReloadableRegistry> | undefined)?.reload === 'function';
}

/** A raw HTTP/1.1 answer with a JSON error body, for requests that never reach the Hono app. */
function rawErrorResponse(error: AppError): string {
  const body = JSON.stringify(error.toJSON());
  return (
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? ''}\r\n` +
    `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
    `connection: close\r\n\r\n${body}`
  );
}

// Node's parser refuses what it cannot parse before any handler runs (an unknown method like FOO among
// them) and hands CONNECT to a 'connect' listener, hanging up when there is none. Both get a JSON answer
// here: 501 for a method, 400 for a malformed request, Node's own statuses for its size and time limits.
function answerUnparsedRequests(server: ServerType): void {
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    if (error.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const limits: Record<string, string> = {
      HPE_HEADER_OVERFLOW: '431 Request Header Fields Too Large',
      ERR_HTTP_REQUEST_TIMEOUT: '408 Request Timeout',
    };
    const limit = error.code ? limits[error.code] : undefined;
    if (limit) socket.end(`HTTP/1.1 ${limit}\r\nconnection: close\r\n\r\n`);
    else if (error.code === 'HPE_INVALID_METHOD') {
      // The parser stopped before the method ended: the bytes it saw are the method, bounded.
      const raw = (error as { rawPacket?: Buffer }).rawPacket?.toString('latin1') ?? '';
      socket.end(rawErrorResponse(notImplemented(raw.split(/[\s/]/, 1)[0] ?? '')));
    } else socket.end(rawErrorResponse(new AppError('bad_request', 'the request is not valid HTTP/1.1')));
  });
  server.on('connect', (_request: unknown, socket: Duplex) => {
    socket.end(rawErrorResponse(notImplemented('CONNECT')));
  });
}

/** Serves `fetch` on host:port, with JSON answers for what Node refuses before the app sees it. */
export function listen(options: {
  fetch: (request: Request) => Response | Promise<Response>;
  port: number;
  host: string;
}): Promise<ServerType> {
  return new Promise<ServerType>((resolve, reject) => {
    const server = createAdaptorServer({ fetch: options.fetch, hostname: options.host });
    answerUnparsedRequests(server);
    // Until it listens, a bind failure (port in use) is the caller's to report, not an uncaught 'error'.
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/** A bind failure as one line an operator can act on: the port, the host and the variable to change. */
export function listenError(error: unknown, port: number, host: string, portVariable: string): AppError {
  const errno = errnoOf(error);
  const at = `port ${port} on ${host}`;
  if (errno === 'EADDRINUSE')
    return new AppError(
      'conflict',
      `${at} is already in use (is this function already running?): stop that process, or set ${portVariable} to a free port`,
      { cause: error },
    );
  if (errno === 'EACCES')
    return new AppError(
      'config_invalid',
      `this process may not listen on ${at}: set ${portVariable} to a port above 1023`,
      { cause: error },
    );
  if (errno === 'EADDRNOTAVAIL')
    return new AppError('config_invalid', `FLUX_HOST=${host} is no address of this host: fix FLUX_HOST`, {
      cause: error,
    });
  return new AppError('internal', `cannot listen on ${at}: ${(error as Error)?.message ?? String(error)}`, {
    cause: error,
  });
}

export async function serveProcess(options: ServeOptions): Promise<ServerType> {
  const { log } = options;
  // Bound before start-up work (recovery, outbox, watchers) and before the first log line: a port in use
  // stops the process with its one line on stderr, having done nothing. Requests that arrive while it
  // starts wait for start-up to finish.
  let started = false;
  let markStarted!: () => void;
  const ready = new Promise<void>((resolve) => {
    markStarted = resolve;
  });
  const fetch = (request: Request) =>
    started ? options.fetch(request) : ready.then(() => options.fetch(request));
  let server: ServerType;
  try {
    server = await listen({ fetch, port: options.port, host: options.host });
  } catch (error) {
    exitWithStartupError(options.name, listenError(error, options.port, options.host, options.portVariable));
  }
  log.info({ config: redactConfig(options.config) }, 'starting');
  await options.start();

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping: no new requests; finishing in-flight work');
    const watchdog = setTimeout(() => {
      log.error({ graceMs: options.graceMs }, 'shutdown watchdog fired; exiting with work cancelled');
      process.exit(EXIT.tempFail);
    }, options.graceMs + 5_000);
    watchdog.unref();
    server.close();
    try {
      await options.stop();
      log.info('stopped');
      process.exit(EXIT.ok);
    } catch (error) {
      log.error({ err: error }, 'error while stopping');
      process.exit(EXIT.software);
    }
  };
  // `on`, not `once`: a listener must stay installed while we stop, or a library that re-raises the signal
  // when no listener is left (execa's cleanup) kills the process mid-shutdown. `stopping` ignores repeats.
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  // SIGHUP re-reads FLUX_PROJECTS_FILE (without a listener Node would exit on it).
  const { registry } = options;
  if (isReloadable(registry)) {
    const stopWatching = registry.watch(options.config.FLUX_PROJECTS_FILE_POLL_MS);
    server.on('close', stopWatching);
    process.on('SIGHUP', () => {
      if (!stopping) registry.reload('SIGHUP');
    });
  }
  // Signal handlers are in place before the first request is answered (a test, or an orchestrator,
  // may send SIGTERM as soon as /healthz answers).
  log.info({ port: options.port, host: options.host }, 'listening');
  started = true;
  markStarted();
  return server;
}

/** Prints a startup error the operator can act on and exits with its code (78 for configuration). */
export function exitWithStartupError(name: string, error: unknown): never {
  process.stderr.write(`flux-ops ${name}: ${isAppError(error) ? error.message : String(error)}\n`);
  process.exit(isAppError(error) ? error.exitCode : EXIT.software);
}

/**
 * The whole process edge of one function: config from the environment, its runtime and app (any
 * startup error — registry file, CA file, offsite store — printed with its fix and a non-zero exit), then
 * serve on FLUX_<NAME>_PORT with graceful signals.
 */
export async function runFunction(
  name: FunctionName,
  build: (rt: Runtime, config: Config) => FunctionApp,
): Promise<void> {
  const config = loadConfigOrExit(process.env);
  const log = createLogger(name, { level: config.FLUX_LOG_LEVEL });
  let rt: Runtime;
  let fn: FunctionApp;
  try {
    // Before anything touches FLUX_STATE_DIR or the backup root: a second process of this function exits here.
    await acquireOwnerLocks(config, [name], { log });
    rt = createRuntime(name, config, process.env, { log });
    fn = build(rt, config);
  } catch (error) {
    exitWithStartupError(name, error);
  }
  await serveProcess({
    name,
    fetch: fn.app.fetch,
    port: portOf(config, name),
    portVariable: `FLUX_${name.toUpperCase()}_PORT`,
    host: config.FLUX_HOST,
    log: rt.log,
    config,
    graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
    start: fn.start,
    stop: fn.stop,
    registry: rt.registry,
  });
}
