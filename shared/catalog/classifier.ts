// The trust classifier: a pure function over the facts of a project's newest backup. Tier names and their
// meaning are upstream's (backup-trust.ts of the upstream flux repository: artifact_pending is a validation
// not done yet, pipeline_incomplete an artifact that is not valid, not_restore_verified a valid artifact no
// verification passed or failed for), so the upstream CLI reading our rows (read-model.ts) gives the same
// tier; `unverifiable` is ours: never a pass and never a restore_failed.
import { HOUR_MS } from '../units.js';

export const TRUST_TIERS = [
  'no_backups',
  'latest_not_complete',
  'artifact_pending',
  'restore_failed',
  'unverifiable',
  'pipeline_incomplete',
  'not_restore_verified',
  'restorable',
] as const;
export type TrustTier = (typeof TRUST_TIERS)[number];

export type BackupStatus = 'running' | 'completed' | 'failed';
export type ArtifactStatus = 'valid' | 'invalid' | 'missing' | 'pending';
export type RestoreStatus = 'pending' | 'restore_verified' | 'restore_failed' | 'unverifiable' | 'skipped';
export type OffsiteStatus = 'pending' | 'replicated' | 'failed' | 'conflict';

export interface BackupFacts {
  backupId: string;
  status: BackupStatus;
  createdAt: string;
  artifact: ArtifactStatus;
  restore: RestoreStatus;
  offsite: OffsiteStatus;
  /** Why the latest step failed (dump failure, verify finding, artifact mismatch). */
  error?: string | undefined;
}

export interface TrustLabels {
  artifactValidated: boolean;
  restoreVerified: boolean;
  offsiteReplicated: boolean;
}

export interface Trust {
  tier: TrustTier;
  /** True only for `restorable`: the one tier destructive actions accept. */
  trustworthy: boolean;
  message: string;
  /** The command that moves the project forward, when there is one. */
  next?: string;
  labels: TrustLabels;
  backupId?: string;
}

/** Verification still pending this long after creation stops being "in progress". */
export const PIPELINE_GRACE_MS = 6 * HOUR_MS;

export function labelsOf(facts: BackupFacts | undefined): TrustLabels {
  return {
    artifactValidated: facts?.artifact === 'valid',
    restoreVerified: facts?.restore === 'restore_verified' && facts.artifact === 'valid',
    offsiteReplicated: facts?.offsite === 'replicated',
  };
}

export function classify(newest: BackupFacts | undefined, now: Date = new Date(), slug = '<slug>'): Trust {
  const labels = labelsOf(newest);
  const create = `flux-ops backup create -p ${slug}`;
  if (!newest) {
    return {
      tier: 'no_backups',
      trustworthy: false,
      labels,
      message: 'the project has no backups',
      next: create,
    };
  }
  const base = { labels, backupId: newest.backupId, trustworthy: false };
  const verify = `flux-ops backup verify -p ${slug} --id ${newest.backupId}`;
  if (newest.status !== 'completed') {
    return {
      ...base,
      tier: 'latest_not_complete',
      message:
        newest.status === 'running'
          ? 'the newest backup is still being written'
          : `the newest backup failed: ${newest.error ?? 'unknown reason'}`,
      ...(newest.status === 'failed' ? { next: create } : {}),
    };
  }
  if (newest.artifact === 'missing' && newest.offsite === 'replicated') {
    // Only the offsite copy is left (a catalog rebuilt from the store, or a lost local file). It is never
    // `restorable` here: the local artifact is gone, whatever a verify of the offsite copy found.
    const verified = newest.restore === 'restore_verified';
    return {
      ...base,
      tier: 'pipeline_incomplete',
      message: verified
        ? 'the local dump file is missing; the offsite copy is proven and restore-verified: restore or download it with --source offsite, and create a new backup to be restorable locally again'
        : 'the local dump file is missing; the offsite copy is proven: verify it with --source offsite before relying on it',
      next: verified ? create : `${verify} --source offsite`,
    };
  }
  if (newest.artifact !== 'valid') {
    const why = {
      pending: 'the artifact has not been validated yet',
      missing: 'the local dump file is missing',
      invalid: `the local dump no longer matches its manifest${newest.error ? ` (${newest.error})` : ''}`,
    }[newest.artifact];
    return {
      ...base,
      tier: newest.artifact === 'pending' ? 'artifact_pending' : 'pipeline_incomplete',
      message: `${why}: do not rely on this backup until its artifact is validated`,
      next: newest.artifact === 'pending' ? verify : `${verify} --source offsite  (or: ${create})`,
    };
  }
  switch (newest.restore) {
    case 'restore_failed':
      return {
        ...base,
        tier: 'restore_failed',
        message: `restore verification failed: ${newest.error ?? 'see the verify receipt'}`,
        next: create,
      };
    case 'unverifiable':
      return {
        ...base,
        tier: 'unverifiable',
        message: `restore verification could not run (this is not a pass): ${newest.error ?? 'see the verify receipt'}`,
        next: verify,
      };
    case 'restore_verified':
      return {
        ...base,
        tier: 'restorable',
        trustworthy: true,
        message:
          newest.offsite === 'replicated'
            ? 'restore-verified and replicated offsite'
            : `restore-verified; offsite copy ${newest.offsite === 'pending' ? 'not proven yet' : newest.offsite}`,
      };
    case 'pending':
    case 'skipped': {
      const age = now.getTime() - Date.parse(newest.createdAt);
      const inFlight = newest.restore === 'pending' && age < PIPELINE_GRACE_MS;
      return {
        ...base,
        // Upstream has no tier for a verification still on its way: the message tells it apart.
        tier: 'not_restore_verified',
        message: inFlight
          ? `the pipeline is still running (offsite ${newest.offsite}, restore verification pending)`
          : 'the newest backup was never restore-verified',
        next: verify,
      };
    }
  }
}
