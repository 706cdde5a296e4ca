import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { offsiteStoreContract } from '../../test/support/offsite-contract.js';
import { isAppError } from '../errors.js';
import { createFsOffsiteStore } from './fs.js';
import { createOffsiteStore } from './index.js';

offsiteStoreContract('fs', async () => {
  const root = await mkdtemp(path.join(tmpdir(), 'flux-offsite-contract-'));
  const store = createFsOffsiteStore({ root: path.join(root, 'store') });
  return {
    store,
    async tamper(key, bytes) {
      const file = path.join(root, 'store', ...key.split('/'));
      await chmod(file, 0o640);
      await writeFile(file, bytes);
    },
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
});

const sha256Of = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe('fs offsite driver', () => {
  it('reports an unwritable root (a path under a regular file) as dir_not_writable, naming the variable', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'flux-offsite-fs-'));
    try {
      await writeFile(path.join(root, 'not-a-dir'), 'x');
      const store = createFsOffsiteStore({ root: path.join(root, 'not-a-dir', 'offsite') });
      const bytes = randomBytes(10);
      const error = await store
        .put('p/a.dump', Readable.from([bytes]), { sha256: sha256Of(bytes), sizeBytes: bytes.length })
        .catch((e: unknown) => e);
      expect(isAppError(error) && error.code).toBe('dir_not_writable');
      expect(String((error as Error).message)).toContain('FLUX_BACKUPS_OFFSITE_DIR');
      const check = await store.check();
      expect(check.ok).toBe(false);
      expect(check.detail).toContain('FLUX_BACKUPS_OFFSITE_DIR');
      expect(await store.head('p/a.dump')).toBeUndefined();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('stores objects read-only and sweeps only old temp leftovers', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'flux-offsite-fs-'));
    try {
      const store = createFsOffsiteStore({ root });
      const bytes = randomBytes(10);
      await store.put('p/a.dump', Readable.from([bytes]), {
        sha256: sha256Of(bytes),
        sizeBytes: bytes.length,
      });
      const { stat } = await import('node:fs/promises');
      expect((await stat(path.join(root, 'p', 'a.dump'))).mode & 0o777).toBe(0o440);
      const old = path.join(root, 'p', '.tmp-a.dump.0123456789ab');
      const fresh = path.join(root, 'p', '.tmp-b.dump.0123456789ab');
      await writeFile(old, 'partial');
      await writeFile(fresh, 'partial');
      const hourAgo = new Date(Date.now() - 3_600_000);
      await utimes(old, hourAgo, hourAgo);
      expect(await store.sweepTemp(60_000)).toBe(1);
      expect((await readdir(path.join(root, 'p'))).sort()).toEqual(['.tmp-b.dump.0123456789ab', 'a.dump']);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('selects the driver from FLUX_BACKUPS_OFFSITE_DIR; s3:// is refused clearly for now', () => {
    expect(createOffsiteStore({ FLUX_BACKUPS_OFFSITE_DIR: '/srv/offsite' }).driver).toBe('fs');
    expect(createOffsiteStore({ FLUX_BACKUPS_OFFSITE_DIR: 'file:///srv/offsite' }).location).toBe(
      '/srv/offsite',
    );
    for (const target of ['s3://bucket/prefix', 'gs://bucket']) {
      let error: unknown;
      try {
        createOffsiteStore({ FLUX_BACKUPS_OFFSITE_DIR: target });
      } catch (e) {
        error = e;
      }
      expect(isAppError(error) && error.code, target).toBe('config_invalid');
      expect(String((error as Error).message)).toContain('FLUX_BACKUPS_OFFSITE_DIR');
    }
  });
});
