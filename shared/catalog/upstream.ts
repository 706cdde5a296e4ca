// The upstream `flux` CLI's vocabulary on the CLI-compatible routes: our catalog words (BackupFacts) turned
// into the words upstream's classifier (packages/core/src/backup-trust.ts in justinkemersion/Flux) reads, so
// the upstream CLI gives our rows the tier we give them. Our richer words travel in our own fields.
import type { ArtifactStatus, BackupFacts, BackupStatus, OffsiteStatus, TrustTier } from './classifier.js';

export const UPSTREAM_BACKUP_STATUSES = ['queued', 'running', 'complete', 'failed'] as const;
export type UpstreamBackupStatus = (typeof UPSTREAM_BACKUP_STATUSES)[number];
export const UPSTREAM_ARTIFACT_STATUSES = ['pending', 'artifact_valid', 'artifact_invalid'] as const;
export type UpstreamArtifactStatus = (typeof UPSTREAM_ARTIFACT_STATUSES)[number];
export const UPSTREAM_OFFSITE_STATUSES = ['pending', 'running', 'complete', 'failed'] as const;
export type UpstreamOffsiteStatus = (typeof UPSTREAM_OFFSITE_STATUSES)[number];
export const UPSTREAM_RESTORE_STATUSES = [
  'pending',
  'restore_verified',
  'restore_failed',
  'skipped',
] as const;
export type UpstreamRestoreStatus = (typeof UPSTREAM_RESTORE_STATUSES)[number];

/** Upstream's tiers: ours without `unverifiable`, which upstream has no word for. */
export type UpstreamTrustTier = Exclude<TrustTier, 'unverifiable'>;

export function upstreamBackupStatus(status: BackupStatus): UpstreamBackupStatus {
  return status === 'completed' ? 'complete' : status;
}

/** A missing local file is an invalid artifact to upstream; `artifactValidationOutcome` says `missing`. */
export function upstreamArtifactStatus(artifact: ArtifactStatus): UpstreamArtifactStatus {
  return artifact === 'valid' ? 'artifact_valid' : artifact === 'pending' ? 'pending' : 'artifact_invalid';
}

/** A conflicting offsite copy is a failed one to upstream; `offsiteOutcome` says `conflict`. */
export function upstreamOffsiteStatus(offsite: OffsiteStatus): UpstreamOffsiteStatus {
  return offsite === 'replicated' ? 'complete' : offsite === 'conflict' ? 'failed' : offsite;
}

/**
 * Upstream's restore word for the bytes the catalog holds now. Upstream reads restore_verified and
 * restore_failed before the artifact, so a verification of bytes that are no longer there (the local dump
 * changed or went missing since) is `pending` there: it proves nothing about the current file. `unverifiable`
 * (verify could not run) is `pending` too — never a pass, never a failure of the backup — with the reason in
 * `restoreVerificationError`; `restoreVerificationOutcome` keeps our word.
 */
export function upstreamRestoreStatus(
  facts: Pick<BackupFacts, 'artifact' | 'restore'>,
): UpstreamRestoreStatus {
  if (facts.artifact !== 'valid') return 'pending';
  return facts.restore === 'restore_verified' || facts.restore === 'restore_failed'
    ? facts.restore
    : 'pending';
}

/** The upstream tier a tier of ours reads as: the same name, `unverifiable` as "not restore-verified". */
export function upstreamTierOf(tier: TrustTier): UpstreamTrustTier {
  return tier === 'unverifiable' ? 'not_restore_verified' : tier;
}
