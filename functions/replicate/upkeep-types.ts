// The shapes upkeep's modules share (upkeep.ts runs the sweep; copy-rehash.ts, offsite-expiry.ts and
// offsite-inventory.ts each do one part of it).

import type { Catalog } from '../../shared/catalog/catalog.js';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import type { Manifest } from '../../shared/catalog/records.js';
import type { Emit } from '../../shared/kit/runtime.js';
import type { Logger } from '../../shared/log.js';
import type { MetricsRegistry } from '../../shared/metrics.js';
import type { AgeIdentities } from '../../shared/offsite/age.js';
import type { OffsiteObject, OffsiteStore } from '../../shared/offsite/types.js';
import type { CopyPlace, RetainedCopy } from './rotation.js';
import type { UpkeepState } from './upkeep-state.js';

/** The offsite receipt's reason when a re-hash found the offsite copy missing or different. */
export const OFFSITE_INVALID = 'offsite_invalid';

export interface SweepSummary {
  startedAt: string;
  seconds: number;
  retained: Record<CopyPlace, { copies: number; bytes: number }>;
  rehashed: Record<CopyPlace, number>;
  /** The copy ids read this sweep, in order. */
  rehashedCopies: string[];
  rehashedBytes: number;
  invalid: Array<{ place: CopyPlace; projectId: string; backupId: string; reason: string }>;
  expired: Array<{ projectId: string; backupId: string }>;
  listingError?: string;
}

/** A backup as the offsite listing shows it: its dump and manifest objects. */
export interface OffsiteBackup {
  projectId: string;
  backupId: string;
  dump?: OffsiteObject;
  manifest?: OffsiteObject;
}

export type LocalEntry = CatalogEntry & { manifest: Manifest };

/** One retained copy of this sweep. */
export interface Work {
  copy: RetainedCopy;
  place: CopyPlace;
  projectId: string;
  backupId: string;
  /** The backup's local catalog entry, when it still has one. */
  entry?: LocalEntry;
}

export interface UpkeepContext {
  catalog: Catalog;
  store: OffsiteStore;
  log: Logger;
  metrics: MetricsRegistry;
  emit: Emit;
  /** Aborted when replicate stops. */
  signal: AbortSignal;
  /** FLUX_MANIFEST_SECRETS: an offsite manifest read for an offsite-only copy must be authentic. */
  manifestSecrets: readonly string[];
  /** The loaded state (upkeep-state.ts); sweeps load it before anything else runs. */
  state(): UpkeepState;
  /** A copy job of replicate's is running for this backup: its receipt is the job's to write now. */
  isCopying(projectId: string, backupId: string): boolean;
  /** FLUX_BACKUP_AGE_IDENTITY_FILE's identities: prove an encrypted copy that no receipt describes. */
  identities?: () => AgeIdentities | undefined;
}

export const keyOf = (projectId: string, backupId: string) => `${projectId}/${backupId}`;
