// The upstream flux CLI's trust classifier, rewritten from its rules (packages/core/src/backup-trust.ts in
// justinkemersion/Flux) so our tests can read our CLI-route rows the way the upstream CLI does: only the newest
// row counts; a status other than `complete` is latest_not_complete; then restore_verified is restorable,
// restore_failed or skipped is restore_failed; then an artifact still `pending` is artifact_pending, any
// other artifact word but `artifact_valid` is pipeline_incomplete; what is left is not_restore_verified.
import type { UpstreamTrustTier } from '../../shared/catalog/read-model.js';

export interface UpstreamRow {
  status: string;
  artifactValidationStatus?: string | null;
  restoreVerificationStatus?: string | null;
}

export function upstreamClassify(newestFirst: readonly UpstreamRow[]): UpstreamTrustTier {
  const newest = newestFirst[0];
  if (!newest) return 'no_backups';
  if (newest.status !== 'complete') return 'latest_not_complete';
  const restore = (newest.restoreVerificationStatus ?? 'pending').trim();
  if (restore === 'restore_verified') return 'restorable';
  if (restore === 'restore_failed' || restore === 'skipped') return 'restore_failed';
  const artifact = (newest.artifactValidationStatus ?? 'pending').trim();
  if (artifact === 'pending') return 'artifact_pending';
  if (artifact !== 'artifact_valid') return 'pipeline_incomplete';
  return 'not_restore_verified';
}
