// One verification per copy, and nothing corrupt served or believed, on a real Postgres with real dumps and
// real verifications (local sandbox driver), FLUX_MANIFEST_SECRETS set. A healthy backup verified from both
// copies is restorable from both, passes migrate's and restore's gates and downloads whole, with no
// finding. A failed offsite verification leaves the local copy's pass standing and the reverse, both
// shown. One byte flipped in the local dump with its mtime put back (no size+mtime cache notices): the
// local download is cut short, migrate's gate and the in-place restore's gate re-hash and refuse (412),
// and the download is then refused up front (422).
import { createHash, randomUUID } from 'node:crypto';
import { copyFile, mkdir, open, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDump } from '../functions/dump/app.js';
import { createApp as createMigrate } from '../functions/migrate/app.js';
import { createApp as createRestore } from '../functions/restore/app.js';
import { createApp as createVerify } from '../functions/verify/app.js';
import type { Manifest, VerifyReceipt } from '../shared/catalog/records.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Project } from '../shared/registry.js';
import { seedTenant, tenantSchemaOf } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  makeWebhookSecret,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

const KEY = makeWebhookSecret();
const tenant = { id: randomUUID(), slug: 'copy-atelier' };
const hash = tenant.id.replaceAll('-', '').slice(0, 7);
const projects: Project[] = [
  {
    ...tenant,
    hash,
    engine: 'v2_shared',
    cluster: 'shared-1',
    dedicatedUrl: 'env:COPY_DEDICATED_URL',
  },
];
const clusters = [{ name: 'shared-1', url: 'env:COPY_SHARED_URL', maxConcurrentDumps: 1 }];

let pg: PgCluster;
let env: TestEnv;
let receiver: EventReceiver;
let dumpRt: TestRuntime;
let dump: FunctionApp;
let verify: FunctionApp;
let restore: FunctionApp;
let migrate: FunctionApp;
let server: ServerType;
let base: string;
let backupId: string;
let manifest: Manifest;

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
type Body = Record<string, any>;
const localFile = (suffix: string) =>
  path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, tenant.id, `${backupId}${suffix}`);
const offsiteDump = () => path.join(env.config.FLUX_BACKUPS_OFFSITE_DIR, tenant.id, `${backupId}.dump`);
const readJsonFile = async <T>(f: string) => JSON.parse(await readFile(f, 'utf8')) as T;
const sha256Of = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

const verifyPost = (source: 'local' | 'offsite') =>
  verify.app.request(`/api/cli/v1/projects/${hash}/backups/${backupId}/verify`, {
    method: 'POST',
    headers: { ...ADMIN.header, 'content-type': 'application/json' },
    body: JSON.stringify({ source }),
  });
const restorePost = (body: Record<string, unknown>) =>
  restore.app.request(`/api/cli/v1/projects/${hash}/backups/${backupId}/restore`, {
    method: 'POST',
    headers: { ...ADMIN.header, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
const migratePost = (body: Record<string, unknown>) =>
  migrate.app.request('/api/cli/v1/migrate', {
    method: 'POST',
    headers: { ...ADMIN.header, 'content-type': 'application/json' },
    body: JSON.stringify({ slug: tenant.slug, hash, ...body }),
  });

async function show(): Promise<Body> {
  const res = await dump.app.request(`/api/cli/v1/projects/${hash}/backups/${backupId}`, {
    headers: ADMIN.header,
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as Body).backup;
}

async function status(): Promise<Body> {
  const res = await dump.app.request('/api/ops/v1/status', { headers: ADMIN.header });
  return ((await res.json()) as { projects: Body[] }).projects.find((p) => p.id === tenant.id)!;
}

/** The local download over a real socket: status, and what the body read gave (bytes) or how it broke. */
async function download(): Promise<{ status: number; bytes?: Buffer; broke?: unknown; body?: Body }> {
  const res = await fetch(`${base}/api/cli/v1/projects/${hash}/backups/${backupId}/download`, {
    headers: ADMIN.header,
  });
  if (res.status !== 200) return { status: res.status, body: (await res.json()) as Body };
  try {
    return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()) };
  } catch (error) {
    return { status: res.status, broke: error };
  }
}

const WHOLE_SECOND = Math.floor(Date.now() / 1000) - 60;

/** Changes one byte in place and puts the old mtime back: size and mtime say nothing changed. */
async function flipKeepingStat(file: string): Promise<void> {
  const before = await stat(file);
  const handle = await open(file, 'r+');
  try {
    const at = Math.floor(before.size / 2);
    const { buffer } = await handle.read(Buffer.alloc(1), 0, 1, at);
    await handle.write(Buffer.from([buffer[0]! ^ 0xff]), 0, 1, at);
  } finally {
    await handle.close();
  }
  // Whole seconds (set when the copy was made): utimes puts such an mtime back exactly.
  await utimes(file, before.mtimeMs / 1000, before.mtimeMs / 1000);
  const after = await stat(file);
  expect([after.size, after.mtimeMs]).toEqual([before.size, before.mtimeMs]);
}

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await pg.createDatabase('dedicated');
  await seedTenant(pg, { db: 'shared', projectId: tenant.id, rows: 150 });
  receiver = await startEventReceiver();
  env = await makeTestEnv({
    COPY_SHARED_URL: pg.url('shared'),
    COPY_DEDICATED_URL: pg.url('dedicated'),
    FLUX_VERIFY_DRIVER: 'local',
  });
  const config = {
    ...env.config,
    FLUX_MANIFEST_SECRETS: [KEY],
    FLUX_EVENT_SINKS: [{ url: receiver.url, types: ['flux.backup.*'] }],
  };
  const runtime = (name: Parameters<typeof testRuntime>[0]) =>
    testRuntime(name, { env: env.env, config }, { projects, clusters });
  dumpRt = runtime('dump');
  dump = createDump(dumpRt);
  verify = createVerify(runtime('verify'));
  restore = createRestore(runtime('restore'));
  migrate = createMigrate(runtime('migrate'));
  for (const fn of [dump, verify, restore, migrate]) await fn.start();
  server = serve({ fetch: dump.app.fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise<void>((resolve) => server.once('listening', () => resolve()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const res = await dump.app.request(`/api/cli/v1/projects/${hash}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(res.status, await res.clone().text()).toBe(200);
  backupId = ((await res.json()) as { backup: { id: string } }).backup.id;
  manifest = await readJsonFile<Manifest>(localFile('.manifest.json'));
  // The offsite copy as replicate leaves it (the pair in the store).
  await mkdir(path.dirname(offsiteDump()), { recursive: true });
  await copyFile(localFile('.dump'), offsiteDump());
  await copyFile(localFile('.manifest.json'), offsiteDump().replace(/\.dump$/, '.manifest.json'));
  for (const file of [localFile('.dump'), offsiteDump()]) await utimes(file, WHOLE_SECOND, WHOLE_SECOND);
}, 300_000);

afterAll(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  for (const fn of [migrate, restore, verify, dump]) await fn?.stop();
  await receiver?.close();
  await pg?.destroy();
  await env?.cleanup();
});

describe('one verification per copy; nothing corrupt served or believed', () => {
  it('healthy: both copies verified and proven, both gates pass, the download is whole, no finding', async () => {
    for (const source of ['local', 'offsite'] as const) {
      const res = await verifyPost(source);
      expect(res.status, await res.clone().text()).toBe(200);
    }
    const local = await readJsonFile<VerifyReceipt>(localFile('.verify.json'));
    const offsite = await readJsonFile<VerifyReceipt>(localFile('.verify-offsite.json'));
    expect(local).toMatchObject({ status: 'restore_verified', source: 'local', sha256: manifest.sha256 });
    expect(offsite).toMatchObject({ status: 'restore_verified', source: 'offsite', sha256: manifest.sha256 });
    expect(offsite.auth).toMatchObject({ alg: 'hmac-sha256' });

    const row = await show();
    expect(row).toMatchObject({
      restoreVerificationStatus: 'restore_verified',
      verifiedCopies: ['local', 'offsite'],
      copyVerifications: {
        local: { status: 'restore_verified', proven: true, error: null },
        offsite: { status: 'restore_verified', proven: true, error: null },
      },
    });
    expect(row.findings).toBeUndefined();
    const asked = await verify.app.request(`/api/cli/v1/projects/${hash}/backups/${backupId}/verify`, {
      headers: ADMIN.header,
    });
    expect(await asked.json()).toMatchObject({
      restoreVerificationStatus: 'restore_verified',
      verifications: {
        local: { status: 'restore_verified', source: 'local' },
        offsite: { status: 'restore_verified', source: 'offsite' },
      },
    });
    const s = await status();
    expect(s).toMatchObject({ tier: 'restorable', backupId });
    expect(s.message).toContain('proven: the local and the offsite copy');
    expect(s.findings).toBeUndefined();

    const plan = (await (await migratePost({ dryRun: true })).json()) as Body;
    expect(plan.backupGate).toMatchObject({ tier: 'restorable', passes: true });
    const inPlace = await restorePost({ mode: 'in_place', dryRun: true });
    expect(inPlace.status).toBe(200);
    expect(((await inPlace.json()) as Body).plan.backup).toMatchObject({ id: backupId, gate: 'passes' });

    const served = await download();
    expect(served.status).toBe(200);
    expect(served.bytes?.length).toBe(manifest.sizeBytes);
    expect(sha256Of(served.bytes!)).toBe(manifest.sha256);
    expect(receiver.events('flux.backup.integrity_finding')).toEqual([]);
  });

  it("a failed offsite verification leaves the local copy's pass standing; both are shown", async () => {
    const good = await readFile(offsiteDump());
    await flipKeepingStat(offsiteDump());
    try {
      const res = await verifyPost('offsite');
      expect(res.status).toBe(422);
      expect(await res.json()).toMatchObject({ code: 'verify_failed' });
      expect(await readJsonFile<VerifyReceipt>(localFile('.verify-offsite.json'))).toMatchObject({
        status: 'restore_failed',
        source: 'offsite',
      });
      // Before, this failure overwrote the one receipt the backup had.
      expect(await readJsonFile<VerifyReceipt>(localFile('.verify.json'))).toMatchObject({
        status: 'restore_verified',
        source: 'local',
      });
      const row = await show();
      expect(row).toMatchObject({
        restoreVerificationStatus: 'restore_verified',
        restoreVerificationSource: 'local',
        verifiedCopies: ['local'],
        copyVerifications: {
          local: { status: 'restore_verified', proven: true },
          offsite: {
            status: 'restore_failed',
            proven: false,
            error: expect.stringMatching(/sha256|SHA-256/),
          },
        },
      });
      const s = await status();
      expect(s.tier).toBe('restorable');
      expect(s.message).toMatch(/proven: the local copy; the offsite copy failed its verification/);
    } finally {
      await writeFile(offsiteDump(), good);
    }
    // Verified again, the offsite copy is proven once more.
    expect((await verifyPost('offsite')).status).toBe(200);
    expect((await show()).verifiedCopies).toEqual(['local', 'offsite']);
  });

  it('a byte flipped in the local dump, mtime kept: the download is cut short, both gates re-hash and refuse, then it is not served', async () => {
    await flipKeepingStat(localFile('.dump'));
    // The list's cheap check (size + mtime) still has nothing to go on ...
    const cut = await download();
    expect(cut.status).toBe(200);
    // ... but the bytes are hashed as they stream: the transfer breaks off instead of ending cleanly.
    if (cut.bytes) expect(cut.bytes.length).toBeLessThan(manifest.sizeBytes);
    else expect(cut.broke).toBeInstanceOf(Error);
    // The cut made dump hash the file again: from now on it is refused before a byte goes out.
    const refused = await eventually(async () => {
      const again = await download();
      return again.status === 422 ? again : undefined;
    }, 10_000);
    expect(refused.body).toMatchObject({ code: 'artifact_invalid' });
    expect(refused.body?.error).toMatch(/does not match its manifest.*\?source=offsite/);
    expect((await show()).artifactValidationOutcome).toBe('invalid');

    const plan = (await (await migratePost({ dryRun: true })).json()) as Body;
    expect(plan.backupGate).toMatchObject({ passes: false, tier: 'pipeline_incomplete' });
    const before = await pg.query<{ n: string }>('SELECT count(*)::text AS n FROM pg_database');
    const run = await migratePost({ yes: true });
    expect(run.status).toBe(412);
    const refusal = (await run.json()) as Body;
    expect(refusal).toMatchObject({
      phase: 'gate',
      code: 'precondition_failed',
      tier: 'pipeline_incomplete',
    });
    expect(refusal.error).toMatch(/no longer matches its manifest/);

    const inPlacePlan = await restorePost({ mode: 'in_place', dryRun: true });
    expect(((await inPlacePlan.json()) as Body).plan.backup).toMatchObject({ gate: 'refused' });
    const schema = tenantSchemaOf(tenant.id);
    const rows = async () =>
      (await pg.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${schema}.customers`, [], 'shared'))[0]!
        .n;
    const liveRows = await rows();
    const inPlace = await restorePost({ mode: 'in_place', yes: true });
    expect(inPlace.status).toBe(412);
    expect(((await inPlace.json()) as Body).error).toMatch(/no longer matches its manifest/);
    expect(await rows()).toBe(liveRows);
    expect(await pg.query<{ n: string }>('SELECT count(*)::text AS n FROM pg_database')).toEqual(before);
  });

  it("a failed local verification leaves the offsite copy's pass standing; both are shown", async () => {
    const res = await verifyPost('local');
    expect(res.status).toBe(422);
    expect(await readJsonFile<VerifyReceipt>(localFile('.verify.json'))).toMatchObject({
      status: 'restore_failed',
      source: 'local',
    });
    // Before, this failure overwrote the offsite copy's pass.
    expect(await readJsonFile<VerifyReceipt>(localFile('.verify-offsite.json'))).toMatchObject({
      status: 'restore_verified',
      source: 'offsite',
    });
    const row = await show();
    expect(row).toMatchObject({
      verifiedCopies: ['offsite'],
      copyVerifications: {
        local: { status: 'restore_failed', proven: false },
        offsite: { status: 'restore_verified', proven: true },
      },
    });
    const s = await status();
    // The local artifact no longer matches: not restorable here, and the message names both copies.
    expect(s.tier).toBe('pipeline_incomplete');
    expect(s.message).toMatch(/proven: the offsite copy; the local copy failed its verification/);
    // The offsite copy still downloads whole.
    const offsite = await dump.app.request(
      `/api/cli/v1/projects/${hash}/backups/${backupId}/download?source=offsite`,
      { headers: ADMIN.header },
    );
    expect(offsite.status).toBe(200);
    expect(sha256Of(Buffer.from(await offsite.arrayBuffer()))).toBe(manifest.sha256);
  });
});
