// migrate at its edges: the client tools on PATH of *this* process (missing, too old), /readyz, the real
// functions/migrate/main.ts as a child process, and the roll back at start-up of a run a crash interrupted.
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../functions/migrate/app.js';
import type { RunRecord } from '../functions/migrate/migrator.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Cluster, Project } from '../shared/registry.js';
import { type SeededTenant, seedTenant } from './support/fixtures.js';
import { freePort, type PgCluster, pgBinPath, startPostgres } from './support/pg.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv, testRuntime } from './support/runtime.js';

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
type Body = Record<string, any>;
const read = async (res: Response): Promise<Body> => (await res.json()) as Body;

const SOURCE_DB = 'flux_tenants';
const TARGET_DB = 'dedicated_edge';

async function targetState(cluster: PgCluster, db: string): Promise<string[]> {
  const rows = await cluster.query<{ x: string }>(
    `SELECT 'schema:' || nspname AS x FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
     UNION ALL SELECT 'role:' || rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'
     UNION ALL SELECT 'rel:' || n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
     ORDER BY 1`,
    [],
    db,
  );
  return rows.map((r) => r.x);
}

describe('migrate preflight, readiness, process edge and crash recovery', () => {
  let pgc: PgCluster;
  let tenant: SeededTenant;
  let project: Project;
  let clusters: Cluster[];
  let toolsRoot: string;
  const envs: TestEnv[] = [];
  const apps: FunctionApp[] = [];

  /** An app whose process PATH is `pathDir` (the tools it finds are exactly the ones there). */
  async function appWithPath(pathDir: string | undefined, extra: Record<string, string> = {}) {
    const testEnv = await makeTestEnv({
      FLUX_TEST_SHARED_URL: pgc.url(SOURCE_DB),
      FLUX_TEST_DEDICATED_URL: pgc.url(TARGET_DB),
      ...extra,
    });
    envs.push(testEnv);
    if (pathDir) testEnv.env.PATH = pathDir;
    const app = createApp(testRuntime('migrate', testEnv, { projects: [project], clusters }));
    apps.push(app);
    return { app, testEnv };
  }

  const post = (app: FunctionApp, body: Record<string, unknown>) =>
    app.app.request('/api/cli/v1/migrate', {
      method: 'POST',
      headers: { ...ADMIN.header, 'content-type': 'application/json' },
      body: JSON.stringify({ slug: project.slug, hash: project.hash, ...body }),
    });

  beforeAll(async () => {
    pgc = await startPostgres();
    // Source and target as two databases of one cluster: what matters here is the process, not the servers.
    await pgc.createDatabase(SOURCE_DB);
    await pgc.createDatabase(TARGET_DB);
    const id = randomUUID();
    tenant = await seedTenant(pgc, { db: SOURCE_DB, projectId: id, rows: 50 });
    project = {
      id,
      hash: 'e1e2e3e',
      slug: 'edge-tenant',
      engine: 'v2_shared',
      cluster: 'shared-1',
      dedicatedUrl: 'env:FLUX_TEST_DEDICATED_URL',
    };
    clusters = [{ name: 'shared-1', url: 'env:FLUX_TEST_SHARED_URL', maxConcurrentDumps: 1 }];
    toolsRoot = await mkdtemp(path.join(tmpdir(), 'flux-migrate-tools-'));
  });

  afterAll(async () => {
    for (const app of apps) await app.stop().catch(() => undefined);
    await pgc?.destroy();
    for (const e of envs) await e.cleanup();
    if (toolsRoot) await rm(toolsRoot, { recursive: true, force: true });
  });

  /** A directory holding the named real tools (symlinks) plus optional fake scripts. */
  async function toolsDir(name: string, real: string[], fakes: Record<string, string> = {}): Promise<string> {
    const dir = path.join(toolsRoot, name);
    await mkdir(dir, { recursive: true });
    for (const tool of real) await symlink(pgBinPath(tool), path.join(dir, tool));
    for (const [tool, script] of Object.entries(fakes)) {
      await writeFile(path.join(dir, tool), script);
      await chmod(path.join(dir, tool), 0o755);
    }
    return dir;
  }

  it('PATH without pg_dump: 503 naming the major the image must carry, and /readyz 503; nothing touched', async () => {
    const dir = await toolsDir('no-pg-dump', ['pg_restore', 'psql']);
    const { app } = await appWithPath(dir);
    const before = await targetState(pgc, TARGET_DB);

    const res = await post(app, { yes: true, skipBackupCheck: true });
    expect(res.status).toBe(503);
    const body = await read(res);
    expect(body).toMatchObject({
      ok: false,
      phase: 'preflight',
      code: 'tool_missing',
      tool: 'pg_dump',
      neededMajor: 15,
    });
    expect(body.error).toMatch(/pg_dump not found on PATH of this process/);
    expect(body.error).toMatch(/PostgreSQL client tools of major 15/);
    expect(body.error).toMatch(/rebuild/);
    expect(body.error).toMatch(/restart.*(not enough|does not bring)/);

    // A dry run cannot hide it either.
    const dry = await post(app, { dryRun: true });
    expect(dry.status).toBe(503);
    expect((await read(dry)).code).toBe('tool_missing');

    const ready = await app.app.request('/readyz');
    expect(ready.status).toBe(503);
    const checks = (await read(ready)).checks as Body[];
    const byName = Object.fromEntries(checks.map((c) => [c.name, c]));
    expect(byName['tool:pg_dump']).toMatchObject({ ok: false, code: 'tool_missing' });
    expect(byName['tool:pg_dump']!.detail).toMatch(/client tools of major 15.*rebuild/);
    expect(byName['tool:pg_restore']).toMatchObject({ ok: true, major: 15 });
    expect(byName['tool:psql']).toMatchObject({ ok: true, major: 15 });
    expect(byName['target:edge-tenant']).toMatchObject({ ok: true, optional: true });
    expect(byName['source:shared-1']).toMatchObject({ ok: true, optional: true });

    expect(await targetState(pgc, TARGET_DB)).toEqual(before);
  });

  it('a pg_dump older than the server: 503 tool_version, in the answer and in /readyz', async () => {
    const dir = await toolsDir('old-pg-dump', ['pg_restore', 'psql'], {
      pg_dump: '#!/bin/sh\necho "pg_dump (PostgreSQL) 12.22"\n',
    });
    const { app } = await appWithPath(dir);
    const res = await post(app, { yes: true, skipBackupCheck: true });
    expect(res.status).toBe(503);
    const body = await read(res);
    expect(body).toMatchObject({
      code: 'tool_version',
      phase: 'preflight',
      tool: 'pg_dump',
      toolVersion: '12.22',
    });
    expect(body.error).toMatch(/pg_dump 12.22 on PATH is older than the source server \(major 15\)/);
    expect(body.error).toMatch(/client tools of major 15.*rebuilt.*restart/);
    const ready = await app.app.request('/readyz');
    expect(ready.status).toBe(503);
    const checks = (await read(ready)).checks as Body[];
    expect(checks.find((c) => c.name === 'tool:pg_dump')).toMatchObject({ ok: false, code: 'tool_version' });
  });

  it('with the tools on PATH, /readyz is 200 and reports each tool with its version', async () => {
    const dir = await toolsDir('all-tools', ['pg_dump', 'pg_restore', 'psql']);
    const { app } = await appWithPath(dir);
    const ready = await app.app.request('/readyz');
    const body = await read(ready);
    expect(ready.status, JSON.stringify(body)).toBe(200);
    for (const tool of ['pg_dump', 'pg_restore', 'psql']) {
      expect(body.checks.find((c: Body) => c.name === `tool:${tool}`)).toMatchObject({
        ok: true,
        path: path.join(dir, tool),
        major: 15,
      });
    }
  });

  it('a run a crash interrupted is rolled back at start-up: exactly what its record says it created', async () => {
    const { app, testEnv } = await appWithPath(undefined);
    await pgc.query('CREATE SCHEMA operator_notes', [], TARGET_DB);
    const before = await targetState(pgc, TARGET_DB);
    // Roles are cluster-wide and the tenant's role exists here (source and target share this cluster).
    const role = 'flux_edge_interrupted_role';
    // What a killed migrate left behind: its schema with a half-restored table and a role it created,
    // recorded in its run record; plus a schema it did NOT create, which must survive.
    const runId = '01HZZZZZZZZZZZZZZZZZZZZZZZ';
    await pgc.query(`CREATE ROLE ${role} NOLOGIN`);
    await pgc.query(`CREATE SCHEMA ${tenant.schema}`, [], TARGET_DB);
    await pgc.query(`CREATE TABLE ${tenant.schema}.customers (id bigint)`, [], TARGET_DB);
    const record: RunRecord = {
      runId,
      projectId: project.id,
      slug: project.slug,
      status: 'running',
      phase: 'restore',
      dumpOnly: false,
      lockWrites: false,
      startedAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
      pid: 999_999,
      changes: { schema: tenant.schema, roles: [role], memberships: [] },
    };
    const runs = path.join(testEnv.config.FLUX_STATE_DIR, 'migrate', 'runs');
    await mkdir(runs, { recursive: true });
    await writeFile(path.join(runs, `${project.id}.json`), JSON.stringify(record));
    const work = path.join(testEnv.config.FLUX_STATE_DIR, 'migrate', 'work');
    await mkdir(work, { recursive: true });
    await writeFile(path.join(work, `.tmp-${project.id}-${runId}.dump.abc`), 'partial');

    await app.start();
    expect(await targetState(pgc, TARGET_DB)).toEqual(before);
    expect(before).toContain('schema:operator_notes');
    const saved = JSON.parse(await readFile(path.join(runs, `${project.id}.json`), 'utf8')) as RunRecord;
    expect(saved).toMatchObject({ status: 'failed', reason: 'interrupted', rollback: { ok: true } });
    expect(saved.rollback!.dropped).toEqual([`schema ${tenant.schema}`, `role ${role}`]);
    await expect(readFile(path.join(work, `.tmp-${project.id}-${runId}.dump.abc`))).rejects.toThrow(/ENOENT/);
    const last = await read(
      await app.app.request(`/api/cli/v1/migrate/${project.hash}`, { headers: ADMIN.header }),
    );
    expect(last.run).toMatchObject({ runId, status: 'failed', reason: 'interrupted' });
  });

  it('the real functions/migrate/main.ts serves /readyz as a child process and stops on SIGTERM', async () => {
    const testEnv = await makeTestEnv();
    envs.push(testEnv);
    await writeFile(testEnv.config.FLUX_PROJECTS_FILE, JSON.stringify({ projects: [project], clusters }));
    const port = await freePort();
    // `node --import tsx`, not the tsx CLI, whose signal relay SIGKILLs main.ts when it has not reported
    // the relayed SIGTERM back within 30 ms (a loaded machine): the test signals the process itself.
    const child = execa(process.execPath, ['--import', 'tsx', 'functions/migrate/main.ts'], {
      env: {
        ...testEnv.env,
        FLUX_HOST: '127.0.0.1',
        FLUX_MIGRATE_PORT: String(port),
        FLUX_LOG_LEVEL: 'warn',
        FLUX_TEST_SHARED_URL: pgc.url(SOURCE_DB),
        FLUX_TEST_DEDICATED_URL: pgc.url(TARGET_DB),
      },
      reject: false,
      timeout: 90_000,
    });
    try {
      const body = await eventually(async () => {
        const res = await fetch(`http://127.0.0.1:${port}/readyz`);
        return res.status === 200 ? ((await res.json()) as Body) : undefined;
      }, 60_000);
      expect(body).toMatchObject({ ok: true, fn: 'migrate' });
      const names = (body.checks as Body[]).map((c) => `${c.name}:${c.ok}`);
      expect(names).toEqual(
        expect.arrayContaining([
          'tool:pg_dump:true',
          'tool:pg_restore:true',
          'tool:psql:true',
          'source:shared-1:true',
          'target:edge-tenant:true',
        ]),
      );
      expect(JSON.stringify(body)).not.toContain(pgc.password);
    } finally {
      child.kill('SIGTERM');
    }
    const result = await child;
    expect(result.exitCode, String(result.stderr)).toBe(0);
  });
});
