// Offsite retention, pure: which of a project's offsite copies expire. The selection is the one local
// retention uses (shared/catalog/retention.ts) over facts about the copies themselves: a copy counts as
// valid only once it was proven by reading it (its copy, or a re-hash since), restore-verified when verify
// said so while the backup was still local. On top of the selection, a copy whose backup is still in the
// local catalog is never expired: the store then always holds a copy of every local backup (reconcile
// would otherwise copy it again at once), and an offsite policy shorter than the local one means "as long
// as the local copy" rather than churn.
import type { ArtifactStatus, BackupFacts, RestoreStatus } from '../../shared/catalog/classifier.js';
import { type RetentionPolicy, selectForDeletion } from '../../shared/catalog/retention.js';

export interface OffsiteCopyFacts {
  backupId: string;
  /** From the manifest; a copy whose creation time is not known is never a candidate. */
  createdAt: string | undefined;
  /** The dump object exists in the store. */
  hasDump: boolean;
  /** The last full read of the copy: true = matched, false = did not, undefined = never proven. */
  proven: boolean | undefined;
  restore: RestoreStatus;
  /** The backup still has its manifest in the local catalog. */
  isLocal: boolean;
}

function artifactOf(copy: OffsiteCopyFacts): ArtifactStatus {
  if (!copy.hasDump) return 'missing';
  if (copy.proven === undefined) return 'pending';
  return copy.proven ? 'valid' : 'invalid';
}

/** The backup ids whose offsite copies expire now, oldest last. */
export function selectOffsiteExpiry(
  copies: readonly OffsiteCopyFacts[],
  policy: RetentionPolicy,
  now: Date,
): string[] {
  const known = copies.filter(
    (c): c is OffsiteCopyFacts & { createdAt: string } => c.createdAt !== undefined,
  );
  const newestFirst: BackupFacts[] = [...known]
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.backupId.localeCompare(a.backupId))
    .map((c) => ({
      backupId: c.backupId,
      status: 'completed',
      createdAt: c.createdAt,
      artifact: artifactOf(c),
      restore: c.restore,
      offsite: 'replicated',
    }));
  const local = new Set(copies.filter((c) => c.isLocal).map((c) => c.backupId));
  return selectForDeletion(newestFirst, policy, now).filter((id) => !local.has(id));
}
