// Artifact validation: hashed once per size+mtime, and the validation survives a restart.
import { mkdtemp, open, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from '../../test/support/runtime.js';
import { ensureDir, hashFile, writeFileAtomic } from '../atomic.js';
import { createCatalog } from './catalog.js';
import { newBackupId } from './ids.js';
import type { Manifest } from './records.js';

const projectId = '550e8400-e29b-41d4-a716-446655440000';
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'flux-catalog-'));
});
// A catalog's validation cache is saved 200 ms after its last check: retried until those saves are done.
afterAll(async () => rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }));

async function backupWithDump(
  root: string,
  backupId = newBackupId(),
  createdAt = new Date().toISOString(),
): Promise<{ backupId: string; dump: string }> {
  const catalog = createCatalog({ root });
  const paths = catalog.paths(projectId, backupId);
  await ensureDir(paths.dir);
  await writeFileAtomic(paths.dump, Buffer.alloc(256 * 1024, 7));
  const { sizeBytes, sha256 } = await hashFile(paths.dump);
  const now = createdAt;
  const manifest: Manifest = {
    manifestVersion: 1,
    backupId,
    projectId,
    projectHash: '550e840',
    slug: 'p',
    kind: 'project_db',
    format: 'custom',
    file: `${backupId}.dump`,
    sizeBytes,
    sha256,
    createdAt: now,
    completedAt: now,
    source: {
      engine: 'v1_dedicated',
      host: 'h',
      port: 5432,
      database: 'd',
      systemIdentifier: '1',
      serverVersion: '15',
      serverVersionNum: 150000,
    },
    pgDump: { version: '15', major: 15, flags: [] },
    snapshot: { id: 's', isolation: 'repeatable read', takenAt: now },
    schemas: [],
    tables: [],
    sequences: [],
    extensions: [],
    roles: [],
  };
  await catalog.writeManifest(manifest);
  await utimes(paths.dump, ROUND_TIME, ROUND_TIME);
  return { backupId, dump: paths.dump };
}

/** Changes one byte in place and puts the old mtime back: only a re-hash can notice. */
/** Two backups with UUID ids whose order is the reverse of their creation times (the older has the higher id). */
async function uuidPair(root: string) {
  const older = await backupWithDump(
    root,
    'ffffffff-0000-4000-8000-000000000000',
    '2026-01-01T00:00:00.000Z',
  );
  const newer = await backupWithDump(
    root,
    '00000000-0000-4000-8000-000000000000',
    '2026-01-02T00:00:00.000Z',
  );
  return { older, newer };
}

async function tamperKeepingStat(file: string): Promise<void> {
  const handle = await open(file, 'r+');
  await handle.write(Buffer.from([8]), 0, 1, 100);
  await handle.close();
  await utimes(file, ROUND_TIME, ROUND_TIME);
}

/** A whole-second mtime, so putting it back is exact. */
const ROUND_TIME = 1_790_000_000;

describe('artifact validation cache', () => {
  it('a restarted catalog reuses the saved validation instead of re-hashing every dump', async () => {
    const root = path.join(dir, 'restart');
    const cacheFile = path.join(dir, 'state', 'restart-artifacts.json');
    const { backupId, dump } = await backupWithDump(root);
    const first = createCatalog({ root, cacheFile });
    expect(await first.checkArtifact((await first.get(projectId, backupId))!)).toEqual({ status: 'valid' });
    await eventually(async () => (await stat(cacheFile).catch(() => undefined))?.isFile());
    await tamperKeepingStat(dump);
    // Same size and mtime: the saved validation answers (a re-hash would say invalid).
    const second = createCatalog({ root, cacheFile });
    expect(await second.checkArtifact((await second.get(projectId, backupId))!)).toEqual({ status: 'valid' });
    // Without the saved validation the same bytes are hashed and found changed.
    const fresh = createCatalog({ root });
    expect((await fresh.checkArtifact((await fresh.get(projectId, backupId))!)).status).toBe('invalid');
  });

  it('a changed mtime makes the next check re-hash', async () => {
    const root = path.join(dir, 'mtime');
    const cacheFile = path.join(dir, 'state', 'mtime-artifacts.json');
    const { backupId, dump } = await backupWithDump(root);
    const catalog = createCatalog({ root, cacheFile });
    expect((await catalog.checkArtifact((await catalog.get(projectId, backupId))!)).status).toBe('valid');
    const handle = await open(dump, 'r+');
    await handle.write(Buffer.from([9]), 0, 1, 100);
    await handle.close();
    await utimes(dump, new Date(), new Date(Date.now() + 5_000));
    expect((await catalog.checkArtifact((await catalog.get(projectId, backupId))!)).status).toBe('invalid');
  });
});

describe('the re-hash finding (.rehash.json, written by replicate)', () => {
  it('makes a cached-valid dump invalid while size and mtime are the ones it read, and only then', async () => {
    const root = path.join(dir, 'rehash');
    const { backupId, dump } = await backupWithDump(root);
    const catalog = createCatalog({ root, cacheFile: path.join(dir, 'state', 'rehash-artifacts.json') });
    expect((await catalog.checkArtifact((await catalog.get(projectId, backupId))!)).status).toBe('valid');
    const s = await stat(dump);
    const finding = {
      backupId,
      projectId,
      manifestSha256: (await catalog.get(projectId, backupId))!.manifest!.sha256,
      foundSha256: 'f'.repeat(64),
      sizeBytes: s.size,
      mtimeMs: s.mtimeMs,
      at: new Date().toISOString(),
    };
    await catalog.writeRehashRecord(projectId, backupId, finding);
    const flagged = await catalog.checkArtifact((await catalog.get(projectId, backupId))!);
    expect(flagged.status).toBe('invalid');
    expect(flagged.error).toContain('ffffffffffff');
    // A finding about other bytes (the file was replaced since: another mtime) is not taken.
    await catalog.writeRehashRecord(projectId, backupId, { ...finding, mtimeMs: s.mtimeMs - 1000 });
    expect((await catalog.checkArtifact((await catalog.get(projectId, backupId))!)).status).toBe('valid');
    await catalog.writeRehashRecord(projectId, backupId, undefined);
    expect((await catalog.get(projectId, backupId))!.rehash).toBeUndefined();
    // A lone finding is no backup, and remove() takes it with the rest.
    await catalog.writeRehashRecord(projectId, backupId, finding);
    await catalog.remove(projectId, backupId);
    expect(await catalog.list(projectId)).toEqual([]);
    expect(await stat(catalog.paths(projectId, backupId).rehash).catch(() => undefined)).toBeUndefined();
  });
});

describe("the destructive gates' proof (checkArtifact 'rehash')", () => {
  it('reads every byte: a flipped byte with its mtime kept is invalid at once, and every list then says so', async () => {
    const root = path.join(dir, 'gate');
    const { backupId, dump } = await backupWithDump(root);
    const catalog = createCatalog({ root });
    expect((await catalog.checkArtifact((await catalog.get(projectId, backupId))!)).status).toBe('valid');
    await tamperKeepingStat(dump);
    // The cheap check keeps its cached answer (same size and mtime) ...
    expect((await catalog.checkArtifact((await catalog.get(projectId, backupId))!)).status).toBe('valid');
    // ... the gate's does not, and what it read replaces the cached hash.
    const gate = await catalog.checkArtifact((await catalog.get(projectId, backupId))!, 'rehash');
    expect(gate.status).toBe('invalid');
    expect((await catalog.checkArtifact((await catalog.get(projectId, backupId))!)).status).toBe('invalid');
    expect((await catalog.trust(projectId, 'p', new Date(), { proof: 'rehash' })).tier).toBe(
      'pipeline_incomplete',
    );
  });

  it('a healthy dump passes the gate as often as it is asked', async () => {
    const root = path.join(dir, 'gate-healthy');
    const { backupId } = await backupWithDump(root);
    const catalog = createCatalog({ root });
    for (let i = 0; i < 3; i++)
      expect(await catalog.checkArtifact((await catalog.get(projectId, backupId))!, 'rehash')).toEqual({
        status: 'valid',
      });
  });
});

describe('per-copy verify receipts', () => {
  const receipt = (backupId: string, sha256: string, source: 'local' | 'offsite', passed: boolean) => {
    const now = new Date().toISOString();
    return {
      backupId,
      projectId,
      status: passed ? ('restore_verified' as const) : ('restore_failed' as const),
      sha256,
      source,
      driver: 'local',
      versions: {},
      rungs: [],
      stages: {},
      startedAt: now,
      finishedAt: now,
      seconds: 1,
      reason: passed ? 'passed' : 'volume_mismatch',
      ...(passed ? {} : { error: 'row counts differ' }),
    };
  };
  const KEY = 'whsec_' + Buffer.alloc(32, 3).toString('base64');

  it('each copy keeps its own receipt, tagged as its own kind; one file renamed to the other is not believed', async () => {
    const root = path.join(dir, 'copies');
    const { backupId } = await backupWithDump(root);
    const catalog = createCatalog({ root, keys: { secrets: [KEY], allowUnsigned: true } });
    const sha = (await catalog.get(projectId, backupId))!.manifest!.sha256;
    await catalog.writeVerifyReceipt(receipt(backupId, sha, 'local', false));
    await catalog.writeVerifyReceipt(receipt(backupId, sha, 'offsite', true));
    const entry = (await catalog.get(projectId, backupId))!;
    expect(entry.verify).toMatchObject({ source: 'local', status: 'restore_failed' });
    expect(entry.verifyOffsite).toMatchObject({ source: 'offsite', status: 'restore_verified' });
    const row = catalog.toApi(entry, await catalog.checkArtifact(entry));
    expect(row.verifiedCopies).toEqual(['offsite']);
    expect(row.copyVerifications).toMatchObject({
      local: { status: 'restore_failed', error: 'row counts differ', proven: false },
      offsite: { status: 'restore_verified', error: null, proven: true },
    });
    const trust = await catalog.trust(projectId, 'p');
    expect(trust.tier).toBe('restorable');
    expect(trust.message).toMatch(/proven: the offsite copy; the local copy failed its verification/);

    // The local copy's passing receipt put where the offsite one lies: its tag is of another kind.
    const { copyFile } = await import('node:fs/promises');
    await catalog.writeVerifyReceipt(receipt(backupId, sha, 'local', true));
    await copyFile(entry.paths.verify, entry.paths.verifyOffsite);
    const swapped = (await catalog.get(projectId, backupId))!;
    expect(swapped.verifyOffsite).toBeUndefined();
    expect(swapped.findings).toEqual([
      expect.objectContaining({ code: 'receipt_not_authentic', file: 'verifyOffsite' }),
    ]);
    await catalog.remove(projectId, backupId);
    expect(await stat(entry.paths.verifyOffsite).catch(() => undefined)).toBeUndefined();
  });

  it('trust reads back from the newest only as far as it needs; findings it did not read again stay shown', async () => {
    const root = path.join(dir, 'history');
    const made: string[] = [];
    for (let i = 0; i < 12; i++) made.push((await backupWithDump(root)).backupId);
    const newest = made.at(-1)!;
    const setup = createCatalog({ root });
    // Every older manifest names another backup: reading one reports a finding, so a read shows.
    for (const backupId of made.slice(0, -1)) {
      const file = setup.paths(projectId, backupId).manifest;
      const manifest = JSON.parse(await readFile(file, 'utf8')) as Manifest;
      await writeFile(file, JSON.stringify({ ...manifest, backupId: newest }));
    }
    const sha = (await setup.get(projectId, newest))!.manifest!.sha256;
    await setup.writeVerifyReceipt(receipt(newest, sha, 'local', true));

    const seen: string[] = [];
    const catalog = createCatalog({ root, onFinding: (f) => seen.push(f.backupId) });
    const first = await catalog.trust(projectId, 'p');
    expect(first).toMatchObject({ tier: 'restorable', backupId: newest });
    expect(first.freshness).toMatchObject({ freshness: 'fresh', backupId: newest });
    // Only the newest batch was read: not every backup of the project's history.
    expect(seen.length).toBeLessThan(made.length - 1);
    expect(seen.every((id) => made.slice(-4).includes(id))).toBe(true);

    // A list reads them all; from then on trust shows every finding, newest first, until a backup goes.
    expect(await catalog.list(projectId)).toHaveLength(made.length);
    expect(new Set(seen)).toEqual(new Set(made.slice(0, -1)));
    const second = await catalog.trust(projectId, 'p');
    expect(second.findings?.map((f) => f.backupId)).toEqual(made.slice(0, -1).reverse());
    expect(second.findings?.every((f) => f.code === 'manifest_misplaced')).toBe(true);
    await catalog.remove(projectId, made[0]!);
    expect((await catalog.trust(projectId, 'p')).findings).toHaveLength(made.length - 2);
    // One put right behind the catalog's back: trust reads it again and the finding is gone.
    const fixed = setup.paths(projectId, made[1]!).manifest;
    const wrong = JSON.parse(await readFile(fixed, 'utf8')) as Manifest;
    await writeFile(fixed, JSON.stringify({ ...wrong, backupId: made[1] }));
    const third = await catalog.trust(projectId, 'p');
    expect(third.findings?.map((f) => f.backupId)).not.toContain(made[1]);
    expect(third.findings).toHaveLength(made.length - 3);
  });

  it('a page of the list reads only what it shows (and one more, for the next cursor)', async () => {
    const root = path.join(dir, 'pages');
    const made: string[] = [];
    for (let i = 0; i < 9; i++) made.push((await backupWithDump(root)).backupId);
    const newestFirst = [...made].reverse();
    const setup = createCatalog({ root });
    // Every manifest names another backup: reading one reports a finding, so each read shows.
    for (const backupId of made) {
      const file = setup.paths(projectId, backupId).manifest;
      const manifest = JSON.parse(await readFile(file, 'utf8')) as Manifest;
      await writeFile(
        file,
        JSON.stringify({ ...manifest, backupId: made[0] === backupId ? made[1] : made[0] }),
      );
    }
    const seen = new Set<string>();
    const catalog = createCatalog({ root, onFinding: (f) => seen.add(f.backupId) });
    const first = await catalog.page(projectId, { limit: 2 });
    expect(first.entries.map((e) => e.backupId)).toEqual(newestFirst.slice(0, 2));
    expect(first.next).toBe(newestFirst[1]);
    expect([...seen].sort()).toEqual(newestFirst.slice(0, 3).sort());
    const pages = [first.entries.map((e) => e.backupId)];
    for (let next = first.next; next; ) {
      const page = await catalog.page(projectId, { limit: 4, before: next });
      pages.push(page.entries.map((e) => e.backupId));
      next = page.next;
    }
    // Every backup once, in list() order, and the last page says there is no next.
    expect(pages).toEqual([newestFirst.slice(0, 2), newestFirst.slice(2, 6), newestFirst.slice(6)]);
    expect((await catalog.list(projectId)).map((e) => e.backupId)).toEqual(newestFirst);
  });

  it('a catalog holding UUID ids pages in list() order and refuses a cursor it does not hold', async () => {
    const root = path.join(dir, 'uuid-pages');
    const { older, newer } = await uuidPair(root);
    const catalog = createCatalog({ root });
    const first = await catalog.page(projectId, { limit: 1 });
    expect(first).toMatchObject({ entries: [{ backupId: newer.backupId }], next: newer.backupId });
    const second = await catalog.page(projectId, { limit: 1, before: newer.backupId });
    expect(second).toMatchObject({ entries: [{ backupId: older.backupId }], next: null });
    await expect(
      catalog.page(projectId, { limit: 1, before: '11111111-0000-4000-8000-000000000000' }),
    ).rejects.toMatchObject({ code: 'not_found' });
  });

  it('a catalog holding UUID ids (not sortable by time) is read whole: the newest is by creation time', async () => {
    const root = path.join(dir, 'uuids');
    const { older, newer } = await uuidPair(root);
    const catalog = createCatalog({ root });
    const sha = (await catalog.get(projectId, older.backupId))!.manifest!.sha256;
    await catalog.writeVerifyReceipt(receipt(older.backupId, sha, 'local', true));
    const trust = await catalog.trust(projectId, 'p', new Date('2026-01-02T01:00:00.000Z'));
    // The newer one (the lower id) gives the tier; the older restorable one the freshness.
    expect(trust).toMatchObject({ tier: 'not_restore_verified', backupId: newer.backupId });
    expect(trust.freshness).toMatchObject({ backupId: older.backupId });
  });

  it('a kept directory listing is dropped the moment the directory changes: a new backup is the newest', async () => {
    const root = path.join(dir, 'listing');
    const first = await backupWithDump(root);
    const catalog = createCatalog({ root });
    const projectDirectory = path.dirname(first.dump);
    // Still for an hour: the listing is kept.
    const anHourAgo = new Date(Date.now() - 3_600_000);
    await utimes(projectDirectory, anHourAgo, anHourAgo);
    expect((await catalog.trust(projectId, 'p')).backupId).toBe(first.backupId);
    const second = await backupWithDump(root);
    expect((await catalog.trust(projectId, 'p')).backupId).toBe(second.backupId);
    expect(await catalog.list(projectId)).toHaveLength(2);
  });
});
