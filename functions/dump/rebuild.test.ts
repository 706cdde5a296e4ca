// The catalog rebuild on a real fs store and a real catalog, no Postgres: what is added, kept, refused.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ensureDir } from '../../shared/atomic.js';
import { createCatalog } from '../../shared/catalog/catalog.js';
import { newBackupId } from '../../shared/catalog/ids.js';
import { signManifest } from '../../shared/catalog/manifest-auth.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { silentLogger } from '../../shared/log.js';
import { createRegistry } from '../../shared/metrics.js';
import { createFsOffsiteStore } from '../../shared/offsite/fs.js';
import { dumpKeyOf, manifestKeyOf } from '../../shared/offsite/keys.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import { fakeManifest, sha256Of } from '../../test/replicate-fixtures.js';
import { makeWebhookSecret } from '../../test/support/runtime.js';
import { createCatalogRebuilder } from './rebuild.js';

const projectId = '550e8400-e29b-41d4-a716-446655440000';
const key = makeWebhookSecret();
let dir: string;
let store: OffsiteStore;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'flux-rebuild-'));
  store = createFsOffsiteStore({ root: path.join(dir, 'offsite') });
});
afterEach(async () => rm(dir, { recursive: true, force: true }));

async function put(k: string, bytes: Buffer): Promise<void> {
  await store.put(k, Readable.from([bytes]), { sha256: sha256Of(bytes), sizeBytes: bytes.length });
}

/** A backup as replicate leaves it offsite: the dump, then its manifest (tagged unless `unsigned`). */
async function offsiteBackup(options: { unsigned?: boolean } = {}): Promise<Manifest> {
  const backupId = newBackupId();
  const bytes = Buffer.from(`dump of ${backupId}`);
  const facts = fakeManifest(projectId, backupId, { sizeBytes: bytes.length, sha256: sha256Of(bytes) });
  const manifest = options.unsigned ? facts : signManifest(facts, [key]);
  await put(dumpKeyOf(projectId, backupId), bytes);
  await put(manifestKeyOf(projectId, backupId), Buffer.from(JSON.stringify(manifest)));
  return manifest;
}

function rebuilder(secrets: string[] = [key]) {
  const catalog = createCatalog({ root: path.join(dir, 'local') });
  const r = createCatalogRebuilder({
    catalog,
    store: () => store,
    log: silentLogger(),
    metrics: createRegistry({ defaultMetrics: false }),
    secrets,
  });
  return { catalog, ...r };
}

describe('catalog rebuild from the offsite manifests', () => {
  it('adds what is missing, keeps what is there, never replaces an unreadable local manifest', async () => {
    const [a, b, c] = [await offsiteBackup(), await offsiteBackup(), await offsiteBackup()];
    const { catalog, rebuild } = rebuilder();
    await catalog.writeManifest(a);
    const unreadable = catalog.paths(projectId, c.backupId).manifest;
    await ensureDir(path.dirname(unreadable));
    await writeFile(unreadable, '{ not json');
    const summary = await rebuild();
    expect(summary.manifests).toEqual({ added: 1, present: 1, conflicts: 1, invalid: 0 });
    expect(summary.added).toEqual([{ projectId, backupId: b.backupId, offsiteDump: 'replicated' }]);
    expect(summary.conflicts[0]?.reason).toMatch(/cannot be read/);
    expect(await readFile(unreadable, 'utf8')).toBe('{ not json');
    expect((await catalog.get(projectId, b.backupId))?.manifest).toEqual(b);
    expect((await catalog.get(projectId, b.backupId))?.dump).toBeUndefined();
    expect(summary.authentication).toBe('hmac-sha256');
  });

  it('with keys: an untagged manifest is refused unless allowUnsigned; without keys it says it checked nothing', async () => {
    const old = await offsiteBackup({ unsigned: true });
    const first = await rebuilder().rebuild();
    expect(first.manifests).toMatchObject({ added: 0, invalid: 1 });
    expect(first.invalid[0]).toMatchObject({
      backupId: old.backupId,
      reason: expect.stringMatching(/no authentication tag/),
    });
    const allowed = await rebuilder().rebuild({ allowUnsigned: true });
    expect(allowed.manifests).toMatchObject({ added: 1, invalid: 0 });

    await rm(path.join(dir, 'local'), { recursive: true, force: true });
    const unkeyed = await rebuilder([]).rebuild();
    expect(unkeyed.manifests).toMatchObject({ added: 1, invalid: 0 });
    expect(unkeyed.authentication).toBe('none');
    expect(unkeyed.warnings.join(' ')).toMatch(/FLUX_MANIFEST_SECRETS is not set/);
  });

  it('at start-up only projects whose local catalog is empty', async () => {
    const a = await offsiteBackup();
    await offsiteBackup();
    const { catalog, rebuild } = rebuilder();
    await catalog.writeManifest(a);
    const summary = await rebuild({ onlyEmpty: true });
    expect(summary).toMatchObject({ projects: 0, skippedProjects: 1, manifests: { added: 0 } });
  });
});
