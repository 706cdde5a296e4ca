// The all-in-one process for local use: all six functions in one Node process on FLUX_PORT, wired to
// each other by signed events over loopback exactly as separate processes would be.
import path from 'node:path';
import { Hono } from 'hono';
import { createCatalog } from '../../shared/catalog/catalog.js';
import { type Config, type EventSink, FUNCTION_NAMES, type FunctionName } from '../../shared/config.js';
import { AppError } from '../../shared/errors.js';
import { answerUnroutedWith, errorBody } from '../../shared/kit/app.js';
import { allowedMethodsOf, IMPLEMENTED_METHODS } from '../../shared/kit/methods.js';
import {
  createRuntime,
  emitFinding,
  ephemeralWebhookSecret,
  type FunctionApp,
  type Runtime,
  recordKeysOf,
} from '../../shared/kit/runtime.js';
import { createLogger, type Logger } from '../../shared/log.js';
import { createRegistry, type MetricsRegistry } from '../../shared/metrics.js';
import { createFileRegistry, type ProjectRegistry, type ReloadableRegistry } from '../../shared/registry.js';
import { createApp as createDump } from '../dump/app.js';
import { registerStatusRoutes } from '../dump/status/page.js';
import { createApp as createMigrate } from '../migrate/app.js';
import { createApp as createProbe } from '../probe/app.js';
import { createApp as createReplicate } from '../replicate/app.js';
import { createApp as createRestore } from '../restore/app.js';
import { createApp as createVerify } from '../verify/app.js';
import { routeOf } from './routes.js';

/** Each function's app factory, by name (the all-in-one mounts them all; tests build them one by one). */
export const FACTORIES: Record<FunctionName, (rt: Runtime) => FunctionApp> = {
  dump: createDump,
  replicate: createReplicate,
  verify: createVerify,
  probe: createProbe,
  migrate: createMigrate,
  restore: createRestore,
};

export interface AllInOneOptions {
  log?: Logger;
  metrics?: MetricsRegistry;
  registry?: ProjectRegistry;
}

export interface AllInOne {
  app: Hono;
  functions: Record<FunctionName, FunctionApp>;
  runtimes: Record<FunctionName, Runtime>;
  /** The registry the six functions share (reloadable when it is the file's). */
  registry: ProjectRegistry | ReloadableRegistry;
  /** Where loopback events are sent; set once the server listens (the port may be chosen by the OS). */
  setBaseUrl(url: string): void;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export function createAllInOne(
  config: Config,
  env: NodeJS.ProcessEnv,
  options: AllInOneOptions = {},
): AllInOne {
  const log = options.log ?? createLogger('flux-ops', { level: config.FLUX_LOG_LEVEL, fn: null });
  const metrics = options.metrics ?? createRegistry();
  const registry = options.registry ?? createFileRegistry(config.FLUX_PROJECTS_FILE, { log });
  const catalog = createCatalog({
    root: config.FLUX_BACKUPS_LOCAL_DIR,
    log,
    cacheFile: path.join(config.FLUX_STATE_DIR, 'catalog', 'all-artifacts.json'),
    keys: recordKeysOf(config),
    // One catalog for all functions: its findings go out once, as dump's (the catalog's owner).
    onFinding: (finding) => {
      const dump = runtimes.dump;
      if (dump) void emitFinding(dump.emit, finding);
    },
  });
  const webhookSecrets =
    config.FLUX_WEBHOOK_SECRETS.length > 0 ? config.FLUX_WEBHOOK_SECRETS : [ephemeralWebhookSecret()];
  if (config.FLUX_WEBHOOK_SECRETS.length === 0)
    log.info('no FLUX_WEBHOOK_SECRETS: loopback events are signed with a per-run secret');
  let baseUrl = `http://127.0.0.1:${config.FLUX_PORT}`;

  const functions = {} as Record<FunctionName, FunctionApp>;
  const runtimes = {} as Record<FunctionName, Runtime>;
  // Each function's events go to every other function that acts on them (plus FLUX_EVENT_SINKS).
  const loopbackSinks = (from: FunctionName): EventSink[] =>
    FUNCTION_NAMES.filter((to) => to !== from && functions[to]?.accepts.length).map((to) => ({
      url: `${baseUrl}/${to}/events`,
      types: [...functions[to].accepts],
      name: `loopback:${to}`,
    }));
  for (const name of FUNCTION_NAMES) {
    runtimes[name] = createRuntime(name, config, env, {
      log: log.child({ fn: name }),
      metrics,
      registry,
      catalog,
      webhookSecrets,
      extraSinks: () => loopbackSinks(name),
      peerUrl: (fn) => `${baseUrl}/${fn}`,
    });
    functions[name] = FACTORIES[name](runtimes[name]);
  }

  const app = new Hono();
  app.get('/healthz', (c) => c.json({ ok: true, fn: 'all' }));
  app.get('/readyz', async (c) => {
    const results = await Promise.all(
      FUNCTION_NAMES.map(async (name) => {
        const res = await functions[name].app.request('/readyz');
        return [name, { status: res.status, ...((await res.json()) as object) }] as const;
      }),
    );
    const ok = results.every(([, r]) => r.status === 200);
    return c.json({ ok, functions: Object.fromEntries(results) }, ok ? 200 : 503);
  });
  // The process's one scrape path: every function's series (they share the registry) and the defaults.
  app.get('/metrics', async (c) => {
    c.header('content-type', metrics.contentType);
    return c.body(await metrics.metrics());
  });
  registerStatusRoutes(app);
  const ownMethods = allowedMethodsOf(app);
  const functionMethods = Object.fromEntries(
    FUNCTION_NAMES.map((name) => [name, allowedMethodsOf(functions[name].app)]),
  ) as Record<FunctionName, (path: string) => string[]>;
  app.all('*', async function mounted(c) {
    const url = new URL(c.req.url);
    const route = routeOf(url.pathname);
    if (!route) return answerUnroutedWith(c, ownMethods(url.pathname), undefined);
    // One scrape path per process: the functions share one registry, so a /<fn>/metrics would be the
    // whole registry again and a scrape of two of them would count every series twice.
    if (route.path === '/metrics' || route.path === '/metrics/') {
      return c.json(
        errorBody(
          new AppError(
            'not_found',
            `the all-in-one process has one scrape path for all its functions: GET /metrics (not ${url.pathname.slice(0, 64)})`,
          ),
        ),
        404,
      );
    }
    // Only methods a route can serve are handed on: fetch's Request refuses TRACE and CONNECT outright,
    // and the function's own route table answers every other method the same way its process would.
    if (!IMPLEMENTED_METHODS.has(c.req.method))
      return answerUnroutedWith(c, functionMethods[route.fn](route.path), undefined);
    url.pathname = route.path;
    return functions[route.fn].app.fetch(new Request(url, c.req.raw));
  });

  return {
    app,
    functions,
    runtimes,
    registry,
    setBaseUrl(url) {
      baseUrl = url.replace(/\/$/, '');
    },
    async start() {
      for (const name of FUNCTION_NAMES) await functions[name].start();
    },
    async stop() {
      // Reverse order of start: consumers stop before producers.
      for (const name of [...FUNCTION_NAMES].reverse()) await functions[name].stop();
    },
  };
}
