// The control-plane host is gone, for the fs store and the s3 store: real backups of a v2 tenant and a v1
// database through the functions (the all-in-one app), copied offsite by replicate; then the local backup
// directory and the state are removed, and a fresh all-in-one process (functions/all/main.ts) starts on an
// empty FLUX_BACKUPS_LOCAL_DIR with the same offsite settings. The CLI lists from offsite, rebuilds the
// catalog (a forged and a misplaced manifest reported invalid and not written, a differing local manifest
// a conflict and kept), lists locally (rows back, local artifact missing, replicate proves the offsite copy),
// and downloads from offsite with a matching SHA-256; a dump with one byte flipped is refused. Another
// fresh process rebuilds at start-up with FLUX_CATALOG_REBUILD_AT_START.
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { type ServerType, serve } from '@hono/node-server';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAllInOne } from '../functions/all/app.js';
import { newBackupId } from '../shared/catalog/ids.js';
import type { Manifest } from '../shared/catalog/records.js';
import { silentLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { createStaticRegistry, type Project } from '../shared/registry.js';
import { S3RVER_KEY_ID, type S3Server, startS3Server } from './s3-server.js';
import { seedProjectDb, seedTenant } from './support/fixtures.js';
import { freePort, type PgCluster, startPostgres } from './support/pg.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  makeToken,
  makeWebhookSecret,
  type TestEnv,
  WEBHOOK_SECRET,
} from './support/runtime.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const BIN = path.join(ROOT, 'bin', 'flux-ops.mjs');
const MAIN = path.join(ROOT, 'functions', 'all', 'main.ts');
const MANIFEST_KEY = makeWebhookSecret();
const WRITER = makeToken('writer', ['backups:write']);
const READER = makeToken('reader', ['backups:read']);
const S3_SECRET = `flux-rebuild-s3-${randomBytes(8).toString('hex')}`;
const PREFIX = 'flux/dr';

const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);
const sha256Of = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
const tenant = { id: randomUUID(), slug: 'bloom-atelier' };
const ledger = { id: randomUUID(), slug: 'ledger-v1' };
const projects: Project[] = [
  { ...tenant, hash: hashOf(tenant.id), engine: 'v2_shared', cluster: 'shared-1' },
  { ...ledger, hash: hashOf(ledger.id), engine: 'v1_dedicated', databaseUrl: 'env:DR_LEDGER_URL' },
];
const clusters = [{ name: 'shared-1', url: 'env:DR_SHARED_URL', maxConcurrentDumps: 2 }];

let pg: PgCluster;

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: tenant.id, rows: 300 });
  await seedProjectDb(pg, { db: 'ledger', rows: 200 });
});
afterAll(async () => {
  await pg?.destroy();
});

interface ApiRow {
  id: string;
  status: string;
  source?: string;
  checksumSha256: string;
  sizeBytes: number;
  localArtifactStatus: string;
  artifactValidationStatus: string;
  offsiteStatus: string;
  offsiteKey: string;
  restoreVerificationStatus: string;
  manifestAuthentication?: string;
}

interface Cli {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The offsite store as the test reaches it around flux-ops: raw reads and writes of its objects. */
interface RawStore {
  env: Record<string, string>;
  /** Called once the test env exists (the fs store is the env's own offsite directory). */
  bind(env: TestEnv): void;
  read(key: string): Promise<Buffer>;
  write(key: string, bytes: Buffer): Promise<void>;
  close(): Promise<void>;
}

async function fsStore(): Promise<RawStore> {
  let dir = '';
  return {
    env: {},
    bind(env) {
      dir = env.config.FLUX_BACKUPS_OFFSITE_DIR;
    },
    read: (key) => readFile(path.join(dir, key)),
    async write(key, bytes) {
      const file = path.join(dir, key);
      await mkdir(path.dirname(file), { recursive: true });
      await rm(file, { force: true }); // stored objects are read-only
      await writeFile(file, bytes);
    },
    async close() {},
  };
}

async function s3Store(): Promise<RawStore> {
  const s3: S3Server = await startS3Server();
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: S3RVER_KEY_ID, secretAccessKey: S3_SECRET },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  return {
    env: {
      FLUX_BACKUPS_OFFSITE_DIR: `s3://${s3.bucket}/${PREFIX}`,
      FLUX_S3_ENDPOINT: s3.endpoint,
      FLUX_S3_FORCE_PATH_STYLE: 'true',
      FLUX_S3_ACCESS_KEY_ID: S3RVER_KEY_ID,
      FLUX_S3_SECRET_ACCESS_KEY: S3_SECRET,
    },
    bind() {},
    async read(key) {
      const got = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: `${PREFIX}/${key}` }));
      return Buffer.from(await got.Body!.transformToByteArray());
    },
    async write(key, bytes) {
      // The metadata a forger would also copy: only the content changes.
      await client.send(
        new PutObjectCommand({
          Bucket: s3.bucket,
          Key: `${PREFIX}/${key}`,
          Body: bytes,
          Metadata: { sha256: sha256Of(bytes) },
        }),
      );
    },
    async close() {
      client.destroy();
      await s3.close();
    },
  };
}

interface Fresh {
  base: string;
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/** A fresh all-in-one process (the real main.ts) on `local`, with the same offsite settings. */
async function startFresh(env: TestEnv, local: string, extra: Record<string, string> = {}): Promise<Fresh> {
  const port = await freePort();
  const projectsFile = path.join(env.root, `projects-${port}.json`);
  await writeFile(projectsFile, JSON.stringify({ clusters, projects }));
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN], {
    cwd: ROOT,
    env: {
      ...env.env,
      FLUX_HOST: '127.0.0.1',
      FLUX_PORT: String(port),
      FLUX_BACKUPS_LOCAL_DIR: local,
      FLUX_STATE_DIR: path.join(env.root, `state-${port}`),
      FLUX_PROJECTS_FILE: projectsFile,
      FLUX_LOG_LEVEL: 'info',
      ...extra,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (d) => {
    output = (output + d.toString()).slice(-200_000);
  });
  child.stderr?.on('data', (d) => {
    output = (output + d.toString()).slice(-200_000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const base = `http://127.0.0.1:${port}`;
  await eventually(async () => (await fetch(`${base}/healthz`)).ok, 60_000, 200).catch((error) => {
    child.kill('SIGKILL');
    throw new Error(`the fresh process did not start: ${error}\n${output}`);
  });
  return {
    base,
    child,
    output: () => output,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

async function cli(base: string, args: string[], token = ADMIN.token): Promise<Cli> {
  const r = await execa(process.execPath, [BIN, ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      FLUX_API_BASE: base,
      FLUX_API_TOKEN: token,
    },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 120_000,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

async function api<T>(
  base: string,
  route: string,
  init: RequestInit = {},
): Promise<{ status: number; body: T }> {
  const res = await fetch(`${base}${route}`, {
    ...init,
    headers: { ...ADMIN.header, ...(init.headers ?? {}) },
  });
  return { status: res.status, body: (await res.json()) as T };
}

describe.each([
  ['fs', fsStore],
  ['s3', s3Store],
] as const)('the control-plane host is gone (%s store)', (_driver, makeStore) => {
  let env: TestEnv;
  let store: RawStore;
  let fresh: Fresh | undefined;
  /** The manifests as dump wrote them, by backup id. */
  const made = new Map<string, Manifest>();
  let tenantOld: string;
  let tenantNew: string;
  let ledgerId: string;
  let misplacedId: string;
  const local = () => path.join(env.root, 'fresh-backups');
  const manifestPath = (projectId: string, backupId: string) =>
    path.join(local(), projectId, `${backupId}.manifest.json`);

  beforeAll(async () => {
    store = await makeStore();
    env = await makeTestEnv({
      ...store.env,
      DR_SHARED_URL: pg.url('shared'),
      DR_LEDGER_URL: pg.url('ledger'),
      FLUX_MANIFEST_SECRETS: MANIFEST_KEY,
      FLUX_VERIFY_ON: 'none',
      FLUX_VERIFY_DRIVER: 'local',
      FLUX_PROBE_INTERVAL_MS: '0',
      FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60 * 1000),
      FLUX_WEBHOOK_SECRETS: WEBHOOK_SECRET,
      FLUX_API_TOKENS: [ADMIN, WRITER, READER].map((t) => t.entry).join(','),
    });
    store.bind(env);

    // The old host: backups made through the functions, copied offsite by replicate.
    const all = createAllInOne(env.config, env.env, {
      log: silentLogger(),
      metrics: createRegistry({ defaultMetrics: false }),
      registry: createStaticRegistry({ projects, clusters }),
    });
    const server = await new Promise<ServerType>((resolve) => {
      const s = serve({ fetch: all.app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    all.setBaseUrl(base);
    await all.start();
    try {
      const create = async (hash: string) => {
        const { status, body } = await api<{ backup: { id: string } }>(
          base,
          `/api/cli/v1/projects/${hash}/backups`,
          {
            method: 'POST',
          },
        );
        expect(status).toBe(200);
        return body.backup.id;
      };
      tenantOld = await create(hashOf(tenant.id));
      tenantNew = await create(hashOf(tenant.id));
      ledgerId = await create(hashOf(ledger.id));
      for (const [p, id] of [
        [tenant, tenantOld],
        [tenant, tenantNew],
        [ledger, ledgerId],
      ] as const) {
        await eventually(
          async () => {
            const { body } = await api<{ backups: ApiRow[] }>(
              base,
              `/api/cli/v1/projects/${hashOf(p.id)}/backups`,
            );
            return body.backups.find((b) => b.id === id)?.offsiteStatus === 'complete';
          },
          60_000,
          100,
        );
        const entry = await all.runtimes.dump.catalog.get(p.id, id);
        made.set(id, entry!.manifest!);
      }
    } finally {
      server.close();
      await all.stop();
    }
    // The host is gone: its backup directory and its state with it.
    await rm(env.config.FLUX_BACKUPS_LOCAL_DIR, { recursive: true, force: true });
    await rm(env.config.FLUX_STATE_DIR, { recursive: true, force: true });

    // Tampering in the store: the older tenant backup's row count edited (its tag kept), and a copy of
    // the ledger's manifest put under another backup's key.
    const oldKey = `${tenant.id}/${tenantOld}.manifest.json`;
    const edited = JSON.parse((await store.read(oldKey)).toString('utf8')) as Manifest;
    edited.tables[0]!.rows += 1;
    await store.write(oldKey, Buffer.from(JSON.stringify(edited, null, 2)));
    misplacedId = newBackupId();
    await store.write(
      `${ledger.id}/${misplacedId}.manifest.json`,
      await store.read(`${ledger.id}/${ledgerId}.manifest.json`),
    );

    fresh = await startFresh(env, local());
  });

  afterAll(async () => {
    await fresh?.stop();
    await store?.close();
    await env?.cleanup();
  });

  it('lists the offsite backups (API and CLI) while the local catalog is empty', async () => {
    const base = fresh!.base;
    const th = hashOf(tenant.id);
    expect(
      (await api<{ backups: unknown[] }>(base, `/api/cli/v1/projects/${th}/backups`)).body.backups,
    ).toEqual([]);
    expect((await api(base, `/api/cli/v1/projects/${th}/backups?source=elsewhere`)).status).toBe(400);

    const { status, body } = await api<{ backups: ApiRow[]; invalid: Array<{ id: string; error: string }> }>(
      base,
      `/api/cli/v1/projects/${th}/backups?source=offsite`,
    );
    expect(status).toBe(200);
    // Newest first; the forged one is refused and named apart, never a row.
    expect(body.backups.map((b) => b.id)).toEqual([tenantNew]);
    expect(body.backups[0]).toMatchObject({
      source: 'offsite',
      status: 'complete',
      checksumSha256: made.get(tenantNew)!.sha256,
      sizeBytes: made.get(tenantNew)!.sizeBytes,
      localArtifactStatus: 'missing',
      artifactValidationStatus: 'artifact_invalid',
      artifactValidationOutcome: 'missing',
      offsiteStatus: 'complete',
      offsiteKey: `${tenant.id}/${tenantNew}.dump`,
      restoreVerificationStatus: 'pending',
      manifestAuthentication: 'authentic',
    });
    expect(body.invalid).toEqual([
      expect.objectContaining({ id: tenantOld, error: expect.stringMatching(/authentication tag/) }),
    ]);

    const listed = await cli(base, ['backup', 'list', '-p', ledger.slug, '--source', 'offsite', '--json']);
    expect(listed.exitCode, listed.stderr).toBe(0);
    const answer = JSON.parse(listed.stdout) as {
      backups: ApiRow[];
      invalid: Array<{ id: string; error: string }>;
    };
    expect(answer.backups.map((b) => [b.id, b.source, b.localArtifactStatus])).toEqual([
      [ledgerId, 'offsite', 'missing'],
    ]);
    expect(answer.invalid).toEqual([
      expect.objectContaining({ id: misplacedId, error: expect.stringMatching(/another backup/) }),
    ]);
    const table = await cli(base, ['backup', 'list', '-p', tenant.slug, '--source', 'offsite']);
    expect(table.exitCode).toBe(0);
    expect(table.stdout).toContain(tenantNew);
    expect(table.stderr).toContain(`refused offsite manifest of backup ${tenantOld}`);
  });

  it('rebuilds the catalog from the manifests: tampered ones invalid and not written, no dump copied', async () => {
    const base = fresh!.base;
    // backups:write is enough (and needed): a reader may list, not rebuild.
    const denied = await cli(base, ['catalog', 'rebuild', '--from', 'offsite'], READER.token);
    expect(denied.exitCode).toBe(77);
    expect(denied.stderr).toMatch(/lacks the "backups:write" scope/);
    const r = await cli(base, ['catalog', 'rebuild', '--from', 'offsite', '--json'], WRITER.token);
    // Exit 1: some manifests were refused; the rest is rebuilt.
    expect(r.exitCode, r.stderr).toBe(1);
    const summary = JSON.parse(r.stdout) as {
      projects: number;
      manifests: Record<string, number>;
      added: Array<{ backupId: string; offsiteDump: string }>;
      invalid: Array<{ backupId: string; reason: string }>;
      authentication: string;
    };
    expect(summary.manifests).toEqual({ added: 2, present: 0, conflicts: 0, invalid: 2 });
    expect(summary.projects).toBe(2);
    expect(summary.authentication).toBe('hmac-sha256');
    expect(summary.added.map((a) => a.backupId).sort()).toEqual([ledgerId, tenantNew].sort());
    expect(summary.added.every((a) => a.offsiteDump === 'replicated')).toBe(true);
    expect(summary.invalid.find((i) => i.backupId === tenantOld)?.reason).toMatch(/authentication tag/);
    expect(summary.invalid.find((i) => i.backupId === misplacedId)?.reason).toMatch(/another backup/);
    for (const [p, id] of [
      [tenant, tenantOld],
      [ledger, misplacedId],
    ] as const) {
      await expect(stat(manifestPath(p.id, id))).rejects.toThrow();
    }
    // Written as dump wrote it, and the dump bytes stay offsite.
    const rebuilt = JSON.parse(await readFile(manifestPath(tenant.id, tenantNew), 'utf8')) as Manifest;
    expect(rebuilt).toEqual(made.get(tenantNew));
    await expect(stat(path.join(local(), tenant.id, `${tenantNew}.dump`))).rejects.toThrow();

    // Again: everything is present; an edited local manifest is a conflict and is kept as it is.
    const ledgerFile = manifestPath(ledger.id, ledgerId);
    const original = await readFile(ledgerFile, 'utf8');
    const changed = JSON.stringify({ ...JSON.parse(original), slug: 'edited-locally' }, null, 2);
    await writeFile(ledgerFile, changed);
    const again = await api<{ manifests: Record<string, number>; conflicts: Array<{ backupId: string }> }>(
      base,
      '/api/ops/v1/catalog/rebuild',
      {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ from: 'offsite' }),
      },
    );
    expect(again.status).toBe(200);
    expect(again.body.manifests).toEqual({ added: 0, present: 1, conflicts: 1, invalid: 2 });
    expect(again.body.conflicts.map((c) => c.backupId)).toEqual([ledgerId]);
    expect(await readFile(ledgerFile, 'utf8')).toBe(changed);
    await writeFile(ledgerFile, original);
    const bad = await api(base, '/api/ops/v1/catalog/rebuild', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ from: 'elsewhere' }),
    });
    expect(bad.status).toBe(400);
  });

  it('lists locally again: the rows are back, the local artifact missing, the offsite copy proven by replicate', async () => {
    const base = fresh!.base;
    const rows = await eventually(
      async () => {
        const r = await cli(base, ['backup', 'list', '-p', tenant.slug, '--json']);
        const { backups } = JSON.parse(r.stdout) as { backups: ApiRow[] };
        return backups[0]?.offsiteStatus === 'complete' ? backups : undefined;
      },
      60_000,
      500,
    );
    expect(rows.map((b) => b.id)).toEqual([tenantNew]);
    expect(rows[0]).toMatchObject({
      status: 'complete',
      localArtifactStatus: 'missing',
      artifactValidationStatus: 'artifact_invalid',
      artifactValidationOutcome: 'missing',
      restoreVerificationStatus: 'pending',
      checksumSha256: made.get(tenantNew)!.sha256,
    });
    // Replicate re-hashed the offsite copy rather than failing a copy of a missing file.
    expect(fresh!.output()).not.toContain('offsite replication failed');
    const { body } = await api<{
      projects: Array<{ id: string; tier: string; next?: string; trustworthy: boolean }>;
    }>(base, '/api/ops/v1/status');
    const t = body.projects.find((p) => p.id === tenant.id)!;
    expect(t).toMatchObject({ tier: 'pipeline_incomplete', trustworthy: false });
    expect(t.next).toContain('--source offsite');

    // Verify reads the offsite copy of the rebuilt backup; the tier stays pipeline_incomplete (no local
    // artifact) and moves the operator on to a new backup instead of verifying again.
    const verified = await cli(base, [
      'backup',
      'verify',
      '-p',
      tenant.slug,
      '--latest',
      '--source',
      'offsite',
    ]);
    expect(verified.exitCode, verified.stderr).toBe(0);
    const after = (
      await api<{
        projects: Array<{ id: string; tier: string; next?: string; message: string; trustworthy: boolean }>;
      }>(base, '/api/ops/v1/status')
    ).body.projects.find((p) => p.id === tenant.id)!;
    expect(after).toMatchObject({
      tier: 'pipeline_incomplete',
      trustworthy: false,
      next: `flux-ops backup create -p ${tenant.slug}`,
    });
    expect(after.message).toMatch(/restore-verified: restore or download it with --source offsite/);
  });

  it('downloads from offsite with the CLI (--latest from the store) and the SHA-256 matches; a flipped byte is refused', async () => {
    const base = fresh!.base;
    const out = path.join(env.root, 'downloads');
    await mkdir(out, { recursive: true });
    const v2 = await cli(base, [
      'backup',
      'download',
      '-p',
      tenant.slug,
      '--latest',
      '--source',
      'offsite',
      '-o',
      out,
    ]);
    expect(v2.exitCode, v2.stderr).toBe(0);
    expect(sha256Of(await readFile(path.join(out, `${tenant.slug}-${tenantNew}.dump`)))).toBe(
      made.get(tenantNew)!.sha256,
    );
    const v1File = path.join(out, 'ledger.dump');
    const v1 = await cli(base, [
      'backup',
      'download',
      '--hash',
      hashOf(ledger.id),
      '--latest',
      '--source',
      'offsite',
      '-o',
      v1File,
      '--json',
    ]);
    expect(v1.exitCode, v1.stderr).toBe(0);
    expect(JSON.parse(v1.stdout)).toMatchObject({ ok: true, backupId: ledgerId, source: 'offsite' });
    expect(sha256Of(await readFile(v1File))).toBe(made.get(ledgerId)!.sha256);

    // The forged manifest is not served from either: its tag vouches for nothing.
    const forgedFile = path.join(out, 'forged.dump');
    const forged = await cli(base, [
      'backup',
      'download',
      '-p',
      tenant.slug,
      '--id',
      tenantOld,
      '--source',
      'offsite',
      '-o',
      forgedFile,
    ]);
    expect(forged.exitCode).toBe(1);
    expect(forged.stderr).toMatch(/authentication tag/);
    await expect(stat(forgedFile)).rejects.toThrow();

    // One byte flipped in the offsite dump: the checked stream cuts the download, nothing lands.
    const key = `${ledger.id}/${ledgerId}.dump`;
    const bytes = await store.read(key);
    const middle = Math.floor(bytes.length / 2);
    bytes[middle] = bytes[middle]! ^ 0xff;
    await store.write(key, bytes);
    const cutFile = path.join(out, 'tampered.dump');
    const cut = await cli(base, [
      'backup',
      'download',
      '--hash',
      hashOf(ledger.id),
      '--id',
      ledgerId,
      '--source',
      'offsite',
      '-o',
      cutFile,
    ]);
    expect(cut.exitCode).not.toBe(0);
    expect(cut.stderr).toMatch(/broke off|checksum mismatch/);
    await expect(stat(cutFile)).rejects.toThrow();
  });

  it('restores from the offsite copy with the CLI: the tenant beside the live one; the v1 database in place, refused while its copy is tampered', async () => {
    const base = fresh!.base;
    const target = `dr_${_driver}_tenant`;
    const beside = await cli(base, [
      'backup',
      'restore',
      '-p',
      tenant.slug,
      '--latest',
      '--source',
      'offsite',
      '--target-name',
      target,
      '--json',
    ]);
    expect(beside.exitCode, beside.stderr).toBe(0);
    expect(JSON.parse(beside.stdout).restore).toMatchObject({
      status: 'completed',
      mode: 'new',
      source: 'offsite',
      backupId: tenantNew,
      created: target,
    });
    const schema = `t_${tenant.id.replaceAll('-', '').slice(0, 12)}_api`;
    const counts = await pg.query<{ n: number }>(
      `SELECT (SELECT count(*) FROM ${schema}.customers)::int + (SELECT count(*) FROM ${schema}.orders)::int AS n`,
      [],
      target,
    );
    const manifest = made.get(tenantNew)!;
    expect(counts[0]!.n).toBe(manifest.tables.reduce((n, t) => n + t.rows, 0));

    // In place, from the store, with upstream flux's confirmation flag; the rebuilt backup was never
    // verified here, so the gate is skipped on purpose. The download test above flipped a byte of this
    // copy: it is refused while streaming, before anything is touched.
    const args = [
      'backup',
      'restore',
      '--hash',
      hashOf(ledger.id),
      '--id',
      ledgerId,
      '--in-place',
      '--yes-i-know-this-can-overwrite-data',
      '--skip-backup-check',
      '--source',
      'offsite',
    ];
    const databases = async () =>
      (await pg.query<{ d: string }>('SELECT datname AS d FROM pg_database ORDER BY 1')).map((r) => r.d);
    const before = {
      dbs: await databases(),
      users: await pg.query('SELECT * FROM public.users ORDER BY id', [], 'ledger'),
    };
    const refused = await cli(base, args);
    expect(refused.exitCode, refused.stderr).toBe(1);
    expect(refused.stderr).toMatch(/not the manifest's/);
    expect({
      dbs: await databases(),
      users: await pg.query('SELECT * FROM public.users ORDER BY id', [], 'ledger'),
    }).toEqual(before);
    // The copy put right again (the same byte flipped back): the restore goes through.
    const key = `${ledger.id}/${ledgerId}.dump`;
    const bytes = await store.read(key);
    const middle = Math.floor(bytes.length / 2);
    bytes[middle] = bytes[middle]! ^ 0xff;
    await store.write(key, bytes);
    await pg.query(`DELETE FROM public.todos`, [], 'ledger');
    const inPlace = await cli(base, args);
    expect(inPlace.exitCode, inPlace.stderr).toBe(0);
    expect(inPlace.stdout).toMatch(/restored backup .* \(in_place\)/);
    expect(inPlace.stdout).toMatch(/undo: flux-ops backup restore/);
    const todos = await pg.query<{ n: number }>('SELECT count(*)::int AS n FROM public.todos', [], 'ledger');
    expect(todos[0]!.n).toBe(made.get(ledgerId)!.tables.find((t) => t.name === 'todos')!.rows);
  });

  it('a fresh process with FLUX_CATALOG_REBUILD_AT_START rebuilds an empty catalog on its own', async () => {
    const dir = path.join(env.root, 'at-start-backups');
    const started = await startFresh(env, dir, { FLUX_CATALOG_REBUILD_AT_START: 'true' });
    try {
      const rows = await eventually(
        async () => {
          const { body } = await api<{ backups: ApiRow[] }>(
            started.base,
            `/api/cli/v1/projects/${hashOf(tenant.id)}/backups`,
          );
          return body.backups.length > 0 ? body.backups : undefined;
        },
        30_000,
        200,
      );
      expect(rows.map((b) => [b.id, b.localArtifactStatus])).toEqual([[tenantNew, 'missing']]);
      await expect(stat(path.join(dir, tenant.id, `${tenantOld}.manifest.json`))).rejects.toThrow();
    } finally {
      await started.stop();
    }
  });
});
