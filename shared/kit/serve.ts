// The process edge shared by every main.ts: load config (all problems at once, non-zero exit), log it
// redacted, serve, and stop gracefully on SIGTERM/SIGINT with a watchdog.
import { type ServerType, serve } from '@hono/node-server';
import { type Config, type LoadConfigOptions, loadConfig, redactConfig } from '../config.js';
import { EXIT, isAppError } from '../errors.js';
import type { Logger } from '../log.js';

export function loadConfigOrExit(env: NodeJS.ProcessEnv, options: LoadConfigOptions = {}): Config {
  try {
    return loadConfig(env, options);
  } catch (error) {
    process.stderr.write(`flux-ops: ${isAppError(error) ? error.message : String(error)}\n`);
    process.exit(EXIT.config);
  }
}

export interface ServeOptions {
  fetch: (request: Request) => Response | Promise<Response>;
  port: number;
  host: string;
  log: Logger;
  config: Config;
  graceMs: number;
  start: () => Promise<void>;
  stop: () => Promise<void>;
}

export async function serveProcess(options: ServeOptions): Promise<ServerType> {
  const { log } = options;
  log.info({ config: redactConfig(options.config) }, 'starting');
  await options.start();
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: options.fetch, port: options.port, hostname: options.host }, () => resolve(s));
  });
  log.info({ port: options.port, host: options.host }, 'listening');

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
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
  return server;
}
