// dump against real Postgres: both shapes, snapshot-consistent manifests under concurrent writes, the
// CLI-compatible API, and the faults an operator meets (killed pg_dump, missing/old pg_dump, full queue,
// concurrent create, crash leftovers).
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../functions/dump/app.js';
import { ManifestSchema } from '../shared/catalog/records.js';
import type { Project } from '../shared/registry.js';
import { seedProjectDb, seedTenant } from './support/fixtures.js';
import { type PgCluster, pgBinPath, startPostgres } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import { ADMIN, eventually, makeTestEnv, makeToken, type TestEnv, testRuntime } from './support/runtime.js';

const PASSWORD = `pw-${randomUUID()}`;
const tenantId = randomUUID();
const emptyTenantId = randomUUID();
const v1Id = randomUUID();

let pg: PgCluster;
let env: TestEnv;
let receiver: EventReceiver;
let projects: Project[];

const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);

function project(id: string, slug: string, engine: 'v2_shared' | 'v1_dedicated'): Project {
  return engine === 'v2_shared'
    ? { id, hash: hashOf(id), slug, engine, cluster: 'shared-1' }
    : { id, hash: hashOf(id), slug, engine, databaseUrl: 'env:TEST_V1_URL' };
}

function makeDump(extraEnv: Record<string, string> = {}, overrides: Partial<TestEnv> = {}) {
  const e = { ...env, ...overrides, env: { ...env.env, ...extraEnv } };
  const rt = testRuntime('dump', e, {
    projects,
    clusters: [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }],
  });
  return { rt, fn: createApp(rt) };
}

async function create(fn: ReturnType<typeof createApp>, hash: string, headers: Record<string, string> = {}) {
  return fn.app.request(`/api/cli/v1/projects/${hash}/backups`, {
    method: 'POST',
    headers: { ...ADMIN.header, ...headers },
  });
}

/** A pg_dump stand-in on PATH that wraps the real one (records argv and env, or misbehaves on purpose). */
async function fakePgDump(dir: string, body: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, 'pg_dump');
  await writeFile(file, `#!/bin/sh\nREAL=${pgBinPath('pg_dump')}\n${body}\n`);
  await chmod(file, 0o755);
  return dir;
}

beforeAll(async () => {
  pg = await startPostgres({ superuserPassword: PASSWORD });
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: tenantId, rows: 3000 });
  await seedTenant(pg, { db: 'shared', projectId: emptyTenantId, empty: true });
  await seedProjectDb(pg, { db: 'v1app', rows: 500 });
  receiver = await startEventReceiver();
  projects = [
    project(tenantId, 'bloom-atelier', 'v2_shared'),
    project(emptyTenantId, 'empty-tenant', 'v2_shared'),
    project(v1Id, 'v1-app', 'v1_dedicated'),
  ];
  env = await makeTestEnv({
    TEST_SHARED_URL: pg.url('shared'),
    TEST_V1_URL: pg.url('v1app'),
    FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.backup.*'] }]),
  });
});

afterAll(async () => {
  await receiver?.close();
  await pg?.destroy();
  await env?.cleanup();
});

describe('dump: both shapes', () => {
  it('tenant_export: manifest counts equal the source, the artifact restores, the API lists and downloads it', async () => {
    const { rt, fn } = makeDump();
    await fn.start();
    const res = await create(fn, hashOf(tenantId));
    expect(res.status).toBe(200);
    const { backup } = (await res.json()) as { backup: Record<string, unknown> };
    expect(backup).toMatchObject({
      kind: 'tenant_export',
      format: 'custom',
      status: 'complete',
      artifactValidationStatus: 'artifact_valid',
      restoreVerificationStatus: 'pending',
      offsiteStatus: 'pending',
    });

    const paths = rt.catalog.paths(tenantId, backup.id as string);
    const manifest = ManifestSchema.parse(JSON.parse(await readFile(paths.manifest, 'utf8')));
    const schema = `t_${tenantId.replaceAll('-', '').slice(0, 12)}_api`;
    expect(manifest.schemas).toEqual([schema]);
    const counts = Object.fromEntries(manifest.tables.map((t) => [t.name, t.rows]));
    expect(counts).toEqual({ customers: 3000, orders: 3000 });
    const seqs = Object.fromEntries(manifest.sequences.map((s) => [s.name, s.lastValue]));
    const live = await pg.query<{ last_value: string }>(
      `SELECT last_value::text FROM ${schema}.invoice_seq`,
      [],
      'shared',
    );
    expect(seqs.invoice_seq).toBe(live[0]!.last_value);
    expect(manifest.roles).toContain(`t_${tenantId.replaceAll('-', '').slice(0, 12)}_role`);
    expect(manifest.pgDump.flags).toEqual(
      expect.arrayContaining([
        '--format=custom',
        '--compress=1',
        '--no-owner',
        '--no-acl',
        `--schema=${schema}`,
      ]),
    );
    expect(manifest.source).toMatchObject({
      engine: 'v2_shared',
      cluster: 'shared-1',
      port: pg.port,
      database: 'shared',
      serverVersionNum: pg.serverVersionNum,
    });
    expect(manifest.source.systemIdentifier).toMatch(/^\d+$/);

    const list = await execa(pgBinPath('pg_restore'), ['--list', paths.dump]);
    expect(list.stdout).toContain(`TABLE DATA ${schema} orders`);
    expect(list.stdout).toContain('POLICY');

    const listed = await fn.app.request(`/api/cli/v1/projects/${hashOf(tenantId)}/backups`, {
      headers: ADMIN.header,
    });
    const { backups } = (await listed.json()) as { backups: Array<Record<string, unknown>> };
    expect(backups[0]).toMatchObject({
      id: backup.id,
      checksumSha256: manifest.sha256,
      sizeBytes: manifest.sizeBytes,
      localArtifactStatus: 'present',
    });
    for (const field of [
      'id',
      'kind',
      'format',
      'status',
      'sizeBytes',
      'checksumSha256',
      'createdAt',
      'completedAt',
      'primaryArtifactRelativePath',
      'primaryArtifactAbsolutePath',
      'localArtifactStatus',
      'offsiteStatus',
      'offsiteKey',
      'offsiteContentSha256',
      'artifactValidationStatus',
      'restoreVerificationStatus',
      'restoreVerificationAt',
      'restoreVerificationError',
    ]) {
      expect(backups[0]).toHaveProperty(field);
    }

    const download = await fn.app.request(
      `/api/cli/v1/projects/${hashOf(tenantId)}/backups/${backup.id}/download`,
      { headers: ADMIN.header },
    );
    expect(download.status).toBe(200);
    expect(download.headers.get('content-length')).toBe(String(manifest.sizeBytes));
    expect(download.headers.get('x-flux-checksum-sha256')).toBe(manifest.sha256);
    const bytes = Buffer.from(await download.arrayBuffer());
    expect(bytes.equals(await readFile(paths.dump))).toBe(true);

    const created = await eventually(() =>
      receiver.events('flux.backup.created').find((e) => e.subject === `${tenantId}/${backup.id}`),
    );
    expect(created.data).toMatchObject({
      sha256: manifest.sha256,
      tables: 2,
      rows: 6000,
      kind: 'tenant_export',
    });
    expect(created.source).toBe('/flux-ops/dump');
    await fn.stop();
  });

  it('project_db: the whole database, and an empty tenant verifies its zero tables', async () => {
    const { rt, fn } = makeDump();
    await fn.start();
    const v1 = (await (await create(fn, hashOf(v1Id))).json()) as { backup: { id: string; kind: string } };
    expect(v1.backup.kind).toBe('project_db');
    const m1 = ManifestSchema.parse(
      JSON.parse(await readFile(rt.catalog.paths(v1Id, v1.backup.id).manifest, 'utf8')),
    );
    expect(
      Object.fromEntries(m1.tables.filter((t) => t.schema === 'public').map((t) => [t.name, t.rows])),
    ).toEqual({ todos: 500, users: 500 });
    expect(m1.schemas).toEqual(expect.arrayContaining(['public', 'auth']));

    const empty = await create(fn, hashOf(emptyTenantId));
    expect(empty.status).toBe(200);
    const e = (await empty.json()) as { backup: { id: string } };
    const m2 = ManifestSchema.parse(
      JSON.parse(await readFile(rt.catalog.paths(emptyTenantId, e.backup.id).manifest, 'utf8')),
    );
    expect(m2.tables).toEqual([]);
    expect(m2.schemas).toHaveLength(1);
    await fn.stop();
  });

  it('counts are those of the snapshot the dump saw, even with concurrent writes', async () => {
    const { rt, fn } = makeDump();
    await fn.start();
    const schema = `t_${tenantId.replaceAll('-', '').slice(0, 12)}_api`;
    let writing = true;
    const writer = (async () => {
      while (writing) {
        await pg.query(
          `INSERT INTO ${schema}.customers (email, name) SELECT md5(random()::text) || '@x.test', 'w' FROM generate_series(1, 50)`,
          [],
          'shared',
        );
        await pg.query(`SELECT nextval('${schema}.invoice_seq')`, [], 'shared');
      }
    })();
    const res = await create(fn, hashOf(tenantId));
    writing = false;
    await writer;
    const { backup } = (await res.json()) as { backup: { id: string } };
    const paths = rt.catalog.paths(tenantId, backup.id);
    const manifest = ManifestSchema.parse(JSON.parse(await readFile(paths.manifest, 'utf8')));
    // Restore the artifact into a scratch database: its counts must be exactly the manifest's.
    const scratch = `restore_${Date.now()}`;
    await pg.createDatabase(scratch);
    // The stubs a tenant export needs (what verify's sandbox creates before restoring).
    await pg.query(
      `CREATE SCHEMA auth; CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT NULL::uuid $$`,
      [],
      scratch,
    );
    await execa(pgBinPath('pg_restore'), ['--no-owner', '--no-acl', '-d', scratch, paths.dump], {
      env: pg.env(scratch),
    });
    for (const t of manifest.tables) {
      const rows = await pg.query<{ n: string }>(
        `SELECT count(*)::text AS n FROM ${t.schema}.${t.name}`,
        [],
        scratch,
      );
      expect(Number(rows[0]!.n)).toBe(t.rows);
    }
    const liveNow = await pg.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM ${schema}.customers`,
      [],
      'shared',
    );
    expect(Number(liveNow[0]!.n)).toBeGreaterThan(manifest.tables.find((t) => t.name === 'customers')!.rows);
    const seq = await pg.query<{ v: string }>(
      `SELECT last_value::text AS v FROM ${schema}.invoice_seq`,
      [],
      scratch,
    );
    expect(seq[0]!.v).toBe(manifest.sequences.find((s) => s.name === 'invoice_seq')!.lastValue);
    await fn.stop();
  });

  it('answers async creates with 202 + Location and lists newest first', async () => {
    const { fn } = makeDump();
    await fn.start();
    const res = await create(fn, hashOf(v1Id), { prefer: 'respond-async' });
    expect(res.status).toBe(202);
    const location = res.headers.get('location')!;
    expect(location).toMatch(new RegExp(`/api/cli/v1/projects/${hashOf(v1Id)}/backups/[0-9A-Z]{26}$`));
    const done = await eventually(async () => {
      const r = await fn.app.request(location, { headers: ADMIN.header });
      const b = ((await r.json()) as { backup: { status: string } }).backup;
      return b.status === 'complete' ? b : undefined;
    });
    expect(done).toMatchObject({ status: 'complete', artifactValidationStatus: 'artifact_valid' });
    const listed = (await (
      await fn.app.request(`/api/cli/v1/projects/${hashOf(v1Id)}/backups`, { headers: ADMIN.header })
    ).json()) as { backups: Array<{ id: string; createdAt: string }> };
    expect(listed.backups[0]!.id).toBe(location.split('/').pop());
    const times = listed.backups.map((b) => b.createdAt);
    expect([...times].sort().reverse()).toEqual(times);
    await fn.stop();
  });

  it('pages the list when asked (limit, before, a Link to the next page) and refuses a malformed page', async () => {
    const { fn } = makeDump();
    await fn.start();
    const hash = hashOf(emptyTenantId);
    for (let i = 0; i < 3; i++) expect((await create(fn, hash)).status).toBe(200);
    const list = async (query: string) => {
      const res = await fn.app.request(`/api/cli/v1/projects/${hash}/backups${query}`, {
        headers: ADMIN.header,
      });
      return {
        status: res.status,
        link: res.headers.get('link'),
        body: (await res.json()) as {
          backups?: Array<{ id: string }>;
          nextBefore?: string | null;
          platformMinimumBackupFreshness?: unknown;
          code?: string;
          message?: string;
        },
      };
    };
    const whole = await list('');
    const ids = whole.body.backups!.map((b) => b.id);
    expect(ids.length).toBeGreaterThanOrEqual(3);
    // Unpaged, the answer is as the upstream CLI reads it: every row, no cursor.
    expect(whole.body).not.toHaveProperty('nextBefore');
    expect(whole.link).toBeNull();

    const first = await list('?limit=2');
    expect(first.body.backups!.map((b) => b.id)).toEqual(ids.slice(0, 2));
    expect(first.body.nextBefore).toBe(ids[1]);
    expect(first.link).toBe(`</api/cli/v1/projects/${hash}/backups?limit=2&before=${ids[1]}>; rel="next"`);
    expect(first.body.platformMinimumBackupFreshness).toEqual(whole.body.platformMinimumBackupFreshness);
    const rest: string[] = [];
    for (let link = first.link; link; ) {
      const page = await list(link.slice(link.indexOf('?'), link.indexOf('>')));
      expect(page.status).toBe(200);
      rest.push(...page.body.backups!.map((b) => b.id));
      link = page.link;
      if (!link) expect(page.body.nextBefore).toBeNull();
    }
    expect([...ids.slice(0, 2), ...rest]).toEqual(ids);

    for (const query of ['?limit=0', '?limit=1001', '?limit=two', `?before=${ids[0]}`]) {
      const bad = await list(query);
      expect(bad.status, query).toBe(400);
      expect(bad.body.code, query).toBe('bad_request');
    }
    expect((await list('?limit=1&before=..%2Fetc')).body.code).toBe('invalid_id');
    await fn.stop();
  });
});

describe('dump: retention', () => {
  it('deletes old backups with their sidecars after a create, keeping the newest restorable one', async () => {
    const retained: Project = {
      ...project(v1Id, 'v1-app', 'v1_dedicated'),
      retention: { keepCount: 1, keepDays: 0 },
    };
    const rt = testRuntime('dump', env, { projects: [retained] });
    const fn = createApp(rt);
    await fn.start();
    const before = (await rt.catalog.list(v1Id)).map((e) => e.backupId);
    const ids: string[] = [];
    for (let i = 0; i < 2; i += 1) {
      const res = await create(fn, hashOf(v1Id));
      const id = ((await res.json()) as { backup: { id: string } }).backup.id;
      ids.push(id);
      // The verify receipt a real verification writes: these two are restore-verified.
      const entry = (await rt.catalog.get(v1Id, id))!;
      const now = new Date().toISOString();
      await rt.catalog.writeVerifyReceipt({
        backupId: id,
        projectId: v1Id,
        status: 'restore_verified',
        sha256: entry.manifest!.sha256,
        source: 'local',
        driver: 'local',
        versions: {},
        rungs: [],
        stages: {},
        startedAt: now,
        finishedAt: now,
        seconds: 1,
      });
    }
    const third = ((await (await create(fn, hashOf(v1Id))).json()) as { backup: { id: string } }).backup.id;
    const left = (await rt.catalog.list(v1Id)).map((e) => e.backupId);
    // Newest (not verified yet) and the newest restorable stay; everything older goes, files and all.
    expect(left).toEqual([third, ids[1]]);
    const names = await readdir(path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, v1Id));
    for (const gone of [ids[0]!, ...before]) expect(names.filter((n) => n.startsWith(gone))).toEqual([]);
    const deleted = await eventually(() =>
      receiver.events('flux.backup.deleted').find((e) => e.subject === `${v1Id}/${ids[0]}`),
    );
    expect(deleted.data).toMatchObject({ reason: 'retention', backupId: ids[0] });
    await fn.stop();
  });
});

describe('dump: faults', () => {
  it('pg_dump killed mid-stream: a failed backup with its reason, no artifact, and the next backup works', async () => {
    const bin = await fakePgDump(
      path.join(env.root, 'bin-killed'),
      [
        'if [ "$1" = "--version" ]; then exec "$REAL" --version; fi',
        // Killed once the archive has bytes in it: mid-write, with the pg_dump process gone.
        // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion
        'for a in "$@"; do case "$a" in --file=*) F="${a#--file=}";; esac; done',
        '"$REAL" "$@" & P=$!',
        'while [ ! -s "$F" ]; do sleep 0.01; done',
        'kill -9 $P; kill -9 $$',
      ].join('\n'),
    );
    const { rt, fn } = makeDump({ PATH: `${bin}:${env.env.PATH}` });
    await fn.start();
    const res = await create(fn, hashOf(tenantId));
    expect(res.status).toBe(502);
    const body = (await res.json()) as { code: string; error: string };
    expect(body.code).toBe('dump_failed');
    expect(body.error).toMatch(/pg_dump was killed by SIGKILL/);
    const names = await readdir(path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, tenantId));
    expect(names.filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    const failed = (await rt.catalog.list(tenantId))[0]!;
    expect(failed.state).toMatchObject({ status: 'failed', reason: 'dump_failed' });
    expect(failed.dump).toBeUndefined();
    expect(failed.manifest).toBeUndefined();
    const trust = await rt.catalog.trust(tenantId);
    expect(trust.tier).toBe('latest_not_complete');
    await eventually(() =>
      receiver.events('flux.backup.failed').find((e) => e.subject === `${tenantId}/${failed.backupId}`),
    );
    await fn.stop();
    const healthy = makeDump();
    expect((await create(healthy.fn, hashOf(tenantId))).status).toBe(200);
  });

  it('PATH without pg_dump: /readyz and create say to install the client tools and rebuild', async () => {
    const empty = path.join(env.root, 'bin-empty');
    await mkdir(empty, { recursive: true });
    const { fn } = makeDump({ PATH: empty });
    const ready = await fn.app.request('/readyz');
    expect(ready.status).toBe(503);
    const readyBody = JSON.stringify(await ready.json());
    expect(readyBody).toMatch(/pg_dump not found on PATH of this process/);
    expect(readyBody).toMatch(/rebuild/);
    const res = await create(fn, hashOf(tenantId));
    expect(res.status).toBe(503);
    const body = (await res.json()) as { code: string; error: string };
    expect(body.code).toBe('tool_missing');
    expect(body.error).toMatch(
      /install postgresql-client-15 .* rebuild .*restarting the old container does not bring the tool back/,
    );
  });

  it('pg_dump older than the server: names the major to install', async () => {
    const bin = await fakePgDump(path.join(env.root, 'bin-old'), 'echo "pg_dump (PostgreSQL) 14.11"');
    const { fn } = makeDump({ PATH: `${bin}:${env.env.PATH}` });
    const res = await create(fn, hashOf(tenantId));
    expect(res.status).toBe(503);
    const body = (await res.json()) as { code: string; error: string };
    expect(body.code).toBe('tool_version');
    expect(body.error).toMatch(/14\.11 .* older than the server \(major 15\): install postgresql-client-15/);
  });

  it('a pg_dump without protection from relations swapped for views: refused, naming the release to install', async () => {
    // 15.7 predates restrict_nonsystem_relation_kind: a tenant could turn a table into a view mid-dump and
    // have pg_dump run its query as the dumping role.
    const bin = await fakePgDump(
      path.join(env.root, 'bin-unprotected'),
      'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 15.7"; exit 0; fi\necho ran > "$(dirname "$0")/ran"',
    );
    const { fn } = makeDump({ PATH: `${bin}:${env.env.PATH}` });
    const res = await create(fn, hashOf(tenantId));
    expect(res.status).toBe(503);
    const body = (await res.json()) as { code: string; error: string };
    expect(body.code).toBe('tool_version');
    expect(body.error).toMatch(
      /15\.7 .*restrict_nonsystem_relation_kind .*install postgresql-client 15\.8 or newer/,
    );
    await expect(stat(path.join(bin, 'ran'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('credentials go through the environment, never argv; application_name and lock-wait-timeout are set', async () => {
    const record = path.join(env.root, 'argv.txt');
    const bin = await fakePgDump(
      path.join(env.root, 'bin-record'),
      `if [ "$1" = "--version" ]; then exec "$REAL" --version; fi\necho "$@" > ${record}\necho "pw=\${PGPASSWORD:+set} app=$PGAPPNAME" >> ${record}\nexec "$REAL" "$@"`,
    );
    const { rt, fn } = makeDump({ PATH: `${bin}:${env.env.PATH}` });
    expect((await create(fn, hashOf(v1Id))).status).toBe(200);
    const recorded = await readFile(record, 'utf8');
    expect(recorded).not.toContain(PASSWORD);
    expect(recorded).toContain('pw=set app=flux-ops-dump');
    expect(recorded).toMatch(/--lock-wait-timeout=\d+ms/);
    expect(recorded).toMatch(/--snapshot=\S+/);
    expect(rt.logs.text()).not.toContain(PASSWORD);
  });

  it('one create per project at a time (409), and a full cluster queue answers 503 + Retry-After', async () => {
    const bin = await fakePgDump(
      path.join(env.root, 'bin-slow'),
      'if [ "$1" = "--version" ]; then exec "$REAL" --version; fi\nsleep 2\nexec "$REAL" "$@"',
    );
    const { fn } = makeDump(
      { PATH: `${bin}:${env.env.PATH}` },
      { config: { ...env.config, FLUX_DUMP_QUEUE_MAX: 0 } },
    );
    const clusters = [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 1 }];
    const rt = testRuntime(
      'dump',
      {
        config: { ...env.config, FLUX_DUMP_QUEUE_MAX: 0 },
        env: { ...env.env, PATH: `${bin}:${env.env.PATH}` },
      },
      { projects, clusters },
    );
    const single = createApp(rt);
    const first = await create(single, hashOf(tenantId), { prefer: 'respond-async' });
    expect(first.status).toBe(202);
    const again = await create(single, hashOf(tenantId), { prefer: 'respond-async' });
    expect(again.status).toBe(409);
    expect(((await again.json()) as { code: string }).code).toBe('conflict');
    // Another tenant on the same cluster: the one slot is taken and the queue holds 0 → 503, asked
    // synchronously or asynchronously alike (never a 202 that then fails).
    const before = await rt.catalog.list(emptyTenantId);
    for (const headers of [{}, { prefer: 'respond-async' }] as Array<Record<string, string>>) {
      const other = await create(single, hashOf(emptyTenantId), headers);
      expect(other.status).toBe(503);
      expect(other.headers.get('retry-after')).toMatch(/^\d+$/);
      expect(((await other.json()) as { code: string }).code).toBe('queue_full');
    }
    // A refusal is not a backup: nothing was recorded, so no failed backup hides the project's newest.
    expect(await rt.catalog.list(emptyTenantId)).toEqual(before);
    await eventually(async () => (await rt.catalog.list(tenantId))[0]?.manifest);
    // The slot is free again: the next create on the cluster is admitted.
    const after = await create(single, hashOf(emptyTenantId));
    expect(after.status, await after.clone().text()).toBe(200);
    await fn.stop();
  });

  it("the cluster's dump slots are shared across processes: a dump waits while another process holds them all", async () => {
    // Another process (here: this test's own connection) holds both of shared-1's slots, as two dumps of
    // another dump function or a migration would.
    const holder = await pg.connect('shared');
    try {
      for (const slot of [0, 1]) {
        await holder.query('SELECT pg_advisory_lock(hashtext($1), $2)', [
          'flux-ops:dumps:cluster:shared-1',
          slot,
        ]);
      }
      const { rt, fn } = makeDump();
      const res = await create(fn, hashOf(emptyTenantId), { prefer: 'respond-async' });
      expect(res.status).toBe(202);
      const { backup } = (await res.json()) as { backup: { id: string } };
      // The dump has asked for a slot and been refused (it polls with pg_try_advisory_lock)...
      await eventually(async () => {
        const asking = await pg.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE application_name = 'flux-ops-dump' AND query LIKE '%pg_try_advisory_lock%'`,
          [],
          'shared',
        );
        return (asking[0]?.n ?? 0) > 0;
      });
      // ...so nothing is dumped while the slots are held,
      expect((await rt.catalog.get(emptyTenantId, backup.id))?.manifest).toBeUndefined();
      expect(
        await pg.query(
          `SELECT pid FROM pg_stat_activity WHERE application_name = 'flux-ops-dump' AND query LIKE 'COPY%'`,
          [],
          'shared',
        ),
      ).toEqual([]);
      // and it completes once one is free.
      await holder.query('SELECT pg_advisory_unlock(hashtext($1), 1)', ['flux-ops:dumps:cluster:shared-1']);
      await eventually(async () => (await rt.catalog.get(emptyTenantId, backup.id))?.manifest);
      await fn.stop();
    } finally {
      await holder.end();
    }
  });

  it('a crash mid-dump leaves nothing that counts and does not block later backups', async () => {
    const { rt, fn } = makeDump();
    const backupId = '01JDZZZZZZZZZZZZZZZZZZZZZZ';
    const paths = rt.catalog.paths(tenantId, backupId);
    const now = new Date().toISOString();
    await rt.catalog.writeState({
      backupId,
      projectId: tenantId,
      kind: 'tenant_export',
      status: 'running',
      createdAt: now,
      updatedAt: now,
      pid: 999999,
    });
    await writeFile(path.join(paths.dir, `.tmp-${backupId}.dump.abcdef`), 'partial');
    await writeFile(path.join(paths.dir, `.tmp-${backupId}.manifest.json.abcdef`), '{');
    // Receipts other functions are writing right now: theirs, not dump's to clean up.
    const verifying = `.tmp-${backupId}.verify.json.123456`;
    const replicating = `.tmp-${backupId}.offsite.json.123456`;
    await writeFile(path.join(paths.dir, verifying), '{"backupId"');
    await writeFile(path.join(paths.dir, replicating), '{"backupId"');
    await fn.start();
    const entry = await rt.catalog.get(tenantId, backupId);
    expect(entry?.state).toMatchObject({ status: 'failed', reason: 'interrupted' });
    expect((await readdir(paths.dir)).filter((n) => n.startsWith('.tmp-')).sort()).toEqual(
      [replicating, verifying].sort(),
    );
    await rm(path.join(paths.dir, verifying));
    await rm(path.join(paths.dir, replicating));
    expect((await create(fn, hashOf(tenantId))).status).toBe(200);
    await fn.stop();
  });

  it('rejects bad ids, unknown projects, missing scopes and wrong kinds with clear 4xx', async () => {
    const { fn } = makeDump();
    const reader = makeToken('reader', ['backups:read']);
    const envWith = {
      ...env,
      config: {
        ...env.config,
        FLUX_API_TOKENS: [
          ...env.config.FLUX_API_TOKENS,
          { id: 'reader', sha256: reader.entry.split(':')[1]!, scopes: ['backups:read' as const] },
        ],
      },
    };
    const scoped = createApp(
      testRuntime('dump', envWith, {
        projects,
        clusters: [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }],
      }),
    );
    const forbidden = await scoped.app.request(`/api/cli/v1/projects/${hashOf(tenantId)}/backups`, {
      method: 'POST',
      headers: reader.header,
    });
    expect(forbidden.status).toBe(403);
    expect(((await forbidden.json()) as { error: string }).error).toMatch(/backups:write/);
    expect((await create(fn, '..%2F..')).status).toBe(400);
    expect((await create(fn, 'fffffff')).status).toBe(404);
    expect(
      (await fn.app.request(`/api/cli/v1/projects/${hashOf(tenantId)}/backups`, { method: 'POST' })).status,
    ).toBe(401);
    const wrongKind = await fn.app.request(`/api/cli/v1/projects/${hashOf(tenantId)}/backups`, {
      method: 'POST',
      headers: { ...ADMIN.header, 'content-type': 'application/json' },
      body: JSON.stringify({ kind: 'project_db' }),
    });
    expect(wrongKind.status).toBe(400);
    const missing = await fn.app.request(
      `/api/cli/v1/projects/${hashOf(tenantId)}/backups/01JDZZZZZZZZZZZZZZZZZZZZZY/download`,
      { headers: ADMIN.header },
    );
    expect(missing.status).toBe(404);
  });
});
