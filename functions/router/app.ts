// The router: the single front door of a split deployment. It forwards each request to the function that
// owns its path (routeOf, the same table the all-in-one process uses), streams both bodies without
// buffering, answers 502 naming the function it could not reach, aggregates every function's /readyz, and
// serves the status page.
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { getConnInfo } from '@hono/node-server/conninfo';
import { type Context, Hono } from 'hono';
import { Agent, type Dispatcher, request } from 'undici';
import {
  type Config,
  FUNCTION_NAMES,
  type FunctionName,
  redactUrl,
  UPSTREAM_VARS,
} from '../../shared/config.js';
import { AppError, errnoOf, isAppError } from '../../shared/errors.js';
import { answerUnroutedWith, errorBody, httpStatusOf } from '../../shared/kit/app.js';
import { allowedMethodsOf, isRecognisedMethod, notImplemented } from '../../shared/kit/methods.js';
import type { Logger } from '../../shared/log.js';
import type { MetricsRegistry } from '../../shared/metrics.js';
import { SECOND_MS } from '../../shared/units.js';
import { routeOf } from '../all/routes.js';
import { registerStatusRoutes } from '../dump/status/page.js';
import { routerMetrics } from './metrics.js';

export type Upstreams = Record<FunctionName, string>;

export function upstreamsOf(config: Config): Upstreams {
  const out = {} as Upstreams;
  for (const fn of FUNCTION_NAMES) out[fn] = config[UPSTREAM_VARS[fn]].replace(/\/+$/, '');
  return out;
}

export const CONNECT_TIMEOUT_MS = 5 * SECOND_MS;
export const READY_TIMEOUT_MS = 5 * SECOND_MS;

// RFC 9110 §7.6.1: connection-specific fields are not forwarded. `expect` is answered here, not upstream.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'expect',
]);

const REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/;

export interface RouterOptions {
  upstreams: Upstreams;
  log: Logger;
  metrics: MetricsRegistry;
  connectTimeoutMs?: number;
  readyTimeoutMs?: number;
}

export interface Router {
  app: Hono;
  /** Requests being forwarded right now (bodies still streaming count). */
  inFlight(): number;
  /** Waits up to `graceMs` for in-flight requests, then closes every upstream connection. */
  close(graceMs: number): Promise<void>;
}

function forwardedHeaders(incoming: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  const listed = new Set(
    (incoming.get('connection') ?? '')
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean),
  );
  incoming.forEach((value, name) => {
    if (!HOP_BY_HOP.has(name) && !listed.has(name)) out[name] = value;
  });
  return out;
}

function responseHeaders(raw: Record<string, string | string[] | undefined>): Headers {
  const headers = new Headers();
  const listed = new Set(
    String(raw.connection ?? '')
      .split(',')
      .map((s) => s.trim().toLowerCase())
      .filter(Boolean),
  );
  for (const [name, value] of Object.entries(raw)) {
    if (value === undefined || HOP_BY_HOP.has(name) || listed.has(name)) continue;
    for (const v of Array.isArray(value) ? value : [value]) headers.append(name, v);
  }
  return headers;
}

function clientAddress(c: Context): string | undefined {
  try {
    return getConnInfo(c).remote.address;
  } catch {
    // app.request() in tests has no socket.
    return undefined;
  }
}

export function createRouter(options: RouterOptions): Router {
  const { upstreams, log, metrics } = options;
  const readyTimeoutMs = options.readyTimeoutMs ?? READY_TIMEOUT_MS;
  // No header or body timeout: a synchronous backup create or verify answers when the work is done, and a
  // download may stream for hours; the functions bound their own work (FLUX_*_TIMEOUT_MS).
  const dispatcher: Dispatcher = new Agent({
    connect: { timeout: options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS },
    headersTimeout: 0,
    bodyTimeout: 0,
  });

  const { requests, unavailable, durations } = routerMetrics(metrics);
  let active = 0;
  let idle: (() => void) | undefined;
  const settle = () => {
    active -= 1;
    if (active === 0) idle?.();
  };

  const app = new Hono();

  app.onError((error, c) => {
    const appError = isAppError(error)
      ? error
      : new AppError('internal', 'internal error in the router; see its logs', { cause: error });
    if (!isAppError(error)) log.error({ err: error, path: c.req.path }, 'unhandled router error');
    return c.json(errorBody(appError), httpStatusOf(appError));
  });

  app.get('/healthz', (c) => c.json({ ok: true, fn: 'router' }));

  app.get('/readyz', async (c) => {
    const results = await Promise.all(
      FUNCTION_NAMES.map(async (fn) => {
        const url = `${upstreams[fn]}/readyz`;
        try {
          const res = await request(url, {
            dispatcher,
            signal: AbortSignal.timeout(readyTimeoutMs),
            headers: { accept: 'application/json' },
          });
          const text = await res.body.text();
          let body: Record<string, unknown> = {};
          try {
            body = JSON.parse(text) as Record<string, unknown>;
          } catch {
            body = { detail: `answered ${res.statusCode} without JSON` };
          }
          return [
            fn,
            { ...body, status: res.statusCode, ok: res.statusCode === 200 && body.ok === true },
          ] as const;
        } catch (error) {
          return [
            fn,
            {
              status: 502,
              ok: false,
              url: redactUrl(upstreams[fn]),
              detail: `unreachable at ${redactUrl(upstreams[fn])} (${describeFailure(error)})`,
            },
          ] as const;
        }
      }),
    );
    const ok = results.every(([, r]) => r.ok);
    return c.json({ ok, fn: 'router', functions: Object.fromEntries(results) }, ok ? 200 : 503);
  });

  app.get('/metrics', async (c) => {
    c.header('content-type', metrics.contentType);
    return c.body(await metrics.metrics());
  });

  registerStatusRoutes(app);

  const ownMethods = allowedMethodsOf(app);
  app.all('*', async function forward(c) {
    const url = new URL(c.req.url);
    const route = routeOf(url.pathname);
    if (!route) return answerUnroutedWith(c, ownMethods(url.pathname), undefined);
    // A method no function implements is answered here; the others go on, so the function's route table
    // says 405 or 404 as its own process would.
    if (!isRecognisedMethod(c.req.method)) return respondUnimplemented(c);
    const offered = c.req.header('x-request-id');
    const requestId = offered && REQUEST_ID.test(offered) ? offered : randomUUID();
    const headers = forwardedHeaders(c.req.raw.headers);
    headers['x-request-id'] = requestId;
    headers['x-forwarded-proto'] = url.protocol.replace(':', '');
    if (c.req.header('host')) headers['x-forwarded-host'] = c.req.header('host')!;
    const client = clientAddress(c);
    if (client)
      headers['x-forwarded-for'] = [c.req.header('x-forwarded-for'), client].filter(Boolean).join(', ');

    const method = c.req.method;
    const hasBody = method !== 'GET' && method !== 'HEAD' && c.req.raw.body !== null;
    const target = `${upstreams[route.fn]}${route.path}${url.search}`;
    const started = performance.now();
    active += 1;
    let settled = false;
    const done = () => {
      if (!settled) {
        settled = true;
        settle();
      }
    };
    let upstream: Dispatcher.ResponseData;
    try {
      upstream = await request(target, {
        dispatcher,
        method: method as Dispatcher.HttpMethod,
        headers,
        // The request body streams through: nothing is read here before the function asks for it.
        body: hasBody ? Readable.fromWeb(c.req.raw.body as import('node:stream/web').ReadableStream) : null,
        signal: c.req.raw.signal,
      });
    } catch (error) {
      done();
      if (c.req.raw.signal.aborted) return new Response(null, { status: 499 });
      unavailable.inc({ fn: route.fn });
      requests.inc({ fn: route.fn, status: '502' });
      const reason = describeFailure(error);
      log.warn({ requestId, fn: route.fn, method, path: url.pathname, reason }, 'function unreachable');
      const body = errorBody(
        new AppError(
          'upstream_unavailable',
          `the ${route.fn} function is unreachable at ${redactUrl(upstreams[route.fn])} (${reason}): ` +
            `check that its service is running and healthy (docker compose ps ${route.fn}) and that ` +
            `${UPSTREAM_VARS[route.fn]} points at it`,
          { details: { upstream: route.fn } },
        ),
        requestId,
      );
      c.header('x-request-id', requestId);
      return c.json({ ...body, upstream: route.fn }, 502);
    }
    durations.observe({ fn: route.fn }, (performance.now() - started) / 1000);
    requests.inc({ fn: route.fn, status: String(upstream.statusCode) });
    log.info(
      {
        requestId,
        fn: route.fn,
        method,
        path: url.pathname,
        status: upstream.statusCode,
        ms: Math.round(performance.now() - started),
      },
      'forwarded',
    );
    const out = responseHeaders(upstream.headers);
    out.set('x-request-id', requestId);
    const bodyless = method === 'HEAD' || upstream.statusCode === 204 || upstream.statusCode === 304;
    if (bodyless) {
      upstream.body.resume();
      done();
      return new Response(null, { status: upstream.statusCode, headers: out });
    }
    // The response body streams back with backpressure; the in-flight count drops when it ends or dies.
    upstream.body.once('close', done);
    return new Response(Readable.toWeb(upstream.body) as ReadableStream, {
      status: upstream.statusCode,
      headers: out,
    });
  });

  return {
    app,
    inFlight: () => active,
    async close(graceMs) {
      if (active > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, graceMs);
          timer.unref();
          idle = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      await dispatcher.destroy();
    },
  };
}

function respondUnimplemented(c: Context): Response {
  const error = notImplemented(c.req.method);
  return c.json(errorBody(error), httpStatusOf(error));
}

/** A short, secret-free reason an upstream could not be reached (errno or undici code). */
function describeFailure(error: unknown): string {
  const cause = (error as { cause?: unknown }).cause;
  const code =
    errnoOf(error) ?? errnoOf(cause) ?? (error as { code?: string }).code ?? (error as Error).name ?? 'error';
  if (code === 'TimeoutError' || code === 'UND_ERR_CONNECT_TIMEOUT') return 'timed out';
  return code;
}
