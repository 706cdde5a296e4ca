// The offsite side of upkeep: what the store holds, by project and backup, from its own listing (copies
// outlive their local backups), and the stored manifest of a backup the local catalog no longer has.
import { isUuid } from '../../shared/catalog/ids.js';
import { parseCatalogName } from '../../shared/catalog/layout.js';
import { authenticateManifest } from '../../shared/catalog/manifest-auth.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { isAppError } from '../../shared/errors.js';
import { readOffsiteManifest } from '../../shared/offsite/artifact.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import type { OffsiteBackup, UpkeepContext } from './upkeep-types.js';

export async function listOffsite(store: OffsiteStore): Promise<Map<string, Map<string, OffsiteBackup>>> {
  const out = new Map<string, Map<string, OffsiteBackup>>();
  for await (const object of store.list('')) {
    const [projectId, name, ...deeper] = object.key.split('/');
    if (!projectId || !name || deeper.length > 0 || !isUuid(projectId)) continue;
    const parsed = parseCatalogName(name);
    if (!parsed || (parsed.file !== 'dump' && parsed.file !== 'manifest')) continue;
    let backups = out.get(projectId);
    if (!backups) {
      backups = new Map();
      out.set(projectId, backups);
    }
    const found = backups.get(parsed.backupId) ?? { projectId, backupId: parsed.backupId };
    found[parsed.file] = object;
    backups.set(parsed.backupId, found);
  }
  return out;
}

/** The offsite manifest of an offsite-only backup, when it is one this deployment can trust. */
export async function trustedOffsiteManifest(
  ctx: Pick<UpkeepContext, 'store' | 'signal' | 'manifestSecrets'>,
  projectId: string,
  backupId: string,
): Promise<Manifest | string> {
  try {
    const manifest = await readOffsiteManifest(ctx.store, projectId, backupId, ctx.signal);
    if (!manifest) return 'no offsite manifest';
    const auth = authenticateManifest(manifest, ctx.manifestSecrets);
    if (auth === 'forged') return 'the offsite manifest’s tag matches none of FLUX_MANIFEST_SECRETS';
    return manifest;
  } catch (error) {
    if (isAppError(error) && error.code === 'artifact_invalid') return error.message;
    throw error;
  }
}
