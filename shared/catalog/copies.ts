// Each copy of a backup carries its own verification: the local dump's receipt (`.verify.json`) and the
// offsite copy's (`.verify-offsite.json`). Pure functions over a catalog entry: which receipt is about which
// copy, which copies are proven restorable for the current manifest, and the one restore status the trust
// view gives the backup. A passing verification of one copy never hides a failed one of the other.
import type { ArtifactStatus, RestoreStatus } from './classifier.js';
import type { Manifest, OffsiteReceipt, VerifyReceipt } from './records.js';

export const COPY_NAMES = ['local', 'offsite'] as const;
export type CopyName = (typeof COPY_NAMES)[number];

/** What copies.ts reads of a catalog entry. */
export interface CopiesEntry {
  manifest?: Pick<Manifest, 'sha256'> | undefined;
  verify?: VerifyReceipt | undefined;
  verifyOffsite?: VerifyReceipt | undefined;
  offsite?: Pick<OffsiteReceipt, 'status' | 'contentSha256'> | undefined;
}

export type CopyVerifications = Partial<Record<CopyName, VerifyReceipt>>;

/**
 * Each copy's own receipt, when it is about the manifest's current content (a receipt for other bytes, a
 * rewritten manifest's predecessor, proves nothing now). A `.verify.json` written before each copy had its
 * own receipt may be about the offsite copy (`source: offsite`): it counts for that copy, unless the copy
 * has a receipt of its own.
 */
export function copyVerifications(entry: CopiesEntry): CopyVerifications {
  const sha256 = entry.manifest?.sha256;
  if (!sha256) return {};
  const current = (r: VerifyReceipt | undefined) => (r && r.sha256 === sha256 ? r : undefined);
  const own = entry.verify;
  const local = own?.source === 'offsite' ? undefined : current(own);
  const offsite = current(entry.verifyOffsite ?? (own?.source === 'offsite' ? own : undefined));
  return { ...(local ? { local } : {}), ...(offsite ? { offsite } : {}) };
}

/**
 * Whether a copy still holds the manifest's bytes as far as the catalog knows: the local dump when its
 * artifact check (size and SHA-256) is valid; the offsite copy unless replicate's receipt says it is not
 * this content (failed, a conflict, or a re-hash that no longer matches).
 */
export function isCopyValid(entry: CopiesEntry, copy: CopyName, artifact: ArtifactStatus): boolean {
  if (copy === 'local') return artifact === 'valid';
  const receipt = entry.offsite;
  if (!receipt) return true;
  return receipt.status === 'replicated' && receipt.contentSha256 === entry.manifest?.sha256;
}

/**
 * The copies proven restorable for the current manifest: each one's own verification passed for these
 * bytes and the copy is still valid (`artifact` is the local dump's check).
 */
export function verifiedCopies(entry: CopiesEntry, artifact: ArtifactStatus): CopyName[] {
  const verifications = copyVerifications(entry);
  return COPY_NAMES.filter(
    (copy) => verifications[copy]?.status === 'restore_verified' && isCopyValid(entry, copy, artifact),
  );
}

/** The backup's restore status, and the receipt that says it (for its time, error and source). */
export interface RestoreView {
  status: RestoreStatus;
  receipt?: VerifyReceipt;
}

/**
 * restore_verified when a valid copy is proven; else restore_failed when either copy's verification
 * failed; else what the local copy's receipt says (a pass of bytes the local dump no longer holds stays a
 * pass here: the artifact check is what refuses it), else the offsite copy's when that copy still counts.
 */
export function restoreViewOf(entry: CopiesEntry, artifact: ArtifactStatus): RestoreView {
  const v = copyVerifications(entry);
  const [proven] = verifiedCopies(entry, artifact);
  if (proven) return { status: 'restore_verified', receipt: v[proven] as VerifyReceipt };
  const failed =
    v.local?.status === 'restore_failed'
      ? v.local
      : v.offsite?.status === 'restore_failed'
        ? v.offsite
        : undefined;
  if (failed) return { status: 'restore_failed', receipt: failed };
  if (v.local) return { status: v.local.status, receipt: v.local };
  if (v.offsite && v.offsite.status !== 'restore_verified')
    return { status: v.offsite.status, receipt: v.offsite };
  return { status: 'pending' };
}

const WORDS: Record<VerifyReceipt['status'], string> = {
  restore_verified: 'restore-verified',
  restore_failed: 'failed its verification',
  unverifiable: 'could not be verified',
};

/**
 * One sentence naming the proven copies and any copy whose verification did not pass (with its error), for
 * the trust message; undefined when no copy has a receipt for the current content.
 */
export function copiesNote(entry: CopiesEntry, artifact: ArtifactStatus): string | undefined {
  const v = copyVerifications(entry);
  const proven = verifiedCopies(entry, artifact);
  const parts: string[] = [];
  if (proven.length > 0) parts.push(`proven: the ${proven.join(' and the ')} copy`);
  for (const copy of COPY_NAMES) {
    const r = v[copy];
    if (!r || proven.includes(copy)) continue;
    const detail = (r.error ?? r.reason ?? '').slice(0, 300);
    if (r.status === 'restore_verified')
      parts.push(`the ${copy} copy was restore-verified but no longer matches`);
    else parts.push(`the ${copy} copy ${WORDS[r.status]}${detail ? `: ${detail}` : ''}`);
  }
  return parts.length > 0 ? parts.join('; ') : undefined;
}
