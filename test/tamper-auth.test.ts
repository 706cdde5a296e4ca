// Tampering with the records at rest, on a real Postgres with real dumps and real verifications (local
// sandbox driver): with FLUX_MANIFEST_SECRETS set, a manifest whose row count was edited (its tag kept:
// re-tagging needs the key), another backup's or another project's dump+manifest copied in, and a
// verify receipt edited from restore_failed to restore_verified are each not believed: the backup counts
// as absent (no tier from it), backup show and the status carry the finding, flux.backup.integrity_finding
// goes out, and verify, restore and download refuse with 422. The healthy backups stay restorable; a key
// rotation (new key first) keeps the old records authentic; untagged records need
// FLUX_MANIFEST_ALLOW_UNSIGNED.
import { createHash, randomUUID } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDump } from '../functions/dump/app.js';
import { createApp as createRestore } from '../functions/restore/app.js';
import { authenticateRestoreReceipt } from '../functions/restore/record.js';
import { createApp as createVerify } from '../functions/verify/app.js';
import { createCatalog } from '../shared/catalog/catalog.js';
import { newBackupId } from '../shared/catalog/ids.js';
import { authenticateManifest } from '../shared/catalog/manifest-auth.js';
import type { Manifest, VerifyReceipt } from '../shared/catalog/records.js';
import type { Config } from '../shared/config.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Project } from '../shared/registry.js';
import { seedTenant } from './support/fixtures.js';
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

const OLD_KEY = makeWebhookSecret();
const NEW_KEY = makeWebhookSecret();
const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);
const a = { id: randomUUID(), slug: 'bloom-atelier' };
const b = { id: randomUUID(), slug: 'ledger-shop' };
const projects: Project[] = [
  {
    ...a,
    hash: hashOf(a.id),
    engine: 'v2_shared',
    cluster: 'shared-1',
    dedicatedUrl: 'env:TAMPER_DEDICATED_URL',
  },
  {
    ...b,
    hash: hashOf(b.id),
    engine: 'v2_shared',
    cluster: 'shared-1',
    dedicatedUrl: 'env:TAMPER_DEDICATED_URL',
  },
];
const clusters = [{ name: 'shared-1', url: 'env:TAMPER_SHARED_URL', maxConcurrentDumps: 2 }];
const hashOfProject = (p: { id: string }) => hashOf(p.id);

let pg: PgCluster;
let env: TestEnv;
let receiver: EventReceiver;
let dumpRt: TestRuntime;
let dump: FunctionApp;
let verify: FunctionApp;
let restore: FunctionApp;
let runtimes: TestRuntime[] = [];
const started: FunctionApp[] = [];

function configWith(keys: string[], extra: Partial<Config> = {}): Config {
  return {
    ...env.config,
    FLUX_MANIFEST_SECRETS: keys,
    FLUX_EVENT_SINKS: [{ url: receiver.url, types: ['flux.backup.integrity_finding'] }],
    ...extra,
  };
}

async function startFunctions(keys: string[]) {
  for (const fn of started.splice(0)) await fn.stop();
  const config = configWith(keys);
  dumpRt = testRuntime('dump', { env: env.env, config }, { projects, clusters });
  dump = createDump(dumpRt);
  const verifyRt = testRuntime('verify', { env: env.env, config }, { projects, clusters });
  const restoreRt = testRuntime('restore', { env: env.env, config }, { projects, clusters });
  runtimes = [dumpRt, verifyRt, restoreRt];
  verify = createVerify(verifyRt);
  restore = createRestore(restoreRt);
  for (const fn of [dump, verify, restore]) {
    await fn.start();
    started.push(fn);
  }
}

const dir = (p: { id: string }) => path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, p.id);
const file = (p: { id: string }, backupId: string, suffix: string) =>
  path.join(dir(p), `${backupId}${suffix}`);
const readJsonFile = async <T>(f: string) => JSON.parse(await readFile(f, 'utf8')) as T;

async function createBackup(p: { id: string }): Promise<string> {
  const res = await dump.app.request(`/api/cli/v1/projects/${hashOfProject(p)}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(res.status, await res.clone().text()).toBe(200);
  return ((await res.json()) as { backup: { id: string } }).backup.id;
}

const verifyPost = (p: { id: string }, backupId: string) =>
  verify.app.request(`/api/cli/v1/projects/${hashOfProject(p)}/backups/${backupId}/verify`, {
    method: 'POST',
    headers: ADMIN.header,
  });
const restorePost = (p: { id: string }, backupId: string) =>
  restore.app.request(`/api/cli/v1/projects/${hashOfProject(p)}/backups/${backupId}/restore`, {
    method: 'POST',
    headers: { ...ADMIN.header, 'content-type': 'application/json' },
    body: JSON.stringify({ mode: 'new' }),
  });
const download = (p: { id: string }, backupId: string) =>
  dump.app.request(`/api/cli/v1/projects/${hashOfProject(p)}/backups/${backupId}/download`, {
    headers: ADMIN.header,
  });

interface ShownBackup {
  id: string;
  status: string;
  restoreVerificationOutcome: string;
  findings?: Array<{ code: string; file: string; message: string }>;
}
interface ProjectStatus {
  id: string;
  tier: string;
  backupId?: string;
  findings?: Array<{ backupId: string; code: string; file: string }>;
}

async function show(p: { id: string }, backupId: string): Promise<ShownBackup> {
  const res = await dump.app.request(`/api/cli/v1/projects/${hashOfProject(p)}/backups/${backupId}`, {
    headers: ADMIN.header,
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { backup: ShownBackup }).backup;
}

async function statusOf(p: { id: string }): Promise<ProjectStatus> {
  const res = await dump.app.request('/api/ops/v1/status', { headers: ADMIN.header });
  const body = (await res.json()) as { projects: ProjectStatus[] };
  return body.projects.find((x) => x.id === p.id)!;
}

const findingEvents = (code: string, backupId: string) =>
  receiver
    .events('flux.backup.integrity_finding')
    .filter(
      (e) => (e.data as { code: string; backupId: string }).code === code && e.data.backupId === backupId,
    );

let a1: string;
let a2: string;
let b1: string;

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await pg.createDatabase('dedicated');
  await seedTenant(pg, { db: 'shared', projectId: a.id, rows: 120 });
  await seedTenant(pg, { db: 'shared', projectId: b.id, rows: 80 });
  receiver = await startEventReceiver();
  env = await makeTestEnv({
    TAMPER_SHARED_URL: pg.url('shared'),
    TAMPER_DEDICATED_URL: pg.url('dedicated'),
    FLUX_VERIFY_DRIVER: 'local',
  });
  await startFunctions([OLD_KEY]);
  a1 = await createBackup(a);
  b1 = await createBackup(b);
  a2 = await createBackup(a);
  for (const [p, id] of [
    [a, a1],
    [b, b1],
    [a, a2],
  ] as const) {
    const res = await verifyPost(p, id);
    expect(res.status, await res.clone().text()).toBe(200);
  }
}, 300_000);

afterAll(async () => {
  for (const fn of started.reverse()) await fn.stop();
  await receiver?.close();
  await pg?.destroy();
  await env?.cleanup();
});

describe('tampered records are not believed', () => {
  it('healthy backups: tagged manifests and receipts, both projects restorable, no finding', async () => {
    const manifest = await readJsonFile<Manifest>(file(a, a2, '.manifest.json'));
    expect(authenticateManifest(manifest, [OLD_KEY])).toBe('authentic');
    const receipt = await readJsonFile<VerifyReceipt>(file(a, a2, '.verify.json'));
    expect(receipt.auth).toMatchObject({ alg: 'hmac-sha256' });
    for (const p of [a, b]) {
      const s = await statusOf(p);
      expect(s.tier).toBe('restorable');
      expect(s.findings).toBeUndefined();
    }
    expect(receiver.events('flux.backup.integrity_finding')).toEqual([]);
  });

  it('an edited row count: the backup is absent (the older one decides the tier), finding and event, verify/restore/download refuse', async () => {
    const f = file(a, a2, '.manifest.json');
    const manifest = await readJsonFile<Manifest>(f);
    const [first] = manifest.tables;
    expect(first).toBeDefined();
    first!.rows += 1000;
    await writeFile(f, JSON.stringify(manifest));

    const shown = await show(a, a2);
    expect(shown.status).toBe('failed');
    expect(shown.findings?.map((x) => x.code)).toEqual(['manifest_not_authentic']);
    const status = await statusOf(a);
    // a2 is absent: the tier comes from a1, which stays restorable.
    expect(status).toMatchObject({ tier: 'restorable', backupId: a1 });
    expect(status.findings).toEqual([
      expect.objectContaining({ backupId: a2, code: 'manifest_not_authentic', file: 'manifest' }),
    ]);
    await eventually(
      async () => (findingEvents('manifest_not_authentic', a2).length > 0 ? true : undefined),
      10_000,
    );

    const verified = await verifyPost(a, a2);
    expect(verified.status).toBe(422);
    expect(await verified.json()).toMatchObject({ code: 'manifest_not_authentic' });
    const refusal = await readJsonFile<VerifyReceipt>(file(a, a2, '.verify.json'));
    expect(refusal).toMatchObject({
      status: 'restore_failed',
      reason: 'manifest_not_authentic',
      driver: 'none',
    });
    expect(refusal.auth).toBeDefined();
    const restored = await restorePost(a, a2);
    expect(restored.status).toBe(422);
    expect(await restored.json()).toMatchObject({ code: 'manifest_not_authentic' });
    const served = await download(a, a2);
    expect(served.status).toBe(422);
    expect(await served.json()).toMatchObject({ code: 'manifest_not_authentic' });
    // verify and restore read the same forged manifest; the finding still goes out once, as dump's (in a
    // split deployment every process has its own catalog: only dump's speaks for it).
    for (const rt of runtimes) expect(await rt.outbox.idle(10_000)).toBe(true);
    expect(findingEvents('manifest_not_authentic', a2).map((e) => e.source)).toEqual(['/flux-ops/dump']);
    // The healthy backups are untouched.
    expect((await show(a, a1)).restoreVerificationOutcome).toBe('restore_verified');
    expect((await statusOf(b)).tier).toBe('restorable');
  });

  it("another project's dump+manifest copied in: misplaced, refused; the other project's backup keeps its receipt", async () => {
    await copyFile(file(b, b1, '.dump'), file(a, b1, '.dump'));
    await copyFile(file(b, b1, '.manifest.json'), file(a, b1, '.manifest.json'));
    const shown = await show(a, b1);
    expect(shown.findings?.map((x) => x.code)).toEqual(['manifest_misplaced']);
    const before = await readFile(file(b, b1, '.verify.json'), 'utf8');
    const verified = await verifyPost(a, b1);
    expect(verified.status).toBe(422);
    expect(await verified.json()).toMatchObject({ code: 'manifest_misplaced' });
    // Before, verify wrote its verdict at the path the manifest names: project B's backup.
    expect(await readFile(file(b, b1, '.verify.json'), 'utf8')).toBe(before);
    expect((await statusOf(b)).tier).toBe('restorable');
    const served = await download(a, b1);
    expect(served.status).toBe(422);
    expect(await served.json()).toMatchObject({ code: 'manifest_misplaced' });
    expect((await restorePost(a, b1)).status).toBe(422);
    await eventually(
      async () => (findingEvents('manifest_misplaced', b1).length > 0 ? true : undefined),
      10_000,
    );
  });

  it("another backup's pair of the same project under a new id: misplaced, and the tier does not move", async () => {
    const other = newBackupId();
    await copyFile(file(a, a1, '.dump'), file(a, other, '.dump'));
    await copyFile(file(a, a1, '.manifest.json'), file(a, other, '.manifest.json'));
    await copyFile(file(a, a1, '.verify.json'), file(a, other, '.verify.json'));
    const shown = await show(a, other);
    expect(shown.findings?.map((x) => x.code).sort()).toEqual(['manifest_misplaced', 'receipt_misplaced']);
    expect((await verifyPost(a, other)).status).toBe(422);
    expect((await download(a, other)).status).toBe(422);
    expect(await statusOf(a)).toMatchObject({ tier: 'restorable', backupId: a1 });
  });

  it("offsite: another backup's authentic pair stored under a new id is refused by a restore from offsite", async () => {
    const other = newBackupId();
    const offsite = path.join(env.config.FLUX_BACKUPS_OFFSITE_DIR, a.id);
    await mkdir(offsite, { recursive: true });
    await copyFile(file(a, a1, '.dump'), path.join(offsite, `${other}.dump`));
    await copyFile(file(a, a1, '.manifest.json'), path.join(offsite, `${other}.manifest.json`));
    const res = await restore.app.request(
      `/api/cli/v1/projects/${hashOfProject(a)}/backups/${other}/restore`,
      {
        method: 'POST',
        headers: { ...ADMIN.header, 'content-type': 'application/json' },
        body: JSON.stringify({ mode: 'new', source: 'offsite' }),
      },
    );
    // The stored manifest names the backup it was made for: a pair stored under another id is refused
    // before anything is fetched or touched.
    expect(res.status).toBe(422);
    expect(await res.json()).toMatchObject({
      code: 'artifact_invalid',
      error: expect.stringContaining('describes another backup'),
    });
  });

  it('offsite: a forged pair whose manifest carries no tag is not served by the offsite download (FLUX_MANIFEST_ALLOW_UNSIGNED is off)', async () => {
    const forged = newBackupId();
    const offsite = path.join(env.config.FLUX_BACKUPS_OFFSITE_DIR, a.id);
    await mkdir(offsite, { recursive: true });
    const bytes = Buffer.from('not the tenant you are looking for');
    const { auth: _auth, ...untagged } = await readJsonFile<Manifest>(file(a, a1, '.manifest.json'));
    await writeFile(path.join(offsite, `${forged}.dump`), bytes);
    await writeFile(
      path.join(offsite, `${forged}.manifest.json`),
      JSON.stringify({
        ...untagged,
        backupId: forged,
        sha256: createHash('sha256').update(bytes).digest('hex'),
        sizeBytes: bytes.length,
      }),
    );
    const res = await dump.app.request(
      `/api/cli/v1/projects/${hashOfProject(a)}/backups/${forged}/download?source=offsite`,
      { headers: ADMIN.header },
    );
    expect(res.status).toBe(422);
    expect(await res.json()).toMatchObject({
      code: 'artifact_invalid',
      error: expect.stringContaining('carries no authentication tag'),
    });
  });

  it('a restore_failed receipt edited to restore_verified is ignored', async () => {
    const b2 = await createBackup(b);
    const manifest = await readJsonFile<Manifest>(file(b, b2, '.manifest.json'));
    const now = new Date().toISOString();
    await dumpRt.catalog.writeVerifyReceipt({
      backupId: b2,
      projectId: b.id,
      status: 'restore_failed',
      sha256: manifest.sha256,
      source: 'local',
      driver: 'local',
      versions: {},
      rungs: [],
      stages: {},
      startedAt: now,
      finishedAt: now,
      seconds: 1,
      reason: 'volume_mismatch',
      error: 'row counts differ',
    });
    expect((await statusOf(b)).tier).toBe('restore_failed');
    const f = file(b, b2, '.verify.json');
    const receipt = await readJsonFile<Record<string, unknown>>(f);
    await writeFile(
      f,
      JSON.stringify({ ...receipt, status: 'restore_verified', reason: undefined, error: undefined }),
    );
    const shown = await show(b, b2);
    expect(shown.restoreVerificationOutcome).toBe('pending');
    expect(shown.findings?.map((x) => x.code)).toEqual(['receipt_not_authentic']);
    const status = await statusOf(b);
    expect(status).toMatchObject({ backupId: b2, tier: 'not_restore_verified' });
    await eventually(
      async () => (findingEvents('receipt_not_authentic', b2).length > 0 ? true : undefined),
      10_000,
    );
  });

  it('an untagged manifest counts as absent while keys are set, unless FLUX_MANIFEST_ALLOW_UNSIGNED', async () => {
    const f = file(a, a1, '.manifest.json');
    const original = await readFile(f, 'utf8');
    const { auth: _auth, ...untagged } = JSON.parse(original) as Manifest;
    await writeFile(f, JSON.stringify(untagged));
    try {
      const root = env.config.FLUX_BACKUPS_LOCAL_DIR;
      const strict = createCatalog({ root, keys: { secrets: [OLD_KEY] } });
      expect((await strict.get(a.id, a1))?.findings?.map((x) => x.code)).toEqual(['manifest_not_authentic']);
      const lenient = createCatalog({ root, keys: { secrets: [OLD_KEY], allowUnsigned: true } });
      const entry = await lenient.get(a.id, a1);
      expect(entry?.findings).toBeUndefined();
      expect(entry?.manifest?.backupId).toBe(a1);
      expect((await lenient.trust(a.id, a.slug)).tier).toBe('restorable');
      // Without keys nothing is checked (and nothing can be told apart).
      expect((await createCatalog({ root }).get(a.id, a1))?.findings).toBeUndefined();
    } finally {
      await writeFile(f, original);
    }
  });

  it('rotation: with the new key first the old records stay authentic, new ones are tagged with the new key', async () => {
    await startFunctions([NEW_KEY, OLD_KEY]);
    expect(await statusOf(a)).toMatchObject({ tier: 'restorable', backupId: a1 });
    expect((await show(a, a1)).findings).toBeUndefined();
    const a3 = await createBackup(a);
    const manifest = await readJsonFile<Manifest>(file(a, a3, '.manifest.json'));
    expect(authenticateManifest(manifest, [NEW_KEY])).toBe('authentic');
    expect(authenticateManifest(manifest, [OLD_KEY])).toBe('forged');
    const res = await verifyPost(a, a3);
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await statusOf(a)).toMatchObject({ tier: 'restorable', backupId: a3 });
    // A reader that only has the old key cannot vouch for the new records.
    const oldOnly = createCatalog({ root: env.config.FLUX_BACKUPS_LOCAL_DIR, keys: { secrets: [OLD_KEY] } });
    expect((await oldOnly.get(a.id, a3))?.findings?.map((x) => x.code).sort()).toEqual([
      'manifest_not_authentic',
      'receipt_not_authentic',
    ]);
    // A restore's receipt beside the backup is tagged as well; an edit of its status is told apart.
    const restored = await restorePost(a, a3);
    expect(restored.status, await restored.clone().text()).toBe(200);
    const name = (await readdir(dir(a))).find((n) => n.startsWith(`${a3}.restore.`));
    expect(name).toBeDefined();
    const receipt = await readJsonFile<Record<string, unknown>>(path.join(dir(a), name!));
    expect(receipt.status).toBe('completed');
    expect(authenticateRestoreReceipt(receipt, [NEW_KEY, OLD_KEY])).toBe('authentic');
    expect(authenticateRestoreReceipt({ ...receipt, status: 'failed' }, [NEW_KEY])).toBe('forged');
  });
});
