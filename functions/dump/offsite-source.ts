// `GET …/backups/:backupId/download?source=offsite`: the same download, served from the offsite copy (a
// backup whose local file is gone is still restorable). Size from the store's HEAD, the manifest's
// checksum headers, and the bytes hashed on the way: a copy that is not the manifest's is cut short.
import { Readable } from 'node:stream';
import type { Context } from 'hono';
import type { Manifest } from '../../shared/catalog/records.js';
import { AppError } from '../../shared/errors.js';
import type { AgeIdentities } from '../../shared/offsite/age.js';
import { checkedStream, openArtifact, readOffsiteManifest } from '../../shared/offsite/artifact.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import type { Project } from '../../shared/registry.js';

export { parseArtifactSource } from '../../shared/offsite/artifact.js';

export { lazyOffsiteStore } from '../../shared/offsite/index.js';

export interface OffsiteDownload {
  store: OffsiteStore;
  project: Pick<Project, 'id' | 'slug'>;
  backupId: string;
  /** The local manifest when there is one; otherwise the one stored offsite is used. */
  manifest?: Manifest | undefined;
  /** Refuses a stored manifest that is not authentic (offsite-catalog.ts manifestCheckFor). */
  check?: (manifest: Manifest) => string | undefined;
  /** Opens an age-encrypted copy (FLUX_BACKUP_AGE_IDENTITY_FILE): the download is the plaintext dump. */
  identities?: AgeIdentities | undefined;
}

export async function downloadFromOffsite(c: Context, request: OffsiteDownload): Promise<Response> {
  const { store, project, backupId } = request;
  const manifest = request.manifest ?? (await readOffsiteManifest(store, project.id, backupId));
  if (!manifest) {
    throw new AppError(
      'not_found',
      `no complete backup ${backupId} for project ${project.slug}, locally or in ${store.location}`,
    );
  }
  // The stored manifest names the hash the bytes are held to: a forged one would vouch for forged bytes.
  const refused = request.manifest ? undefined : request.check?.(manifest);
  if (refused) {
    throw new AppError(
      'artifact_invalid',
      `the offsite manifest of backup ${backupId}: ${refused}; not served`,
      {
        details: { source: 'offsite', reason: 'manifest_not_authentic' },
      },
    );
  }
  const artifact = await openArtifact({ projectId: project.id, backupId, manifest }, 'offsite', {
    store,
    identities: request.identities,
  });
  if (!artifact) {
    throw new AppError('not_found', `backup ${backupId} has no offsite copy in ${store.location}`);
  }
  if (artifact.sizeBytes !== manifest.sizeBytes) {
    throw new AppError(
      'artifact_invalid',
      `the offsite copy ${artifact.location} is ${artifact.sizeBytes} B but the manifest says ${manifest.sizeBytes} B; not served`,
      { details: { source: 'offsite', sizeBytes: artifact.sizeBytes } },
    );
  }
  const stream = checkedStream(await artifact.open(), artifact.expected, `offsite copy ${artifact.location}`);
  c.header('Content-Type', 'application/octet-stream');
  c.header('Content-Length', String(artifact.sizeBytes));
  c.header('Content-Disposition', `attachment; filename="${project.slug}-${backupId}.dump"`);
  c.header('X-Flux-Checksum-Sha256', manifest.sha256);
  c.header('Repr-Digest', `sha-256=:${Buffer.from(manifest.sha256, 'hex').toString('base64')}:`);
  c.header('X-Flux-Artifact-Source', 'offsite');
  return c.body(Readable.toWeb(stream) as ReadableStream, 200);
}
