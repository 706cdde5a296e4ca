// What the offsite store holds, read back as a catalog: each backup's manifest (read with
// readOffsiteManifest, which refuses one naming another project or backup) and its dump object's
// metadata, for `GET …/backups?source=offsite` and the catalog rebuild. Dump bytes are never read here.
import type { Catalog } from '../../shared/catalog/catalog.js';
import type { OffsiteStatus } from '../../shared/catalog/classifier.js';
import { isUuid } from '../../shared/catalog/ids.js';
import { parseCatalogName } from '../../shared/catalog/layout.js';
import { authenticateManifest, type ManifestAuthenticity } from '../../shared/catalog/manifest-auth.js';
import type { ApiBackup, ArtifactCheck, CatalogEntry } from '../../shared/catalog/read-model.js';
import { upstreamOffsiteStatus } from '../../shared/catalog/read-model.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { isAppError } from '../../shared/errors.js';
import { storedSizeFits } from '../../shared/offsite/age.js';
import { readOffsiteManifest } from '../../shared/offsite/artifact.js';
import { dumpKeyOf, manifestKeyOf } from '../../shared/offsite/keys.js';
import type { OffsiteObject, OffsiteStore } from '../../shared/offsite/types.js';

/** Manifests read from the store at once (each is a small GET). */
const MANIFEST_READS_AT_ONCE = 8;

export interface OffsiteBackup {
  projectId: string;
  backupId: string;
  manifestKey: string;
  /** The manifest as stored beside the copy, when it is a valid manifest of this backup. */
  manifest?: Manifest;
  /** Why the stored manifest was refused (not a manifest, another backup's, not authentic). */
  invalid?: string;
  /** The dump object's metadata; undefined when the store has no dump for this backup. */
  dump?: OffsiteObject;
}

/** Tells a manifest the store holds apart from a forged one; returns why it is refused, if it is. */
export type ManifestCheck = (manifest: Manifest) => string | undefined;

/**
 * The check with FLUX_MANIFEST_SECRETS: a tag no key gives is refused; a manifest without a tag (made
 * before the keys were set) only when `allowUnsigned`. Without keys nothing can be checked.
 */
export function manifestCheckFor(
  secrets: readonly string[],
  options: { allowUnsigned?: boolean } = {},
): ManifestCheck {
  return (manifest) => {
    switch (authenticateManifest(manifest, secrets)) {
      case 'forged':
        return 'its authentication tag matches none of FLUX_MANIFEST_SECRETS: edited where it is stored (or tagged with a key this process lacks); not trusted';
      case 'unsigned':
        return options.allowUnsigned
          ? undefined
          : 'it carries no authentication tag while FLUX_MANIFEST_SECRETS is set (a backup made before the keys were?): refused unless allowUnsigned';
      default:
        return undefined;
    }
  };
}

/** Every backup with a manifest in the store, by project (all projects, or the ones named), newest first. */
export async function scanOffsite(
  store: OffsiteStore,
  options: { projectIds?: readonly string[]; check?: ManifestCheck } = {},
): Promise<Map<string, OffsiteBackup[]>> {
  const objects = new Map<string, Map<string, { manifest?: OffsiteObject; dump?: OffsiteObject }>>();
  const note = (object: OffsiteObject) => {
    const [projectId, name, ...deeper] = object.key.split('/');
    if (!projectId || !name || deeper.length > 0 || !isUuid(projectId)) return;
    const parsed = parseCatalogName(name);
    if (!parsed || (parsed.file !== 'manifest' && parsed.file !== 'dump')) return;
    let backups = objects.get(projectId);
    if (!backups) {
      backups = new Map();
      objects.set(projectId, backups);
    }
    const found = backups.get(parsed.backupId) ?? {};
    found[parsed.file] = object;
    backups.set(parsed.backupId, found);
  };
  if (options.projectIds) {
    for (const projectId of options.projectIds) {
      objects.set(projectId, new Map());
      for await (const object of store.list(`${projectId}/`)) note(object);
    }
  } else {
    for await (const object of store.list('')) note(object);
  }

  const result = new Map<string, OffsiteBackup[]>();
  const reads: Array<() => Promise<void>> = [];
  for (const [projectId, backups] of objects) {
    const list: OffsiteBackup[] = [];
    result.set(projectId, list);
    for (const [backupId, found] of backups) {
      // A dump without its manifest is a copy still being made (replicate puts the manifest second).
      if (!found.manifest) continue;
      const backup: OffsiteBackup = {
        projectId,
        backupId,
        manifestKey: manifestKeyOf(projectId, backupId),
        ...(found.dump ? { dump: found.dump } : {}),
      };
      list.push(backup);
      reads.push(async () => {
        try {
          const manifest = await readOffsiteManifest(store, projectId, backupId);
          if (!manifest) backup.invalid = `${backup.manifestKey} vanished while it was read`;
          else {
            const refused = options.check?.(manifest);
            if (refused) backup.invalid = `${backup.manifestKey}: ${refused}`;
            else backup.manifest = manifest;
          }
        } catch (error) {
          // Only a refused manifest is this backup's problem; a store that fails fails the whole scan.
          if (!isAppError(error) || error.code !== 'artifact_invalid') throw error;
          backup.invalid = error.message;
        }
      });
    }
  }
  await runAtMost(MANIFEST_READS_AT_ONCE, reads);
  for (const list of result.values()) {
    list.sort(
      (a, b) =>
        (b.manifest?.createdAt ?? '').localeCompare(a.manifest?.createdAt ?? '') ||
        b.backupId.localeCompare(a.backupId),
    );
  }
  return result;
}

async function runAtMost(limit: number, tasks: Array<() => Promise<void>>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

/** What the store holds of the dump, compared with the manifest (by size: the list reads no bytes). */
export function offsiteDumpStatus(backup: OffsiteBackup & { manifest: Manifest }): OffsiteStatus {
  if (!backup.dump) return 'pending';
  // A plain copy is the manifest's size; an age-encrypted one a header and tags more (age.ts).
  return storedSizeFits(backup.dump.sizeBytes, backup.manifest.sizeBytes) ? 'replicated' : 'conflict';
}

/** A row of `GET …/backups?source=offsite`: the local list's shape, facts from the store. */
export type OffsiteApiBackup = ApiBackup & {
  source: 'offsite';
  offsiteSizeBytes: number | null;
  /** Whether the stored manifest's tag was checked against FLUX_MANIFEST_SECRETS (manifest-auth.ts). */
  manifestAuthentication: ManifestAuthenticity;
};

/**
 * The API row of an offsite backup. Local facts (the dump, a verify receipt) count only when the local
 * manifest is this very manifest; the offsite fields come from the store, the re-hash proof from
 * replicate's receipt when it has one for this content.
 */
export async function offsiteRow(
  catalog: Catalog,
  backup: OffsiteBackup & { manifest: Manifest },
  secrets: readonly string[],
): Promise<OffsiteApiBackup> {
  const { projectId, backupId, manifest } = backup;
  const local = await catalog.get(projectId, backupId);
  const same = local?.manifest?.sha256 === manifest.sha256 ? local : undefined;
  const entry: CatalogEntry = {
    projectId,
    backupId,
    paths: catalog.paths(projectId, backupId),
    manifest,
    ...(same?.dump ? { dump: same.dump } : {}),
    ...(same?.verify ? { verify: same.verify } : {}),
    ...(same?.verifyOffsite ? { verifyOffsite: same.verifyOffsite } : {}),
  };
  const artifact: ArtifactCheck = same?.dump
    ? await catalog.checkArtifact(same)
    : { status: 'missing', error: 'no local copy: this backup is only in the offsite store' };
  const row = catalog.toApi(entry, artifact);
  const offsiteStatus = offsiteDumpStatus(backup);
  const receipt = same?.offsite;
  const proven =
    receipt?.status === 'replicated' &&
    receipt.contentSha256 === manifest.sha256 &&
    offsiteStatus === 'replicated';
  return {
    ...row,
    source: 'offsite',
    offsiteStatus: upstreamOffsiteStatus(offsiteStatus),
    offsiteOutcome: offsiteStatus,
    offsiteKey: dumpKeyOf(projectId, backupId),
    offsiteContentSha256: proven ? (receipt.contentSha256 ?? null) : null,
    offsiteReplicatedAt: offsiteStatus === 'replicated' ? (backup.dump?.modifiedAt ?? null) : null,
    offsiteLagSeconds: proven ? (receipt.lagSeconds ?? null) : null,
    offsiteEncryption:
      proven && receipt.encryption
        ? { format: receipt.encryption.format, recipients: receipt.encryption.recipients }
        : null,
    offsiteSizeBytes: backup.dump?.sizeBytes ?? null,
    manifestAuthentication: authenticateManifest(manifest, secrets),
    error:
      offsiteStatus === 'conflict'
        ? `the offsite dump is ${backup.dump?.sizeBytes} B, the manifest says ${manifest.sizeBytes} B`
        : offsiteStatus === 'pending'
          ? 'the offsite store has the manifest but no dump'
          : null,
  };
}

/**
 * `GET …/backups?source=offsite`: authentic and untagged manifests (a backup made before the keys were)
 * are rows; refused ones (forged, misplaced, not a manifest) are named beside them, never shaped like one.
 */
export async function listOffsite(
  catalog: Catalog,
  store: OffsiteStore,
  projectId: string,
  secrets: readonly string[],
): Promise<{
  backups: OffsiteApiBackup[];
  invalid: Array<{ id: string; key: string; error: string }>;
  store: string;
}> {
  const check = manifestCheckFor(secrets, { allowUnsigned: true });
  const found = (await scanOffsite(store, { projectIds: [projectId], check })).get(projectId) ?? [];
  const backups: OffsiteApiBackup[] = [];
  const invalid: Array<{ id: string; key: string; error: string }> = [];
  for (const backup of found) {
    if (backup.manifest)
      backups.push(await offsiteRow(catalog, { ...backup, manifest: backup.manifest }, secrets));
    else
      invalid.push({
        id: backup.backupId,
        key: backup.manifestKey,
        error: backup.invalid ?? 'not a valid manifest',
      });
  }
  return { backups, invalid, store: store.location };
}
