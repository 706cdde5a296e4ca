// Offsite on S3, end to end: a real pg_dump backup of a real Postgres, replicated by the replicate
// function configured with FLUX_BACKUPS_OFFSITE_DIR=s3://… against a real S3-protocol server (s3rver),
// proven by reading it back; downloaded from the offsite copy once the local files are gone (and
// restorable: pg_restore reads it); a tampered offsite object raises the conflict alarm and stays.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createApp as createReplicateApp } from '../functions/replicate/app.js';
import { createApp as createVerifyApp } from '../functions/verify/app.js';
import type { CatalogEntry } from '../shared/catalog/read-model.js';
import type { Manifest } from '../shared/catalog/records.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import { openArtifact } from '../shared/offsite/artifact.js';
import { createOffsiteStore } from '../shared/offsite/index.js';
import type { Project } from '../shared/registry.js';
import { type S3Proxy, S3RVER_KEY_ID, type S3Server, startS3Proxy, startS3Server } from './s3-server.js';
import { seedProjectDb } from './support/fixtures.js';
import { type PgCluster, pgBinPath, startPostgres } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  signedEvent,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

const PREFIX = 'flux/prod';
const SECRET = `flux-e2e-s3-secret-${randomBytes(12).toString('hex')}`;
const projectId = randomUUID();
const hash = projectId.replaceAll('-', '').slice(0, 7);
const project: Project = {
  id: projectId,
  hash,
  slug: 'orchard-s3',
  engine: 'v1_dedicated',
  databaseUrl: 'env:TEST_S3_V1_URL',
};

let pg: PgCluster;
let s3: S3Server;
let recorder: S3Proxy;
let client: S3Client;
let receiver: EventReceiver;
let env: TestEnv;
let dumpRt: TestRuntime;
let dump: FunctionApp;
let replicateRt: TestRuntime;
let replicate: FunctionApp;

const sha256Of = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
const objectKey = (backupId: string, suffix = '.dump') => `${PREFIX}/${projectId}/${backupId}${suffix}`;

async function createBackup(): Promise<CatalogEntry & { manifest: Manifest }> {
  const res = await dump.app.request(`/api/cli/v1/projects/${hash}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(res.status).toBe(200);
  const { backup } = (await res.json()) as { backup: { id: string } };
  const entry = await dumpRt.catalog.get(projectId, backup.id);
  if (!entry?.manifest) throw new Error('the backup has no manifest');
  return { ...entry, manifest: entry.manifest };
}

async function replicated(backupId: string) {
  return eventually(async () => {
    const offsite = (await replicateRt.catalog.get(projectId, backupId))?.offsite;
    return offsite?.status === 'replicated' ? offsite : undefined;
  });
}

function download(backupId: string, query = '') {
  return dump.app.request(`/api/cli/v1/projects/${hash}/backups/${backupId}/download${query}`, {
    headers: ADMIN.header,
  });
}

beforeAll(async () => {
  [pg, s3, receiver] = await Promise.all([startPostgres(), startS3Server(), startEventReceiver()]);
  await seedProjectDb(pg, { db: 'orchard', rows: 200 });
  recorder = await startS3Proxy(s3.port);
  client = new S3Client({
    endpoint: s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: S3RVER_KEY_ID, secretAccessKey: SECRET },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  env = await makeTestEnv({
    TEST_S3_V1_URL: pg.url('orchard'),
    FLUX_BACKUPS_OFFSITE_DIR: `s3://${s3.bucket}/${PREFIX}`,
    FLUX_S3_ENDPOINT: recorder.endpoint,
    FLUX_S3_FORCE_PATH_STYLE: 'true',
    FLUX_S3_ACCESS_KEY_ID: S3RVER_KEY_ID,
    FLUX_S3_SECRET_ACCESS_KEY: SECRET,
    FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.backup.*'] }]),
    FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60 * 1000),
    FLUX_REPLICATE_RETRY_BASE_DELAY_MS: '20',
    FLUX_REPLICATE_MAX_ATTEMPTS: '2',
  });
  dumpRt = testRuntime('dump', env, { projects: [project] });
  dump = createDumpApp(dumpRt);
  await dump.start();
});

afterAll(async () => {
  await replicate?.stop();
  await dump?.stop();
  client?.destroy();
  await recorder?.close();
  await receiver?.close();
  await s3?.close();
  await pg?.destroy();
  await env?.cleanup();
});

describe('offsite on S3, end to end', () => {
  let first: CatalogEntry & { manifest: Manifest };

  it('replicates a real pg_dump backup to s3:// and proves the copy by reading it back', async () => {
    first = await createBackup();
    replicateRt = testRuntime('replicate', env);
    replicate = createReplicateApp(replicateRt);
    await replicate.start(); // the start-up reconcile finds the backup
    const receipt = await replicated(first.backupId);
    expect(receipt).toMatchObject({
      store: `s3://${s3.bucket}/${PREFIX}`,
      key: `${projectId}/${first.backupId}.dump`,
      contentSha256: first.manifest.sha256,
      sizeBytes: first.manifest.sizeBytes,
    });
    // The object carries the manifest's sha256, and the manifest sits beside it.
    const head = await client.send(
      new HeadObjectCommand({ Bucket: s3.bucket, Key: objectKey(first.backupId) }),
    );
    expect(head).toMatchObject({
      ContentLength: first.manifest.sizeBytes,
      Metadata: { sha256: first.manifest.sha256 },
    });
    await client.send(
      new HeadObjectCommand({ Bucket: s3.bucket, Key: objectKey(first.backupId, '.manifest.json') }),
    );
    // Proof by re-reading: after the PUT of the dump, replicate GETs it whole (never trusts the ETag).
    const forDump = recorder.requests.filter(
      (r) => r.url.split('?')[0] === `/${s3.bucket}/${objectKey(first.backupId)}`,
    );
    const put = forDump.findIndex((r) => r.method === 'PUT');
    expect(put).toBeGreaterThanOrEqual(0);
    expect(forDump.slice(put + 1).some((r) => r.method === 'GET')).toBe(true);

    await eventually(() => receiver.events('flux.backup.replicated').length > 0);
    expect(receiver.events('flux.backup.replicated')[0]!.data).toMatchObject({
      backupId: first.backupId,
      sha256: first.manifest.sha256,
      store: `s3://${s3.bucket}/${PREFIX}`,
    });
    const ready = await replicate.app.request('/readyz');
    expect(ready.status).toBe(200);
    expect(JSON.stringify(await ready.json())).toContain('offsite:s3');
  });

  it('downloads a backup whose local files are gone from the offsite copy, and it restores', async () => {
    await rm(first.paths.dump);
    expect((await download(first.backupId)).status).toBe(404);
    expect((await download(first.backupId, '?source=elsewhere')).status).toBe(400);

    const res = await download(first.backupId, '?source=offsite');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(first.manifest.sizeBytes));
    expect(res.headers.get('x-flux-checksum-sha256')).toBe(first.manifest.sha256);
    expect(res.headers.get('x-flux-artifact-source')).toBe('offsite');
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(sha256Of(bytes)).toBe(first.manifest.sha256);
    const file = path.join(env.root, 'downloaded.dump');
    await writeFile(file, bytes);
    const list = await execa(pgBinPath('pg_restore'), ['--list', file]);
    expect(list.stdout).toContain('TABLE DATA');

    // What verify reads through: the offsite artifact, its size known up front, the archive header.
    const store = createOffsiteStore(env.config);
    const artifact = await openArtifact(first, 'offsite', { store });
    expect(artifact).toMatchObject({ source: 'offsite', sizeBytes: first.manifest.sizeBytes });
    expect((await artifact!.readHead(5)).toString('latin1')).toBe('PGDMP');
    expect(await openArtifact(first, 'local')).toBeUndefined();

    // And verify proves that offsite copy by restoring it: the receipt says which copy was proven.
    // A verify function on this store with the local sandbox, triggered by `verifyOn`.
    const verifyRuntime = (verifyOn: string) =>
      testRuntime(
        'verify',
        {
          env: { ...env.env, FLUX_VERIFY_DRIVER: 'local' },
          config: { ...env.config, FLUX_VERIFY_DRIVER: 'local', FLUX_VERIFY_ON: verifyOn },
        },
        { projects: [project] },
      );
    const verifyRt = verifyRuntime('none');
    const verify = createVerifyApp(verifyRt);
    const local = await verify.app.request(`/api/cli/v1/projects/${hash}/backups/${first.backupId}/verify`, {
      method: 'POST',
      headers: ADMIN.header,
    });
    expect(local.status).toBe(422);
    const proven = await verify.app.request(
      `/api/cli/v1/projects/${hash}/backups/${first.backupId}/verify?source=offsite`,
      { method: 'POST', headers: ADMIN.header },
    );
    expect(proven.status).toBe(200);
    expect(await proven.json()).toMatchObject({ ok: true, restoreVerificationStatus: 'restore_verified' });
    const receipt = (await verifyRt.catalog.get(projectId, first.backupId))?.verifyOffsite;
    expect(receipt).toMatchObject({
      status: 'restore_verified',
      source: 'offsite',
      sha256: first.manifest.sha256,
    });
    await verify.stop();

    // Triggered by replicate's own flux.backup.replicated event, verify proves the offsite copy too (the
    // local dump is gone: a verification of the local copy could only fail).
    const onReplicated = verifyRuntime('flux.backup.replicated');
    const triggered = createVerifyApp(onReplicated);
    await triggered.start();
    const event = receiver.events('flux.backup.replicated').find((e) => e.data.backupId === first.backupId)!;
    const delivered = await triggered.app.request('/events', signedEvent(event));
    expect(delivered.status, await delivered.clone().text()).toBe(202);
    const byEvent = await eventually(async () => {
      const r = (await onReplicated.catalog.get(projectId, first.backupId))?.verifyOffsite;
      return r && r.finishedAt > receipt!.finishedAt ? r : undefined;
    }, 60_000);
    expect(byEvent).toMatchObject({ status: 'restore_verified', source: 'offsite' });
    await triggered.stop();

    // Even with no local manifest at all, the manifest stored offsite describes the copy.
    await rm(first.paths.manifest);
    await rm(first.paths.offsite, { force: true });
    const again = await download(first.backupId, '?source=offsite');
    expect(again.status).toBe(200);
    expect(sha256Of(Buffer.from(await again.arrayBuffer()))).toBe(first.manifest.sha256);
  });

  it('raises the conflict alarm for a tampered offsite object and never overwrites it', async () => {
    const second = await createBackup();
    await replicated(second.backupId); // the watcher saw the manifest arrive
    const tampered = randomBytes(second.manifest.sizeBytes + 10);
    await client.send(
      new PutObjectCommand({
        Bucket: s3.bucket,
        Key: objectKey(second.backupId),
        Body: tampered,
        Metadata: { sha256: second.manifest.sha256 },
      }),
    );
    // A wrong size is refused before a byte is served.
    expect((await download(second.backupId, '?source=offsite')).status).toBe(422);

    const run = await replicate.app.request('/replicate/run', { method: 'POST', headers: ADMIN.header });
    const { reconcile } = (await run.json()) as { reconcile: { gaps: Record<string, number> } };
    expect(reconcile.gaps.offsite_changed).toBe(1);
    const entry = await replicateRt.catalog.get(projectId, second.backupId);
    expect(entry?.offsite).toMatchObject({
      status: 'conflict',
      reason: 'conflict',
      contentSha256: sha256Of(tampered),
      manifestSha256: second.manifest.sha256,
    });
    await eventually(() =>
      receiver
        .events('flux.backup.replication_failed')
        .find((e) => (e.data as { backupId: string }).backupId === second.backupId),
    );
    expect(replicateRt.logs.text()).toContain('ALARM: a different offsite copy exists');
    const stored = await client.send(
      new GetObjectCommand({ Bucket: s3.bucket, Key: objectKey(second.backupId) }),
    );
    expect(sha256Of(Buffer.from(await stored.Body!.transformToByteArray()))).toBe(sha256Of(tampered));

    // Same size, forged metadata: served only until the hash is known, then cut short.
    const sameSize = randomBytes(second.manifest.sizeBytes);
    await client.send(
      new PutObjectCommand({
        Bucket: s3.bucket,
        Key: objectKey(second.backupId),
        Body: sameSize,
        Metadata: { sha256: second.manifest.sha256 },
      }),
    );
    const cut = await download(second.backupId, '?source=offsite');
    expect(cut.status).toBe(200);
    await expect(cut.arrayBuffer()).rejects.toThrow();
  });

  it('never logs the S3 secret', () => {
    const logs = `${dumpRt.logs.text()}\n${replicateRt.logs.text()}`;
    expect(logs.length).toBeGreaterThan(0);
    expect(logs).not.toContain(SECRET);
  });
});
