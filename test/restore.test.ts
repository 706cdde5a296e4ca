// restore end to end through the all-in-one process on a real cluster: a v2 tenant and a v1 database are
// backed up, verified (local sandbox), damaged, and restored — beside the live copy (which stays byte for
// byte as it was) and in place (gated, a safety backup first, proven against the manifest, undoable) —
// and every refusal leaves the servers as they were.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AllInOne, createAllInOne } from '../functions/all/app.js';
import { silentLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { createStaticRegistry, type Project } from '../shared/registry.js';
import { seedProjectDb, seedSlowRestoreTenant, seedTenant } from './support/fixtures.js';
import { freePort, type PgCluster, pgBinPath, startPostgres } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import { ADMIN, eventually, makeTestEnv, makeToken, type TestEnv } from './support/runtime.js';

const SHARED_DB = 'flux_tenants';
const READER = makeToken('ci-reader', ['backups:read', 'backups:write', 'verify']);
const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
type Body = Record<string, any>;

const tenant = { id: randomUUID(), slug: 'restored-tenant' };
const beside = { id: randomUUID(), slug: 'beside-tenant' };
const dedicated = { id: randomUUID(), slug: 'dedicated-app' };
const other = { id: randomUUID(), slug: 'other-tenant' };
const slow = { id: randomUUID(), slug: 'slow-tenant' };

let cluster: PgCluster;
let env: TestEnv;
let all: AllInOne;
let server: ServerType;
let base: string;
let localBase: string;
let receiver: EventReceiver;
let projects: Project[];

async function api(
  method: 'GET' | 'POST',
  route: string,
  body?: unknown,
  token = ADMIN,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Body }> {
  const res = await fetch(`${base}${route}`, {
    method,
    headers: { ...token.header, ...(body ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.status, body: (await res.json()) as Body };
}

const projectOf = (p: { id: string }) => projects.find((x) => x.id === p.id)!;

async function backupAndVerify(p: { id: string }): Promise<string> {
  const { hash } = projectOf(p);
  const created = await api('POST', `/api/cli/v1/projects/${hash}/backups`, {});
  expect(created.status).toBe(200);
  const id = created.body.backup.id as string;
  const verified = await api('POST', `/api/cli/v1/projects/${hash}/backups/${id}/verify`, {});
  expect(verified.body).toMatchObject({ ok: true, restoreVerificationStatus: 'restore_verified' });
  return id;
}

async function restore(p: { id: string }, backupId: string, body: Record<string, unknown>) {
  return api('POST', `/api/cli/v1/projects/${projectOf(p).hash}/backups/${backupId}/restore`, body);
}

/** Counts, a content hash per table and every sequence's position: what a restore must bring back. */
async function tenantData(db: string, schema: string, tables: string[]): Promise<Record<string, string>> {
  const client = await cluster.connect(db);
  try {
    const out: Record<string, string> = {};
    for (const table of tables) {
      const exists = await client.query('SELECT to_regclass($1) AS r', [`${schema}.${table}`]);
      if (!exists.rows[0].r) {
        out[table] = 'absent';
        continue;
      }
      const r = await client.query<{ n: string; h: string }>(
        `SELECT count(*)::text AS n, coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') AS h FROM ${schema}.${table} t`,
      );
      out[table] = `${r.rows[0]!.n}:${r.rows[0]!.h}`;
    }
    const seqs = await client.query<{ n: string; v: string | null }>(
      'SELECT sequencename AS n, last_value::text AS v FROM pg_sequences WHERE schemaname = $1',
      [schema],
    );
    for (const s of seqs.rows) out[`seq:${s.n}`] = String(s.v);
    return out;
  } finally {
    await client.end();
  }
}

/** A plain-format pg_dump of what a tenant sees (schema or database): equal text means nothing changed. */
async function rawDump(db: string, schema?: string, extra: string[] = []): Promise<string> {
  const r = await execa(
    pgBinPath('pg_dump'),
    ['--no-owner', ...extra, ...(schema ? [`--schema=${schema}`] : []), `--dbname=${cluster.url(db)}`],
    { stripFinalNewline: false },
  );
  // pg_dump marks its output with a random \\restrict key per run (psql meta-command injection guard).
  return r.stdout.replace(/^\\(un)?restrict \S+$/gm, '');
}

/** Pids of the processes whose argv matches (read from /proc: the child of the function under test). */
async function processesOf(match: (argv: string[]) => boolean): Promise<string[]> {
  const out: string[] = [];
  for (const pid of (await readdir('/proc')).filter((n) => /^\d+$/.test(n))) {
    const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').then(
      (t) => t.split('\0').filter(Boolean),
      () => [] as string[],
    );
    if (match(argv)) out.push(pid);
  }
  return out;
}

async function databases(): Promise<string[]> {
  const r = await cluster.query<{ d: string }>('SELECT datname AS d FROM pg_database ORDER BY 1');
  return r.map((x) => x.d);
}

async function schemas(db: string): Promise<string[]> {
  const r = await cluster.query<{ s: string }>(
    `SELECT nspname AS s FROM pg_namespace WHERE nspname LIKE 't\\_%' ORDER BY 1`,
    [],
    db,
  );
  return r.map((x) => x.s);
}

beforeAll(async () => {
  [cluster, receiver] = await Promise.all([startPostgres(), startEventReceiver()]);
  await cluster.createDatabase(SHARED_DB);
  for (const t of [tenant, beside, other])
    await seedTenant(cluster, { db: SHARED_DB, projectId: t.id, rows: 800 });
  await seedProjectDb(cluster, { db: 'dedicated_app', rows: 600 });
  // Every restored row of this tenant passes a CHECK that sleeps 50 ms: 120 rows restore in about 6 s.
  await seedSlowRestoreTenant(cluster, { db: SHARED_DB, projectId: slow.id, rows: 120 });
  localBase = await mkdtemp(path.join(tmpdir(), 'flux-restore-verify-'));
  await chmod(localBase, 0o755);
  env = await makeTestEnv({
    TEST_SHARED_URL: cluster.url(SHARED_DB),
    TEST_DEDICATED_URL: cluster.url('dedicated_app'),
    TEST_OTHER_SERVER_URL: cluster.url('postgres'),
    FLUX_API_TOKENS: [ADMIN.entry, READER.entry].join(','),
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: localBase,
    // Verification on demand only, so each test decides what is verified.
    FLUX_VERIFY_ON: 'flux.restore.test.manual',
    FLUX_RESTORE_KEEP_PREVIOUS_HOURS: '1',
    FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.restore.*', 'flux.backup.*'] }]),
  });
  projects = [
    { ...tenant, hash: hashOf(tenant.id), engine: 'v2_shared', cluster: 'shared-1' },
    { ...beside, hash: hashOf(beside.id), engine: 'v2_shared', cluster: 'shared-1' },
    { ...other, hash: hashOf(other.id), engine: 'v2_shared', cluster: 'shared-1' },
    { ...slow, hash: hashOf(slow.id), engine: 'v2_shared', cluster: 'shared-1' },
    {
      ...dedicated,
      hash: hashOf(dedicated.id),
      engine: 'v1_dedicated',
      databaseUrl: 'env:TEST_DEDICATED_URL',
    },
  ];
  all = createAllInOne(env.config, env.env, {
    log: silentLogger(),
    metrics: createRegistry({ defaultMetrics: false }),
    registry: createStaticRegistry({
      projects,
      clusters: [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }],
    }),
  });
  server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: all.app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  all.setBaseUrl(base);
  await all.start();
});

afterAll(async () => {
  await all?.stop().catch(() => undefined);
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await receiver?.close();
  await cluster?.destroy();
  await env?.cleanup();
  if (localBase) await rm(localBase, { recursive: true, force: true });
});

describe('restore of a v2 tenant', () => {
  const schema = `t_${tenant.id.replaceAll('-', '').slice(0, 12)}_api`;
  const role = `t_${tenant.id.replaceAll('-', '').slice(0, 12)}_role`;
  const TABLES = ['customers', 'orders'];

  it('in place: brings back exactly the backup after rows were deleted and updated, a table dropped and a sequence advanced; the safety backup undoes it', async () => {
    // A grant the tenant API depends on; backups are taken without grants (--no-acl).
    await cluster.query(
      `GRANT USAGE ON SCHEMA ${schema} TO anon; GRANT SELECT ON ${schema}.customers TO anon`,
      [],
      SHARED_DB,
    );
    const backupId = await backupAndVerify(tenant);
    const good = await tenantData(SHARED_DB, schema, TABLES);
    // What a raw pg_restore of the same archive gives, to compare the structure with.
    await cluster.createDatabase('raw_restore');
    // What the tenant's policies call, as on the cluster it came from.
    await cluster.query(
      `CREATE SCHEMA auth; CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT NULL::uuid $$`,
      [],
      'raw_restore',
    );
    await execa(pgBinPath('pg_restore'), [
      '--no-owner',
      '--exit-on-error',
      `--dbname=${cluster.url('raw_restore')}`,
      path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, tenant.id, `${backupId}.dump`),
    ]);
    const rawStructure = await rawDump('raw_restore', schema, ['--schema-only', '--no-acl']);
    expect(rawStructure).toContain('CREATE TABLE');

    // The tenant's bad day.
    await cluster.query(
      `DELETE FROM ${schema}.orders WHERE id % 3 = 0;
       UPDATE ${schema}.customers SET name = 'overwritten' WHERE id % 5 = 0;
       ALTER TABLE ${schema}.orders DROP CONSTRAINT orders_customer_id_fkey;
       DELETE FROM ${schema}.customers WHERE id > 700;
       DROP TABLE ${schema}.orders CASCADE;
       SELECT nextval('${schema}.invoice_seq') FROM generate_series(1, 50);`,
      [],
      SHARED_DB,
    );
    const damaged = await tenantData(SHARED_DB, schema, TABLES);
    expect(damaged.orders).toBe('absent');

    // No yes: refused, nothing touched.
    const unconfirmed = await restore(tenant, backupId, { mode: 'in_place' });
    expect(unconfirmed.status).toBe(412);
    expect(unconfirmed.body.error).toMatch(/--yes/);
    expect(await tenantData(SHARED_DB, schema, TABLES)).toEqual(damaged);

    const plan = await restore(tenant, backupId, { mode: 'in_place', dryRun: true });
    expect(plan.status).toBe(200);
    expect(plan.body.plan).toMatchObject({ mode: 'in_place', engine: 'v2_shared', schema });
    expect(plan.body.plan.backup).toMatchObject({ id: backupId, tier: 'restorable', gate: 'passes' });
    expect(plan.body.plan.archive.pgRestore).toMatch(/^\d+/);
    expect(await tenantData(SHARED_DB, schema, TABLES)).toEqual(damaged);

    const done = await restore(tenant, backupId, { mode: 'in_place', yes: true });
    expect(done.status, JSON.stringify(done.body)).toBe(200);
    const r = done.body.restore;
    expect(r).toMatchObject({ status: 'completed', mode: 'in_place', backupId, stage: 'done' });
    expect(r.rungs.map((x: Body) => `${x.rung}:${x.result}`)).toEqual([
      'structure:passed',
      'volume:passed',
      'sequences:passed',
    ]);
    expect(r.writeUnavailableSeconds).toBeGreaterThan(0);
    expect(r.previous).toMatchObject({ kind: 'schema', name: expect.stringMatching(/_prev_/) });

    // Exactly the backup: data, sequences and the schema's definition (grants included).
    expect(await tenantData(SHARED_DB, schema, TABLES)).toEqual(good);
    expect(await tenantData('raw_restore', schema, TABLES)).toEqual(good);
    expect(await rawDump(SHARED_DB, schema, ['--schema-only', '--no-acl'])).toBe(rawStructure);
    // The live schema's grants came along (the backup carries none).
    const anon = await cluster.query<{ usage: boolean; select: boolean }>(
      `SELECT has_schema_privilege('anon', '${schema}', 'USAGE') AS usage,
              has_table_privilege('anon', '${schema}.customers', 'SELECT') AS select`,
      [],
      SHARED_DB,
    );
    expect(anon[0]).toEqual({ usage: true, select: true });
    const owner = await cluster.query<{ o: string }>(
      `SELECT pg_get_userbyid(relowner) AS o FROM pg_class WHERE oid = '${schema}.orders'::regclass`,
      [],
      SHARED_DB,
    );
    expect(owner[0]!.o).toBe(role);
    // The damaged state is set aside, intact, for FLUX_RESTORE_KEEP_PREVIOUS_HOURS.
    expect(await tenantData(SHARED_DB, r.previous.name, TABLES)).toEqual(damaged);

    // The receipt beside the backup, with the measured seconds and the rungs.
    const dir = path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, tenant.id);
    const receiptName = (await readdir(dir)).find((n) => n === `${backupId}.restore.${r.id}.json`);
    expect(receiptName).toBeDefined();
    const receipt = JSON.parse(await readFile(path.join(dir, receiptName!), 'utf8'));
    expect(receipt).toMatchObject({
      status: 'completed',
      mode: 'in_place',
      safetyBackupId: r.safetyBackupId,
    });
    expect(receipt.seconds).toBeGreaterThan(0);

    // The safety backup holds the damaged state, catalogued like any backup ...
    const safety = await api(
      'GET',
      `/api/cli/v1/projects/${projectOf(tenant).hash}/backups/${r.safetyBackupId}`,
    );
    expect(safety.body.backup.status).toBe('complete');
    const manifest = JSON.parse(
      await readFile(path.join(dir, `${r.safetyBackupId}.manifest.json`), 'utf8'),
    ) as { tables: Array<{ name: string; rows: number }> };
    expect(manifest.tables.map((t) => t.name)).toEqual(['customers']);
    // ... and restoring it undoes the restore.
    const undo = await restore(tenant, r.safetyBackupId, {
      mode: 'in_place',
      yes: true,
      skipBackupCheck: true,
    });
    expect(undo.status, JSON.stringify(undo.body)).toBe(200);
    expect(await tenantData(SHARED_DB, schema, TABLES)).toEqual(damaged);

    const types = receiver.events().map((e) => e.type);
    expect(types).toContain('flux.restore.started');
    expect(types).toContain('flux.restore.completed');
    const started = receiver.events('flux.restore.started').find((e) => (e.data as Body).restoreId === r.id)!;
    expect(started.data).toMatchObject({ lockWrites: true, mode: 'in_place' });

    // The set-aside copies go when asked (or once their hours have passed).
    const dropped = await api(
      'POST',
      `/api/cli/v1/projects/${projectOf(tenant).hash}/restores/${r.id}/drop-previous`,
      {},
    );
    expect(dropped.status).toBe(200);
    expect(await schemas(SHARED_DB)).not.toContain(r.previous.name);
    await eventually(() => receiver.events('flux.restore.previous_dropped').length === 1);
  });

  it('mode new leaves the live tenant byte for byte as it was and names the new database', async () => {
    const s = `t_${beside.id.replaceAll('-', '').slice(0, 12)}_api`;
    const backupId = await backupAndVerify(beside);
    await cluster.query(`DELETE FROM ${s}.orders WHERE id < 100`, [], SHARED_DB);
    const before = await rawDump(SHARED_DB, s);
    const data = await tenantData(SHARED_DB, s, TABLES);
    const done = await restore(beside, backupId, { targetName: 'beside_inspect' });
    expect(done.status, JSON.stringify(done.body)).toBe(200);
    expect(done.body.restore).toMatchObject({ status: 'completed', mode: 'new', created: 'beside_inspect' });
    expect(done.body.restore.connectionHint).toMatch(/beside_inspect/);
    expect(JSON.stringify(done.body)).not.toContain(cluster.password);
    expect(await rawDump(SHARED_DB, s)).toBe(before);
    expect(await tenantData(SHARED_DB, s, TABLES)).toEqual(data);
    // The new database holds the backup's rows (the 99 deleted orders are there).
    const restored = await tenantData('beside_inspect', s, TABLES);
    expect(Number(restored.orders!.split(':')[0])).toBe(800);

    // A target that already has the name: a clear conflict, nothing touched.
    const dbsBefore = await databases();
    const taken = await restore(beside, backupId, { targetName: 'beside_inspect' });
    expect(taken.status).toBe(409);
    expect(taken.body.error).toMatch(/already exists/);
    expect(await databases()).toEqual(dbsBefore);
    // Onto another server given as env:NAME (here the same cluster's postgres database stands in).
    const elsewhere = await restore(beside, backupId, {
      targetUrl: 'env:TEST_OTHER_SERVER_URL',
      targetName: 'beside_elsewhere',
    });
    expect(elsewhere.status, JSON.stringify(elsewhere.body)).toBe(200);
    expect(elsewhere.body.restore.targetRef).toBe('env:TEST_OTHER_SERVER_URL');
  });

  it('refuses bad input with a clear error and touches nothing', async () => {
    const backupId = await backupAndVerify(other);
    const h = projectOf(other).hash;
    const before = { dbs: await databases(), schemas: await schemas(SHARED_DB) };
    const cases: Array<[string, Record<string, unknown>, number, RegExp]> = [
      [`/api/cli/v1/projects/${h}/backups/01ARZ3NDEKTSV4RRFFQ69G5FAV/restore`, {}, 404, /no complete backup/],
      [`/api/cli/v1/projects/${h}/backups/not-an-id/restore`, {}, 400, /./],
      [
        `/api/cli/v1/projects/${h}/backups/${backupId}/restore`,
        { targetUrl: cluster.url('postgres') },
        400,
        /env:NAME/,
      ],
      [
        `/api/cli/v1/projects/${h}/backups/${backupId}/restore`,
        { targetUrl: 'env:NOT_SET_ANYWHERE' },
        503,
        /NOT_SET_ANYWHERE/,
      ],
      [
        `/api/cli/v1/projects/${h}/backups/${backupId}/restore`,
        { mode: 'in_place', yes: true, targetUrl: 'env:TEST_OTHER_SERVER_URL' },
        422,
        /own server/,
      ],
      [
        `/api/cli/v1/projects/${h}/backups/${backupId}/restore`,
        { targetUrl: 'env:FLUX_API_TOKENS' },
        400,
        /names a flux-ops setting/,
      ],
      [
        `/api/cli/v1/projects/${h}/backups/${backupId}/restore`,
        { targetUrl: 'env:HOME' },
        400,
        /does not hold a valid postgres:\/\/ URL \(value not shown\)/,
      ],
      [`/api/cli/v1/projects/${h}/backups/${backupId}/restore`, { mode: 'sideways' }, 400, /mode/],
      [
        `/api/cli/v1/projects/${h}/backups/${backupId}/restore`,
        { targetName: 'Robert"; DROP' },
        400,
        /identifier/,
      ],
    ];
    for (const [route, body, status, message] of cases) {
      const res = await api('POST', route, body);
      expect(res.status, `${route} ${JSON.stringify(body)}: ${JSON.stringify(res.body)}`).toBe(status);
      expect(res.body.error).toMatch(message);
    }
    // One byte flipped in the local dump, its size and mtime kept: re-hashed before anything, refused.
    const dump = path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, other.id, `${backupId}.dump`);
    const { mtime, atime } = await stat(dump);
    const bytes = await readFile(dump);
    bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff;
    await writeFile(dump, bytes);
    await utimes(dump, atime, mtime);
    const tampered = await restore(other, backupId, { targetName: 'tampered_local' });
    expect(tampered.status).toBe(422);
    expect(tampered.body.error).toMatch(/not the manifest's/);
    bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff;
    await writeFile(dump, bytes);
    await utimes(dump, atime, mtime);
    // An archive newer than this process's pg_restore reads (format 1.16 is PostgreSQL 17's): a clear
    // refusal naming the tools to install, before anything is read or created.
    const original = await readFile(dump);
    const newer = Buffer.from(original);
    newer[6] = 16;
    await writeFile(dump, newer);
    const tooNew = await restore(other, backupId, { targetName: 'too_new' });
    await writeFile(dump, original);
    expect(tooNew.status).toBe(503);
    expect(tooNew.body).toMatchObject({ code: 'tool_version' });
    expect(tooNew.body.error).toMatch(/newer than this process's pg_restore .*install the PostgreSQL/);
    // Another project's backup id under this project: not found, never restored.
    const foreign = await restore(other, (await backupAndVerify(beside)) as string, {});
    expect(foreign.status).toBe(404);
    // A token without the restore scope.
    const scoped = await api('POST', `/api/cli/v1/projects/${h}/backups/${backupId}/restore`, {}, READER);
    expect(scoped.status).toBe(403);
    expect({ dbs: await databases(), schemas: await schemas(SHARED_DB) }).toEqual(before);
  });

  it('in place needs a fresh project: a restorable backup older than maxAge is refused with its age; a new one lets an older backup through', async () => {
    const backupId = await backupAndVerify(other);
    const { slug } = projectOf(other);
    const catalog = all.runtimes.dump.catalog;
    // Every backup of the project made 30 hours old (no FLUX_MANIFEST_SECRETS here: no tag to break).
    for (const entry of await catalog.list(other.id)) {
      const m = entry.manifest;
      if (!m) continue;
      const aged = (iso: string) => new Date(Date.parse(iso) - 30 * 3_600_000).toISOString();
      await catalog.writeManifest({ ...m, createdAt: aged(m.createdAt), completedAt: aged(m.completedAt) });
    }
    const before = await schemas(SHARED_DB);
    const plan = await restore(other, backupId, { mode: 'in_place', dryRun: true });
    expect(plan.body.plan.backup).toMatchObject({ id: backupId, tier: 'restorable', gate: 'refused' });
    expect(plan.body.plan.cluster).toBe('shared-1');
    expect(JSON.stringify(plan.body.problems)).toMatch(/restorable but stale/);
    const refused = await restore(other, backupId, { mode: 'in_place', yes: true });
    expect(refused.status, JSON.stringify(refused.body)).toBe(412);
    expect(refused.body.error).toMatch(
      /backup gate for [\w-]+ on cluster shared-1: the backup is restorable but stale: the newest restorable backup \(\w+\) is 1d 6h old, older than maxAge 1d 2h/,
    );
    expect(refused.body.error).toContain(
      `flux-ops backup create -p ${slug} && flux-ops backup verify -p ${slug} --latest`,
    );
    expect(await schemas(SHARED_DB)).toEqual(before);
    // skipBackupCheck still overrides (the plan says so).
    const skipped = await restore(other, backupId, { mode: 'in_place', dryRun: true, skipBackupCheck: true });
    expect(skipped.body.plan.backup.gate).toBe('skipped');
    // A fresh restorable backup makes the project fresh: the older backup may then be restored in place.
    await backupAndVerify(other);
    const fresh = await restore(other, backupId, { mode: 'in_place', dryRun: true });
    expect(fresh.body.plan.backup).toMatchObject({ id: backupId, gate: 'passes' });
  });

  it('a pg_restore killed mid-restore: the live tenant is put back as it was and nothing half-restored is left', async () => {
    const s = `t_${slow.id.replaceAll('-', '').slice(0, 12)}_api`;
    const h = projectOf(slow).hash;
    const created = await api('POST', `/api/cli/v1/projects/${h}/backups`, {});
    expect(created.status).toBe(200);
    const backupId = created.body.backup.id as string;
    await cluster.query(`DELETE FROM ${s}.slow WHERE v < 10`, [], SHARED_DB);
    const before = await rawDump(SHARED_DB, s);
    const pending = api('POST', `/api/cli/v1/projects/${h}/backups/${backupId}/restore`, {
      mode: 'in_place',
      yes: true,
      // Not verified: the slow CHECK would make verification as slow as the restore.
      skipBackupCheck: true,
    });
    const pid = await eventually(
      async () =>
        (
          await processesOf(
            (argv) =>
              argv[0]?.endsWith('/pg_restore') === true &&
              argv.includes('--no-owner') &&
              argv.some((a) => a.includes(backupId)),
          )
        )[0],
    );
    process.kill(Number(pid), 'SIGKILL');
    const failed = await pending;
    expect(failed.status).toBeGreaterThanOrEqual(400);
    expect(failed.body.restore).toMatchObject({ status: 'failed', rolledBack: true, stage: 'restore' });
    expect(failed.body.error).toMatch(/pg_restore was killed by SIGKILL/);
    expect(await rawDump(SHARED_DB, s)).toBe(before);
    expect((await schemas(SHARED_DB)).filter((x) => x.startsWith(s))).toEqual([s]);
    const roles = await cluster.query<{ r: string }>(
      `SELECT rolname AS r FROM pg_roles WHERE rolname LIKE 'flux_restore_%'`,
    );
    expect(roles).toEqual([]);
    await eventually(() =>
      receiver
        .events('flux.restore.failed')
        .some((e) => (e.data as Body).restoreId === failed.body.restore.id),
    );
  });
});

describe('restore of a v1 database', () => {
  const TABLES = ['users', 'todos'];

  it('in place: switches databases in one transaction after the proof; mode new beside it', async () => {
    const backupId = await backupAndVerify(dedicated);
    const good = await tenantData('dedicated_app', 'public', TABLES);
    await cluster.query(
      `DELETE FROM public.todos WHERE done; UPDATE public.users SET display_name = 'x';
       SELECT nextval('public.ticket_seq') FROM generate_series(1, 9);`,
      [],
      'dedicated_app',
    );
    const damaged = await tenantData('dedicated_app', 'public', TABLES);

    const side = await restore(dedicated, backupId, { targetName: 'dedicated_app_look' });
    expect(side.status, JSON.stringify(side.body)).toBe(200);
    expect(await tenantData('dedicated_app_look', 'public', TABLES)).toEqual(good);
    expect(await tenantData('dedicated_app', 'public', TABLES)).toEqual(damaged);

    const done = await restore(dedicated, backupId, { mode: 'in_place', yes: true });
    expect(done.status, JSON.stringify(done.body)).toBe(200);
    const r = done.body.restore;
    expect(r.rungs.every((x: Body) => x.result === 'passed')).toBe(true);
    expect(r.previous).toMatchObject({
      kind: 'database',
      name: expect.stringMatching(/^dedicated_app_prev_/),
    });
    expect(await tenantData('dedicated_app', 'public', TABLES)).toEqual(good);
    expect(await tenantData(r.previous.name, 'public', TABLES)).toEqual(damaged);
    expect((await databases()).filter((d) => d.includes('_restoring_'))).toEqual([]);
    // The restored database is connectable again under the live name.
    const allow = await cluster.query<{ a: boolean }>(
      `SELECT datallowconn AS a FROM pg_database WHERE datname = 'dedicated_app'`,
    );
    expect(allow[0]!.a).toBe(true);

    // The CLI drops the set-aside copy before its hours are up.
    const dropped = await execa(
      process.execPath,
      [
        path.resolve(import.meta.dirname, '../bin/flux-ops.mjs'),
        'backup',
        'drop-previous',
        '--hash',
        projectOf(dedicated).hash,
        '--restore',
        r.id,
      ],
      {
        env: { PATH: process.env.PATH ?? '', FLUX_API_BASE: base, FLUX_API_TOKEN: ADMIN.token },
        reject: false,
      },
    );
    expect(dropped.exitCode, dropped.stderr).toBe(0);
    expect(dropped.stdout).toContain(r.previous.name);
    expect(await databases()).not.toContain(r.previous.name);
  });
});

describe('a restore process killed with SIGKILL mid-restore', () => {
  const crash = { id: randomUUID(), slug: 'crash-tenant' };
  const schema = `t_${crash.id.replaceAll('-', '').slice(0, 12)}_api`;
  const MAIN = path.resolve(import.meta.dirname, '../functions/all/main.ts');

  async function startChild(root: string, port: number) {
    const projectsFile = path.join(root, 'projects.json');
    await writeFile(
      projectsFile,
      JSON.stringify({
        clusters: [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }],
        projects: [{ ...crash, hash: hashOf(crash.id), engine: 'v2_shared', cluster: 'shared-1' }],
      }),
    );
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN], {
      cwd: path.resolve(import.meta.dirname, '..'),
      env: {
        ...env.env,
        FLUX_HOST: '127.0.0.1',
        FLUX_PORT: String(port),
        FLUX_BACKUPS_LOCAL_DIR: path.join(root, 'backups'),
        FLUX_BACKUPS_OFFSITE_DIR: path.join(root, 'offsite'),
        FLUX_STATE_DIR: path.join(root, 'state'),
        FLUX_PROJECTS_FILE: projectsFile,
        FLUX_VERIFY_ON: 'none',
        FLUX_LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'ignore', 'ignore'],
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const url = `http://127.0.0.1:${port}`;
    await eventually(async () => (await fetch(`${url}/healthz`).catch(() => undefined))?.ok, 60_000, 100);
    return { child, url, exited };
  }

  it('leaves the live tenant as it was after the next start, and nothing half-restored', async () => {
    // 150 rows that restore at 50 ms each: seconds in which the live schema is set aside.
    await seedSlowRestoreTenant(cluster, { db: SHARED_DB, projectId: crash.id, rows: 150 });
    const root = await mkdtemp(path.join(tmpdir(), 'flux-restore-crash-'));
    const port = await freePort();
    let first = await startChild(root, port);
    try {
      const call = (
        method: 'GET' | 'POST',
        route: string,
        body?: unknown,
        headers: Record<string, string> = {},
      ) =>
        fetch(`${first.url}${route}`, {
          method,
          headers: { ...ADMIN.header, 'content-type': 'application/json', ...headers },
          ...(body ? { body: JSON.stringify(body) } : {}),
        }).then(async (r) => ({ status: r.status, body: (await r.json()) as Body }));
      const h = hashOf(crash.id);
      const created = await call('POST', `/api/cli/v1/projects/${h}/backups`, {});
      expect(created.status).toBe(200);
      const backupId = created.body.backup.id as string;
      await cluster.query(`DELETE FROM ${schema}.slow WHERE v > 100`, [], SHARED_DB);
      const before = await rawDump(SHARED_DB, schema);
      const started = await call(
        'POST',
        `/api/cli/v1/projects/${h}/backups/${backupId}/restore`,
        { mode: 'in_place', yes: true, skipBackupCheck: true },
        { prefer: 'respond-async' },
      );
      expect(started.status).toBe(202);
      const restoreId = started.body.restore.id as string;
      // pg_restore is running: the live schema is set aside and a half-restored one stands in its place.
      await eventually(
        async () =>
          (
            await processesOf(
              (argv) =>
                argv[0]?.endsWith('/pg_restore') === true &&
                argv.includes('--no-owner') &&
                argv.some((a) => a.includes(backupId)),
            )
          ).length > 0,
      );
      expect((await schemas(SHARED_DB)).filter((s) => s.startsWith(schema))).toHaveLength(2);
      first.child.kill('SIGKILL');
      await first.exited;

      first = await startChild(root, port);
      const record = await eventually(async () => {
        const r = await call('GET', `/api/cli/v1/projects/${h}/restores/${restoreId}`);
        return r.body.restore?.status === 'failed' ? r.body.restore : undefined;
      });
      expect(record).toMatchObject({ reason: 'interrupted', rolledBack: true });
      expect(record.error).toMatch(/stopped during the restore stage/);
      expect(await rawDump(SHARED_DB, schema)).toBe(before);
      expect((await schemas(SHARED_DB)).filter((s) => s.startsWith(schema))).toEqual([schema]);
      const roles = await cluster.query<{ r: string }>(
        `SELECT rolname AS r FROM pg_roles WHERE rolname = $1`,
        [`flux_restore_${restoreId.toLowerCase()}`],
      );
      expect(roles).toEqual([]);
    } finally {
      first.child.kill('SIGTERM');
      await first.exited;
      await rm(root, { recursive: true, force: true });
    }
  });
});
