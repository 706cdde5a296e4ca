// The trust read model: what a backup's files say (a CatalogEntry, read by catalog.ts) turned into facts
// (factsOf), the facts into the tier (classifier.ts) and the project's trust (projectTrust), and the same
// facts into the CLI-compatible API row (apiBackupOf) in the upstream flux CLI's words. Pure functions over
// data: no file is read here. Two rules live here and nowhere else: a verify receipt counts only for the
// manifest (sha256) it proved and only for the copy it was about (copyVerifications), and our words map to
// upstream's so that its classifier (packages/core/src/backup-trust.ts in justinkemersion/Flux) reads our
// rows with the tier we give them; our richer words travel in our own fields.
import path from 'node:path';
import {
  type ArtifactStatus,
  type BackupFacts,
  type BackupStatus,
  classify,
  type OffsiteStatus,
  type RestoreStatus,
  type Trust,
  type TrustTier,
} from './classifier.js';
import { type Freshness, freshnessOf, isRestorable, type RestorableFacts } from './freshness.js';
import type { BackupPaths, CatalogFile } from './layout.js';
import type { BackupState, Manifest, OffsiteReceipt, RehashRecord, VerifyReceipt } from './records.js';

/**
 * Why a record beside a backup is not believed: it does not authenticate under FLUX_MANIFEST_SECRETS,
 * or it names another backup than its path. The record then counts as absent.
 */
export const CATALOG_FINDING_CODES = [
  'manifest_not_authentic',
  'manifest_misplaced',
  'receipt_not_authentic',
  'receipt_misplaced',
] as const;
export type CatalogFindingCode = (typeof CATALOG_FINDING_CODES)[number];

export interface CatalogFinding {
  code: CatalogFindingCode;
  /** Which record: `manifest`, `verify`, `verifyOffsite`, `offsite`, `rehash`. */
  file: CatalogFile;
  message: string;
}

export interface CatalogEntry {
  projectId: string;
  backupId: string;
  paths: BackupPaths;
  manifest?: Manifest;
  state?: BackupState;
  offsite?: OffsiteReceipt;
  /** verify's receipt for the local dump (`.verify.json`; see copyVerifications for one written before per-copy receipts). */
  verify?: VerifyReceipt;
  /** verify's receipt for the offsite copy (`.verify-offsite.json`). */
  verifyOffsite?: VerifyReceipt;
  /** replicate's re-hash found the dump not matching its manifest (see RehashRecordSchema). */
  rehash?: RehashRecord;
  /** Set when a sidecar exists but cannot be parsed. */
  unreadable?: string;
  /** Records found here but not believed (each counts as absent): see CatalogFinding. */
  findings?: CatalogFinding[];
  /** The manifest that lies here but was not believed (findings say why): never a source of facts. */
  rejectedManifest?: Manifest;
  dump?: { sizeBytes: number; mtimeMs: number };
}

export interface ArtifactCheck {
  status: ArtifactStatus;
  error?: string;
}

/** One copy's verification as the API rows show it. */
export interface CopyVerificationView {
  status: VerifyReceipt['status'];
  finishedAt: string;
  error: string | null;
  /** The copy's verification passed and the copy still holds these bytes: it counts as restorable. */
  proven: boolean;
}

/**
 * The backup as the CLI-compatible API returns it. The upstream fields (`status`, `artifactValidationStatus`,
 * `offsiteStatus`, `restoreVerificationStatus`) speak upstream's words (upstream…Status below); the `…Outcome` fields
 * are ours, with the states upstream has no word for (`missing`, `conflict`, `unverifiable`).
 */
export interface ApiBackup {
  id: string;
  projectId: string;
  kind: string;
  format: 'custom';
  status: UpstreamBackupStatus;
  sizeBytes: number | null;
  checksumSha256: string | null;
  createdAt: string;
  completedAt: string | null;
  /** The dump's path relative to FLUX_BACKUPS_LOCAL_DIR (`<projectId>/<backupId>.dump`). */
  primaryArtifactRelativePath: string;
  /** The dump's path on the server running dump. */
  primaryArtifactAbsolutePath: string;
  localArtifactStatus: 'present' | 'missing';
  offsiteStatus: UpstreamOffsiteStatus;
  /** Ours: adds `conflict` (a different copy is already offsite), which upstream reads as failed. */
  offsiteOutcome: OffsiteStatus;
  offsiteKey: string | null;
  offsiteContentSha256: string | null;
  offsiteReplicatedAt: string | null;
  /** Manifest arrival to offsite proven, as replicate measured it. */
  offsiteLagSeconds: number | null;
  /**
   * How the offsite copy is stored: `age` and the public keys it was encrypted to (whose identities
   * open it; empty = found encrypted, recipients not known), or null for a plain copy or none.
   */
  offsiteEncryption: { format: 'age'; recipients: string[] } | null;
  artifactValidationStatus: UpstreamArtifactStatus;
  /** Ours: adds `missing` (the local dump file is gone), which upstream reads as artifact_invalid. */
  artifactValidationOutcome: ArtifactStatus;
  artifactValidationError: string | null;
  restoreVerificationStatus: UpstreamRestoreStatus;
  /** Ours: adds `unverifiable` (verify could not run: never a pass), which upstream reads as pending. */
  restoreVerificationOutcome: RestoreStatus;
  restoreVerificationAt: string | null;
  restoreVerificationError: string | null;
  restoreVerificationSource: 'local' | 'offsite' | null;
  /** The copies proven restorable for the current manifest (each by its own verification). */
  verifiedCopies: CopyName[];
  /** Each copy's own verification for the current manifest, null when it has none. */
  copyVerifications: Record<CopyName, CopyVerificationView | null>;
  error: string | null;
  /** Records of this backup not believed (manifest_not_authentic, manifest_misplaced, …); absent when none. */
  findings?: CatalogFinding[];
}

/** A catalog finding with the backup it is about, as trust() and the status list them. */
export interface BackupFinding extends CatalogFinding {
  projectId: string;
  backupId: string;
}

// Each copy of a backup carries its own verification: the local dump's receipt (`.verify.json`) and the
// offsite copy's (`.verify-offsite.json`): which receipt is about which copy, which copies are proven
// restorable for the current manifest, and the one restore status the trust view gives the backup. A
// passing verification of one copy never hides a failed one of the other.

export const COPY_NAMES = ['local', 'offsite'] as const;
export type CopyName = (typeof COPY_NAMES)[number];

/** What the copy rules read of a catalog entry. */
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

// The upstream CLI's vocabulary on the CLI-compatible routes: our words (BackupFacts) in the words
// upstream's classifier reads.

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

// The facts of one backup, and its API row.

export function createdAtOf(entry: Pick<CatalogEntry, 'manifest' | 'state'>): string {
  return entry.manifest?.createdAt ?? entry.state?.createdAt ?? new Date(0).toISOString();
}

/** What the classifier reads of a backup: its status, artifact, restore and offsite words, and why. */
export function factsOf(entry: CatalogEntry, artifact: ArtifactCheck): BackupFacts {
  const status: BackupStatus = entry.manifest
    ? 'completed'
    : entry.state?.status === 'running'
      ? 'running'
      : 'failed';
  // Each copy's own verification: restore_verified when a valid copy is proven (restoreViewOf).
  const { status: restore, receipt: verify } = restoreViewOf(entry, artifact.status);
  const offsite: OffsiteStatus = entry.offsite
    ? entry.offsite.status === 'replicated' && entry.offsite.contentSha256 !== entry.manifest?.sha256
      ? 'failed'
      : entry.offsite.status
    : 'pending';
  const error =
    status === 'failed'
      ? (entry.state?.error ?? entry.unreadable ?? entry.findings?.map((f) => f.message).join('; '))
      : artifact.status !== 'valid'
        ? artifact.error
        : verify && verify.status !== 'restore_verified'
          ? verify.error
          : undefined;
  return {
    backupId: entry.backupId,
    status,
    createdAt: createdAtOf(entry),
    artifact: artifact.status,
    restore,
    offsite,
    error,
  };
}

/** The backup as the CLI-compatible API answers it (ApiBackup). */
export function apiBackupOf(entry: CatalogEntry, artifact: ArtifactCheck, root: string): ApiBackup {
  const facts = factsOf(entry, artifact);
  const m = entry.manifest;
  const v = restoreViewOf(entry, artifact.status).receipt;
  const restoreStatus = upstreamRestoreStatus(facts);
  const proven = verifiedCopies(entry, artifact.status);
  const perCopy = copyVerifications(entry);
  const viewOf = (copy: CopyName): CopyVerificationView | null => {
    const r = perCopy[copy];
    return r
      ? {
          status: r.status,
          finishedAt: r.finishedAt,
          error: r.status === 'restore_verified' ? null : (r.error ?? r.reason ?? null),
          proven: proven.includes(copy),
        }
      : null;
  };
  return {
    id: entry.backupId,
    projectId: entry.projectId,
    kind: m?.kind ?? entry.state?.kind ?? 'project_db',
    format: 'custom',
    status: upstreamBackupStatus(facts.status),
    sizeBytes: m?.sizeBytes ?? null,
    checksumSha256: m?.sha256 ?? null,
    createdAt: createdAtOf(entry),
    completedAt: m?.completedAt ?? null,
    primaryArtifactRelativePath: path.relative(root, entry.paths.dump),
    primaryArtifactAbsolutePath: path.resolve(entry.paths.dump),
    localArtifactStatus: entry.dump ? 'present' : 'missing',
    offsiteStatus: upstreamOffsiteStatus(facts.offsite),
    offsiteOutcome: facts.offsite,
    offsiteKey: entry.offsite?.key ?? null,
    offsiteContentSha256: entry.offsite?.contentSha256 ?? null,
    offsiteReplicatedAt: entry.offsite?.status === 'replicated' ? entry.offsite.at : null,
    offsiteLagSeconds: entry.offsite?.status === 'replicated' ? (entry.offsite.lagSeconds ?? null) : null,
    offsiteEncryption: entry.offsite?.encryption
      ? { format: entry.offsite.encryption.format, recipients: entry.offsite.encryption.recipients }
      : null,
    artifactValidationStatus: upstreamArtifactStatus(artifact.status),
    artifactValidationOutcome: artifact.status,
    artifactValidationError: artifact.error ?? null,
    restoreVerificationStatus: restoreStatus,
    restoreVerificationOutcome: facts.restore,
    restoreVerificationAt: v?.finishedAt ?? null,
    restoreVerificationError:
      v && v.status !== 'restore_verified'
        ? (v.error ?? v.reason ?? null)
        : v && restoreStatus !== 'restore_verified'
          ? `the verification${v.source === 'offsite' ? ' of the offsite copy' : ''} was of bytes the local dump no longer holds (${artifact.error ?? artifact.status})`
          : null,
    restoreVerificationSource: v?.source ?? null,
    verifiedCopies: proven,
    copyVerifications: { local: viewOf('local'), offsite: viewOf('offsite') },
    error: facts.status === 'failed' ? (facts.error ?? null) : (artifact.error ?? null),
    ...(entry.findings ? { findings: entry.findings } : {}),
  };
}

/** A project's trust as the status, the gates and the metrics read it. */
export type ProjectTrust = Trust & { backup?: ApiBackup; freshness: Freshness; findings?: BackupFinding[] };

/**
 * Whether an entry can be a restorable backup at all: complete, and a copy's verification passed for its
 * current manifest. Only these need their artifact checked to find the newest restorable one.
 */
export function mayBeRestorable(entry: CatalogEntry): boolean {
  return (
    entry.manifest !== undefined &&
    Object.values(copyVerifications(entry)).some((r) => r.status === 'restore_verified')
  );
}

/** The entry as freshness reads it, when it is restorable with this artifact check. */
export function restorableOf(entry: CatalogEntry, artifact: ArtifactCheck): RestorableFacts | undefined {
  const facts = factsOf(entry, artifact);
  if (!isRestorable(facts)) return undefined;
  const verifiedAt = restoreViewOf(entry, artifact.status).receipt?.finishedAt;
  return { backupId: entry.backupId, createdAt: facts.createdAt, verifiedAt };
}

export interface TrustInput {
  projectId: string;
  slug?: string | undefined;
  /** The catalog root, for the API row's relative path. */
  root: string;
  /** The newest believed backup with its artifact check; absent when the project has none. */
  newest?: { entry: CatalogEntry; artifact: ArtifactCheck } | undefined;
  /** The newest restorable backup (restorableOf), when there is one. */
  restorable?: RestorableFacts | undefined;
  findings?: readonly BackupFinding[];
  maxAgeMs: number;
  now: Date;
}

/**
 * The newest backup's tier with a note naming which copy is proven and any copy whose verification did
 * not pass (never hidden by the other's), its API row, and the project's freshness.
 */
export function projectTrust(input: TrustInput): ProjectTrust {
  const { newest, now, slug } = input;
  const findings = input.findings?.length ? { findings: [...input.findings] } : {};
  const freshness = freshnessOf(input.restorable, input.maxAgeMs, now, slug);
  if (!newest) return { ...classify(undefined, now, slug), freshness, ...findings };
  const { entry, artifact } = newest;
  const trust = classify(factsOf(entry, artifact), now, slug);
  const note = copiesNote(entry, artifact.status);
  return {
    ...trust,
    ...(note && entry.manifest ? { message: `${trust.message} (${note})` } : {}),
    backup: apiBackupOf(entry, artifact, input.root),
    freshness,
    ...findings,
  };
}
