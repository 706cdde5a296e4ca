// Chooses the offsite driver from FLUX_BACKUPS_OFFSITE_DIR: a directory today; `s3://bucket/prefix`
// selects the S3-compatible driver once it exists. Callers only ever hold an OffsiteStore.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config.js';
import { AppError } from '../errors.js';
import { createFsOffsiteStore } from './fs.js';
import type { OffsiteStore } from './types.js';

export type { OffsiteObject, OffsiteStore, PutOptions, PutOutcome, PutResult } from './types.js';

const SCHEME_RE = /^([a-z][a-z0-9+.-]*):\/\//i;

export function createOffsiteStore(config: Pick<Config, 'FLUX_BACKUPS_OFFSITE_DIR'>): OffsiteStore {
  const target = config.FLUX_BACKUPS_OFFSITE_DIR;
  const scheme = SCHEME_RE.exec(target)?.[1]?.toLowerCase();
  if (scheme === 's3') {
    throw new AppError(
      'config_invalid',
      'FLUX_BACKUPS_OFFSITE_DIR=s3://… selects the S3-compatible offsite driver, which is not available in ' +
        'this build yet: set FLUX_BACKUPS_OFFSITE_DIR to a directory (another disk or a mounted volume) for now',
      { details: { variable: 'FLUX_BACKUPS_OFFSITE_DIR', driver: 's3' } },
    );
  }
  if (scheme === 'file') return createFsOffsiteStore({ root: fileURLToPath(target) });
  if (scheme) {
    throw new AppError(
      'config_invalid',
      `FLUX_BACKUPS_OFFSITE_DIR uses the unknown scheme "${scheme}://": use a directory path or s3://bucket/prefix`,
      { details: { variable: 'FLUX_BACKUPS_OFFSITE_DIR' } },
    );
  }
  return createFsOffsiteStore({ root: path.resolve(target) });
}
