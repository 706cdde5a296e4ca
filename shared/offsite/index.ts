// Chooses the offsite driver from FLUX_BACKUPS_OFFSITE_DIR: a directory, or `s3://bucket/prefix` for an
// S3-compatible store (FLUX_S3_*). Callers only ever hold an OffsiteStore.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config.js';
import { AppError } from '../errors.js';
import { createFsOffsiteStore } from './fs.js';
import { createS3OffsiteStore, parseS3Url } from './s3.js';
import type { OffsiteStore } from './types.js';

export type { OffsiteObject, OffsiteStore, PutOptions, PutOutcome, PutResult } from './types.js';

const SCHEME_RE = /^([a-z][a-z0-9+.-]*):\/\//i;

export type OffsiteConfig = Pick<Config, 'FLUX_BACKUPS_OFFSITE_DIR'> &
  Partial<
    Pick<
      Config,
      | 'FLUX_S3_ENDPOINT'
      | 'FLUX_S3_REGION'
      | 'FLUX_S3_FORCE_PATH_STYLE'
      | 'FLUX_S3_ACCESS_KEY_ID'
      | 'FLUX_S3_SECRET_ACCESS_KEY'
    >
  >;

/** The S3 store FLUX_* describes; a half-configured one is refused (never a silent local fallback). */
function createS3FromConfig(config: OffsiteConfig): OffsiteStore {
  const target = parseS3Url(config.FLUX_BACKUPS_OFFSITE_DIR);
  const missing = (['FLUX_S3_ACCESS_KEY_ID', 'FLUX_S3_SECRET_ACCESS_KEY'] as const).filter((v) => !config[v]);
  if (missing.length > 0) {
    throw new AppError(
      'config_invalid',
      `FLUX_BACKUPS_OFFSITE_DIR=s3://… needs ${missing.join(' and ')}; no offsite copy is made without them ` +
        '(there is no fallback to a local directory)',
      { details: { variable: 'FLUX_BACKUPS_OFFSITE_DIR', missing } },
    );
  }
  const endpoint = config.FLUX_S3_ENDPOINT;
  if (endpoint !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(endpoint);
    } catch {
      url = undefined;
    }
    if (!url || !/^https?:$/.test(url.protocol) || url.username || url.password) {
      throw new AppError(
        'config_invalid',
        'FLUX_S3_ENDPOINT must be an http(s) URL without credentials, e.g. https://s3.eu-central-003.backblazeb2.com',
        { details: { variable: 'FLUX_S3_ENDPOINT' } },
      );
    }
  }
  return createS3OffsiteStore({
    ...target,
    endpoint,
    region: config.FLUX_S3_REGION,
    forcePathStyle: config.FLUX_S3_FORCE_PATH_STYLE ?? false,
    accessKeyId: config.FLUX_S3_ACCESS_KEY_ID!,
    secretAccessKey: config.FLUX_S3_SECRET_ACCESS_KEY!,
  });
}

export function createOffsiteStore(config: OffsiteConfig): OffsiteStore {
  const target = config.FLUX_BACKUPS_OFFSITE_DIR;
  const scheme = SCHEME_RE.exec(target)?.[1]?.toLowerCase();
  if (scheme === 's3') return createS3FromConfig(config);
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

/** The offsite store, built on first use: a process that never reads offsite never connects. */
export function lazyOffsiteStore(config: OffsiteConfig): () => OffsiteStore {
  let store: OffsiteStore | undefined;
  return () => {
    store ??= createOffsiteStore(config);
    return store;
  };
}
