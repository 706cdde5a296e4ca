// Retention selection, for dump's local retention and replicate's offsite retention alike: a pure
// function over a project's backups (newest first). It never selects the newest restorable backup,
// counts only restore-verified backups toward the keep floor, and never touches a backup still being
// written or newer than the newest restorable one (still in its pipeline).
import { DAY_MS } from '../units.js';
import type { BackupFacts } from './classifier.js';

export interface RetentionPolicy {
  keepCount: number;
  keepDays: number;
}

export function isRetentionEnabled(policy: RetentionPolicy): boolean {
  return policy.keepCount > 0 || policy.keepDays > 0;
}

export function selectForDeletion(
  newestFirst: readonly BackupFacts[],
  policy: RetentionPolicy,
  now: Date,
): string[] {
  if (!isRetentionEnabled(policy)) return [];
  const isVerified = (b: BackupFacts) =>
    b.status === 'completed' && b.artifact === 'valid' && b.restore === 'restore_verified';
  const newestRestorable = newestFirst.findIndex(isVerified);
  // Without any restorable backup nothing may go: the newest good copy might be the one we would delete.
  if (newestRestorable < 0) return [];
  const keep = new Set<string>();
  let verifiedKept = 0;
  newestFirst.forEach((b, index) => {
    if (index <= newestRestorable || b.status === 'running') keep.add(b.backupId);
    if (policy.keepDays > 0 && now.getTime() - Date.parse(b.createdAt) < policy.keepDays * DAY_MS)
      keep.add(b.backupId);
    if (isVerified(b) && verifiedKept < Math.max(1, policy.keepCount)) {
      keep.add(b.backupId);
      verifiedKept += 1;
    }
  });
  return newestFirst.filter((b) => !keep.has(b.backupId)).map((b) => b.backupId);
}
