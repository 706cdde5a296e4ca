// The bad-input suite: one table of hostile or broken requests sent to every route of every front door —
// each of the five functions on its own HTTP server, the router in front of them, and the all-in-one
// process — over raw HTTP (so `..`, `%2e` and `%2F` reach the server as written). Each must get its 4xx
// with the error code and a clear, short message, and the backup roots and state directories must be
// byte-for-byte what they were before (listed and hashed recursively). Setup makes one real backup (real
// Postgres, replicated offsite) and sends one accepted event per function and door, so the roots are not
// empty and replays have something to replay.
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AllInOne, createAllInOne, FACTORIES } from '../functions/all/app.js';
import { createRouter, type Router } from '../functions/router/app.js';
import { FUNCTION_NAMES, type FunctionName } from '../shared/config.js';
import type { ErrorCode } from '../shared/errors.js';
import { type CloudEvent, createEvent, type EventType } from '../shared/events/envelope.js';
import { signWebhook } from '../shared/events/signature.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import { silentLogger } from '../shared/log.js';
import { createRegistry, type MetricsRegistry } from '../shared/metrics.js';
import { type Cluster, createStaticRegistry, type Project } from '../shared/registry.js';
import { seedTenant } from './support/fixtures.js';
import {
  abortMidBody,
  diffSnapshots,
  frontDoorPath,
  type RawRequest,
  type RawResponse,
  rawExchange,
  rawRequest,
  routesOf,
  serveOnLoopback,
  snapshotTree,
} from './support/hardening.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import {
  ADMIN,
  backupCreatedData,
  eventually,
  makeTestEnv,
  makeWebhookSecret,
  type TestEnv,
  type TestRuntime,
  testRuntime,
  WEBHOOK_SECRET,
} from './support/runtime.js';

const BODY_LIMIT_BYTES = 32 * 1024;
const TEN_KB = 10 * 1024;

// The tenant's id starts with letters that have Cyrillic look-alikes, so a look-alike hash is plausible.
const tenantId = `0a1b2c3d-${randomUUID().slice(9)}`;
const TENANT: Project = {
  id: tenantId,
  hash: '0a1b2c3',
  slug: 'bad-input-tenant',
  engine: 'v2_shared',
  cluster: 'shared-1',
  apiHost: 'api--bad-input-tenant--0a1b2c3.flux.test',
};
const CLUSTERS: Cluster[] = [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 1 }];

const CYRILLIC: Record<string, string> = {
  a: 'а',
  c: 'с',
  e: 'е',
  A: 'А',
  B: 'В',
  C: 'С',
  E: 'Е',
  H: 'Н',
  K: 'К',
  M: 'М',
  P: 'Р',
  T: 'Т',
  X: 'Х',
};
/** The same string with its first letter that has a Cyrillic twin replaced by that twin. */
function cyrillicTwin(value: string): string {
  const i = [...value].findIndex((ch) => ch in CYRILLIC);
  if (i < 0) throw new Error(`no Cyrillic look-alike in ${value}`);
  return value.slice(0, i) + CYRILLIC[value[i]!] + value.slice(i + 1);
}
/** Full-width forms (U+FF01…) of ASCII letters and digits. */
const fullWidth = (value: string) =>
  value.replace(/[0-9A-Za-z]/g, (ch) => String.fromCharCode(ch.charCodeAt(0) + 0xfee0));

/** Bad values for a path segment, as written in the request target. `normalised` ones are `..` to a URL parser. */
function badSegments(valid: string): Array<{ name: string; raw: string; normalised?: boolean }> {
  return [
    { name: 'encoded traversal', raw: '..%2F..%2F..%2Fetc%2Fpasswd' },
    { name: 'encoded dot-dot segment', raw: '%2e%2e', normalised: true },
    { name: 'mixed-case encoded dot-dot', raw: '%2E%2e', normalised: true },
    { name: 'dot-dot segment', raw: '..', normalised: true },
    { name: 'encoded dots and slash', raw: '%2e%2e%2f%2e%2e%2fstate' },
    { name: 'double-encoded traversal', raw: '%252e%252e%252f%252e%252e%252fstate' },
    { name: 'backslash traversal', raw: '..%5C..%5Cstate' },
    { name: 'NUL byte', raw: `${valid.slice(0, 3)}%00${valid.slice(3)}` },
    { name: '10 kB', raw: 'a'.repeat(TEN_KB) },
    { name: 'full-width look-alike', raw: encodeURIComponent(fullWidth(valid)) },
    { name: 'Cyrillic look-alike', raw: encodeURIComponent(cyrillicTwin(valid)) },
  ];
}

interface Expected {
  status: number;
  code: ErrorCode;
  message: RegExp;
  /** The Allow header the answer must carry. */
  allow?: string;
}
const NO_ROUTE: Expected = { status: 404, code: 'not_found', message: /^no route (GET|POST) \// };
const BAD_HASH: Expected = {
  status: 400,
  code: 'invalid_id',
  message: /^project hash ".{1,65}" is not 7 lowercase hex characters$/s,
};
const BAD_CLUSTER_NAME: Expected = {
  status: 400,
  code: 'invalid_id',
  message: /^cluster name ".{1,65}" is not a cluster name/s,
};
const BAD_BACKUP_ID: Expected = {
  status: 400,
  code: 'invalid_id',
  message: /^backupId ".{1,65}" is not a ULID or lowercase UUID$/s,
};
const TOO_LARGE: Expected = {
  status: 413,
  code: 'payload_too_large',
  message: new RegExp(`^the body exceeds FLUX_BODY_LIMIT_BYTES \\(${BODY_LIMIT_BYTES} bytes\\)$`),
};
const SIGNATURE = (message: RegExp): Expected => ({ status: 401, code: 'signature_invalid', message });
const BAD_EVENT_DATA = (type: string, field: string): Expected => ({
  status: 422,
  code: 'unprocessable',
  message: new RegExp(`^invalid data for ${type.replaceAll('.', '\\.')}: ${field}: `),
});

interface Case {
  name: string;
  request: RawRequest;
  expected: Expected;
}

interface Door {
  name: string;
  url: string;
  fns: readonly FunctionName[];
  /** The request target of a function-local path at this door. */
  at(fn: FunctionName, local: string): string;
}

/** POST routes that read a JSON body, and those that read none (only the size limit applies to them). */
const JSON_BODY_ROUTES = new Set([
  'dump POST /api/cli/v1/projects/:hash/backups',
  'dump POST /api/ops/v1/catalog/rebuild',
  'dump POST /api/ops/v1/clusters/:name/preflight',
  'verify POST /api/cli/v1/projects/:hash/backups/:backupId/verify',
  'probe POST /probes/run',
  'migrate POST /api/cli/v1/migrate',
  'restore POST /api/cli/v1/projects/:hash/backups/:backupId/restore',
]);
const BODYLESS_POST_ROUTES = new Set(FUNCTION_NAMES.map((fn) => `${fn} POST /events/replay`));
BODYLESS_POST_ROUTES.add('replicate POST /replicate/run');
BODYLESS_POST_ROUTES.add('replicate POST /replicate/upkeep');
BODYLESS_POST_ROUTES.add('restore POST /api/cli/v1/projects/:hash/restores/:restoreId/drop-previous');
const PUBLIC_GET_ROUTES = new Set(['/healthz', '/readyz', '/metrics']);

let pg: PgCluster;
let env: TestEnv;
let aioEnv: TestEnv;
let backupId: string;
const apps = {} as Record<FunctionName, FunctionApp>;
const runtimes = {} as Record<FunctionName, TestRuntime>;
let aioMetrics: MetricsRegistry;
const urls = {} as Record<FunctionName, string>;
let router: Router;
let all: AllInOne;
const closers: Array<() => Promise<void>> = [];
let doors: Door[] = [];
/** The accepted event sent during setup to each door and function, kept to be replayed byte for byte. */
const accepted = new Map<string, RawRequest>();

const OTHER_SECRET = makeWebhookSecret();

function eventRequest(
  target: string,
  body: string,
  options: {
    id?: string;
    secrets?: string[];
    now?: Date;
    signedBody?: string;
    headers?: Record<string, string>;
    omit?: string[];
    chunked?: boolean;
  } = {},
): RawRequest {
  const id = options.id ?? `evt_${randomUUID()}`;
  const signature = signWebhook(
    options.secrets ?? [WEBHOOK_SECRET],
    id,
    options.signedBody ?? body,
    options.now,
  );
  const headers: Record<string, string> = {
    'content-type': 'application/cloudevents+json',
    ...signature,
    ...(options.headers ?? {}),
  };
  for (const name of options.omit ?? []) delete headers[name];
  return { method: 'POST', target, headers, body, ...(options.chunked ? { chunked: true } : {}) };
}

function event<T extends EventType>(type: T, data: Record<string, unknown>): CloudEvent {
  // Built by hand (not createEvent) so the data can break the type's schema on purpose.
  return {
    specversion: '1.0',
    id: `evt_${randomUUID()}`,
    source: '/flux-ops/test',
    type,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    data: data as never,
  };
}

const createdData = (over: Record<string, unknown>) => ({
  ...backupCreatedData(TENANT.id, backupId, { kind: 'tenant_export' }),
  ...over,
});

/** An event every function acknowledges and ignores (nobody acts on flux.backup.failed). */
const ignoredEvent = () =>
  createEvent({
    type: 'flux.backup.failed',
    source: '/flux-ops/test',
    subject: `${TENANT.id}/${backupId}`,
    data: { projectId: TENANT.id, backupId, reason: 'test', error: 'setup event' },
  });

function fill(local: string): string {
  return local.replace(':hash', TENANT.hash).replace(':backupId', backupId);
}

/** Every case of the table for one door. */
function casesFor(door: Door): Case[] {
  const cases: Case[] = [];
  const add = (name: string, request: RawRequest, expected: Expected) =>
    cases.push({ name, request, expected });
  const auth = ADMIN.header;
  const json = { ...auth, 'content-type': 'application/json' };
  const oversized = `{"pad":"${'x'.repeat(BODY_LIMIT_BYTES)}"}`;

  for (const fn of door.fns) {
    const routes = routesOf(apps[fn].app).filter((r) => !PUBLIC_GET_ROUTES.has(r.path));
    for (const route of routes) {
      const id = `${fn} ${route.method} ${route.path}`;
      const at = (local: string) => door.at(fn, local);
      const isEvents = route.path === '/events';

      // Path parameters.
      for (const [param, expected, valid] of [
        [':hash', BAD_HASH, TENANT.hash],
        [':backupId', BAD_BACKUP_ID, backupId],
      ] as const) {
        if (!route.path.includes(param)) continue;
        for (const bad of badSegments(valid)) {
          const local = fill(route.path.replace(param, '\u0000')).replace('\u0000', bad.raw);
          const body = route.method === 'POST' ? { body: '{}' } : {};
          add(
            `${id}: ${param.slice(1)} ${bad.name}`,
            { method: route.method, target: at(local), headers: json, ...body },
            bad.normalised ? NO_ROUTE : expected,
          );
        }
        // Authentication comes before any look at the input.
        const local = fill(route.path.replace(param, '\u0000')).replace('\u0000', '..%2F..%2Fstate');
        add(
          `${id}: ${param.slice(1)} traversal without a token`,
          { method: route.method, target: at(local) },
          {
            status: 401,
            code: 'unauthorized',
            message: /^missing Authorization: Bearer <token>/,
          },
        );
      }

      // An encoded traversal appended to the route never reaches a file.
      const appended = `${fill(route.path)}/..%2F..%2Fstate`;
      const landsOnBackupId = route.method === 'GET' && route.path.endsWith('/backups');
      const landsOnClusterName = route.method === 'GET' && route.path === '/api/ops/v1/clusters';
      // A POST there lands on a GET-only route (a backup by id, a migration's status by hash): 405.
      const landsOnGetRoute =
        route.method === 'POST' && (route.path.endsWith('/backups') || route.path === '/api/cli/v1/migrate');
      add(
        `${id}: encoded traversal appended`,
        {
          method: route.method,
          target: at(appended),
          headers: isEvents ? { 'content-type': 'application/cloudevents+json' } : json,
          ...(route.method === 'POST' ? { body: '{}' } : {}),
        },
        landsOnBackupId
          ? BAD_BACKUP_ID
          : landsOnClusterName
            ? BAD_CLUSTER_NAME
            : landsOnGetRoute
              ? notAllowed('POST', 'GET, HEAD, OPTIONS')
              : NO_ROUTE,
      );

      // Bodies.
      if (route.method === 'POST' && !isEvents) {
        const target = at(fill(route.path));
        for (const chunked of [false, true]) {
          add(
            `${id}: oversized body${chunked ? ' (chunked)' : ''}`,
            { method: 'POST', target, headers: json, body: oversized, chunked },
            TOO_LARGE,
          );
        }
        if (JSON_BODY_ROUTES.has(id)) {
          add(
            `${id}: text/plain`,
            { method: 'POST', target, headers: { ...auth, 'content-type': 'text/plain' }, body: '{}' },
            {
              status: 415,
              code: 'unsupported_media_type',
              message: /^send Content-Type: application\/json \(got "text\/plain"\)$/,
            },
          );
          add(
            `${id}: form-encoded`,
            {
              method: 'POST',
              target,
              headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' },
              body: 'slug=x&hash=y',
            },
            {
              status: 415,
              code: 'unsupported_media_type',
              message: /^send Content-Type: application\/json \(got "application\/x-www-form-urlencoded"\)$/,
            },
          );
          add(
            `${id}: malformed JSON`,
            { method: 'POST', target, headers: json, body: '{"slug": ' },
            { status: 400, code: 'bad_request', message: /^the body is not valid JSON$/ },
          );
          add(
            `${id}: JSON that is not an object`,
            { method: 'POST', target, headers: json, body: '["dryRun"]' },
            { status: 400, code: 'bad_request', message: /^invalid body: body: / },
          );
        } else if (!BODYLESS_POST_ROUTES.has(id)) {
          throw new Error(`${id}: classify this POST route in JSON_BODY_ROUTES or BODYLESS_POST_ROUTES`);
        }
      }

      if (isEvents) cases.push(...eventCases(door, fn));
    }

    // Methods: every path of the function, each method it does not serve (405 with Allow), OPTIONS (204
    // with Allow) and methods no flux-ops server implements (501).
    for (const [local, allow] of allowByPath(apps[fn].app)) {
      // The all-in-one has one scrape path (its own /metrics): a function's /metrics is no route there.
      if (door.name === 'all-in-one' && local === '/metrics') {
        for (const method of ['GET', 'TRACE', 'POST'])
          add(
            `${fn} ${method} /metrics at the all-in-one`,
            { method, target: door.at(fn, local) },
            ONE_SCRAPE_PATH,
          );
        continue;
      }
      const target = door.at(fn, fill(local));
      for (const method of ['TRACE', 'PUT', 'DELETE', 'PATCH', ...(allow.includes('POST') ? [] : ['POST'])])
        add(`${fn} ${method} ${local}`, { method, target, headers: auth }, notAllowed(method, allow));
      add(`${fn} OPTIONS ${local}`, { method: 'OPTIONS', target, headers: auth }, OPTIONS_OK(allow));
      for (const method of ['PROPFIND', 'FOO', 'MKCOL'])
        add(`${fn} ${method} ${local}`, { method, target, headers: auth }, NOT_IMPLEMENTED(method));
    }

    // Route-specific fields and queries.
    const at = (local: string) => door.at(fn, local);
    const invalidBody = (field: string): Expected => ({
      status: 400,
      code: 'bad_request',
      message: new RegExp(`^invalid body: ${field}: `),
    });
    if (fn === 'dump') {
      const create = at(fill('/api/cli/v1/projects/:hash/backups'));
      add(
        'dump create: kind traversal',
        { method: 'POST', target: create, headers: json, body: '{"kind":"../../state"}' },
        invalidBody('kind'),
      );
      add(
        'dump download: source traversal',
        {
          method: 'GET',
          target: at(
            `${fill('/api/cli/v1/projects/:hash/backups/:backupId/download')}?source=..%2F..%2Fstate`,
          ),
          headers: auth,
        },
        { status: 400, code: 'bad_request', message: /^source must be one of / },
      );
    }
    if (fn === 'verify') {
      const verify = at(fill('/api/cli/v1/projects/:hash/backups/:backupId/verify'));
      add(
        'verify: body source traversal',
        { method: 'POST', target: verify, headers: json, body: '{"source":"../../state"}' },
        invalidBody('source'),
      );
      add(
        'verify: query source traversal',
        { method: 'POST', target: `${verify}?source=..%2F..%2Fstate`, headers: json, body: '{}' },
        { status: 400, code: 'bad_request', message: /^source must be one of / },
      );
    }
    if (fn === 'probe') {
      const run = at('/probes/run');
      const badSlug: Expected = {
        status: 400,
        code: 'invalid_id',
        message: /^slug ".{1,65}" is not a project slug/s,
      };
      add(
        'probe run: slug traversal',
        { method: 'POST', target: run, headers: json, body: '{"slug":"../../state"}' },
        badSlug,
      );
      add(
        'probe run: slug Cyrillic look-alike',
        {
          method: 'POST',
          target: run,
          headers: json,
          body: JSON.stringify({ slug: cyrillicTwin(TENANT.slug) }),
        },
        badSlug,
      );
      add(
        'probe run: 10 kB slug',
        { method: 'POST', target: run, headers: json, body: JSON.stringify({ slug: 'a'.repeat(TEN_KB) }) },
        invalidBody('slug'),
      );
      add(
        'probe run: query traversal',
        { method: 'POST', target: `${run}?project=..%2F..%2Fstate`, headers: auth },
        badSlug,
      );
      add(
        'probe run: 10 kB query',
        { method: 'POST', target: `${run}?project=${'a'.repeat(TEN_KB)}`, headers: auth },
        badSlug,
      );
    }
    if (fn === 'migrate') {
      const migrate = at('/api/cli/v1/migrate');
      const body = (over: Record<string, unknown>) =>
        JSON.stringify({ slug: TENANT.slug, hash: TENANT.hash, dryRun: true, ...over });
      add(
        'migrate: hash traversal',
        { method: 'POST', target: migrate, headers: json, body: body({ hash: '../../state' }) },
        BAD_HASH,
      );
      add(
        'migrate: hash Cyrillic look-alike',
        { method: 'POST', target: migrate, headers: json, body: body({ hash: cyrillicTwin(TENANT.hash) }) },
        BAD_HASH,
      );
      add(
        'migrate: hash full-width',
        { method: 'POST', target: migrate, headers: json, body: body({ hash: fullWidth(TENANT.hash) }) },
        BAD_HASH,
      );
      add(
        'migrate: 10 kB hash',
        { method: 'POST', target: migrate, headers: json, body: body({ hash: 'a'.repeat(TEN_KB) }) },
        invalidBody('hash'),
      );
      add(
        'migrate: 10 kB slug',
        { method: 'POST', target: migrate, headers: json, body: body({ slug: 'a'.repeat(TEN_KB) }) },
        invalidBody('slug'),
      );
      add(
        'migrate: unknown field',
        { method: 'POST', target: migrate, headers: json, body: body({ path: '../../state' }) },
        invalidBody('body'),
      );
      add(
        'migrate: dryRun as a string',
        { method: 'POST', target: migrate, headers: json, body: body({ dryRun: 'yes' }) },
        invalidBody('dryRun'),
      );
      add(
        'migrate: slug of another project',
        { method: 'POST', target: migrate, headers: json, body: body({ slug: 'someone-else' }) },
        { status: 400, code: 'bad_request', message: /slug and hash must name the same project$/ },
      );
      add(
        'migrate: unknown project',
        { method: 'POST', target: migrate, headers: json, body: body({ hash: 'fffffff' }) },
        { status: 404, code: 'not_found', message: /^no project with hash fffffff in the registry/ },
      );
    }
    // The kit's event routes: cursors and ids are event ids, nothing else.
    const badEventId: Expected = {
      status: 400,
      code: 'invalid_id',
      message: /^(after|id)=".{1,65}" is not an event id/s,
    };
    add(
      `${fn} events recent: traversal cursor`,
      { method: 'GET', target: at('/events/recent?after=..%2F..%2Fstate'), headers: auth },
      badEventId,
    );
    add(
      `${fn} events recent: 10 kB cursor`,
      { method: 'GET', target: at(`/events/recent?after=${'a'.repeat(TEN_KB)}`), headers: auth },
      badEventId,
    );
    add(
      `${fn} events replay: traversal id`,
      { method: 'POST', target: at('/events/replay?id=..%2F..%2Fdead'), headers: auth },
      badEventId,
    );
    add(
      `${fn} events replay: since traversal`,
      { method: 'POST', target: at('/events/replay?since=..%2F..%2Fstate'), headers: auth },
      { status: 400, code: 'bad_request', message: /^since=".{1,65}" is not an ISO 8601 time with a zone/s },
    );
    add(
      `${fn} events replay: since without a zone`,
      { method: 'POST', target: at('/events/replay?since=2026-12-01T10:00:00'), headers: auth },
      { status: 400, code: 'bad_request', message: /^since="2026-12-01T10:00:00" is not an ISO 8601 time/ },
    );
    add(
      `${fn} events replay: Cyrillic id`,
      { method: 'POST', target: at(`/events/replay?id=${encodeURIComponent('еvt_1')}`), headers: auth },
      badEventId,
    );
  }
  // The door's own routes (the router's and the all-in-one's health, metrics and status page) and paths
  // no route serves.
  if (door.fns.length > 1) {
    for (const local of ['/healthz', '/readyz', '/metrics', '/status']) {
      for (const method of ['TRACE', 'POST', 'DELETE'])
        add(`door ${method} ${local}`, { method, target: local }, notAllowed(method, 'GET, HEAD, OPTIONS'));
      add(`door OPTIONS ${local}`, { method: 'OPTIONS', target: local }, OPTIONS_OK('GET, HEAD, OPTIONS'));
    }
  }
  for (const target of ['/no-such-route', '/api/cli/v1/nothing', '/events/nothing']) {
    for (const method of ['TRACE', 'PUT', 'OPTIONS'])
      add(`${method} ${target}`, { method, target }, NO_ROUTE_FOR(method));
    for (const method of ['PROPFIND', 'FOO'])
      add(`${method} ${target}`, { method, target }, NOT_IMPLEMENTED(method));
  }
  return cases;
}

/** Each path of a function app with the Allow header it must answer other methods with. */
function allowByPath(app: FunctionApp['app']): Map<string, string> {
  const byPath = new Map<string, Set<string>>();
  for (const r of routesOf(app)) {
    const methods = byPath.get(r.path) ?? new Set(['OPTIONS']);
    methods.add(r.method);
    if (r.method === 'GET') methods.add('HEAD');
    byPath.set(r.path, methods);
  }
  return new Map([...byPath].map(([p, methods]) => [p, [...methods].sort().join(', ')]));
}

const notAllowed = (method: string, allow: string): Expected => ({
  status: 405,
  code: 'method_not_allowed',
  message: new RegExp(`^${method} is not allowed on /\\S* \\(allowed: ${allow}\\)$`),
  allow,
});
const NOT_IMPLEMENTED = (method: string): Expected => ({
  status: 501,
  code: 'not_implemented',
  message: new RegExp(
    `^method ${method} is not implemented by flux-ops \\(it serves GET, HEAD, POST, OPTIONS\\)$`,
  ),
});
const ONE_SCRAPE_PATH: Expected = {
  status: 404,
  code: 'not_found',
  message:
    /^the all-in-one process has one scrape path for all its functions: GET \/metrics \(not \/[a-z]+\/metrics\)$/,
};
const NO_ROUTE_FOR = (method: string): Expected => ({
  status: 404,
  code: 'not_found',
  message: new RegExp(`^no route ${method} /`),
});
/** OPTIONS answers 204 with Allow and no body (the code and message are not looked at). */
const OPTIONS_OK = (allow: string): Expected => ({ status: 204, code: 'not_found', message: /^$/, allow });

/** POST /events cases for one function at one door. */
function eventCases(door: Door, fn: FunctionName): Case[] {
  const target = door.at(fn, '/events');
  const cases: Case[] = [];
  const add = (name: string, request: RawRequest, expected: Expected) =>
    cases.push({ name: `${fn} POST /events: ${name}`, request, expected });
  const valid = () => {
    const e = ignoredEvent();
    return { e, body: JSON.stringify(e) };
  };
  const minutes = (n: number) => new Date(Date.now() + n * 60_000);

  {
    const { e, body } = valid();
    add(
      'no signature headers',
      eventRequest(target, body, {
        id: e.id,
        omit: ['webhook-id', 'webhook-timestamp', 'webhook-signature'],
      }),
      SIGNATURE(/^missing webhook-id, webhook-timestamp or webhook-signature header/),
    );
  }
  {
    const { e, body } = valid();
    add(
      'no webhook-signature',
      eventRequest(target, body, { id: e.id, omit: ['webhook-signature'] }),
      SIGNATURE(/^missing webhook-id, webhook-timestamp or webhook-signature header/),
    );
  }
  const mismatch = SIGNATURE(/^no webhook-signature matches a configured secret \(FLUX_WEBHOOK_SECRETS\)$/);
  {
    const { e, body } = valid();
    add(
      'signed with another secret',
      eventRequest(target, body, { id: e.id, secrets: [OTHER_SECRET] }),
      mismatch,
    );
  }
  {
    const { e, body } = valid();
    add(
      'signature of another body',
      eventRequest(target, body, { id: e.id, signedBody: body.replace('setup event', 'other event') }),
      mismatch,
    );
  }
  {
    const { e, body } = valid();
    const request = eventRequest(target, body, { id: e.id });
    request.headers!['webhook-signature'] = request.headers!['webhook-signature']!.replace(/^v1,/, 'v2,');
    add('signature of an unknown scheme', request, mismatch);
  }
  {
    const { e, body } = valid();
    add(
      'expired signature',
      eventRequest(target, body, { id: e.id, now: minutes(-10) }),
      SIGNATURE(/^webhook-timestamp is older than the 300s tolerance$/),
    );
  }
  {
    const { e, body } = valid();
    add(
      'signature from the future',
      eventRequest(target, body, { id: e.id, now: minutes(10) }),
      SIGNATURE(/^webhook-timestamp is more than 300s in the future$/),
    );
  }
  {
    const { e, body } = valid();
    add(
      'timestamp not unix seconds',
      eventRequest(target, body, { id: e.id, headers: { 'webhook-timestamp': 'yesterday' } }),
      SIGNATURE(/^webhook-timestamp must be unix seconds$/),
    );
  }
  add('replayed request', accepted.get(`${door.name} ${fn}`)!, {
    status: 409,
    code: 'event_replayed',
    message: /^webhook-id evt_\S+ was already received with this exact signature \(replay\)$/,
  });
  {
    const e = event('flux.backup.exploded' as EventType, { projectId: TENANT.id });
    add('unknown event type', eventRequest(target, JSON.stringify(e), { id: e.id }), {
      status: 422,
      code: 'unprocessable',
      message: /^unknown event type "flux\.backup\.exploded"; known: /,
    });
  }
  add('malformed JSON', eventRequest(target, '{"specversion":"1.0",'), {
    status: 400,
    code: 'bad_request',
    message: /^body is not JSON/,
  });
  add('not a CloudEvent', eventRequest(target, '{"hello":"world"}'), {
    status: 400,
    code: 'bad_request',
    message: /^not a CloudEvents 1\.0 event: /,
  });
  {
    const { body } = valid();
    add('webhook-id is not the event id', eventRequest(target, body), {
      status: 400,
      code: 'bad_request',
      message: /^webhook-id must equal the CloudEvent id$/,
    });
  }
  {
    const e = { ...ignoredEvent(), id: `evt_${'a'.repeat(TEN_KB)}` };
    add('10 kB event id', eventRequest(target, JSON.stringify(e), { id: e.id }), {
      status: 400,
      code: 'bad_request',
      message: /^not a CloudEvents 1\.0 event: id: /,
    });
  }
  {
    const { e, body } = valid();
    add('text/plain', eventRequest(target, body, { id: e.id, headers: { 'content-type': 'text/plain' } }), {
      status: 415,
      code: 'unsupported_media_type',
      message: /Content-Type: application\/cloudevents\+json$/,
    });
  }
  for (const chunked of [false, true]) {
    const e = { ...ignoredEvent(), data: { ...ignoredEvent().data, error: 'x'.repeat(BODY_LIMIT_BYTES) } };
    add(
      `oversized${chunked ? ' (chunked)' : ''}`,
      eventRequest(target, JSON.stringify(e), { id: e.id, chunked }),
      TOO_LARGE,
    );
  }
  // Ids inside event data, for every function: the envelope's data schema refuses them before any handler.
  for (const [name, projectId] of [
    ['projectId traversal', '../../state'],
    ['projectId encoded traversal', '..%2F..%2Fstate'],
    ['10 kB projectId', 'a'.repeat(TEN_KB)],
    ['projectId Cyrillic look-alike', cyrillicTwin(TENANT.id)],
    ['projectId full-width look-alike', fullWidth(TENANT.id)],
  ] as const) {
    const e = event('flux.backup.created', createdData({ projectId }));
    add(
      name,
      eventRequest(target, JSON.stringify(e), { id: e.id }),
      BAD_EVENT_DATA('flux.backup.created', 'projectId'),
    );
  }

  // Events for unknown projects and bad backup ids, to each function that acts on events.
  const unknownProject = randomUUID();
  const unknown: Expected = { status: 404, code: 'not_found', message: /./ };
  if (fn === 'dump') {
    const requested = (data: Record<string, unknown>) => {
      const e = event('flux.backup.requested', data);
      return eventRequest(target, JSON.stringify(e), { id: e.id });
    };
    add('backup requested for an unknown project', requested({ projectId: unknownProject }), {
      ...unknown,
      message: /^flux\.backup\.requested names no project in the registry/,
    });
    add('backup requested for a hash traversal', requested({ projectHash: '..%2F..%2Fstate' }), BAD_HASH);
    add(
      'backup requested for a Cyrillic hash',
      requested({ projectHash: cyrillicTwin(TENANT.hash) }),
      BAD_HASH,
    );
  }
  if (fn === 'replicate' || fn === 'verify') {
    const created = (over: Record<string, unknown>) => {
      const e = event('flux.backup.created', createdData(over));
      return eventRequest(target, JSON.stringify(e), { id: e.id });
    };
    add('backup created for an unknown project', created({ projectId: unknownProject }), {
      ...unknown,
      message:
        fn === 'replicate'
          ? new RegExp(`^project ${unknownProject} is neither in the registry .* nor in the backup catalog`)
          : new RegExp(`^no backup ${backupId} for project ${unknownProject}$`),
    });
    add('backupId traversal', created({ backupId: '../../state' }), BAD_BACKUP_ID);
    add('backupId encoded traversal', created({ backupId: '..%2F..%2Fstate' }), BAD_BACKUP_ID);
    add('backupId Cyrillic look-alike', created({ backupId: cyrillicTwin(backupId) }), BAD_BACKUP_ID);
    add('backupId full-width look-alike', created({ backupId: fullWidth(backupId) }), BAD_BACKUP_ID);
    add(
      '10 kB backupId',
      created({ backupId: 'A'.repeat(TEN_KB) }),
      BAD_EVENT_DATA('flux.backup.created', 'backupId'),
    );
  }
  if (fn === 'probe') {
    const e = event('flux.migrate.completed', {
      projectId: unknownProject,
      slug: 'nobody',
      tables: 0,
      rows: 0,
      sequences: 0,
    });
    add('migrate completed for an unknown project', eventRequest(target, JSON.stringify(e), { id: e.id }), {
      ...unknown,
      message: new RegExp(
        `^flux\\.migrate\\.completed names project ${unknownProject}, which is not in the registry`,
      ),
    });
  }
  return cases;
}

async function check(door: Door, c: Case): Promise<string | undefined> {
  let res: RawResponse;
  try {
    res = await rawRequest(door.url, c.request);
  } catch (error) {
    return `${door.name} | ${c.name}: request failed: ${(error as Error).message}`;
  }
  return problemsOf(door, c, res);
}

function problemsOf(door: Door, c: Case, res: RawResponse): string | undefined {
  const body = res.json ?? {};
  const problems: string[] = [];
  if (res.status !== c.expected.status) problems.push(`status ${res.status}, expected ${c.expected.status}`);
  if (c.expected.allow !== undefined && res.headers.allow !== c.expected.allow)
    problems.push(`Allow ${JSON.stringify(res.headers.allow)}, expected ${JSON.stringify(c.expected.allow)}`);
  if (c.expected.status === 204) {
    if (res.text !== '') problems.push(`a body of ${res.text.length} characters`);
    return problems.length > 0 ? `${door.name} | ${c.name}: ${problems.join('; ')}` : undefined;
  }
  if (body.code !== c.expected.code) problems.push(`code ${String(body.code)}, expected ${c.expected.code}`);
  if (typeof body.error !== 'string' || !c.expected.message.test(body.error))
    problems.push(
      `message ${JSON.stringify(String(body.error).slice(0, 200))} does not match ${c.expected.message}`,
    );
  // A clear message is a short one: nothing of a 10 kB input is echoed back.
  if (res.text.length > 1500) problems.push(`body of ${res.text.length} characters`);
  if (!String(res.headers['content-type'] ?? '').startsWith('application/json'))
    problems.push(`content-type ${res.headers['content-type']}`);
  return problems.length > 0 ? `${door.name} | ${c.name}: ${problems.join('; ')}` : undefined;
}

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: TENANT.id, rows: 20 });
  const common = {
    TEST_SHARED_URL: pg.url('shared'),
    FLUX_BODY_LIMIT_BYTES: String(BODY_LIMIT_BYTES),
    FLUX_RATE_LIMIT_PER_MINUTE: '1000000',
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_PROBE_INTERVAL_MS: '0',
    FLUX_LOG_LEVEL: 'warn',
  };
  env = await makeTestEnv(common);
  for (const fn of FUNCTION_NAMES) {
    runtimes[fn] = testRuntime(fn, env, { projects: [TENANT], clusters: CLUSTERS });
    apps[fn] = FACTORIES[fn](runtimes[fn]);
    await apps[fn].start();
    const served = await serveOnLoopback(apps[fn].app.fetch);
    urls[fn] = served.url;
    closers.push(async () => {
      await served.close();
      await apps[fn].stop();
    });
  }

  // One real backup, copied offsite by replicate's watcher, before anything else looks at the roots.
  const created = await fetch(`${urls.dump}/api/cli/v1/projects/${TENANT.hash}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(created.status).toBe(200);
  backupId = ((await created.json()) as { backup: { id: string } }).backup.id;
  await eventually(async () =>
    (await apps.dump.app.request(`/api/cli/v1/projects/${TENANT.hash}/backups`, { headers: ADMIN.header }))
      .json()
      .then(
        (b) => (b as { backups: Array<{ offsiteStatus: string }> }).backups[0]?.offsiteStatus === 'complete',
      ),
  );

  router = createRouter({
    upstreams: urls,
    log: silentLogger(),
    metrics: createRegistry({ defaultMetrics: false }),
  });
  const routerServed = await serveOnLoopback(router.app.fetch);
  closers.push(async () => {
    await routerServed.close();
    await router.close(0);
  });

  // The all-in-one process shares the backup roots and keeps its own state directory.
  aioEnv = await makeTestEnv({
    ...common,
    FLUX_BACKUPS_LOCAL_DIR: env.config.FLUX_BACKUPS_LOCAL_DIR,
    FLUX_BACKUPS_OFFSITE_DIR: env.config.FLUX_BACKUPS_OFFSITE_DIR,
  });
  aioMetrics = createRegistry({ defaultMetrics: false });
  all = createAllInOne(aioEnv.config, aioEnv.env, {
    log: silentLogger(),
    metrics: aioMetrics,
    registry: createStaticRegistry({ projects: [TENANT], clusters: CLUSTERS }),
  });
  const aioServed = await serveOnLoopback(all.app.fetch);
  all.setBaseUrl(aioServed.url);
  await all.start();
  closers.push(async () => {
    await aioServed.close();
    await all.stop();
  });
  // The all-in-one's verify reconciles at start: the backup (no event told the suite's own verify about it)
  // is verified once, and its event logged, before anything looks at the roots.
  await eventually(async () => {
    const res = await all.app.request(`/api/cli/v1/projects/${TENANT.hash}/backups/${backupId}/verify`, {
      headers: ADMIN.header,
    });
    const body = (await res.json()) as { running: boolean; restoreVerificationStatus: string };
    return !body.running && body.restoreVerificationStatus === 'restore_verified';
  }, 120_000);
  expect(await all.runtimes.verify.outbox.idle()).toBe(true);

  doors = [
    ...FUNCTION_NAMES.map((fn) => ({
      name: fn,
      url: urls[fn],
      fns: [fn],
      at: (_fn: FunctionName, p: string) => p,
    })),
    { name: 'router', url: routerServed.url, fns: FUNCTION_NAMES, at: frontDoorPath },
    { name: 'all-in-one', url: aioServed.url, fns: FUNCTION_NAMES, at: frontDoorPath },
  ];

  // One accepted event per door and function: recorded by the inbox now, replayed by the table later.
  for (const door of doors) {
    for (const fn of door.fns) {
      const e = ignoredEvent();
      const request = eventRequest(door.at(fn, '/events'), JSON.stringify(e), { id: e.id });
      const res = await rawRequest(door.url, request);
      expect(res.status, `${door.name} ${fn}`).toBe(202);
      expect(res.json).toMatchObject({ ok: true, ignored: true });
      accepted.set(`${door.name} ${fn}`, request);
    }
  }
});

afterAll(async () => {
  for (const close of closers.reverse()) await close().catch(() => undefined);
  await pg?.destroy();
  await aioEnv?.cleanup();
  await env?.cleanup();
});

describe('bad input on every route of every front door', () => {
  it('each gets its 4xx with the code and a clear message; roots and state are byte-for-byte unchanged', async () => {
    const roots = [
      env.config.FLUX_BACKUPS_LOCAL_DIR,
      env.config.FLUX_BACKUPS_OFFSITE_DIR,
      env.config.FLUX_STATE_DIR,
      aioEnv.config.FLUX_STATE_DIR,
    ];
    const before = await snapshotTree(roots);
    // The roots hold the real backup, its offsite copy and receipts, and the inbox records of setup.
    const names = [...before.keys()].map((k) => path.basename(k));
    expect(names).toEqual(
      expect.arrayContaining([`${backupId}.dump`, `${backupId}.manifest.json`, `${backupId}.offsite.json`]),
    );
    // One per door and function, and the all-in-one's dump took verify's flux.backup.verified of setup's
    // backup (dump keeps its trust metrics current from verify's results).
    expect([...before.keys()].filter((k) => /:inbox\/[a-z]+\/[0-9a-f]+\.json$/.test(k))).toHaveLength(
      doors.reduce((n, d) => n + d.fns.length, 0) + 1,
    );

    const problems: string[] = [];
    let sent = 0;
    for (const door of doors) {
      for (const c of casesFor(door)) {
        const problem = await check(door, c);
        if (problem) problems.push(problem);
        sent += 1;
      }
      const diff = diffSnapshots(before, await snapshotTree(roots));
      if (diff.length > 0) problems.push(`${door.name}: the roots changed:\n  ${diff.join('\n  ')}`);
    }
    expect(problems).toEqual([]);
    // Every door got the whole table (a few hundred cases each); a shrinking table is a finding too.
    expect(sent).toBeGreaterThan(1000);
  });
});

describe('methods Node answers before the app', () => {
  it('CONNECT gets 501 not_implemented in JSON at every door, not a hang-up', async () => {
    const problems: string[] = [];
    for (const door of doors) {
      for (const target of ['/healthz', 'example.com:443']) {
        const res = await rawExchange(door.url, `CONNECT ${target} HTTP/1.1\r\nhost: ${target}\r\n\r\n`);
        const problem = problemsOf(
          door,
          {
            name: `CONNECT ${target}`,
            request: { method: 'CONNECT', target },
            expected: NOT_IMPLEMENTED('CONNECT'),
          },
          res,
        );
        if (problem) problems.push(problem);
      }
    }
    expect(problems).toEqual([]);
  });
});

/** `flux_http_requests_total` samples of a registry by status, for one function. */
async function requestStatuses(registry: MetricsRegistry, fn: FunctionName): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await registry.metrics()).split('\n')) {
    const m = /^flux_http_requests_total\{(.*)\} (\d+)$/.exec(line);
    if (!m || !m[1]!.includes(`fn="${fn}"`)) continue;
    const status = /status="(\d+)"/.exec(m[1]!)?.[1] ?? '?';
    out.set(status, (out.get(status) ?? 0) + Number(m[2]));
  }
  return out;
}

describe('a client that gives up mid-body', () => {
  it('is counted and logged as 499 client_closed by every function, never as a 500', async () => {
    const routes: Record<FunctionName, string> = {
      dump: `/api/cli/v1/projects/${TENANT.hash}/backups`,
      replicate: '/events',
      verify: `/api/cli/v1/projects/${TENANT.hash}/backups/${backupId}/verify`,
      probe: '/probes/run',
      migrate: '/api/cli/v1/migrate',
      restore: `/api/cli/v1/projects/${TENANT.hash}/backups/${backupId}/restore`,
    };
    const headers = { ...ADMIN.header, 'content-type': 'application/json' };
    const metricsOf = (fn: FunctionName) => runtimes[fn].metrics;
    for (const fn of FUNCTION_NAMES) {
      const logsBefore = runtimes[fn].logs.lines.length;
      const before = await requestStatuses(metricsOf(fn), fn);
      await abortMidBody(urls[fn], routes[fn], headers, '{"slug":', 1000);
      await eventually(
        async () => (await requestStatuses(metricsOf(fn), fn)).get('499') !== before.get('499'),
      );
      // The only request counted since is the abandoned one, as 499.
      expect(countsSince(before, await requestStatuses(metricsOf(fn), fn)), fn).toEqual({ '499': 1 });
      const lines = runtimes[fn].logs.lines.slice(logsBefore);
      expect(
        lines.filter((l) => l.level === 'error' || l.level === 'fatal'),
        fn,
      ).toEqual([]);
      expect(
        lines.some((l) => l.msg === 'client closed'),
        fn,
      ).toBe(true);
    }
    // Through the all-in-one door the function inside counts it the same way.
    const before = await requestStatuses(aioMetrics, 'migrate');
    await abortMidBody(
      doors.find((d) => d.name === 'all-in-one')!.url,
      routes.migrate,
      headers,
      '{"slug":',
      1000,
    );
    await eventually(
      async () => (await requestStatuses(aioMetrics, 'migrate')).get('499') !== before.get('499'),
    );
    expect(countsSince(before, await requestStatuses(aioMetrics, 'migrate'))).toEqual({ '499': 1 });
  });
});

function countsSince(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [status, n] of after)
    if (n !== (before.get(status) ?? 0)) out[status] = n - (before.get(status) ?? 0);
  return out;
}
