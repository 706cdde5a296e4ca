// The reconcile decision, pure: given what the local catalog says about one backup (manifest, offsite
// receipt, dump mtime) and what the offsite listing shows, does it need a copy, and why. The ledger of
// receipts is the truth; the watcher and webhooks only make the copy happen sooner.
import type { OffsiteReceipt } from '../../shared/catalog/records.js';
import { AppError, isAppError } from '../../shared/errors.js';

/** Why a backup without a proven offsite copy was found (the reconcile gap, by kind). */
export const GAP_KINDS = ['unreplicated', 'failed', 'stale', 'offsite_missing', 'offsite_changed'] as const;
export type GapKind = (typeof GAP_KINDS)[number];

/** Why a backup is left alone. */
export type SkipKind = 'no_manifest' | 'replicated' | 'conflict' | 'gave_up' | 'offsite_invalid';

export type Decision = { action: 'replicate'; gap: GapKind } | { action: 'skip'; state: SkipKind };

/** Failure reasons (a bounded label set for metrics and events). */
export const FAILURE_REASONS = [
  'conflict',
  'artifact_invalid',
  'artifact_missing',
  'readback_mismatch',
  'dir_not_writable',
  'disk_full',
  'store_unavailable',
  'store_identity',
  'timeout',
  'internal',
] as const;
export type FailureReason = (typeof FAILURE_REASONS)[number];

/** Failures about the local file itself: retrying cannot help until the local dump changes. */
const LOCAL_ARTIFACT_REASONS: ReadonlySet<string> = new Set<FailureReason>([
  'artifact_invalid',
  'artifact_missing',
]);

export interface BackupLedger {
  /** The manifest's sha256/size; absent = the backup is not complete and is never replicated. */
  manifest?: { sha256: string; sizeBytes: number } | undefined;
  receipt?:
    | Pick<
        OffsiteReceipt,
        'status' | 'key' | 'manifestSha256' | 'contentSha256' | 'reason' | 'at' | 'encryption'
      >
    | undefined;
  /** mtime of the local dump, when it exists. */
  dumpMtimeMs?: number | undefined;
  /** This backup's offsite keys. */
  keys: { dump: string; manifest: string };
  /** Sizes of the offsite objects by key (from a listing); undefined when the listing could not be read. */
  offsite?: ReadonlyMap<string, number> | undefined;
}

export function decide(ledger: BackupLedger): Decision {
  const { manifest, receipt, offsite, keys } = ledger;
  if (!manifest) return { action: 'skip', state: 'no_manifest' };
  if (!receipt) return { action: 'replicate', gap: 'unreplicated' };
  // A receipt about other content (the manifest was rewritten) proves nothing about this one.
  if (receipt.manifestSha256 !== manifest.sha256) return { action: 'replicate', gap: 'stale' };
  switch (receipt.status) {
    case 'replicated': {
      if (receipt.contentSha256 !== manifest.sha256) return { action: 'replicate', gap: 'stale' };
      if (!offsite) return { action: 'skip', state: 'replicated' };
      const dumpSize = offsite.get(keys.dump);
      if (dumpSize === undefined || !offsite.has(keys.manifest))
        return { action: 'replicate', gap: 'offsite_missing' };
      // Cheap tamper/truncation check from the listing; the copy job re-hashes and raises the alarm.
      // (An encrypted copy is held to the stored size its receipt proved.)
      if (dumpSize !== (receipt.encryption?.storedSizeBytes ?? manifest.sizeBytes))
        return { action: 'replicate', gap: 'offsite_changed' };
      return { action: 'skip', state: 'replicated' };
    }
    case 'conflict':
      // An alarm already went out (the receipt names the conflicting key). Once the operator moves that
      // offsite object aside, the key is free and the next reconcile copies again.
      if (offsite && !offsite.has(receipt.key)) return { action: 'replicate', gap: 'offsite_missing' };
      return { action: 'skip', state: 'conflict' };
    case 'failed': {
      if (receipt.reason === 'offsite_invalid') {
        // The re-hash found the stored copy altered; it is never overwritten. Once the operator moves it
        // aside the key is free and the next reconcile copies the local backup again.
        if (offsite && !offsite.has(receipt.key)) return { action: 'replicate', gap: 'offsite_missing' };
        return { action: 'skip', state: 'offsite_invalid' };
      }
      if (receipt.reason && LOCAL_ARTIFACT_REASONS.has(receipt.reason)) {
        const changedSince = ledger.dumpMtimeMs !== undefined && ledger.dumpMtimeMs > Date.parse(receipt.at);
        return changedSince ? { action: 'replicate', gap: 'failed' } : { action: 'skip', state: 'gave_up' };
      }
      return { action: 'replicate', gap: 'failed' };
    }
  }
}

/** The bounded reason of a copy failure, from the error's code (never from its message). */
export function reasonOf(error: unknown): FailureReason {
  if (!isAppError(error)) return 'internal';
  const byDetail = error.details?.reason;
  if (typeof byDetail === 'string' && (FAILURE_REASONS as readonly string[]).includes(byDetail)) {
    return byDetail as FailureReason;
  }
  switch (error.code) {
    case 'offsite_conflict':
      return 'conflict';
    case 'artifact_invalid':
      return 'artifact_invalid';
    case 'dir_not_writable':
      return 'dir_not_writable';
    case 'disk_full':
      return 'disk_full';
    case 'dependency_unavailable':
      return 'store_unavailable';
    case 'timeout':
      return 'timeout';
    default:
      return 'internal';
  }
}

/** Retrying the same copy cannot change these outcomes; the next reconcile decides (see `decide`). */
export function isPermanent(reason: FailureReason): boolean {
  // store_identity: retrying at once cannot bring a store back; the next reconcile tries again.
  return reason === 'conflict' || reason === 'store_identity' || LOCAL_ARTIFACT_REASONS.has(reason);
}

/** Exponential backoff, jittered to [exp/2, exp], capped. */
export function backoffMs(
  attempt: number,
  baseMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp / 2 + random() * (exp / 2));
}

export function conflictError(key: string, expected: string, found: string): AppError {
  return new AppError(
    'offsite_conflict',
    `offsite object ${key} already exists with sha256 ${found.slice(0, 12)}…, not the manifest's ${expected.slice(0, 12)}…; ` +
      'it was not overwritten. Compare both copies; to replicate again, move the offsite object aside ' +
      '(the next reconcile then copies the local backup).',
    { details: { reason: 'conflict', key, expectedSha256: expected, foundSha256: found } },
  );
}
