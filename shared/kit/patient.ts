// A synchronous answer that outlives a client's header timeout. Node's fetch (undici) gives up after 300 s
// without response headers and after 300 s without a body byte, so a create or verify that takes longer
// failed on the client while it went on at the server. The design: while the work is short, the answer is
// the ordinary one (its own status: 201/200, or 404/409/412/5xx with the JSON error). Once it has run for
// `headersAfterMs`, the status line and headers go out (200, application/json) and then a JSON whitespace
// byte every `heartbeatMs`, so neither timeout fires, and the JSON body follows when the work settles.
// JSON allows leading whitespace, so clients that parse the body (upstream's CLI, ours) read it as is.
// The status is committed by then: a late failure is a 200 whose body is the JSON error with `ok: false`,
// the HTTP status it would have had, and `X-Flux-Deferred: 1` says so. Upstream's CLI refuses such a body
// (it matches none of its answers), so it exits non-zero; it never reads it as a success.
import type { Context } from 'hono';
import { AppError, isAppError } from '../errors.js';
import { SECOND_MS } from '../units.js';
import { type AppEnv, errorBody } from './app.js';

export interface PatientOptions {
  /** How long the work may take before the headers go out without it. */
  headersAfterMs?: number;
  /** The gap between whitespace bytes once they did. */
  heartbeatMs?: number;
  /** Told about a failure that arrived after the headers (the error handler never sees it). */
  onLateError?: (error: AppError) => void;
}

export interface PatientResult {
  status: 200 | 201;
  body: unknown;
  headers?: Record<string, string>;
}

/** Well under the 300 s of undici and the 60 s a reverse proxy often waits between two reads. */
export const PATIENT_HEADERS_AFTER_MS = 20 * SECOND_MS;
export const PATIENT_HEARTBEAT_MS = 15 * SECOND_MS;

const HEARTBEAT = new TextEncoder().encode('\n');

export async function patientJson(
  c: Context<AppEnv>,
  work: Promise<PatientResult>,
  options: PatientOptions = {},
): Promise<Response> {
  const headersAfterMs = options.headersAfterMs ?? PATIENT_HEADERS_AFTER_MS;
  const heartbeatMs = options.heartbeatMs ?? PATIENT_HEARTBEAT_MS;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), headersAfterMs);
  });
  // A rejection here is the ordinary error answer (the app's onError), as for any short request.
  const first = await Promise.race([work, late]).finally(() => clearTimeout(timer));
  if (first !== 'late') {
    for (const [name, value] of Object.entries(first.headers ?? {})) c.header(name, value);
    return c.json(first.body as object, first.status);
  }

  let beat: NodeJS.Timeout | undefined;
  const encoder = new TextEncoder();
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(HEARTBEAT);
      beat = setInterval(() => {
        try {
          controller.enqueue(HEARTBEAT);
        } catch {
          clearInterval(beat);
        }
      }, heartbeatMs);
      const finish = (body: unknown) => {
        clearInterval(beat);
        try {
          controller.enqueue(encoder.encode(JSON.stringify(body)));
          controller.close();
        } catch {
          // The client went away; the work itself was never tied to the connection.
        }
      };
      work.then(
        (result) => finish(result.body),
        (error: unknown) => {
          const appError = isAppError(error)
            ? error
            : new AppError('internal', 'internal error; see the logs', { cause: error });
          options.onLateError?.(appError);
          finish({ ok: false, status: appError.status, ...errorBody(appError, c.get('requestId')) });
        },
      );
    },
    cancel() {
      clearInterval(beat);
    },
  });
  c.header('content-type', 'application/json; charset=utf-8');
  c.header('cache-control', 'private, no-store');
  c.header('x-flux-deferred', '1');
  return c.body(stream, 200);
}
