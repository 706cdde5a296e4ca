// The catalog rebuilt from the offsite store's manifests (a fresh host after the control-plane host was
// lost): each manifest the local catalog lacks is written atomically by dump, the manifest's one writer.
// An existing local manifest is never replaced (one that differs is a conflict); dump bytes are never
// copied: the local dump stays missing and verify, download and restore read the offsite copy.
import { stat } from 'node:fs/promises';
import { isDeepStrictEqual } from 'node:util';
import type { Catalog } from '../../shared/catalog/catalog.js';
import type { OffsiteStatus } from '../../shared/catalog/classifier.js';
import { errnoOf } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { MetricsRegistry } from '../../shared/metrics.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import { rebuildMetrics } from './metrics.js';
import { manifestCheckFor, offsiteDumpStatus, scanOffsite } from './offsite-catalog.js';

export interface RebuildRequest {
  /** Only these projects; all the store holds when absent. */
  projectIds?: readonly string[];
  /** Only projects with no backup in the local catalog at all (the start-up rebuild). */
  onlyEmpty?: boolean;
  /** Accept manifests without an authentication tag although FLUX_MANIFEST_SECRETS is set. */
  allowUnsigned?: boolean;
}

export interface RebuiltBackup {
  projectId: string;
  backupId: string;
}

export interface RebuildSummary {
  from: 'offsite';
  store: string;
  /** Projects whose offsite manifests were looked at. */
  projects: number;
  manifests: { added: number; present: number; conflicts: number; invalid: number };
  /** Manifests written; `offsiteDump` says what the store holds of the dump (by size). */
  added: Array<RebuiltBackup & { offsiteDump: OffsiteStatus }>;
  conflicts: Array<RebuiltBackup & { reason: string }>;
  invalid: Array<RebuiltBackup & { key: string; reason: string }>;
  /** Projects left alone because their local catalog is not empty (start-up rebuild only). */
  skippedProjects: number;
  /** How the manifests' contents were authenticated (`none`: FLUX_MANIFEST_SECRETS is not set). */
  authentication: 'hmac-sha256' | 'none';
  warnings: string[];
  startedAt: string;
  seconds: number;
}

export interface CatalogRebuilder {
  /** One rebuild at a time: a second request waits for the first and then runs. */
  rebuild(request?: RebuildRequest): Promise<RebuildSummary>;
}

export function createCatalogRebuilder(options: {
  catalog: Catalog;
  store: () => OffsiteStore;
  log: Logger;
  metrics: MetricsRegistry;
  /** FLUX_MANIFEST_SECRETS. */
  secrets: readonly string[];
}): CatalogRebuilder {
  const { catalog, log } = options;

  const { results } = rebuildMetrics(options.metrics);
  let queue: Promise<unknown> = Promise.resolve();

  async function run(request: RebuildRequest): Promise<RebuildSummary> {
    const store = options.store();
    const started = Date.now();
    const summary: RebuildSummary = {
      from: 'offsite',
      store: store.location,
      projects: 0,
      manifests: { added: 0, present: 0, conflicts: 0, invalid: 0 },
      added: [],
      conflicts: [],
      invalid: [],
      skippedProjects: 0,
      authentication: options.secrets.length > 0 ? 'hmac-sha256' : 'none',
      warnings:
        options.secrets.length > 0
          ? []
          : [
              'FLUX_MANIFEST_SECRETS is not set: the manifests were checked for form and identity only; an edit of their facts in the store cannot be told apart (verify catches a mismatch with the dump)',
            ],
      startedAt: new Date(started).toISOString(),
      seconds: 0,
    };
    const scanned = await scanOffsite(store, {
      ...(request.projectIds ? { projectIds: request.projectIds } : {}),
      check: manifestCheckFor(options.secrets, { allowUnsigned: request.allowUnsigned === true }),
    });
    for (const [projectId, backups] of scanned) {
      // One listing per project, not one directory read per backup.
      const locals = await catalog.list(projectId);
      if (request.onlyEmpty && locals.length > 0) {
        summary.skippedProjects += 1;
        continue;
      }
      const localById = new Map(locals.map((e) => [e.backupId, e]));
      summary.projects += 1;
      for (const backup of backups) {
        const { backupId } = backup;
        if (!backup.manifest) {
          summary.invalid.push({
            projectId,
            backupId,
            key: backup.manifestKey,
            reason: backup.invalid ?? 'not a valid manifest',
          });
          continue;
        }
        const local = localById.get(backupId);
        if (local?.manifest) {
          if (isDeepStrictEqual(local.manifest, backup.manifest)) summary.manifests.present += 1;
          else {
            summary.conflicts.push({
              projectId,
              backupId,
              reason: `the local manifest differs from ${backup.manifestKey} (sha256 ${local.manifest.sha256.slice(0, 12)}… locally, ${backup.manifest.sha256.slice(0, 12)}… offsite); the local one was kept`,
            });
          }
          continue;
        }
        if (await exists(catalog.paths(projectId, backupId).manifest)) {
          summary.conflicts.push({
            projectId,
            backupId,
            reason: `the local manifest exists but cannot be read (${local?.unreadable ?? 'unreadable'}); it was left as it is`,
          });
          continue;
        }
        await catalog.writeManifest(backup.manifest);
        summary.added.push({
          projectId,
          backupId,
          offsiteDump: offsiteDumpStatus({ ...backup, manifest: backup.manifest }),
        });
      }
    }
    summary.manifests.added = summary.added.length;
    summary.manifests.conflicts = summary.conflicts.length;
    summary.manifests.invalid = summary.invalid.length;
    for (const [result, n] of Object.entries(summary.manifests)) if (n > 0) results.inc({ result }, n);
    summary.seconds = (Date.now() - started) / 1000;
    (summary.conflicts.length + summary.invalid.length > 0 ? log.warn.bind(log) : log.info.bind(log))(
      {
        store: summary.store,
        projects: summary.projects,
        manifests: summary.manifests,
        conflicts: summary.conflicts,
        invalid: summary.invalid,
      },
      'catalog rebuilt from the offsite manifests',
    );
    return summary;
  }

  return {
    rebuild(request = {}) {
      const next = queue.then(() => run(request));
      queue = next.catch(() => undefined);
      return next;
    },
  };
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return false;
    throw error;
  }
}
