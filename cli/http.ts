// The CLI's HTTP client for the flux-ops front door (the all-in-one process or the router): Bearer auth,
// JSON in and out, server errors `{error, code}` turned into ApiError, network errors into a message that
// says which FLUX_API_BASE was tried and how to set it. The token is only ever put in one header.
import type { Readable } from 'node:stream';
import { Agent, request } from 'undici';
import { redactUrl } from '../shared/config.js';
import { AppError, errnoOf, exitCodeFor } from '../shared/errors.js';

export const DEFAULT_API_BASE = 'http://127.0.0.1:8080';
/** Quick calls (lists, status, polls) give up after this; long synchronous work has no header timeout. */
export const QUICK_TIMEOUT_MS = 60_000;
const CONNECT_TIMEOUT_MS = 10_000;

/** A non-2xx answer of the server: its `{error, code}` and the rest of its JSON body. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly body: Record<string, unknown>,
  ) {
    super(message);
  }

  get exitCode(): number {
    return exitCodeFor(this.code);
  }
}

export interface Endpoint {
  base: string;
  /** Where the base came from, for error messages. */
  baseSource: 'flag' | 'env' | 'default';
  token: string | undefined;
}

export interface JsonOptions {
  body?: unknown;
  query?: Record<string, string | undefined>;
  headers?: Record<string, string>;
  /** Synchronous long work (verify, migrate, probe run): wait for the answer as long as it takes. */
  long?: boolean;
  signal?: AbortSignal;
}

export interface JsonAnswer<T> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T;
}

export interface StreamAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
}

export interface ApiClient {
  readonly endpoint: Endpoint;
  json<T = Record<string, unknown>>(
    method: string,
    path: string,
    options?: JsonOptions,
  ): Promise<JsonAnswer<T>>;
  /** A streamed GET (downloads); the caller consumes or destroys the body. */
  stream(path: string, options?: { signal?: AbortSignal }): Promise<StreamAnswer>;
  close(): Promise<void>;
}

/** Flags win over the environment, the environment over the default. */
export function resolveEndpoint(
  flags: { apiBase?: string | undefined; token?: string | undefined },
  env: NodeJS.ProcessEnv,
): Endpoint {
  const fromEnv = env.FLUX_API_BASE?.trim();
  const raw = flags.apiBase?.trim() || fromEnv || DEFAULT_API_BASE;
  const baseSource = flags.apiBase?.trim() ? 'flag' : fromEnv ? 'env' : 'default';
  const variable = baseSource === 'flag' ? '--api-base' : 'FLUX_API_BASE';
  // host:port without a scheme parses as a URL whose "scheme" is the host (localhost:8080 → localhost:).
  if (/^[\w.-]+:\d+(\/.*)?$/.test(raw) || /^\[[0-9a-f:.]+\]:\d+(\/.*)?$/i.test(raw)) {
    throw new AppError(
      'bad_request',
      `${variable}=${raw} has no scheme: add http:// (${variable}=http://${raw}), or https:// behind TLS`,
    );
  }
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new AppError('bad_request', `${variable} is not a URL; use e.g. ${DEFAULT_API_BASE}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new AppError('bad_request', `${variable} must be http:// or https:// (got ${url.protocol})`);
  }
  const token = flags.token?.trim() || env.FLUX_API_TOKEN?.trim() || undefined;
  return { base: url.toString().replace(/\/+$/, ''), baseSource, token };
}

function describeBase(endpoint: Endpoint): string {
  const shown = redactUrl(endpoint.base).replace(/\/+$/, '');
  switch (endpoint.baseSource) {
    case 'flag':
      return `${shown} (from --api-base)`;
    case 'env':
      return `${shown} (from FLUX_API_BASE)`;
    default:
      return `${shown} (the default; FLUX_API_BASE is not set)`;
  }
}

/** The operator-grade message for a request that never got an HTTP answer. */
export function networkError(endpoint: Endpoint, error: unknown): AppError {
  const code = errnoOf(error) ?? (error as Error)?.name ?? 'error';
  const cause = (error as { cause?: unknown })?.cause;
  const detail = errnoOf(cause) ?? code;
  return new AppError(
    'dependency_unavailable',
    `cannot reach flux-ops at ${describeBase(endpoint)}: ${detail}. Start it (npm start, or the compose stack) ` +
      'or point FLUX_API_BASE (or --api-base) at the front door: the all-in-one process or the router, ' +
      `e.g. export FLUX_API_BASE=${DEFAULT_API_BASE}`,
    { cause: error },
  );
}

/** Builds the ApiError of a non-2xx answer; adds what to do for 401 and for answers that are not ours. */
export function apiError(endpoint: Endpoint, status: number, text: string, path: string): ApiError {
  let body: Record<string, unknown> | undefined;
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed))
      body = parsed as Record<string, unknown>;
  } catch {
    body = undefined;
  }
  const serverMessage = typeof body?.error === 'string' ? body.error : undefined;
  // Every flux-ops error is {error, code}; anything else (another server's 404 page, a proxy's 502) is not
  // flux-ops answering, whatever its status: 69 (unavailable), not the 66 a missing backup gives.
  const isOurs = serverMessage !== undefined && typeof body?.code === 'string';
  const code = isOurs ? (body?.code as string) : 'dependency_unavailable';
  let message: string;
  if (!isOurs) {
    message =
      `HTTP ${status} from ${describeBase(endpoint)} for ${path} is not a flux-ops answer` +
      (text.trim() ? ` (${text.trim().slice(0, 160).replace(/\s+/g, ' ')})` : '') +
      ': point FLUX_API_BASE (or --api-base) at the flux-ops front door, the all-in-one process or the router, ' +
      `e.g. ${DEFAULT_API_BASE}`;
  } else if (status === 401 && body?.tokensConfigured === false) {
    // The server says it has no tokens at all: no token of ours could pass.
    message = `${serverMessage}${endpoint.token ? ' (FLUX_API_TOKEN is set, but no token can pass)' : ''}`;
  } else if (status === 401) {
    message = endpoint.token
      ? `${serverMessage}. FLUX_API_TOKEN is set but the server does not accept it: use a token whose sha256 is listed in the server's FLUX_API_TOKENS`
      : `${serverMessage}. Set FLUX_API_TOKEN to a token whose sha256 is listed in the server's FLUX_API_TOKENS`;
  } else message = serverMessage as string;
  return new ApiError(message, status, code, isOurs && body ? body : { error: message, code });
}

/** The status a deferred answer's body says it would have had, when it is a failure. */
function deferredFailure(text: string): number | undefined {
  try {
    const body = JSON.parse(text) as { ok?: unknown; status?: unknown };
    return body.ok === false && typeof body.status === 'number' && body.status >= 400
      ? body.status
      : undefined;
  } catch {
    return undefined;
  }
}

function header(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const value = headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

export { header as headerOf };

export function createClient(endpoint: Endpoint, userAgent: string): ApiClient {
  const agent = new Agent({ connect: { timeout: CONNECT_TIMEOUT_MS } });

  function urlOf(path: string, query?: Record<string, string | undefined>): string {
    const url = new URL(endpoint.base + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) url.searchParams.set(k, v);
    return url.toString();
  }

  function headersOf(extra: Record<string, string> = {}): Record<string, string> {
    return {
      accept: 'application/json',
      'user-agent': userAgent,
      ...(endpoint.token ? { authorization: `Bearer ${endpoint.token}` } : {}),
      ...extra,
    };
  }

  return {
    endpoint,

    async json<T>(method: string, path: string, options: JsonOptions = {}): Promise<JsonAnswer<T>> {
      const hasBody = options.body !== undefined;
      const timeout = options.long ? 0 : QUICK_TIMEOUT_MS;
      let answer: Awaited<ReturnType<typeof request>>;
      try {
        answer = await request(urlOf(path, options.query), {
          method: method as 'GET',
          dispatcher: agent,
          headers: headersOf({
            ...(hasBody ? { 'content-type': 'application/json' } : {}),
            ...(options.headers ?? {}),
          }),
          ...(hasBody ? { body: JSON.stringify(options.body) } : {}),
          headersTimeout: timeout,
          bodyTimeout: timeout,
          ...(options.signal ? { signal: options.signal } : {}),
        });
      } catch (error) {
        if (options.signal?.aborted) throw error;
        throw networkError(endpoint, error);
      }
      const text = await answer.body.text();
      if (answer.statusCode < 200 || answer.statusCode >= 300) {
        throw apiError(endpoint, answer.statusCode, text, path);
      }
      // A long synchronous call whose headers went out before it ended (shared/kit/patient.ts): a failure
      // then comes as a 200 whose body is the error with the status it would have had.
      const late = header(answer.headers, 'x-flux-deferred') === '1' ? deferredFailure(text) : undefined;
      if (late) throw apiError(endpoint, late, text, path);
      let body: T;
      try {
        body = (text.trim() === '' ? {} : JSON.parse(text)) as T;
      } catch {
        throw new AppError(
          'dependency_unavailable',
          `${describeBase(endpoint)} answered ${path} with something that is not JSON: is FLUX_API_BASE the flux-ops front door?`,
        );
      }
      return { status: answer.statusCode, headers: answer.headers, body };
    },

    async stream(path, options = {}) {
      let answer: Awaited<ReturnType<typeof request>>;
      try {
        answer = await request(urlOf(path), {
          method: 'GET',
          dispatcher: agent,
          headers: headersOf({ accept: 'application/octet-stream, application/json' }),
          headersTimeout: QUICK_TIMEOUT_MS,
          bodyTimeout: QUICK_TIMEOUT_MS,
          ...(options.signal ? { signal: options.signal } : {}),
        });
      } catch (error) {
        if (options.signal?.aborted) throw error;
        throw networkError(endpoint, error);
      }
      if (answer.statusCode < 200 || answer.statusCode >= 300) {
        throw apiError(endpoint, answer.statusCode, await answer.body.text(), path);
      }
      return { status: answer.statusCode, headers: answer.headers, body: answer.body };
    },

    async close() {
      await agent.close().catch(() => undefined);
    },
  };
}
