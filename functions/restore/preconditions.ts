// What a restore must establish before it touches anything: backup, manifest, gate, readable archive.
import { GATE_ARTIFACT_PROOF, rejectionOf } from '../../shared/catalog/catalog.js';
import { classify } from '../../shared/catalog/classifier.js';
import { destructiveGate } from '../../shared/catalog/freshness.js';
import { authenticateManifest } from '../../shared/catalog/manifest-auth.js';
import { type CatalogEntry, factsOf } from '../../shared/catalog/read-model.js';
import { distrustOf } from '../../shared/catalog/record-auth.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { AppError, errnoOf, isAppError } from '../../shared/errors.js';
import { type Runtime, recordKeysOf } from '../../shared/kit/runtime.js';
import { openArtifact, readOffsiteManifest } from '../../shared/offsite/artifact.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import {
  type ArchiveHeader,
  canRead,
  HEADER_READ_BYTES,
  parseArchiveHeader,
  readArchiveHeader,
} from '../../shared/pg/archive-header.js';
import { withPgClient } from '../../shared/pg/conn.js';
import { clusterNameOf, type Project } from '../../shared/registry.js';
import { backupPolicyOf } from '../../shared/schedule.js';
import { requireTool, type ToolInfo } from '../../shared/tools.js';
import { RESTORE_APP_NAME } from './server.js';

export type Preconditions = ReturnType<typeof createPreconditions>;
export type RestoreGate = Awaited<ReturnType<Preconditions['gateOf']>>;

export function createPreconditions(rt: Runtime, store: () => OffsiteStore) {
  const { config, catalog } = rt;
  const keys = recordKeysOf(config);

  /** The backup and its manifest: from the local catalog, or from the offsite store when asked. */
  async function backupOf(project: Project, backupId: string, source: 'local' | 'offsite') {
    const entry = await catalog.get(project.id, backupId);
    let manifest: Manifest | undefined = entry?.manifest;
    // A local manifest that is not believed vouches for nothing: refused from the local copy; from the
    // offsite one only the stored manifest, if it authenticates, can vouch for the bytes.
    const rejected = source === 'local' ? rejectionOf(entry, 'restored (nothing was touched)') : undefined;
    if (rejected) throw rejected;
    if (!manifest && source === 'offsite') {
      manifest = await readOffsiteManifest(store(), project.id, backupId);
      const why = manifest ? distrustOf(authenticateManifest(manifest, keys.secrets), keys) : undefined;
      if (why) {
        throw new AppError(
          'manifest_not_authentic',
          `the offsite manifest of backup ${backupId}: ${why}; refused, nothing was restored`,
          { details: { reason: 'manifest_not_authentic', source: 'offsite' } },
        );
      }
    }
    if (!manifest) {
      throw new AppError(
        'not_found',
        `no complete backup ${backupId} for project ${project.slug}${source === 'offsite' ? ' locally or offsite' : ''}: list them with flux-ops backup list -p ${project.slug}`,
      );
    }
    if (manifest.projectId !== project.id)
      throw new AppError('not_found', `backup ${backupId} is not a backup of ${project.slug}`);
    return { entry, manifest };
  }

  /** The gate of an in-place restore: the chosen backup itself must be artifact-valid and restore-verified. */
  async function gateOf(project: Project, entry: CatalogEntry | undefined, source: 'local' | 'offsite') {
    if (!entry) {
      return {
        passes: false,
        tier: 'not_restore_verified',
        message: 'the backup is known only from the offsite store and has no verification here',
        next: `flux-ops catalog rebuild --from offsite, then flux-ops backup verify -p ${project.slug} --source offsite`,
      };
    }
    // Every byte of the local dump hashed now: a cached validation misses a byte flipped with its mtime kept
    // (an offsite copy is proven while it streams, so its local dump is not what the gate leans on).
    const artifact = await catalog.checkArtifact(entry, source === 'local' ? GATE_ARTIFACT_PROOF : 'cached');
    const facts = factsOf(entry, artifact);
    // An offsite copy is proven while it streams; only the local file must be valid beforehand.
    const trust = classify(
      source === 'offsite' ? { ...facts, artifact: 'valid' } : facts,
      new Date(),
      project.slug,
    );
    // And the project must be fresh: its newest restorable backup younger than maxAge. The backup restored
    // may be an older one on purpose; what the gate asks is that a recent proven copy exists should the
    // live data, once replaced, be needed back beyond the safety backup.
    const { maxAgeMs } = backupPolicyOf(project, config);
    const { freshness } = await catalog.trust(project.id, project.slug, new Date(), {
      maxAgeMs,
      proof: GATE_ARTIFACT_PROOF,
    });
    const verdict = destructiveGate(trust, freshness);
    const next = trust.tier === 'restorable' ? freshness.next : (trust.next ?? freshness.next);
    return {
      passes: verdict.passes,
      tier: trust.tier,
      freshness: freshness.freshness,
      ageSeconds: freshness.ageSeconds,
      maxAgeSeconds: freshness.maxAgeSeconds,
      message: verdict.passes ? trust.message : verdict.message,
      ...(next ? { next } : {}),
    };
  }

  async function pgRestoreTool(): Promise<ToolInfo> {
    return requireTool('pg_restore', rt.env.PATH);
  }

  /** The archive's format version against this process's pg_restore: a clear refusal before anything is touched. */
  async function requireReadable(
    manifest: Manifest,
    entry: CatalogEntry | undefined,
    source: 'local' | 'offsite',
  ) {
    const tool = await pgRestoreTool();
    let header: ArchiveHeader;
    try {
      if (source === 'local' && entry) header = await readArchiveHeader(entry.paths.dump);
      else {
        const artifact = await openArtifact(
          { projectId: manifest.projectId, backupId: manifest.backupId, manifest },
          'offsite',
          { store, identities: rt.ageKeys.identities() },
        );
        if (!artifact) throw new AppError('not_found', `backup ${manifest.backupId} has no offsite copy`);
        header = parseArchiveHeader(await artifact.readHead(HEADER_READ_BYTES));
      }
    } catch (error) {
      if (isAppError(error)) throw error;
      if (errnoOf(error) === 'ENOENT') {
        throw new AppError(
          'not_found',
          `the local dump of backup ${manifest.backupId} is missing: restore from the offsite copy ("source": "offsite")`,
        );
      }
      throw new AppError(
        'artifact_invalid',
        `backup ${manifest.backupId} is not a readable archive: ${(error as Error).message}`,
      );
    }
    if (!canRead(tool.major, header.version, manifest.pgDump.major)) {
      throw new AppError(
        'tool_version',
        `the archive (format ${header.versionText}, written by pg_dump ${manifest.pgDump.version}) is newer than this process's ` +
          `pg_restore ${tool.version}: install the PostgreSQL ${manifest.pgDump.major} client tools (or newer) in the restore image and restart it; nothing was touched`,
        { details: { archive: header.versionText, pgRestore: tool.version } },
      );
    }
    return { tool, header };
  }

  async function serverVersionOf(url: string): Promise<string> {
    return withPgClient(
      url,
      RESTORE_APP_NAME,
      async (c) => {
        return (await c.query<{ v: string }>(`SELECT current_setting('server_version') AS v`)).rows[0]!.v;
      },
      'connecting to the restore target',
    );
  }

  return { backupOf, gateOf, requireReadable, serverVersionOf };
}

/** The refusal of an in-place restore whose gate does not pass: the tier, the age and the next step. */
export function gateRefusal(project: Project, gate: RestoreGate): AppError {
  return new AppError(
    'precondition_failed',
    `backup gate for ${project.slug} on cluster ${clusterNameOf(project)}: ${gate.message}; an in-place restore needs a restore-verified backup and a restorable backup younger than maxAge` +
      `${gate.next ? `; next: ${gate.next}` : ''}; or pass --skip-backup-check. Nothing was done`,
    {
      details: {
        cluster: clusterNameOf(project),
        tier: gate.tier,
        ...('freshness' in gate
          ? {
              freshness: gate.freshness,
              ageSeconds: gate.ageSeconds,
              maxAgeSeconds: gate.maxAgeSeconds,
            }
          : {}),
        ...(gate.next ? { next: gate.next } : {}),
      },
    },
  );
}
