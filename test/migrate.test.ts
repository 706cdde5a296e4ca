// migrate end to end on two real clusters: a shared (pooled) source holding several tenants and a
// dedicated target cluster with one database per tenant. Every test compares catalog snapshots of the
// servers before and after, so "touches nothing" and "rolled back" are facts, not hopes.
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createApp } from '../functions/migrate/app.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Cluster, Project } from '../shared/registry.js';
import { type SeededTenant, seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  makeToken,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

const ROWS = 5000;
const SOURCE_DB = 'flux_tenants';
const MIGRATE = makeToken('ci-migrate', ['migrate']);
const PROBE = makeToken('ci-probe', ['probe']);

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
type Body = Record<string, any>;
const read = async (res: Response): Promise<Body> => (await res.json()) as Body;

interface Tenant {
  project: Project;
  seeded: SeededTenant;
  db: string;
}

/** Everything a migration could change, as sorted text lists (roles are cluster-wide, so included). */
async function catalogSnapshot(cluster: PgCluster, db: string): Promise<Record<string, string[]>> {
  const client = await cluster.connect(db);
  const list = async (sql: string) => (await client.query<{ x: string }>(sql)).rows.map((r) => r.x);
  try {
    return {
      schemas: await list(
        // A NULL ACL means the default one: compared as what it grants, so a grant taken back compares equal.
        `SELECT nspname || ':' || coalesce(nspacl, acldefault('n', nspowner))::text AS x FROM pg_namespace
          WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1`,
      ),
      relations: await list(
        `SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text AS x FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1`,
      ),
      roles: await list(
        `SELECT rolname || ':' || rolcanlogin || rolbypassrls || rolinherit AS x FROM pg_roles
          WHERE rolname NOT LIKE 'pg\\_%' ORDER BY 1`,
      ),
      memberships: await list(
        `SELECT r.rolname || '>' || u.rolname AS x FROM pg_auth_members m
           JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member ORDER BY 1`,
      ),
      functions: await list(
        `SELECT p.oid::regprocedure::text || ':' || format_type(p.prorettype, NULL) AS x FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
      ),
      policies: await list(
        `SELECT schemaname || '.' || tablename || '.' || policyname || ':' || roles::text AS x FROM pg_policies ORDER BY 1`,
      ),
      extensions: await list(`SELECT extname AS x FROM pg_extension ORDER BY 1`),
    };
  } finally {
    await client.end();
  }
}

/** The tenant's data as the source holds it: counts, sequence values and a content hash per table. */
async function tenantData(cluster: PgCluster, db: string, schema: string): Promise<Record<string, string>> {
  const client = await cluster.connect(db);
  try {
    const out: Record<string, string> = {};
    for (const table of ['customers', 'orders']) {
      const r = await client.query<{ n: string; h: string }>(
        `SELECT count(*)::text AS n, coalesce(md5(string_agg(t::text, ',' ORDER BY t.id)), '') AS h FROM ${schema}.${table} t`,
      );
      out[table] = `${r.rows[0]!.n}:${r.rows[0]!.h}`;
    }
    const seqs = await client.query<{ sequencename: string; last_value: string | null }>(
      'SELECT sequencename, last_value::text FROM pg_sequences WHERE schemaname = $1',
      [schema],
    );
    for (const s of seqs.rows) out[s.sequencename] = String(s.last_value);
    return out;
  } finally {
    await client.end();
  }
}

describe('migrate on real source and target clusters', () => {
  let source: PgCluster;
  let target: PgCluster;
  let testEnv: TestEnv;
  let receiver: EventReceiver;
  let rt: TestRuntime;
  let fn: FunctionApp;
  const others: FunctionApp[] = [];
  const closers: Array<() => Promise<void>> = [];
  const tenants: Record<string, Tenant> = {};
  let projects: Project[];
  let clusters: Cluster[];

  const post = (app: FunctionApp, body: Record<string, unknown>, token = MIGRATE) =>
    app.app.request('/api/cli/v1/migrate', {
      method: 'POST',
      headers: { ...token.header, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  const target$ = (key: string) => ({ slug: tenants[key]!.project.slug, hash: tenants[key]!.project.hash });
  const eventsOf = (type: string, key: string) =>
    receiver
      .events(type)
      .filter((e) => (e.data as { projectId?: string }).projectId === tenants[key]!.project.id);

  beforeAll(async () => {
    [source, target, receiver] = await Promise.all([startPostgres(), startPostgres(), startEventReceiver()]);
    await source.createDatabase(SOURCE_DB);
    const keys = ['main', 'gate', 'fail', 'lock', 'stop', 'export'] as const;
    const env: Record<string, string> = {};
    projects = [];
    for (const [i, key] of keys.entries()) {
      const id = randomUUID();
      const db = `dedicated_${key}`;
      await target.createDatabase(db);
      const seeded = await seedTenant(source, {
        db: SOURCE_DB,
        projectId: id,
        rows: key === 'main' ? ROWS : 300,
      });
      const variable = `FLUX_TEST_DEDICATED_${key.toUpperCase()}_URL`;
      env[variable] = target.url(db);
      const project: Project = {
        id,
        hash: `${i}abcde${i}`.slice(0, 7),
        slug: `tenant-${key}`,
        engine: 'v2_shared',
        cluster: 'shared-1',
        // One literal URL, the rest env:NAME: both forms resolve.
        dedicatedUrl: key === 'gate' ? target.url(db) : `env:${variable}`,
      };
      projects.push(project);
      tenants[key] = { project, seeded, db };
    }
    projects.push({
      id: randomUUID(),
      hash: 'fedcba9',
      slug: 'already-dedicated',
      engine: 'v1_dedicated',
      databaseUrl: target.url('postgres'),
    });
    clusters = [{ name: 'shared-1', url: 'env:FLUX_TEST_SHARED_URL', maxConcurrentDumps: 2 }];
    testEnv = await makeTestEnv({
      ...env,
      FLUX_TEST_SHARED_URL: source.url(SOURCE_DB),
      FLUX_API_TOKENS: [ADMIN.entry, MIGRATE.entry, PROBE.entry].join(','),
      FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.migrate.*', 'flux.backup.*'] }]),
      // The lease test holds a table lock while a migration waits on it.
      FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS: '120000',
    });
    // A dump-only migration asks the dump function for its backup, over HTTP as a separate process would.
    const dump = createDumpApp(testRuntime('dump', testEnv, { projects, clusters }));
    await dump.start();
    others.push(dump);
    const dumpServer = await new Promise<ServerType>((resolve) => {
      const s = serve({ fetch: dump.app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    closers.push(() => new Promise<void>((resolve) => dumpServer.close(() => resolve())));
    const dumpUrl = `http://127.0.0.1:${(dumpServer.address() as AddressInfo).port}`;
    rt = testRuntime('migrate', testEnv, { projects, clusters, peerUrl: () => dumpUrl });
    fn = createApp(rt);
    await fn.start();
  });

  afterAll(async () => {
    for (const app of [fn, ...others]) await app?.stop().catch(() => undefined);
    for (const close of closers) await close();
    await receiver?.close();
    await Promise.all([source?.destroy(), target?.destroy()]);
    await testEnv?.cleanup();
  });

  it('answers only a token with the migrate scope, and checks the body and the project', async () => {
    expect((await post(fn, { ...target$('main'), dryRun: true }, PROBE)).status).toBe(403);
    const mismatch = await post(fn, { slug: 'tenant-gate', hash: tenants.main!.project.hash, dryRun: true });
    expect(mismatch.status).toBe(400);
    expect((await read(mismatch)).error).toMatch(/slug and hash must name the same project/);
    const typo = await post(fn, { ...target$('main'), dry_run: true });
    expect(typo.status).toBe(400);
    const v1 = await post(fn, { slug: 'already-dedicated', hash: 'fedcba9', dryRun: true });
    expect(v1.status).toBe(422);
    expect((await read(v1)).error).toMatch(/v1_dedicated/);
    expect((await post(fn, { slug: 'nobody', hash: '0000000', dryRun: true })).status).toBe(404);
  });

  it('dryRun returns the plan with exact counts and changes nothing in source or target', async () => {
    const t = tenants.main!;
    const before = {
      source: await catalogSnapshot(source, SOURCE_DB),
      data: await tenantData(source, SOURCE_DB, t.seeded.schema),
      target: await catalogSnapshot(target, t.db),
    };
    const res = await post(fn, { ...target$('main'), dryRun: true, lockWrites: true });
    expect(res.status).toBe(200);
    const plan = await read(res);
    expect(plan).toMatchObject({ ok: true, dryRun: true, ready: false });
    expect(plan.tables).toEqual([
      { schema: t.seeded.schema, name: 'customers', rows: ROWS },
      { schema: t.seeded.schema, name: 'orders', rows: ROWS },
    ]);
    expect(plan.rows).toBe(2 * ROWS);
    expect(
      Object.fromEntries(
        plan.sequences.map((s: { name: string; lastValue: string }) => [s.name, Number(s.lastValue)]),
      ),
    ).toEqual(t.seeded.sequences);
    expect(plan.roles).toEqual(['authenticated', t.seeded.role]);
    expect(plan.target).toMatchObject({ reachable: true, schema: { name: t.seeded.schema, exists: false } });
    expect(plan.tools.pg_dump.major).toBeGreaterThanOrEqual(15);
    expect(plan.tools.pg_restore.path).toMatch(/pg_restore$/);
    // Never gated, but it says what would refuse a real run.
    expect(plan.backupGate).toMatchObject({ tier: 'no_backups', passes: false, cluster: 'shared-1' });
    expect(plan.problems.map((p: { code: string }) => p.code)).toEqual(['backup_gate']);
    expect(plan.problems[0].message).toMatch(/on cluster shared-1: /);
    expect(JSON.stringify(plan)).not.toContain(source.password);
    expect({
      source: await catalogSnapshot(source, SOURCE_DB),
      data: await tenantData(source, SOURCE_DB, t.seeded.schema),
      target: await catalogSnapshot(target, t.db),
    }).toEqual(before);
    expect(eventsOf('flux.migrate.started', 'main')).toEqual([]);
    expect(rt.outbox.depth()).toBe(0);
  });

  it('refuses a real run without yes, with no side effect', async () => {
    const t = tenants.main!;
    const before = await catalogSnapshot(target, t.db);
    const res = await post(fn, { ...target$('main'), skipBackupCheck: true });
    expect(res.status).toBe(412);
    const body = await read(res);
    expect(body).toMatchObject({ ok: false, phase: 'confirm', code: 'precondition_failed' });
    expect(body.error).toMatch(/needs "yes": true/);
    expect(await catalogSnapshot(target, t.db)).toEqual(before);
    expect(rt.outbox.depth()).toBe(0);
  });

  it('the backup gate refuses without a restorable backup, naming the classifier message and the fix', async () => {
    const t = tenants.main!;
    const before = await catalogSnapshot(target, t.db);
    const res = await post(fn, { ...target$('main'), yes: true });
    expect(res.status).toBe(412);
    const body = await read(res);
    expect(body).toMatchObject({ ok: false, phase: 'gate', code: 'precondition_failed', tier: 'no_backups' });
    expect(body.error).toMatch(/the project has no backups/);
    expect(body.next).toBe(`flux-ops backup create -p ${t.project.slug}`);
    expect(body.error).toContain(body.next);
    expect(await catalogSnapshot(target, t.db)).toEqual(before);
    expect(eventsOf('flux.migrate.started', 'main')).toEqual([]);
  });

  it('skipBackupCheck moves the tenant: equal counts and sequences, view and policy in the target', async () => {
    const t = tenants.main!;
    const sourceBefore = {
      catalog: await catalogSnapshot(source, SOURCE_DB),
      data: await tenantData(source, SOURCE_DB, t.seeded.schema),
    };
    const res = await post(fn, { ...target$('main'), yes: true, skipBackupCheck: true, lockWrites: true });
    const body = await read(res);
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body).toMatchObject({ ok: true, tables: 2, rows: 2 * ROWS, sequences: 3, lockWrites: true });
    for (const phase of ['preflight', 'gate', 'dump', 'prepare', 'restore', 'validate', 'total']) {
      expect(body.durations[phase], phase).toBeGreaterThanOrEqual(0);
    }
    expect(body.created.schema).toBe(t.seeded.schema);

    // The target holds the same data as the source, read independently of the migrate's own validation.
    expect(await tenantData(target, t.db, t.seeded.schema)).toEqual(sourceBefore.data);
    const [view] = await target.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${t.seeded.schema}.customer_totals`,
      [],
      t.db,
    );
    expect(view!.n).toBe(ROWS);
    const policies = await target.query<{ policyname: string; roles: string[] }>(
      'SELECT policyname, roles::text[] AS roles FROM pg_policies WHERE schemaname = $1',
      [t.seeded.schema],
      t.db,
    );
    expect(policies).toEqual([
      { policyname: 'orders_owner', roles: ['authenticated', t.seeded.role].sort() },
    ]);
    const [rls] = await target.query<{ on: boolean }>(
      `SELECT relrowsecurity AS on FROM pg_class WHERE oid = '${t.seeded.schema}.orders'::regclass`,
      [],
      t.db,
    );
    expect(rls!.on).toBe(true);
    const roles = await target.query<{ rolname: string; rolbypassrls: boolean }>(
      `SELECT rolname, rolbypassrls FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role', 'authenticator', $1) ORDER BY 1`,
      [t.seeded.role],
    );
    expect(roles.map((r) => `${r.rolname}:${r.rolbypassrls}`)).toEqual([
      'anon:false',
      'authenticated:false',
      'authenticator:false',
      'service_role:true',
      `${t.seeded.role}:false`,
    ]);

    // The source was only read.
    expect({
      catalog: await catalogSnapshot(source, SOURCE_DB),
      data: await tenantData(source, SOURCE_DB, t.seeded.schema),
    }).toEqual(sourceBefore);

    const [started] = await eventually(() => {
      const s = eventsOf('flux.migrate.started', 'main');
      return eventsOf('flux.migrate.completed', 'main').length > 0 && s.length > 0 && s;
    });
    const [completed] = eventsOf('flux.migrate.completed', 'main');
    expect(started!.data).toMatchObject({ slug: t.project.slug, lockWrites: true, dumpOnly: false });
    expect(completed!.data).toMatchObject({ tables: 2, rows: 2 * ROWS, sequences: 3 });
    expect(completed!.causationid).toBe(started!.id);
    expect(Date.parse(started!.time)).toBeLessThanOrEqual(Date.parse(completed!.time));

    const metrics = await (await fn.app.request('/metrics')).text();
    expect(metrics).toMatch(/flux_migrate_runs_total\{outcome="completed",phase="validate",reason="ok"\} 1/);
    expect(metrics).toMatch(/flux_migrate_phase_duration_seconds_count\{phase="restore"\} [1-9]/);

    const last = await fn.app.request(`/api/cli/v1/migrate/${t.project.hash}`, { headers: MIGRATE.header });
    expect((await read(last)).run).toMatchObject({ status: 'completed', runId: body.runId });
  });

  it('a second run into the migrated target is refused before anything moves', async () => {
    const t = tenants.main!;
    const before = await catalogSnapshot(target, t.db);
    const dry = await read(await post(fn, { ...target$('main'), dryRun: true }));
    expect(dry.problems.map((p: { code: string }) => p.code)).toContain('target_schema_exists');
    const res = await post(fn, { ...target$('main'), yes: true, skipBackupCheck: true });
    expect(res.status).toBe(412);
    const body = await read(res);
    expect(body).toMatchObject({ ok: false, phase: 'preflight', code: 'precondition_failed' });
    expect(body.error).toMatch(/already has schema .*DROP SCHEMA/);
    expect(await catalogSnapshot(target, t.db)).toEqual(before);
  });

  it('a restorable newest backup (dump app + restore_verified receipt) passes the gate', async () => {
    const t = tenants.gate!;
    const dumpRt = testRuntime('dump', testEnv, { projects, clusters });
    const dumpApp = createDumpApp(dumpRt);
    others.push(dumpApp);
    const created = await dumpApp.app.request(`/api/cli/v1/projects/${t.project.hash}/backups`, {
      method: 'POST',
      headers: ADMIN.header,
    });
    expect(created.status).toBe(200);
    const { backup } = await read(created);
    const entry = await rt.catalog.get(t.project.id, backup.id);
    const now = new Date().toISOString();
    await rt.catalog.writeVerifyReceipt({
      backupId: backup.id,
      projectId: t.project.id,
      status: 'restore_verified',
      sha256: entry!.manifest!.sha256,
      source: 'local',
      driver: 'test-fixture',
      versions: {},
      rungs: [],
      stages: {},
      startedAt: now,
      finishedAt: now,
      seconds: 0,
    });
    expect((await rt.catalog.trust(t.project.id, t.project.slug)).tier).toBe('restorable');

    const res = await post(fn, { ...target$('gate'), yes: true });
    const body = await read(res);
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body).toMatchObject({ ok: true, tables: 2, rows: 600 });
    expect(await tenantData(target, t.db, t.seeded.schema)).toEqual(
      await tenantData(source, SOURCE_DB, t.seeded.schema),
    );
  });

  it('a failure mid-restore rolls the target back to exactly what it was; the source is untouched', async () => {
    const t = tenants.fail!;
    // The dedicated database already has an auth.uid() of another type: pg_restore creates the tables and
    // loads the data, then fails on the policy that compares uuid with auth.uid().
    await target.query('CREATE SCHEMA auth', [], t.db);
    await target.query(
      `CREATE FUNCTION auth.uid() RETURNS text LANGUAGE sql STABLE AS $$ SELECT current_setting('request.jwt.claim.sub', true) $$`,
      [],
      t.db,
    );
    const before = await catalogSnapshot(target, t.db);
    expect(before.roles!.some((r) => r.startsWith(`${t.seeded.role}:`))).toBe(false);
    const sourceBefore = {
      catalog: await catalogSnapshot(source, SOURCE_DB),
      data: await tenantData(source, SOURCE_DB, t.seeded.schema),
    };

    const res = await post(fn, { ...target$('fail'), yes: true, skipBackupCheck: true });
    const body = await read(res);
    expect(res.status, JSON.stringify(body)).toBe(500);
    expect(body).toMatchObject({ ok: false, phase: 'restore', code: 'migrate_failed', rolledBack: true });
    expect(body.error).toMatch(/operator does not exist: uuid = text/);
    expect(body.rollback.dropped).toEqual(
      expect.arrayContaining([`schema ${t.seeded.schema}`, `role ${t.seeded.role}`]),
    );
    expect(body.rollback.leftovers).toEqual([]);

    expect(await catalogSnapshot(target, t.db)).toEqual(before);
    expect({
      catalog: await catalogSnapshot(source, SOURCE_DB),
      data: await tenantData(source, SOURCE_DB, t.seeded.schema),
    }).toEqual(sourceBefore);
    const [failed] = await eventually(
      () => eventsOf('flux.migrate.failed', 'fail').length > 0 && eventsOf('flux.migrate.failed', 'fail'),
    );
    expect(failed!.data).toMatchObject({ phase: 'restore', reason: 'migrate_failed', rolledBack: true });
    const metrics = await (await fn.app.request('/metrics')).text();
    expect(metrics).toMatch(
      /flux_migrate_runs_total\{outcome="failed",phase="restore",reason="migrate_failed"\} 1/,
    );
  });

  it('one migration per project: a concurrent request gets 409, here and from another process', async () => {
    const t = tenants.lock!;
    const holder: pg.Client = await source.connect(SOURCE_DB);
    let first: Promise<Response> | Response | undefined;
    try {
      // Hold the tenant's table so the first migration waits inside its dump, deterministically.
      await holder.query('BEGIN');
      await holder.query(`LOCK TABLE ${t.seeded.schema}.orders IN ACCESS EXCLUSIVE MODE`);
      first = post(fn, { ...target$('lock'), yes: true, skipBackupCheck: true });
      await eventually(async () => {
        const rows = await source.query(
          `SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'flux-ops-migrate-dump-%' AND wait_event_type = 'Lock'`,
        );
        return rows.length > 0;
      });
      const second = await post(fn, { ...target$('lock'), yes: true, skipBackupCheck: true });
      expect(second.status).toBe(409);
      expect(await read(second)).toMatchObject({ ok: false, phase: 'lease', code: 'conflict' });

      // A second migrate process (same target database) is held off by the lease in the target.
      const other = createApp(testRuntime('migrate', testEnv, { projects, clusters }));
      others.push(other);
      const third = await post(other, { ...target$('lock'), yes: true, skipBackupCheck: true });
      expect(third.status).toBe(409);
      expect((await read(third)).error).toMatch(/another migrate process/);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      await holder.end();
    }
    const done = await first!;
    const body = await read(done);
    expect(done.status, JSON.stringify(body)).toBe(200);
    expect(body).toMatchObject({ ok: true, rows: 600 });
  });

  it('dumpOnly makes a catalogued tenant_export backup through the dump mechanism and leaves the target alone', async () => {
    const t = tenants.export!;
    const before = await catalogSnapshot(target, t.db);
    const res = await post(fn, { ...target$('export'), yes: true, skipBackupCheck: true, dumpOnly: true });
    const body = await read(res);
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body).toMatchObject({ ok: true, dumpOnly: true, tables: 2, rows: 600, sequences: 3 });
    const entry = await rt.catalog.get(t.project.id, body.backupId);
    expect(entry?.manifest).toMatchObject({ kind: 'tenant_export', sha256: body.sha256 });
    expect(entry!.manifest!.tables.map((x) => x.rows)).toEqual([300, 300]);
    expect(await rt.catalog.checkArtifact(entry!)).toEqual({ status: 'valid' });
    expect(await catalogSnapshot(target, t.db)).toEqual(before);
    const created = await eventually(() =>
      receiver
        .events('flux.backup.created')
        .find((e) => (e.data as { backupId: string }).backupId === body.backupId),
    );
    expect(created.data).toMatchObject({ kind: 'tenant_export', rows: 600 });
    const [completed] = await eventually(
      () =>
        eventsOf('flux.migrate.completed', 'export').length > 0 &&
        eventsOf('flux.migrate.completed', 'export'),
    );
    expect(completed!.data).toMatchObject({ dumpOnly: true, backupId: body.backupId });
  });

  it('stop cancels a running migration: the dump is killed and the target never touched', async () => {
    const t = tenants.stop!;
    const before = await catalogSnapshot(target, t.db);
    const stopRt = testRuntime('migrate', testEnv, { projects, clusters });
    const stopApp = createApp(stopRt);
    const holder: pg.Client = await source.connect(SOURCE_DB);
    try {
      await holder.query('BEGIN');
      await holder.query(`LOCK TABLE ${t.seeded.schema}.customers IN ACCESS EXCLUSIVE MODE`);
      const running = post(stopApp, { ...target$('stop'), yes: true, skipBackupCheck: true });
      await eventually(async () => {
        const rows = await source.query(
          `SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'flux-ops-migrate-dump-%' AND wait_event_type = 'Lock'`,
        );
        return rows.length > 0;
      });
      await stopApp.stop();
      const res = await running;
      const body = await read(res);
      expect(res.status, JSON.stringify(body)).toBe(503);
      expect(body).toMatchObject({ ok: false, phase: 'dump', code: 'shutting_down', rolledBack: true });
      expect(body.error).toMatch(/target was not touched/);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      await holder.end();
    }
    expect(await catalogSnapshot(target, t.db)).toEqual(before);
    expect(await stopRt.catalog.list(t.project.id)).toEqual([]);
    const work = path.join(testEnv.config.FLUX_STATE_DIR, 'migrate', 'work');
    const { readdir } = await import('node:fs/promises');
    expect((await readdir(work)).filter((n) => n.includes(t.project.id))).toEqual([]);
  });
});
