// Which function owns a request path: the one table the all-in-one process and the router share, so the
// CLI talks to one front door whatever the deployment.
import { FUNCTION_NAMES, type FunctionName } from '../../shared/config.js';

export interface Route {
  fn: FunctionName;
  /** The path the function itself serves. */
  path: string;
}

const VERIFY_ROUTE = /^\/api\/cli\/v1\/projects\/[^/]+\/backups\/[^/]+\/verify\/?$/;
const MIGRATE_ROUTE = /^\/api\/cli\/v1\/migrate(\/[^/]+)?\/?$/;
// Exactly the project: with a trailing slash it is no route of migrate (dump says so, as before).
const PROJECT_ROUTE = /^\/api\/cli\/v1\/projects\/[^/]+$/;
const RESTORE_ROUTE = /^\/api\/cli\/v1\/projects\/[^/]+\/(backups\/[^/]+\/restore|restores(\/.*)?)\/?$/;

export function routeOf(pathname: string): Route | undefined {
  // /<fn>/... reaches one function's own surface (its /readyz, /metrics, /events, extra routes).
  const first = pathname.split('/')[1] ?? '';
  if ((FUNCTION_NAMES as readonly string[]).includes(first)) {
    return { fn: first as FunctionName, path: pathname.slice(first.length + 1) || '/' };
  }
  // Migrations, their progress (/migrate/:hash) and the project itself (what the upstream CLI asks first).
  if (MIGRATE_ROUTE.test(pathname) || PROJECT_ROUTE.test(pathname)) return { fn: 'migrate', path: pathname };
  if (VERIFY_ROUTE.test(pathname)) return { fn: 'verify', path: pathname };
  if (RESTORE_ROUTE.test(pathname)) return { fn: 'restore', path: pathname };
  if (pathname.startsWith('/api/cli/v1/projects/') || pathname.startsWith('/api/ops/v1/'))
    return { fn: 'dump', path: pathname };
  if (pathname === '/probes' || pathname.startsWith('/probes/')) return { fn: 'probe', path: pathname };
  return undefined;
}
