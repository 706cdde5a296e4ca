// What the upstream flux CLI asks around a migration, at the front door (the all-in-one process and the
// router in front of a real migrate server): the project and its mode, `flux migrate --dry-run` with every
// key the upstream CLI sends, the keys flux-ops cannot honour refused by name, and the progress poll.
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { type ServerType, serve } from '@hono/node-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAllInOne } from '../functions/all/app.js';
import { createApp as createMigrateApp } from '../functions/migrate/app.js';
import { createRouter, type Router } from '../functions/router/app.js';
import { FUNCTION_NAMES, type FunctionName } from '../shared/config.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import { createLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { createStaticRegistry, type Project } from '../shared/registry.js';
import { seedTenant, tenantSchemaOf } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { ADMIN, makeTestEnv, makeToken, type TestEnv, testRuntime } from './support/runtime.js';

const READER = makeToken('reader', ['backups:read']);
const tenantId = randomUUID();
const TENANT: Project = {
  id: tenantId,
  hash: tenantId.replaceAll('-', '').slice(0, 7),
  slug: 'upstream-tenant',
  engine: 'v2_shared',
  cluster: 'shared-1',
  dedicatedUrl: 'env:TEST_DEDICATED_URL',
} as Project;
const DEDICATED: Project = {
  id: randomUUID(),
  hash: 'fedcba9',
  slug: 'already-dedicated',
  engine: 'v1_dedicated',
  databaseUrl: 'env:TEST_DEDICATED_URL',
} as Project;

/** The body upstream's `flux migrate --dry-run` sends (its defaults: preserve the JWT secret, lock writes). */
const upstreamBody = (extra: Record<string, unknown> = {}) => ({
  slug: TENANT.slug,
  hash: TENANT.hash,
  dryRun: true,
  yes: false,
  staged: false,
  dumpOnly: false,
  newJwtSecret: false,
  noLockWrites: false,
  dropSourceAfter: false,
  preserveJwtSecret: true,
  lockWrites: true,
  ...extra,
});

let cluster: PgCluster;
let env: TestEnv;
let door: ReturnType<typeof createAllInOne>;
let migrate: FunctionApp;
let migrateServer: ServerType;
let router: Router;

function request(app: { request: (path: string, init?: RequestInit) => Response | Promise<Response> }) {
  return async (method: string, path: string, body?: unknown, token = ADMIN) => {
    const res = await app.request(path, {
      method,
      headers: { ...token.header, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
}

beforeAll(async () => {
  cluster = await startPostgres();
  await cluster.createDatabase('shared');
  await cluster.createDatabase('dedicated');
  await seedTenant(cluster, { db: 'shared', projectId: TENANT.id, rows: 20 });
  env = await makeTestEnv({
    FLUX_API_TOKENS: `${ADMIN.entry},${READER.entry}`,
    TEST_DEDICATED_URL: cluster.url('dedicated'),
  });
  const registry = createStaticRegistry({
    projects: [TENANT, DEDICATED],
    clusters: [{ name: 'shared-1', url: cluster.url('shared'), maxConcurrentDumps: 1 }],
  });
  door = createAllInOne(env.config, env.env, {
    registry,
    log: createLogger('all', { level: 'silent' }),
    metrics: createRegistry({ defaultMetrics: false }),
  });
  // The router in front of a real migrate server; the other functions are not needed here.
  migrate = createMigrateApp(testRuntime('migrate', env, { registry }));
  migrateServer = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: migrate.app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  const migrateUrl = `http://127.0.0.1:${(migrateServer.address() as AddressInfo).port}`;
  const upstreams = Object.fromEntries(
    FUNCTION_NAMES.map((fn) => [fn, fn === 'migrate' ? migrateUrl : 'http://127.0.0.1:9']),
  ) as Record<FunctionName, string>;
  router = createRouter({
    upstreams,
    log: createLogger('router', { level: 'silent' }),
    metrics: createRegistry({ defaultMetrics: false }),
  });
});

afterAll(async () => {
  await router?.close(0);
  await new Promise<void>((resolve) => (migrateServer ? migrateServer.close(() => resolve()) : resolve()));
  await cluster?.destroy();
  await env?.cleanup();
});

describe('GET /api/cli/v1/projects/:hash (what upstream asks before a migration)', () => {
  it('answers { slug, hash, mode, apiSchema? } in upstream’s words, through both front doors', async () => {
    for (const door$ of [request(door.app), request(router.app)]) {
      const v2 = await door$('GET', `/api/cli/v1/projects/${TENANT.hash}`);
      expect(v2).toEqual({
        status: 200,
        body: {
          slug: TENANT.slug,
          hash: TENANT.hash,
          mode: 'v2_shared',
          apiSchema: tenantSchemaOf(TENANT.id),
        },
      });
      const v1 = await door$('GET', `/api/cli/v1/projects/${DEDICATED.hash}`);
      expect(v1).toEqual({
        status: 200,
        body: { slug: DEDICATED.slug, hash: DEDICATED.hash, mode: 'v1_dedicated' },
      });
      expect((await door$('GET', '/api/cli/v1/projects/0000000')).status).toBe(404);
      // The migrate scope, like the migration it comes before.
      expect((await door$('GET', `/api/cli/v1/projects/${TENANT.hash}`, undefined, READER)).status).toBe(403);
    }
  });
});

describe('POST /api/cli/v1/migrate with upstream’s keys', () => {
  const post = (body: Record<string, unknown>) => request(door.app)('POST', '/api/cli/v1/migrate', body);

  it('upstream’s `flux migrate --dry-run` body is a dry run (its false and default keys are ignored)', async () => {
    const { status, body } = await post(upstreamBody());
    expect(status, JSON.stringify(body)).toBe(200);
    expect(body).toMatchObject({ ok: true, dryRun: true });
    // `--staged` is what every flux-ops migration is (it never switches the catalog mode).
    expect((await post(upstreamBody({ staged: true }))).status).toBe(200);
    // Absent keys are the same as upstream's defaults.
    expect((await post({ slug: TENANT.slug, hash: TENANT.hash, dryRun: true })).status).toBe(200);
  });

  it.each([
    ['newJwtSecret', { newJwtSecret: true, preserveJwtSecret: false }, /newJwtSecret: true/],
    ['preserveJwtSecret', { preserveJwtSecret: false }, /preserveJwtSecret: false/],
    ['dropSourceAfter', { dropSourceAfter: true }, /dropSourceAfter: true .*drop the pooled tenant by hand/],
    ['noLockWrites', { noLockWrites: true, lockWrites: true }, /noLockWrites: true with lockWrites: true/],
  ])(
    '%s set to what flux-ops does not do: 422 naming the key, nothing started',
    async (key, extra, message) => {
      const { status, body } = await post(upstreamBody({ ...extra, dryRun: false, yes: true }));
      expect(status).toBe(422);
      expect(body.code).toBe('unprocessable');
      expect(String(body.error)).toMatch(message);
      expect(body.keys).toContain(key);
      const poll = await request(door.app)('GET', `/api/cli/v1/migrate/${TENANT.hash}`);
      expect(poll.status).toBe(404);
    },
  );

  it('`--no-lock-writes` as upstream sends it (noLockWrites: true, lockWrites: false) is accepted', async () => {
    const { status } = await post(upstreamBody({ noLockWrites: true, lockWrites: false }));
    expect(status).toBe(200);
  });

  it('a key of the wrong type is still a 400', async () => {
    expect((await post(upstreamBody({ staged: 'yes' }))).status).toBe(400);
  });
});

describe('GET /api/cli/v1/migrate/:hash (the progress poll) at the front doors', () => {
  it('reaches migrate through the all-in-one process and the router', async () => {
    for (const door$ of [request(door.app), request(router.app)]) {
      // No run recorded: migrate's own answer, not the front door's "no route".
      const none = await door$('GET', `/api/cli/v1/migrate/${TENANT.hash}`);
      expect(none.status).toBe(404);
      expect(none.body.error).toBe(`no migration of ${TENANT.slug} is recorded`);
      expect((await door$('GET', '/api/cli/v1/migrate/0000000')).body.error).toMatch(/0000000/);
    }
  });

  it('answers the recorded run once there is one', async () => {
    // A refused confirmation records no run; a dump-only migration needs dump: write the record dump would.
    const { mkdir, writeFile } = await import('node:fs/promises');
    const path = await import('node:path');
    const dir = path.join(env.config.FLUX_STATE_DIR, 'migrate', 'runs');
    await mkdir(dir, { recursive: true });
    const run = {
      runId: randomUUID(),
      projectId: TENANT.id,
      slug: TENANT.slug,
      status: 'completed',
      phase: 'validate',
      dumpOnly: false,
      lockWrites: true,
      startedAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
      pid: process.pid,
    };
    await writeFile(path.join(dir, `${TENANT.id}.json`), JSON.stringify(run));
    for (const door$ of [request(door.app), request(router.app)]) {
      expect(await door$('GET', `/api/cli/v1/migrate/${TENANT.hash}`)).toEqual({
        status: 200,
        body: { run },
      });
    }
  });
});
