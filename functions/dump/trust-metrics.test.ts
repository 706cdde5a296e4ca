// dump starts without walking the catalog: its first computation of the backup metrics runs in the
// background, and a scrape that comes before it is done waits for it. Shown with a manifest that is a
// FIFO, so reading it blocks until the test writes it: start() returns while the computation is stuck
// there, and the scrape answers once it is released, with the series.
import { createHash, randomUUID } from 'node:crypto';
import { open, rename, rm, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { ensureDir } from '../../shared/atomic.js';
import { newBackupId } from '../../shared/catalog/ids.js';
import { backupPaths } from '../../shared/catalog/layout.js';
import { createEvent } from '../../shared/events/envelope.js';
import type { Project } from '../../shared/registry.js';
import { fakeManifest, fakeVerifyReceipt } from '../../test/replicate-fixtures.js';
import { makeTestEnv, signedEvent, testRuntime } from '../../test/support/runtime.js';
import { createApp } from './app.js';

/** A project dump never connects to here: only its catalog is read. */
function dedicatedProject(slug: string): Project {
  const id = randomUUID();
  return {
    id,
    hash: id.replaceAll('-', '').slice(0, 7),
    slug,
    engine: 'v1_dedicated',
    databaseUrl: 'env:UNUSED_URL',
  } as Project;
}

describe('backup metrics at start-up', () => {
  it('start() does not wait for the catalog; the first scrape waits for the first computation', async () => {
    const env = await makeTestEnv();
    const project = dedicatedProject('slow-catalog');
    const { id } = project;
    const backupId = newBackupId();
    const paths = backupPaths(env.config.FLUX_BACKUPS_LOCAL_DIR, id, backupId);
    await ensureDir(paths.dir);
    await execa('mkfifo', [paths.manifest]);
    const fn = createApp(testRuntime('dump', env, { projects: [project] }));
    let writer: Awaited<ReturnType<typeof open>> | undefined;
    try {
      await fn.start();
      // Listening while the computation is held at the FIFO: health answers.
      expect((await fn.app.request('/healthz')).status).toBe(200);
      let scraped = false;
      const scrape = Promise.resolve(fn.app.request('/metrics')).then(async (res) => {
        scraped = true;
        return res.text();
      });
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(scraped).toBe(false);
      // Opening the writer releases the reader held at the FIFO; a plain manifest then takes the FIFO's
      // place, so every later read of it finds the file.
      const manifest = JSON.stringify(fakeManifest(id, backupId, { sizeBytes: 1, sha256: 'a'.repeat(64) }));
      writer = await open(paths.manifest, 'w');
      await writeFile(`${paths.manifest}.plain`, manifest);
      await rename(`${paths.manifest}.plain`, paths.manifest);
      await writer.write(manifest);
      await writer.close();
      writer = undefined;
      const text = await scrape;
      expect(text).toMatch(/flux_backup_count\{project="slow-catalog"\} 1/);
      expect(text).toMatch(/flux_backup_fleet_projects 1/);
    } finally {
      await writer?.close();
      await fn.stop();
      await env.cleanup();
    }
  });

  it('a receipt event recomputes the tier from the newest backups without reading the history', async () => {
    const env = await makeTestEnv();
    const project = dedicatedProject('long-history');
    const { id } = project;
    const rt = testRuntime('dump', env, { projects: [project] });
    const fn = createApp(rt);
    const root = env.config.FLUX_BACKUPS_LOCAL_DIR;
    const write = async (backupId: string) => {
      const paths = backupPaths(root, id, backupId);
      await ensureDir(paths.dir);
      await writeFile(paths.dump, backupId);
      const sha256 = createHash('sha256').update(backupId).digest('hex');
      await writeFile(paths.manifest, JSON.stringify(fakeManifest(id, backupId, { sizeBytes: 26, sha256 })));
      return { paths, sha256 };
    };
    const older = newBackupId(Date.now() - 60_000);
    await write(older);
    const newest = newBackupId();
    const { paths, sha256 } = await write(newest);
    const metrics = async () => (await fn.app.request('/metrics')).text();
    try {
      await fn.start();
      expect(await metrics()).toMatch(
        /flux_backup_trust_tier\{project="long-history",tier="not_restore_verified"\} 1/,
      );
      // The older backup's manifest now blocks whoever reads it: a read of the history would hang.
      const olderManifest = backupPaths(root, id, older).manifest;
      await rm(olderManifest);
      await execa('mkfifo', [olderManifest]);
      await writeFile(paths.verify, JSON.stringify(fakeVerifyReceipt(id, newest, sha256)));
      const verified = await fn.app.request(
        '/events',
        signedEvent(
          createEvent({
            type: 'flux.backup.verified',
            source: '/flux-ops/verify',
            subject: `${id}/${newest}`,
            data: { projectId: id, backupId: newest, driver: 'local', sha256, rungs: [], seconds: 1 },
          }),
        ),
      );
      expect(verified.status).toBe(202);
      const text = await metrics();
      expect(text).toMatch(/flux_backup_trust_tier\{project="long-history",tier="restorable"\} 1/);
      expect(text).toMatch(/flux_backup_count\{project="long-history"\} 2/);
    } finally {
      await rm(backupPaths(root, id, older).manifest, { force: true });
      await fn.stop();
      await env.cleanup();
    }
  });
});
