// replicate's upkeep against real files and a real S3-protocol server: the rotating re-hash finds a byte
// flipped behind every cache's back (mtime put back) in an old retained backup, local or offsite, and the
// finding reaches another process's catalog; the rotation survives a restart; offsite retention removes
// exactly what its policy selects (never a local backup's copy, never the newest restorable one, even
// past KEEP_DAYS) on fs and s3, and nothing at all when the store is immutable.
import { randomBytes } from 'node:crypto';
import { chmod, open, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../functions/replicate/app.js';
import type { SweepSummary } from '../functions/replicate/upkeep.js';
import { UPKEEP_STATE_FILE } from '../functions/replicate/upkeep-state.js';
import { writeJsonAtomic } from '../shared/atomic.js';
import { createCatalog } from '../shared/catalog/catalog.js';
import { backupPaths } from '../shared/catalog/layout.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import { createOffsiteStore } from '../shared/offsite/index.js';
import { dumpKeyOf } from '../shared/offsite/keys.js';
import { DAY_MS } from '../shared/units.js';
import {
  type FakeBackup,
  fakeManifest,
  fakeVerifyReceipt,
  metricValue,
  newProjectId,
  readReceipt,
  writeBackup,
} from './replicate-fixtures.js';
import { S3RVER_KEY_ID, S3RVER_SECRET, type S3Server, startS3Server } from './s3-server.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

interface Harness {
  env: TestEnv;
  rt: TestRuntime;
  fn: FunctionApp;
  local: string;
  sweep(): Promise<SweepSummary>;
  reconcile(): Promise<void>;
  drained(): Promise<void>;
  stop(): Promise<void>;
}

let receiver: EventReceiver;
let s3: S3Server;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  [receiver, s3] = await Promise.all([startEventReceiver(), startS3Server()]);
});
afterAll(async () => {
  await receiver?.close();
  await s3?.close();
});
afterEach(async () => {
  try {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  } finally {
    // Stopped processes deliver nothing more: the next test starts with no event of this one.
    receiver.deliveries.length = 0;
  }
});

const s3Env = () => ({
  FLUX_BACKUPS_OFFSITE_DIR: `s3://${s3.bucket}/u-${randomBytes(4).toString('hex')}`,
  FLUX_S3_ENDPOINT: s3.endpoint,
  FLUX_S3_FORCE_PATH_STYLE: 'true',
  FLUX_S3_ACCESS_KEY_ID: S3RVER_KEY_ID,
  FLUX_S3_SECRET_ACCESS_KEY: S3RVER_SECRET,
});

async function testEnv(extra: Record<string, string>): Promise<TestEnv> {
  const env = await makeTestEnv({
    FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.backup.*'] }]),
    FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60 * 1000),
    FLUX_REHASH_SWEEP_INTERVAL_MS: String(60 * 60 * 1000),
    FLUX_REHASH_EVERY_MS: String(60 * 60 * 1000),
    FLUX_REHASH_MAX_BYTES_PER_SECOND: '0',
    FLUX_LOG_LEVEL: 'info',
    ...extra,
  });
  cleanups.push(env.cleanup);
  return env;
}

async function harness(env: TestEnv): Promise<Harness> {
  const rt = testRuntime('replicate', env);
  const fn = createApp(rt);
  await fn.start();
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await fn.stop();
  };
  cleanups.push(stop);
  return {
    env,
    rt,
    fn,
    local: env.config.FLUX_BACKUPS_LOCAL_DIR,
    async sweep() {
      const res = await fn.app.request('/replicate/upkeep', { method: 'POST', headers: ADMIN.header });
      expect(res.status).toBe(200);
      return ((await res.json()) as { upkeep: SweepSummary }).upkeep;
    },
    async reconcile() {
      const res = await fn.app.request('/replicate/run', { method: 'POST', headers: ADMIN.header });
      expect(res.status).toBe(200);
    },
    async drained() {
      expect(await rt.outbox.idle(30_000)).toBe(true);
    },
    stop,
  };
}

/** A backup made `ageDays` ago (manifest dates), optionally restore-verified by a verify receipt. */
async function agedBackup(
  local: string,
  projectId: string,
  ageDays: number,
  restore?: 'restore_verified' | 'restore_failed',
): Promise<FakeBackup> {
  const b = await writeBackup(local, projectId, { withManifest: false });
  const at = new Date(Date.now() - ageDays * DAY_MS).toISOString();
  // Whole seconds: utimes can put such an mtime back exactly after a byte is flipped.
  const wrote = Math.floor(Date.now() / 1000) - 60;
  await utimes(b.dump, wrote, wrote);
  await writeJsonAtomic(b.manifest, {
    ...fakeManifest(projectId, b.backupId, b),
    createdAt: at,
    completedAt: at,
  });
  if (restore) {
    await writeJsonAtomic(
      backupPaths(local, projectId, b.backupId).verify,
      fakeVerifyReceipt(projectId, b.backupId, b.sha256, restore, at),
    );
  }
  return b;
}

/** Flips one byte in place and puts size and mtime back: no (size, mtime) cache can notice. */
async function flipByte(file: string, at = 100): Promise<void> {
  const before = await stat(file);
  await chmod(file, 0o640);
  const handle = await open(file, 'r+');
  try {
    const { buffer } = await handle.read(Buffer.alloc(1), 0, 1, at);
    await handle.write(Buffer.from([buffer[0]! ^ 0xff]), 0, 1, at);
  } finally {
    await handle.close();
  }
  await utimes(file, before.atime, before.mtime);
  expect((await stat(file)).mtime.getTime()).toBe(before.mtime.getTime());
}

async function allReplicated(h: Harness, backups: FakeBackup[]): Promise<void> {
  // A scan already running when the backups were written is joined: wait for the copies it or the
  // watcher started, not for one scan.
  await h.reconcile();
  await eventually(async () => {
    for (const b of backups) if ((await readReceipt(h.local, b))?.status !== 'replicated') return false;
    return true;
  });
}

async function offsiteBackupIds(env: TestEnv, projectId: string): Promise<string[]> {
  const store = createOffsiteStore(env.config);
  const ids = new Set<string>();
  for await (const o of store.list(`${projectId}/`)) ids.add(path.basename(o.key).split('.')[0]!);
  return [...ids].sort();
}

describe('rotating re-hash', () => {
  it('finds a flipped byte (mtime kept) in an old retained local dump; the newest stays valid; another process sees it', async () => {
    const env = await testEnv({});
    const projectId = newProjectId();
    const backups: FakeBackup[] = [];
    for (const age of [30, 20, 10, 0])
      backups.push(await agedBackup(env.config.FLUX_BACKUPS_LOCAL_DIR, projectId, age));
    const h = await harness(env);
    await allReplicated(h, backups);
    // Another process (verify, the CLI's dump) has validated every dump and cached it by size and mtime.
    const otherCache = path.join(env.root, 'other-artifacts.json');
    const other = createCatalog({ root: h.local, cacheFile: otherCache });
    for (const e of await other.list(projectId)) expect((await other.checkArtifact(e)).status).toBe('valid');
    // Saved (batched) before anything else happens: later checks answer from it and write nothing.
    await eventually(async () => (await stat(otherCache).catch(() => undefined))?.isFile());
    const old = backups[1]!; // 20 days old: not the newest, not the oldest
    await flipByte(old.dump);
    for (const e of await other.list(projectId)) expect((await other.checkArtifact(e)).status).toBe('valid');

    const summary = await h.sweep();
    expect(summary.rehashedCopies).toContain(`local:${projectId}/${old.backupId}`);
    expect(summary.invalid).toEqual([
      { place: 'local', projectId, backupId: old.backupId, reason: 'sha256_mismatch' },
    ]);
    // The other process's catalog now says invalid for that one backup, through the API row too.
    for (const e of await other.list(projectId)) {
      const check = await other.checkArtifact(e);
      expect(check.status, e.backupId).toBe(e.backupId === old.backupId ? 'invalid' : 'valid');
      if (e.backupId === old.backupId)
        expect(other.toApi(e, check).artifactValidationStatus).toBe('artifact_invalid');
    }
    const newest = (await other.list(projectId))[0]!;
    expect(newest.backupId).toBe(backups[3]!.backupId);
    expect(newest.rehash).toBeUndefined();
    await h.drained();
    const events = receiver.events('flux.backup.artifact_invalid');
    expect(events.map((e) => e.subject)).toEqual([`${projectId}/${old.backupId}`]);
    expect(events[0]!.data).toMatchObject({ expectedSha256: old.sha256, reason: 'sha256_mismatch' });
    const metrics = await (await h.fn.app.request('/metrics')).text();
    expect(metricValue(metrics, 'flux_rehash_invalid_copies', { place: 'local' })).toBe(1);
    expect(metricValue(metrics, 'flux_rehash_copies_total', { place: 'local', result: 'mismatch' })).toBe(1);
    // The same finding again next sweep: no second alarm. The byte put back: valid again, finding removed.
    await h.sweep();
    await h.drained();
    expect(receiver.events('flux.backup.artifact_invalid')).toHaveLength(1);
    await flipByte(old.dump);
    await h.sweep();
    const again = (await other.list(projectId)).find((e) => e.backupId === old.backupId)!;
    expect(again.rehash).toBeUndefined();
    expect((await other.checkArtifact(again)).status).toBe('valid');
  });

  it('finds a flipped byte in an offsite copy: the receipt and offsite status flip, reconcile leaves it, moved aside it is copied again', async () => {
    const env = await testEnv({});
    const projectId = newProjectId();
    const backups = [
      await agedBackup(env.config.FLUX_BACKUPS_LOCAL_DIR, projectId, 5),
      await agedBackup(env.config.FLUX_BACKUPS_LOCAL_DIR, projectId, 1),
    ];
    const h = await harness(env);
    await allReplicated(h, backups);
    const old = backups[0]!;
    const object = path.join(
      env.config.FLUX_BACKUPS_OFFSITE_DIR,
      ...dumpKeyOf(projectId, old.backupId).split('/'),
    );
    await flipByte(object, 7);
    const summary = await h.sweep();
    expect(summary.invalid).toEqual([
      { place: 'offsite', projectId, backupId: old.backupId, reason: 'sha256_mismatch' },
    ]);
    expect(await readReceipt(h.local, old)).toMatchObject({ status: 'failed', reason: 'offsite_invalid' });
    expect((await readReceipt(h.local, backups[1]!))?.status).toBe('replicated');
    const entry = (await h.rt.catalog.get(projectId, old.backupId))!;
    expect(h.rt.catalog.toApi(entry, await h.rt.catalog.checkArtifact(entry)).offsiteStatus).toBe('failed');
    await h.drained();
    const events = receiver.events('flux.backup.offsite_invalid');
    expect(events.map((e) => e.subject)).toEqual([`${projectId}/${old.backupId}`]);
    // The altered object is never overwritten by a reconcile…
    await h.reconcile();
    expect(await readReceipt(h.local, old)).toMatchObject({ status: 'failed', reason: 'offsite_invalid' });
    expect(receiver.events('flux.backup.replication_failed')).toHaveLength(0);
    // …once moved aside, the next reconcile copies the local backup again.
    await rm(object, { force: true });
    await h.reconcile();
    // The scan answers once it has asked for the copy; the copy and its receipt follow.
    expect(
      await eventually(async () => (await readReceipt(h.local, old))?.status === 'replicated', 30_000),
    ).toBe(true);
  });

  it('re-hashes an offsite copy that outlived its local backup, against what was known of it, and lists it in status', async () => {
    const env = await testEnv({});
    const projectId = newProjectId();
    const local = env.config.FLUX_BACKUPS_LOCAL_DIR;
    const backups = [await agedBackup(local, projectId, 30), await agedBackup(local, projectId, 1)];
    const h = await harness(env);
    await allReplicated(h, backups);
    expect((await h.sweep()).invalid).toEqual([]);
    const old = backups[0]!;
    // Local retention removed it; only the offsite copy is left.
    await h.rt.catalog.remove(projectId, old.backupId);
    const object = path.join(
      env.config.FLUX_BACKUPS_OFFSITE_DIR,
      ...dumpKeyOf(projectId, old.backupId).split('/'),
    );
    await flipByte(object, 3);
    const summary = await h.sweep();
    expect(summary.rehashedCopies).toContain(`offsite:${projectId}/${old.backupId}`);
    expect(summary.invalid).toEqual([
      { place: 'offsite', projectId, backupId: old.backupId, reason: 'sha256_mismatch' },
    ]);
    const status = (await (
      await h.fn.app.request('/replicate/status', { headers: ADMIN.header })
    ).json()) as { upkeep: { invalidCopies: string[] } };
    expect(status.upkeep.invalidCopies).toEqual([`offsite:${projectId}/${old.backupId}`]);
    await h.drained();
    const events = receiver.events('flux.backup.offsite_invalid');
    expect(events.map((e) => e.subject)).toEqual([`${projectId}/${old.backupId}`]);
    expect(events[0]!.data).toMatchObject({ expectedSha256: old.sha256 });
    // No local receipt was made up for a backup the local catalog no longer has.
    expect(await readReceipt(h.local, old)).toBeUndefined();
  });

  it('keeps its rotation across a restart: the next process reads the copies the last one did not', async () => {
    // Six copies of one size, a period of three sweeps: two copies a sweep.
    const env = await testEnv({ FLUX_REHASH_EVERY_MS: String(3 * 60 * 60 * 1000) });
    const projectId = newProjectId();
    const bytes = () => randomBytes(4096);
    const backups: FakeBackup[] = [];
    for (let i = 0; i < 3; i++)
      backups.push(await writeBackup(env.config.FLUX_BACKUPS_LOCAL_DIR, projectId, { bytes: bytes() }));
    const first = await harness(env);
    await allReplicated(first, backups);
    const one = await first.sweep();
    expect(one.rehashedCopies).toHaveLength(2);
    await first.stop();
    expect((await stat(path.join(env.config.FLUX_STATE_DIR, UPKEEP_STATE_FILE))).isFile()).toBe(true);
    const second = await harness(env);
    const two = await second.sweep();
    const three = await second.sweep();
    expect(two.rehashedCopies).toHaveLength(2);
    expect(three.rehashedCopies).toHaveLength(2);
    // Three sweeps over two processes read all six copies once each.
    const all = [...one.rehashedCopies, ...two.rehashedCopies, ...three.rehashedCopies];
    expect(new Set(all).size).toBe(6);
  });
});

describe.each(['fs', 's3'] as const)('offsite retention (%s)', (driver) => {
  const extra = () => (driver === 's3' ? s3Env() : {});

  /**
   * Newest first: 0 d pending, 2 d restore_failed, 40 d verified, 50 d verified, 60 d verified (still
   * local), 70 d verified. Local retention removed all but the 0 d, 2 d and 60 d ones locally.
   */
  async function scenario(h: Harness, projectId: string) {
    const local = h.local;
    const b = {
      d0: await agedBackup(local, projectId, 0),
      d2: await agedBackup(local, projectId, 2, 'restore_failed'),
      d40: await agedBackup(local, projectId, 40, 'restore_verified'),
      d50: await agedBackup(local, projectId, 50, 'restore_verified'),
      d60: await agedBackup(local, projectId, 60, 'restore_verified'),
      d70: await agedBackup(local, projectId, 70, 'restore_verified'),
    };
    await allReplicated(h, Object.values(b));
    // While every backup is local nothing offsite expires; replicate learns what each one is.
    expect((await h.sweep()).expired).toEqual([]);
    for (const gone of [b.d40, b.d50, b.d70]) await h.rt.catalog.remove(projectId, gone.backupId);
    return b;
  }

  it('removes exactly what the policy selects, keeps the newest restorable past KEEP_DAYS and every local backup’s copy', async () => {
    const env = await testEnv({ ...extra(), FLUX_OFFSITE_KEEP_COUNT: '1', FLUX_OFFSITE_KEEP_DAYS: '7' });
    const h = await harness(env);
    const projectId = newProjectId();
    const b = await scenario(h, projectId);
    const summary = await h.sweep();
    expect(summary.expired).toEqual([
      { projectId, backupId: b.d50.backupId },
      { projectId, backupId: b.d70.backupId },
    ]);
    const left = await offsiteBackupIds(env, projectId);
    expect(left).toEqual([b.d0, b.d2, b.d40, b.d60].map((x) => x.backupId).sort());
    await h.drained();
    const events = receiver.events('flux.backup.offsite_expired');
    expect(events.map((e) => e.subject).sort()).toEqual(
      [`${projectId}/${b.d50.backupId}`, `${projectId}/${b.d70.backupId}`].sort(),
    );
    expect(events[0]!.data).toMatchObject({
      reason: 'retention',
      store: createOffsiteStore(env.config).location,
    });
    const metrics = await (await h.fn.app.request('/metrics')).text();
    expect(metricValue(metrics, 'flux_offsite_expired_total')).toBe(2);
    // A second sweep finds nothing more to expire, and the local ones are untouched.
    expect((await h.sweep()).expired).toEqual([]);
    for (const x of [b.d0, b.d2, b.d60]) expect((await readReceipt(h.local, x))?.status).toBe('replicated');
  });

  it('removes nothing when the store is immutable, and says so', async () => {
    const env = await testEnv({
      ...extra(),
      FLUX_OFFSITE_KEEP_COUNT: '1',
      FLUX_OFFSITE_KEEP_DAYS: '7',
      FLUX_OFFSITE_IMMUTABLE: 'true',
    });
    const h = await harness(env);
    const projectId = newProjectId();
    const b = await scenario(h, projectId);
    expect((await h.sweep()).expired).toEqual([]);
    expect(await offsiteBackupIds(env, projectId)).toEqual(
      Object.values(b)
        .map((x) => x.backupId)
        .sort(),
    );
    const ready = (await (await h.fn.app.request('/readyz')).json()) as {
      checks: Record<string, { detail?: string }>;
    };
    expect(JSON.stringify(ready)).toContain('FLUX_OFFSITE_IMMUTABLE');
    expect(h.rt.logs.text()).toContain('FLUX_OFFSITE_IMMUTABLE');
    await h.drained();
    expect(receiver.events('flux.backup.offsite_expired')).toHaveLength(0);
  });
});
