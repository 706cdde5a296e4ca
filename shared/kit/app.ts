// The function kit: what every function's Hono app shares — request ids, access log, JSON errors from
// the AppError table, body limits, Bearer scopes with a rate limit, /healthz, /readyz, /metrics and the
// signed POST /events receiver.
import { randomUUID } from 'node:crypto';
import { type Context, Hono, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { z } from 'zod';
import type { ApiToken, Config, FunctionName, Scope } from '../config.js';
import { AppError, errnoOf, isAppError } from '../errors.js';
import type { CloudEvent, EventType } from '../events/envelope.js';
import type { Inbox } from '../events/inbox.js';
import type { Outbox } from '../events/outbox.js';
import type { Logger } from '../log.js';
import { counter, DURATION_BUCKETS_S, histogram, type MetricsRegistry } from '../metrics.js';
import { type ReadyCheck, runChecks } from '../readiness.js';
import type { ProjectRegistry } from '../registry.js';
import { createAuthenticator, createRateLimiter, type DenialReason, requireScopeOf } from './auth.js';
import { allowedMethodsOf, answerUnrouted } from './methods.js';
import { postureCheck } from './security.js';

/** Why a request got its 401 or 403 (the access log says it; the answer's body says it its own way). */
export interface Denial {
  reason: DenialReason;
  missingScope?: string;
}

export type AppEnv = { Variables: { requestId: string; token?: ApiToken; denial?: Denial } };
export type App = Hono<AppEnv>;

export interface EventAck {
  status?: 200 | 202;
  body?: Record<string, unknown>;
}
/** A handler of one event type: the inbox has validated `event.data` against that type's schema. */
export type EventHandler<T extends EventType = EventType> = (
  event: CloudEvent<T>,
) => Promise<EventAck | undefined>;
export type EventHandlers = { [T in EventType]?: EventHandler<T> };

/**
 * An error's status as Hono types it. The one code outside Hono's list is nginx's 499 (client closed),
 * which nobody reads but logs and metrics count.
 */
export function httpStatusOf(error: AppError): ContentfulStatusCode {
  return error.status as ContentfulStatusCode;
}

export interface KitOptions {
  name: FunctionName;
  config: Config;
  log: Logger;
  metrics: MetricsRegistry;
  inbox: Inbox;
  outbox: Outbox;
  checks: () => readonly ReadyCheck[];
  handlers: EventHandlers;
  /**
   * What /readyz's security warnings look at beyond the config's sinks: the process environment
   * (NODE_TLS_REJECT_UNAUTHORIZED) and the registry whose database URLs this function connects to.
   */
  posture?: { env?: NodeJS.ProcessEnv; registry?: ProjectRegistry };
}

export interface Kit {
  app: App;
  /** Bearer token with `scope` (admin implies all), rate limited per token. */
  requireScope(scope: Scope): MiddlewareHandler<AppEnv>;
}

const JSON_TYPES = ['application/json', 'application/cloudevents+json'];

/** An event id in a query (`?after=`, `?id=`): what flux-ops emits (evt_<uuid>) and the CLI accepts. */
const EVENT_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

function eventIdQuery(c: Context<AppEnv>, name: 'after' | 'id'): string | undefined {
  const value = c.req.query(name);
  if (value === undefined || value === '') return undefined;
  if (EVENT_ID_RE.test(value)) return value;
  const shown = JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}…` : value);
  throw new AppError(
    'invalid_id',
    `${name}=${shown} is not an event id (at most 128 letters, digits and ._:-)`,
  );
}

/** The most events one GET /events/recent returns (the newest). */
export const RECENT_EVENTS_MAX = 1000;

/** `?since=` as epoch ms: an ISO 8601 time with a zone (what the CLI sends). */
function sinceQuery(c: Context<AppEnv>): number | undefined {
  const value = c.req.query('since');
  if (value === undefined || value === '') return undefined;
  const ms = /^\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:\d{2})$/.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) {
    const shown = JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}…` : value);
    throw new AppError(
      'bad_request',
      `since=${shown} is not an ISO 8601 time with a zone, e.g. 2026-12-01T10:00:00Z`,
    );
  }
  return ms;
}

export function errorBody(error: AppError, requestId?: string): Record<string, unknown> {
  return { ...error.toJSON(), ...(requestId ? { requestId } : {}) };
}

/**
 * The request's client went away: the body stream failed because the connection closed (the node
 * server aborts the request's signal then; Node's own error for it is ECONNRESET "aborted").
 */
export function isClientAbort(c: Context, error: unknown): boolean {
  if (isAppError(error)) return false;
  return (
    c.req.raw.signal.aborted || (errnoOf(error) === 'ECONNRESET' && (error as Error).message === 'aborted')
  );
}

/** 405 with Allow, 204 for OPTIONS, 404 or 501 for a request no route of the door matched. */
export function answerUnroutedWith(
  c: Context,
  allowed: readonly string[],
  requestId: string | undefined,
): Response {
  const answer = answerUnrouted(c.req.method, c.req.path, allowed);
  if (answer.kind === 'options') {
    c.header('Allow', answer.allow.join(', '));
    return c.body(null, 204);
  }
  if (answer.allow) c.header('Allow', answer.allow.join(', '));
  return c.json(errorBody(answer.error, requestId), httpStatusOf(answer.error));
}

export function respondError(c: Context<AppEnv>, error: AppError): Response {
  if (error.retryAfterSeconds !== undefined)
    c.header('Retry-After', String(Math.ceil(error.retryAfterSeconds)));
  return c.json(errorBody(error, c.get('requestId')), httpStatusOf(error));
}

/** Parses a JSON body against `schema`: 415 for another content type, 400 for bad JSON or fields. */
export async function readJson<T>(
  c: Context<AppEnv>,
  schema: z.ZodType<T>,
  options: { emptyIsObject?: boolean } = {},
): Promise<T> {
  const text = await c.req.text();
  let value: unknown = {};
  if (text.trim() !== '' || !options.emptyIsObject) {
    const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
    if (!JSON_TYPES.includes(type)) {
      throw new AppError(
        'unsupported_media_type',
        `send Content-Type: application/json (got ${JSON.stringify(type.slice(0, 60) || 'none')})`,
      );
    }
    try {
      value = JSON.parse(text);
    } catch {
      throw new AppError('bad_request', 'the body is not valid JSON');
    }
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new AppError('bad_request', `invalid body: ${issue?.path.join('.') || 'body'}: ${issue?.message}`);
  }
  return parsed.data;
}

// One bucket per token per process: kits built from the same config (the all-in-one process mounts five)
// share it, so a token gets FLUX_RATE_LIMIT_PER_MINUTE in all, not once per function.
const limiters = new WeakMap<Config, ReturnType<typeof createRateLimiter>>();
function limiterFor(config: Config): ReturnType<typeof createRateLimiter> {
  let limiter = limiters.get(config);
  if (!limiter) {
    limiter = createRateLimiter(config.FLUX_RATE_LIMIT_PER_MINUTE);
    limiters.set(config, limiter);
  }
  return limiter;
}

export function createKit(options: KitOptions): Kit {
  const { config, log, metrics, name } = options;
  const app: App = new Hono<AppEnv>();
  const authenticator = createAuthenticator(config.FLUX_API_TOKENS);
  const limiter = limiterFor(config);
  const requests = counter(
    metrics,
    'flux_http_requests_total',
    'HTTP requests by function, route and status',
    ['fn', 'method', 'route', 'status'],
  );
  const durations = histogram(
    metrics,
    'flux_http_request_duration_seconds',
    'HTTP request duration',
    ['fn', 'method', 'route'],
    DURATION_BUCKETS_S,
  );

  app.use(async function requestContext(c, next) {
    const offered = c.req.header('x-request-id');
    const requestId = offered && /^[A-Za-z0-9._-]{1,64}$/.test(offered) ? offered : randomUUID();
    c.set('requestId', requestId);
    c.header('x-request-id', requestId);
    const started = performance.now();
    await next();
    const seconds = (performance.now() - started) / 1000;
    const route = c.req.routePath || 'unmatched';
    requests.inc({ fn: name, method: c.req.method, route, status: String(c.res.status) });
    durations.observe({ fn: name, method: c.req.method, route }, seconds);
    const token = c.get('token');
    const denial = c.get('denial');
    if (token || denial) {
      // The access log: who (token id, never the token; "none" when no token was accepted), what, outcome,
      // how long, and for a 401 or 403 why.
      log.info(
        {
          requestId,
          tokenId: token?.id ?? 'none',
          method: c.req.method,
          route,
          path: c.req.path.slice(0, 256),
          status: c.res.status,
          ms: Math.round(seconds * 1000),
          ...(denial ? { reason: denial.reason } : {}),
          ...(denial?.missingScope ? { missingScope: denial.missingScope } : {}),
        },
        'access',
      );
    }
  });

  app.use(
    bodyLimit({
      maxSize: config.FLUX_BODY_LIMIT_BYTES,
      onError: () => {
        throw new AppError(
          'payload_too_large',
          `the body exceeds FLUX_BODY_LIMIT_BYTES (${config.FLUX_BODY_LIMIT_BYTES} bytes)`,
        );
      },
    }),
  );

  app.onError((error, c) => {
    if (isClientAbort(c, error)) {
      // The client went away mid-request (most often mid-body): its doing, not a fault of ours.
      log.info(
        { requestId: c.get('requestId'), method: c.req.method, route: c.req.routePath },
        'client closed',
      );
      return respondError(
        c,
        new AppError('client_closed', 'the client closed the connection', { cause: error }),
      );
    }
    if (isAppError(error)) {
      if (error.code === 'forbidden' && typeof error.details?.missingScope === 'string')
        c.set('denial', { reason: 'scope_missing', missingScope: error.details.missingScope });
      else if (error.code === 'signature_invalid') c.set('denial', { reason: 'signature_invalid' });
      if (error.status >= 500)
        log.error({ requestId: c.get('requestId'), code: error.code, err: error }, error.message);
      return respondError(c, error);
    }
    if (error instanceof HTTPException) {
      const code =
        error.status === 413 ? 'payload_too_large' : error.status === 404 ? 'not_found' : 'bad_request';
      return respondError(c, new AppError(code, error.message || `HTTP ${error.status}`));
    }
    log.error({ requestId: c.get('requestId'), err: error }, 'unhandled error');
    return respondError(
      c,
      new AppError('internal', `internal error (request ${c.get('requestId')}); see the ${name} logs`),
    );
  });

  const allowedMethods = allowedMethodsOf(app);
  app.notFound(function unrouted(c) {
    return answerUnroutedWith(c, allowedMethods(c.req.path), c.get('requestId'));
  });

  function requireScope(scope: Scope): MiddlewareHandler<AppEnv> {
    return async function bearerScope(c, next) {
      const outcome = authenticator.check(c.req.header('authorization'));
      if (!outcome.ok) {
        c.set('denial', { reason: outcome.reason });
        throw outcome.error;
      }
      const { token } = outcome;
      c.set('token', token);
      const rate = limiter.take(token.id);
      c.header('RateLimit-Limit', String(rate.limit));
      c.header('RateLimit-Remaining', String(rate.remaining));
      c.header('RateLimit-Reset', String(rate.resetSeconds));
      if (!rate.allowed) {
        throw new AppError(
          'rate_limited',
          `token "${token.id}" exceeded FLUX_RATE_LIMIT_PER_MINUTE (${rate.limit}/min)`,
          {
            retryAfterSeconds: rate.resetSeconds,
          },
        );
      }
      requireScopeOf(token, scope);
      await next();
    };
  }

  app.get('/healthz', (c) => c.json({ ok: true, fn: name }));

  app.get('/readyz', async (c) => {
    const result = await runChecks([
      ...options.checks(),
      postureCheck({ name, config, ...(options.posture ?? {}) }),
    ]);
    // Sinks are reported, never a reason to be unready: a restart does not bring a receiver back.
    const sinks = await options.outbox.sinkStates();
    return c.json({ ...result, fn: name, outboxDepth: options.outbox.depth(), sinks }, result.ok ? 200 : 503);
  });

  app.get('/metrics', async (c) => {
    c.header('content-type', metrics.contentType);
    return c.body(await metrics.metrics());
  });

  app.post('/events', async (c) => {
    const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
    if (!JSON_TYPES.includes(type)) {
      throw new AppError(
        'unsupported_media_type',
        'events are CloudEvents 1.0 structured JSON: Content-Type: application/cloudevents+json',
      );
    }
    const body = await c.req.text();
    const received = await options.inbox.receive(c.req.raw.headers, body);
    if (received.kind === 'duplicate')
      return c.json({ ok: true, duplicate: true, id: received.eventId }, 200);
    const { event } = received;
    const handler = options.handlers[event.type as EventType] as EventHandler | undefined;
    try {
      const ack = handler
        ? await handler(event)
        : { status: 202 as const, body: { ignored: true, reason: `${name} does not handle ${event.type}` } };
      await received.commit();
      log.info(
        { requestId: c.get('requestId'), eventId: event.id, type: event.type, subject: event.subject },
        'event received',
      );
      return c.json({ ok: true, id: event.id, ...(ack?.body ?? {}) }, ack?.status ?? 202);
    } catch (error) {
      received.release();
      throw error;
    }
  });

  app.get('/events/dead', requireScope('events'), async (c) => {
    const dead = await options.outbox.deadLetters();
    return c.json({
      deadLetters: dead.map((d) => ({
        id: d.event.id,
        type: d.event.type,
        subject: d.event.subject,
        sink: d.sink.shown,
        attempts: d.attempts,
        lastStatus: d.lastStatus ?? null,
        lastError: d.lastError ?? null,
        deadAt: d.deadAt,
      })),
    });
  });

  // Events this function emitted (its event log, so they outlive a restart), newest last, at most
  // RECENT_EVENTS_MAX; `?after=<event id>` returns only later ones (for tailing).
  app.get('/events/recent', requireScope('events'), async (c) => {
    const after = eventIdQuery(c, 'after');
    const recent = await options.outbox.recent();
    const index = after ? recent.findIndex((e) => e.id === after) : -1;
    // A cursor that fell out of the log: everything held is newer than it, and the client is told.
    return c.json({
      events: recent.slice(index + 1).slice(-RECENT_EVENTS_MAX),
      ...(after && index < 0 ? { cursorExpired: true } : {}),
    });
  });

  // Dead letters back to the outbox (all, or `?id=`'s); `?since=<time>` instead sends every logged event
  // of that time or later again, to the sinks that take it now (receivers dedupe by webhook-id).
  app.post('/events/replay', requireScope('events'), async (c) => {
    const since = sinceQuery(c);
    if (since !== undefined) {
      if (c.req.query('id') !== undefined)
        throw new AppError(
          'bad_request',
          'give either since= (logged events) or id= (a dead letter), not both',
        );
      const { events, deliveries } = await options.outbox.replaySince(since);
      return c.json({ ok: true, replayed: deliveries, events, since: new Date(since).toISOString() });
    }
    const replayed = await options.outbox.replay(eventIdQuery(c, 'id'));
    return c.json({ ok: true, replayed });
  });

  return { app, requireScope };
}
