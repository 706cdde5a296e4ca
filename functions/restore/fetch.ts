// The backup's bytes as a file pg_restore can read: the local catalog file, re-hashed against the
// manifest first, or the offsite copy streamed into a work file under FLUX_STATE_DIR, hashed on the way and refused
// (the file removed) on any difference from the manifest.
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ensureDir, hashFile, STREAM_CHUNK_BYTES } from '../../shared/atomic.js';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { AppError, errnoOf, fsWriteError } from '../../shared/errors.js';
import type { AgeIdentities } from '../../shared/offsite/age.js';
import { checkedStream, openArtifact } from '../../shared/offsite/artifact.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';

export interface FetchedArtifact {
  file: string;
  location: string;
  bytes: number;
  /** Removes the work file (nothing for a local catalog file). */
  discard(): Promise<void>;
}

export async function fetchArtifact(input: {
  entry: CatalogEntry | undefined;
  manifest: Manifest;
  source: 'local' | 'offsite';
  store: () => OffsiteStore;
  /** Opens an age-encrypted offsite copy (FLUX_BACKUP_AGE_IDENTITY_FILE). */
  identities?: AgeIdentities | undefined;
  workDir: string;
  restoreId: string;
  signal: AbortSignal;
  onBytes?: (bytes: number, total: number) => void;
}): Promise<FetchedArtifact> {
  const { manifest } = input;
  if (input.source === 'local') {
    if (!input.entry) throw new AppError('internal', 'a local restore needs the catalog entry');
    const file = input.entry.paths.dump;
    // Re-hashed now, not taken from a cached validation: size and mtime do not prove the bytes.
    let proof: { sha256: string; sizeBytes: number };
    try {
      proof = await hashFile(file, input.signal);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') {
        throw new AppError(
          'not_found',
          `the local dump of backup ${manifest.backupId} is missing: restore from the offsite copy with "source": "offsite" (flux-ops backup restore --source offsite)`,
        );
      }
      throw error;
    }
    if (proof.sha256 !== manifest.sha256 || proof.sizeBytes !== manifest.sizeBytes) {
      throw new AppError(
        'artifact_invalid',
        `the local dump of backup ${manifest.backupId} is ${proof.sizeBytes} B with sha256 ${proof.sha256.slice(0, 12)}…, not the manifest's ` +
          `${manifest.sizeBytes} B ${manifest.sha256.slice(0, 12)}…; refused, nothing was restored: restore from the offsite copy ("source": "offsite")`,
        { details: { artifactStatus: 'invalid' } },
      );
    }
    input.onBytes?.(manifest.sizeBytes, manifest.sizeBytes);
    return { file, location: file, bytes: manifest.sizeBytes, discard: async () => undefined };
  }
  const store = input.store();
  const artifact = await openArtifact(
    { projectId: manifest.projectId, backupId: manifest.backupId, manifest },
    'offsite',
    { store, identities: input.identities },
  );
  if (!artifact) {
    throw new AppError('not_found', `backup ${manifest.backupId} has no offsite copy in ${store.location}`);
  }
  if (artifact.sizeBytes !== manifest.sizeBytes) {
    throw new AppError(
      'artifact_invalid',
      `the offsite copy ${artifact.location} is ${artifact.sizeBytes} B but the manifest says ${manifest.sizeBytes} B; refused, nothing was restored`,
      { details: { source: 'offsite', sizeBytes: artifact.sizeBytes } },
    );
  }
  const file = path.join(input.workDir, `${input.restoreId}.dump`);
  try {
    await ensureDir(input.workDir);
  } catch (error) {
    throw fsWriteError(error, input.workDir, 'creating the restore work directory under FLUX_STATE_DIR');
  }
  const discard = () => rm(file, { force: true });
  let bytes = 0;
  const counter = new Transform({
    highWaterMark: STREAM_CHUNK_BYTES,
    transform(chunk: Buffer, _encoding, callback) {
      bytes += chunk.length;
      input.onBytes?.(bytes, manifest.sizeBytes);
      callback(null, chunk);
    },
  });
  try {
    await pipeline(
      checkedStream(
        await artifact.open(input.signal),
        artifact.expected,
        `offsite copy ${artifact.location}`,
      ),
      counter,
      createWriteStream(file, { mode: 0o600, highWaterMark: STREAM_CHUNK_BYTES }),
      { signal: input.signal },
    );
  } catch (error) {
    await discard().catch(() => undefined);
    const code = errnoOf(error);
    if (code === 'ENOSPC' || code === 'EACCES' || code === 'EPERM' || code === 'EROFS')
      throw fsWriteError(error, input.workDir, 'writing the offsite copy to the restore work directory');
    throw error;
  }
  return { file, location: artifact.location, bytes, discard };
}
