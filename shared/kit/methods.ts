// What a request's method earns when no route answers it, the same at every door (each function, the
// all-in-one process, the router): 405 with Allow when the path exists under other methods, 404 when it
// does not, 501 for a method no flux-ops server implements (RFC 9110 §15.5.6, §15.6.2, §9.1).
import { LinearRouter } from 'hono/router/linear-router';
import { AppError } from '../errors.js';

/** Methods a flux-ops route can serve (HEAD answers as GET; OPTIONS lists what a path allows). */
export const IMPLEMENTED_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'OPTIONS']);

/** Methods of RFC 9110 (and PATCH, RFC 5789) that are recognised, so a path answers them with 405. */
const RECOGNISED_METHODS: ReadonlySet<string> = new Set([
  ...IMPLEMENTED_METHODS,
  'PUT',
  'DELETE',
  'PATCH',
  'TRACE',
  'CONNECT',
]);

// Methods as printed in a message: a token of at most 32 characters, quoted when odd.
function shown(method: string): string {
  return /^[A-Z]{1,16}$/.test(method) ? method : JSON.stringify(method.slice(0, 32));
}

export function notImplemented(method: string): AppError {
  return new AppError(
    'not_implemented',
    `method ${shown(method)} is not implemented by flux-ops (it serves ${[...IMPLEMENTED_METHODS].join(', ')})`,
  );
}

/** The answer to a method no route serves: 501 unless it is recognised (then 405 or 404 by the path). */
export function isRecognisedMethod(method: string): boolean {
  return RECOGNISED_METHODS.has(method);
}

/**
 * The methods each path of `app` serves, from its registered routes (middleware, registered for every
 * method, is left out). Built on first use, when every route is registered.
 */
export function allowedMethodsOf(app: {
  readonly routes: readonly { method: string; path: string }[];
}): (path: string) => string[] {
  let router: LinearRouter<string> | undefined;
  return function allowedMethods(path) {
    if (!router) {
      router = new LinearRouter<string>();
      for (const r of app.routes) if (r.method !== 'ALL') router.add('ALL', r.path, r.method);
    }
    const methods = new Set(router.match('GET', path)[0].map(([method]) => method));
    if (methods.size === 0) return [];
    if (methods.has('GET')) methods.add('HEAD');
    methods.add('OPTIONS');
    return [...methods].sort();
  };
}

export type MethodAnswer =
  | { kind: 'options'; allow: string[] }
  | { kind: 'error'; error: AppError; allow?: string[] };

/**
 * The answer for `method` on `path` when no route of the door matched: OPTIONS lists the methods,
 * a recognised method on a known path is 405 with Allow, an unknown path 404, an unknown method 501.
 */
export function answerUnrouted(method: string, path: string, allowed: readonly string[]): MethodAnswer {
  if (!isRecognisedMethod(method)) return { kind: 'error', error: notImplemented(method) };
  const shownPath = path.slice(0, 200);
  if (allowed.length === 0)
    return { kind: 'error', error: new AppError('not_found', `no route ${method} ${shownPath}`) };
  if (method === 'OPTIONS') return { kind: 'options', allow: [...allowed] };
  return {
    kind: 'error',
    allow: [...allowed],
    error: new AppError(
      'method_not_allowed',
      `${method} is not allowed on ${shownPath} (allowed: ${allowed.join(', ')})`,
    ),
  };
}
