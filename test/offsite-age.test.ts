// Encrypted offsite copies, end to end on a real Postgres, real pg_dump backups and the real `age` CLI
// (keys made by age-keygen, as an operator would): replicate stores each copy as an age file encrypted
// to FLUX_BACKUP_AGE_RECIPIENTS and proves the stored bytes; the plain `age` CLI opens it to the
// manifest's plaintext SHA-256; verify and restore from offsite and the offsite download work on it
// with FLUX_BACKUP_AGE_IDENTITY_FILE (directory store and S3); a wrong identity is refused at start-up
// and on use with the fix; adding a recipient re-encrypts nothing and the old copies stay readable; a
// flipped byte in an encrypted copy is found by the re-hash and by verify; a retry after a crash between
// the put and the receipt puts the same file again (no conflict); a truncated one raises the conflict
// alarm and is refused.
import { createHash, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { describeBackup } from '../cli/backup.js';
import type { ApiBackup } from '../cli/project.js';
import { createApp as createDump } from '../functions/dump/app.js';
import { createApp as createReplicate } from '../functions/replicate/app.js';
import { stageSealed } from '../functions/replicate/sealed-copy.js';
import type { SweepSummary } from '../functions/replicate/upkeep.js';
import { createApp as createRestore } from '../functions/restore/app.js';
import { createApp as createVerify } from '../functions/verify/app.js';
import type { OffsiteReceipt } from '../shared/catalog/records.js';
import type { Config } from '../shared/config.js';
import { loadConfig } from '../shared/config.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import { AGE_MAGIC } from '../shared/offsite/age.js';
import { createOffsiteStore } from '../shared/offsite/index.js';
import type { Project } from '../shared/registry.js';
import { S3RVER_KEY_ID, S3RVER_SECRET, type S3Server, startS3Server } from './s3-server.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);
const tenant = { id: randomUUID(), slug: 'sealed-garden' };
const project: Project = {
  ...tenant,
  hash: hashOf(tenant.id),
  engine: 'v2_shared',
  cluster: 'shared-1',
  dedicatedUrl: 'env:AGE_DEDICATED_URL',
};
const clusters = [{ name: 'shared-1', url: 'env:AGE_SHARED_URL', maxConcurrentDumps: 2 }];
const projects = [project];
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let pg: PgCluster;
let keys: string;
let id1: { file: string; recipient: string };
let id2: { file: string; recipient: string };
let env: TestEnv;
let dumpRt: TestRuntime;
let dump: FunctionApp;
const running: FunctionApp[] = [];

async function keygen(name: string) {
  const file = path.join(keys, name);
  const r = await execa('age-keygen', ['-o', file]);
  await chmod(file, 0o600);
  return { file, recipient: /Public key: (age1\S+)/.exec(r.stderr)![1]! };
}

function configOf(base: TestEnv, extra: Record<string, string | undefined>): Config {
  return loadConfig({ ...base.env, ...extra });
}

async function start<T extends FunctionApp>(fn: T): Promise<T> {
  await fn.start();
  running.push(fn);
  return fn;
}
async function stop(fn: FunctionApp) {
  const at = running.indexOf(fn);
  if (at < 0) return;
  running.splice(at, 1);
  await fn.stop();
}

async function replicateWith(base: TestEnv, extra: Record<string, string | undefined>) {
  const rt = testRuntime(
    'replicate',
    { env: base.env, config: configOf(base, extra) },
    { projects, clusters },
  );
  return { rt, fn: await start(createReplicate(rt)) };
}

async function createBackup(): Promise<string> {
  const res = await dump.app.request(`/api/cli/v1/projects/${project.hash}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(res.status, await res.clone().text()).toBe(200);
  return ((await res.json()) as { backup: { id: string } }).backup.id;
}

const localFile = (backupId: string, suffix: string) =>
  path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, tenant.id, `${backupId}${suffix}`);
const offsiteFile = (backupId: string) =>
  path.join(env.config.FLUX_BACKUPS_OFFSITE_DIR, tenant.id, `${backupId}.dump`);
const manifestOf = async (backupId: string) =>
  JSON.parse(await readFile(localFile(backupId, '.manifest.json'), 'utf8')) as {
    sha256: string;
    sizeBytes: number;
  };

async function replicated(rt: TestRuntime, backupId: string): Promise<OffsiteReceipt> {
  return eventually(async () => {
    const r = (await rt.catalog.get(tenant.id, backupId))?.offsite;
    return r?.status === 'replicated' ? r : undefined;
  }, 60_000);
}

/** `age -d -i <identity>` of a stored object, hashed: what an operator without flux-ops gets. */
async function ageOpen(identityFile: string, file: string): Promise<string> {
  const r = await execa('age', ['-d', '-i', identityFile, file], { encoding: 'buffer' });
  return sha(Buffer.from(r.stdout));
}

beforeAll(async () => {
  keys = await mkdtemp(path.join(tmpdir(), 'flux-age-keys-'));
  id1 = await keygen('id1.txt');
  id2 = await keygen('id2.txt');
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await pg.createDatabase('dedicated');
  await seedTenant(pg, { db: 'shared', projectId: tenant.id, rows: 300 });
  env = await makeTestEnv({
    AGE_SHARED_URL: pg.url('shared'),
    AGE_DEDICATED_URL: pg.url('dedicated'),
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_ON: 'none',
    FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60 * 1000),
    FLUX_REHASH_SWEEP_INTERVAL_MS: String(60 * 60 * 1000),
    FLUX_REHASH_EVERY_MS: String(60 * 60 * 1000),
    FLUX_REHASH_MAX_BYTES_PER_SECOND: '0',
    FLUX_BACKUP_AGE_RECIPIENTS: id1.recipient,
    FLUX_BACKUP_AGE_IDENTITY_FILE: id1.file,
  });
  dumpRt = testRuntime('dump', env, { projects, clusters });
  dump = await start(createDump(dumpRt));
}, 120_000);

// Whatever a test started beside dump stops with it, even when the test fails half-way.
afterEach(async () => {
  for (const fn of running.filter((f) => f !== dump).reverse()) await stop(fn);
});

afterAll(async () => {
  for (const fn of running.splice(0).reverse()) await fn.stop();
  await pg?.destroy();
  await env?.cleanup();
  await rm(keys, { recursive: true, force: true });
});

describe('encrypted offsite copies (directory store)', () => {
  let first: string;
  let firstReceipt: OffsiteReceipt;

  it('replicate stores an age file the plain age CLI opens to the manifest plaintext; the receipt proves the stored bytes', async () => {
    first = await createBackup();
    const { rt, fn } = await replicateWith(env, {});
    firstReceipt = await replicated(rt, first);
    const manifest = await manifestOf(first);
    const stored = await readFile(offsiteFile(first));
    expect(stored.subarray(0, AGE_MAGIC.length).equals(AGE_MAGIC)).toBe(true);
    // Nothing of the archive shows through: pg_dump's own magic is not in the stored bytes.
    expect((await readFile(localFile(first, '.dump'))).subarray(0, 5).toString()).toBe('PGDMP');
    expect(stored.includes(Buffer.from('PGDMP'))).toBe(false);
    expect(firstReceipt).toMatchObject({
      contentSha256: manifest.sha256,
      sizeBytes: manifest.sizeBytes,
      encryption: {
        format: 'age',
        recipients: [id1.recipient],
        storedSha256: sha(stored),
        storedSizeBytes: stored.length,
      },
    });
    expect(await ageOpen(id1.file, offsiteFile(first))).toBe(manifest.sha256);
    // The staged ciphertext is gone once the receipt holds its hash.
    const staging = path.join(env.config.FLUX_STATE_DIR, 'replicate-sealed', tenant.id);
    expect(await readdir(staging).catch(() => [])).toEqual([]);
    // The status says who can open it.
    const shown = await dump.app.request(`/api/cli/v1/projects/${project.hash}/backups/${first}`, {
      headers: ADMIN.header,
    });
    const row = ((await shown.json()) as { backup: ApiBackup }).backup;
    expect(row.offsiteEncryption).toEqual({ format: 'age', recipients: [id1.recipient] });
    // backup show says it too.
    expect(describeBackup(row, project.slug)).toMatch(new RegExp(`\\n  encrypted +age to ${id1.recipient}`));
    const status = await fn.app.request('/replicate/status', { headers: ADMIN.header });
    expect(((await status.json()) as { encryption: unknown }).encryption).toEqual({
      format: 'age',
      recipients: [id1.recipient],
      identities: [id1.recipient],
    });
    // The identity file's secret is in no log line.
    const secret = (await readFile(id1.file, 'utf8'))
      .split('\n')
      .find((l) => l.startsWith('AGE-SECRET-KEY-'))!;
    expect(rt.logs.text()).not.toContain(secret);
    await stop(fn);
  });

  it('verify from offsite, restore from offsite and the offsite download all read the plaintext', async () => {
    const manifest = await manifestOf(first);
    const verifyRt = testRuntime('verify', env, { projects, clusters });
    const verify = await start(createVerify(verifyRt));
    const res = await verify.app.request(
      `/api/cli/v1/projects/${project.hash}/backups/${first}/verify?source=offsite`,
      { method: 'POST', headers: ADMIN.header },
    );
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true, restoreVerificationStatus: 'restore_verified' });
    await stop(verify);

    const restore = await start(createRestore(testRuntime('restore', env, { projects, clusters })));
    const restored = await restore.app.request(
      `/api/cli/v1/projects/${project.hash}/backups/${first}/restore`,
      {
        method: 'POST',
        headers: { ...ADMIN.header, 'content-type': 'application/json' },
        body: JSON.stringify({ mode: 'new', source: 'offsite' }),
      },
    );
    expect(restored.status, await restored.clone().text()).toBe(200);
    expect(await restored.json()).toMatchObject({
      ok: true,
      restore: { status: 'completed', source: 'offsite' },
    });
    await stop(restore);

    const download = await dump.app.request(
      `/api/cli/v1/projects/${project.hash}/backups/${first}/download?source=offsite`,
      { headers: ADMIN.header },
    );
    expect(download.status).toBe(200);
    expect(download.headers.get('content-length')).toBe(String(manifest.sizeBytes));
    const body = Buffer.from(await download.arrayBuffer());
    expect(sha(body)).toBe(manifest.sha256);
  });

  it('a wrong identity: the start is refused with the fix, and a verification from offsite says which key to add', async () => {
    const wrong = configOf(env, { FLUX_BACKUP_AGE_IDENTITY_FILE: id2.file });
    const refused = createVerify(
      testRuntime('verify', { env: env.env, config: wrong }, { projects, clusters }),
    );
    await expect(refused.start()).rejects.toThrow(
      /no identity in FLUX_BACKUP_AGE_IDENTITY_FILE \(.*id2\.txt\) opens the newest offsite copy .*checked at start-up/,
    );
    await refused.stop();
    const noKey = createVerify(
      testRuntime(
        'verify',
        { env: env.env, config: configOf(env, { FLUX_BACKUP_AGE_IDENTITY_FILE: undefined }) },
        { projects, clusters },
      ),
    );
    await noKey.start();
    const res = await noKey.app.request(
      `/api/cli/v1/projects/${project.hash}/backups/${first}/verify?source=offsite`,
      {
        method: 'POST',
        headers: ADMIN.header,
      },
    );
    const body = (await res.json()) as { code: string; error: string };
    expect(res.status).toBe(503);
    expect(body.code).toBe('encryption_key_missing');
    expect(body.error).toMatch(
      /age-encrypted and this process has no identity to open it: set FLUX_BACKUP_AGE_IDENTITY_FILE/,
    );
    await noKey.stop();
  });

  it('a recipient that is not an age key fails the config, naming the entry and the fix', async () => {
    expect(() => configOf(env, { FLUX_BACKUP_AGE_RECIPIENTS: `${id1.recipient},age1typo` })).toThrow(
      /FLUX_BACKUP_AGE_RECIPIENTS entry 2 \("age1typo"\) is not an age recipient/,
    );
  });

  it('rotation: a second recipient is used for new copies; the old copy is not re-encrypted and still opens with its key', async () => {
    const before = await stat(offsiteFile(first));
    const beforeSha = sha(await readFile(offsiteFile(first)));
    // The identity file of a rotation holds the new key and the old one, which opens the older copies.
    const both = path.join(keys, 'both.txt');
    await writeFile(both, `${await readFile(id2.file, 'utf8')}${await readFile(id1.file, 'utf8')}`, {
      mode: 0o600,
    });
    const { rt, fn } = await replicateWith(env, {
      FLUX_BACKUP_AGE_RECIPIENTS: `${id1.recipient},${id2.recipient}`,
      FLUX_BACKUP_AGE_IDENTITY_FILE: both,
    });
    const second = await createBackup();
    const receipt = await replicated(rt, second);
    expect(receipt.encryption?.recipients).toEqual([id1.recipient, id2.recipient]);
    const manifest = await manifestOf(second);
    expect(await ageOpen(id2.file, offsiteFile(second))).toBe(manifest.sha256);
    expect(await ageOpen(id1.file, offsiteFile(second))).toBe(manifest.sha256);
    // A full reconcile leaves the old copy alone: same bytes, same mtime, the receipt still names one key.
    const run = await fn.app.request('/replicate/run', { method: 'POST', headers: ADMIN.header });
    expect(run.status).toBe(200);
    expect(
      ((await run.json()) as { reconcile: { results: { replicated: number } } }).reconcile.results.replicated,
    ).toBe(0);
    const after = await stat(offsiteFile(first));
    expect(after.mtimeMs).toBe(before.mtimeMs);
    expect(sha(await readFile(offsiteFile(first)))).toBe(beforeSha);
    expect((await rt.catalog.get(tenant.id, first))?.offsite?.encryption?.recipients).toEqual([
      id1.recipient,
    ]);
    expect(await ageOpen(id1.file, offsiteFile(first))).toBe((await manifestOf(first)).sha256);
    await stop(fn);
  });

  it('a flipped byte in an encrypted copy (mtime kept) is found by the re-hash and refused by verify; the healthy copy raises nothing', async () => {
    const { rt, fn } = await replicateWith(env, {});
    const sweep = async () => {
      const res = await fn.app.request('/replicate/upkeep', { method: 'POST', headers: ADMIN.header });
      expect(res.status).toBe(200);
      return ((await res.json()) as { upkeep: SweepSummary }).upkeep;
    };
    const healthy = await sweep();
    expect(healthy.invalid).toEqual([]);
    const file = offsiteFile(first);
    const { mtime } = await stat(file);
    const bytes = await readFile(file);
    const original = Buffer.from(bytes);
    bytes[bytes.length - 500]! ^= 0x40;
    await writeFile(file, bytes);
    await utimes(file, mtime, mtime);
    try {
      const found = await sweep();
      expect(found.invalid).toEqual([
        expect.objectContaining({ place: 'offsite', backupId: first, reason: 'sha256_mismatch' }),
      ]);
      const receipt = (await rt.catalog.get(tenant.id, first))?.offsite;
      expect(receipt).toMatchObject({ status: 'failed', reason: 'offsite_invalid' });
      const verify = await start(createVerify(testRuntime('verify', env, { projects, clusters })));
      const res = await verify.app.request(
        `/api/cli/v1/projects/${project.hash}/backups/${first}/verify?source=offsite`,
        {
          method: 'POST',
          headers: ADMIN.header,
        },
      );
      expect(res.status).not.toBe(200);
      expect(JSON.stringify(await res.json())).toMatch(/age authentication|not the manifest's/);
      await stop(verify);
    } finally {
      await writeFile(file, original);
      await utimes(file, mtime, mtime);
    }
    const again = await sweep();
    expect(again.invalid).toEqual([]);
    expect((await rt.catalog.get(tenant.id, first))?.offsite).toMatchObject({ status: 'replicated' });
    await stop(fn);
  });

  it('a truncated encrypted copy: the reconcile sees it is not the size its receipt proved and raises the conflict alarm (never overwriting it); verify from offsite refuses it', async () => {
    const file = offsiteFile(first);
    const original = await readFile(file);
    await writeFile(file, original.subarray(0, Math.floor(original.length / 2)));
    try {
      const { rt, fn } = await replicateWith(env, {});
      const run = await fn.app.request('/replicate/run', { method: 'POST', headers: ADMIN.header });
      expect(run.status).toBe(200);
      const { reconcile } = (await run.json()) as {
        reconcile: { gaps: Record<string, number>; results: Record<string, number> };
      };
      expect(reconcile.gaps.offsite_changed).toBe(1);
      expect(reconcile.results.conflict).toBe(1);
      expect((await rt.catalog.get(tenant.id, first))?.offsite?.status).toBe('conflict');
      expect((await readFile(file)).length).toBe(Math.floor(original.length / 2));
      await stop(fn);
      const verify = await start(createVerify(testRuntime('verify', env, { projects, clusters })));
      const res = await verify.app.request(
        `/api/cli/v1/projects/${project.hash}/backups/${first}/verify?source=offsite`,
        { method: 'POST', headers: ADMIN.header },
      );
      expect(res.status).not.toBe(200);
      expect(JSON.stringify(await res.json())).toMatch(
        /age authentication|not the manifest's|truncated or replaced/,
      );
    } finally {
      await writeFile(file, original);
    }
  });

  it('a crash between the put and the receipt: the retry puts the same staged file again, with no conflict', async () => {
    const third = await createBackup();
    const manifest = await manifestOf(third);
    // What the crashed attempt did: stage, put, die before the receipt.
    const staged = await stageSealed({
      stagingDir: path.join(env.config.FLUX_STATE_DIR, 'replicate-sealed'),
      projectId: tenant.id,
      backupId: third,
      dumpFile: localFile(third, '.dump'),
      expected: manifest,
      recipients: [id1.recipient],
    });
    const store = createOffsiteStore(env.config);
    const { createReadStream } = await import('node:fs');
    const put = await store.put(`${tenant.id}/${third}.dump`, createReadStream(staged.file), staged.stored);
    expect(put.outcome).toBe('created');
    const { rt, fn } = await replicateWith(env, {});
    const receipt = await replicated(rt, third);
    expect(receipt.encryption?.storedSha256).toBe(staged.stored.sha256);
    expect(rt.logs.text()).not.toMatch(/ALARM/);
    await stop(fn);
  });

  it('a copy without its local dump (a rebuilt catalog) is proven by decrypting it', async () => {
    const backupId = await createBackup();
    const { rt, fn } = await replicateWith(env, {});
    const receipt = await replicated(rt, backupId);
    await stop(fn);
    await unlink(localFile(backupId, '.dump'));
    await unlink(localFile(backupId, '.offsite.json'));
    const again = await replicateWith(env, {});
    const proven = await replicated(again.rt, backupId);
    expect(proven.encryption).toEqual({ ...receipt.encryption, recipients: [] });
    expect(proven.contentSha256).toBe((await manifestOf(backupId)).sha256);
    await stop(again.fn);
  });
});

describe('encrypted offsite copies on S3', () => {
  let s3: S3Server;
  let s3env: TestEnv;

  beforeAll(async () => {
    s3 = await startS3Server();
    s3env = await makeTestEnv({
      AGE_SHARED_URL: pg.url('shared'),
      AGE_DEDICATED_URL: pg.url('dedicated'),
      FLUX_VERIFY_DRIVER: 'local',
      FLUX_VERIFY_ON: 'none',
      FLUX_BACKUPS_LOCAL_DIR: env.config.FLUX_BACKUPS_LOCAL_DIR,
      FLUX_BACKUPS_OFFSITE_DIR: `s3://${s3.bucket}/sealed`,
      FLUX_S3_ENDPOINT: s3.endpoint,
      FLUX_S3_FORCE_PATH_STYLE: 'true',
      FLUX_S3_ACCESS_KEY_ID: S3RVER_KEY_ID,
      FLUX_S3_SECRET_ACCESS_KEY: S3RVER_SECRET,
      FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60 * 1000),
      FLUX_BACKUP_AGE_RECIPIENTS: id1.recipient,
      FLUX_BACKUP_AGE_IDENTITY_FILE: id1.file,
    });
  });
  afterAll(async () => {
    await s3?.close();
    await s3env?.cleanup();
  });

  it('replicates an age file to s3://, which the age CLI opens and verify from offsite proves', async () => {
    const backupId = await createBackup();
    const { rt, fn } = await replicateWith(s3env, {});
    const receipt = await replicated(rt, backupId);
    const manifest = await manifestOf(backupId);
    expect(receipt).toMatchObject({
      store: `s3://${s3.bucket}/sealed`,
      contentSha256: manifest.sha256,
      encryption: { format: 'age', recipients: [id1.recipient] },
    });
    const store = createOffsiteStore(s3env.config);
    const fetched = path.join(keys, `${backupId}.age`);
    const chunks: Buffer[] = [];
    for await (const c of await store.get(`${tenant.id}/${backupId}.dump`)) chunks.push(c as Buffer);
    await writeFile(fetched, Buffer.concat(chunks));
    expect(sha(Buffer.concat(chunks))).toBe(receipt.encryption!.storedSha256);
    expect(await ageOpen(id1.file, fetched)).toBe(manifest.sha256);
    await stop(fn);

    const verify = await start(createVerify(testRuntime('verify', s3env, { projects, clusters })));
    const res = await verify.app.request(
      `/api/cli/v1/projects/${project.hash}/backups/${backupId}/verify?source=offsite`,
      { method: 'POST', headers: ADMIN.header },
    );
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await res.json()).toMatchObject({ restoreVerificationStatus: 'restore_verified' });
    await stop(verify);

    const restore = await start(createRestore(testRuntime('restore', s3env, { projects, clusters })));
    const restored = await restore.app.request(
      `/api/cli/v1/projects/${project.hash}/backups/${backupId}/restore`,
      {
        method: 'POST',
        headers: { ...ADMIN.header, 'content-type': 'application/json' },
        // Its own name: the directory-store restore above made the default one this minute.
        body: JSON.stringify({ mode: 'new', source: 'offsite', targetName: 'sealed_from_s3' }),
      },
    );
    expect(restored.status, await restored.clone().text()).toBe(200);
    expect(await restored.json()).toMatchObject({ restore: { status: 'completed', source: 'offsite' } });
  });
});
