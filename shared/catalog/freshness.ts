// Freshness, beside the trust tier: how old a project's newest restorable backup is against its maxAge.
// `fresh` (younger than maxAge), `stale` (older), `never_verified` (no backup of the project is
// restorable). Pure functions over data; the destructive gate (migrate, an in-place restore) asks for a
// restorable newest backup AND a fresh project. The upstream CLI reads the same fact as its
// `platformMinimumBackupFreshness` block, built here too.
import { formatDuration } from '../schedule.js';
import { type BackupFacts, labelsOf, type Trust } from './classifier.js';

export const FRESHNESS_STATES = ['fresh', 'stale', 'never_verified'] as const;
export type FreshnessState = (typeof FRESHNESS_STATES)[number];

/** The newest restorable backup's facts freshness is computed from. */
export interface RestorableFacts {
  backupId: string;
  /** When its dump started: the data is as of this instant (what a restore would bring back). */
  createdAt: string;
  /** When its restore verification finished. */
  verifiedAt?: string | undefined;
}

export interface Freshness {
  freshness: FreshnessState;
  /** Age of the newest restorable backup in seconds (null when there is none). */
  ageSeconds: number | null;
  maxAgeSeconds: number;
  backupId?: string;
  createdAt?: string;
  verifiedAt?: string;
  message: string;
  /** The command that makes the project fresh again, when it is not. */
  next?: string;
}

/** Whether a backup counts for freshness: complete, its artifact valid and restore-verified. */
export function isRestorable(facts: BackupFacts): boolean {
  return facts.status === 'completed' && labelsOf(facts).restoreVerified;
}

export function freshnessOf(
  newest: RestorableFacts | undefined,
  maxAgeMs: number,
  now: Date = new Date(),
  slug = '<slug>',
): Freshness {
  const maxAgeSeconds = Math.round(maxAgeMs / 1000);
  const next = `flux-ops backup create -p ${slug} && flux-ops backup verify -p ${slug} --latest`;
  if (!newest) {
    return {
      freshness: 'never_verified',
      ageSeconds: null,
      maxAgeSeconds,
      message: 'no backup of the project is restorable (complete, artifact valid and restore-verified)',
      next,
    };
  }
  const ageMs = Math.max(0, now.getTime() - Date.parse(newest.createdAt));
  const ageSeconds = Math.round(ageMs / 1000);
  const facts = {
    backupId: newest.backupId,
    createdAt: newest.createdAt,
    ...(newest.verifiedAt ? { verifiedAt: newest.verifiedAt } : {}),
  };
  if (ageMs < maxAgeMs) {
    return {
      freshness: 'fresh',
      ageSeconds,
      maxAgeSeconds,
      ...facts,
      message: `the newest restorable backup is ${formatDuration(ageMs)} old (maxAge ${formatDuration(maxAgeMs)})`,
    };
  }
  return {
    freshness: 'stale',
    ageSeconds,
    maxAgeSeconds,
    ...facts,
    message: `the newest restorable backup (${newest.backupId}) is ${formatDuration(ageMs)} old, older than maxAge ${formatDuration(maxAgeMs)}`,
    next,
  };
}

export interface GateVerdict {
  passes: boolean;
  /** What refused, in words with the next command; or what passed. */
  message: string;
  next?: string;
}

/**
 * The destructive gate: a restorable newest backup (the tier) and a fresh project (a restorable backup
 * younger than maxAge). Either refusal says why, how old the backup is, and the command to run.
 */
export function destructiveGate(
  trust: Pick<Trust, 'tier' | 'message' | 'next'>,
  fresh: Freshness,
): GateVerdict {
  if (trust.tier !== 'restorable') {
    return {
      passes: false,
      message: `${trust.message} (tier ${trust.tier}); ${fresh.message}`,
      ...(trust.next ? { next: trust.next } : fresh.next ? { next: fresh.next } : {}),
    };
  }
  if (fresh.freshness !== 'fresh') {
    return {
      passes: false,
      message: `the backup is restorable but stale: ${fresh.message}`,
      ...(fresh.next ? { next: fresh.next } : {}),
    };
  }
  return { passes: true, message: `restorable and fresh: ${fresh.message}` };
}

/** The upstream CLI's `platformMinimumBackupFreshness` block of a backup list, in its own words. */
export interface UpstreamFreshness {
  effectivePolicy: { intervalDays: number; retentionCount: number; retentionDays: number };
  freshness: {
    tier: FreshnessState | 'no_backups';
    ageDays: number | null;
    dueInDays: number | null;
    latestRestoreVerifiedAt: string | null;
    platformBackupCompliant: boolean;
    detail: string;
  };
}

const DAY_S = 86_400;
const days = (seconds: number) => Math.round((seconds / DAY_S) * 1000) / 1000;

export function upstreamFreshnessOf(
  fresh: Freshness,
  policy: { retentionCount: number; retentionDays: number },
  hasBackups: boolean,
): UpstreamFreshness {
  return {
    effectivePolicy: {
      intervalDays: days(fresh.maxAgeSeconds),
      retentionCount: policy.retentionCount,
      retentionDays: policy.retentionDays,
    },
    freshness: {
      tier: !hasBackups ? 'no_backups' : fresh.freshness,
      ageDays: fresh.ageSeconds === null ? null : days(fresh.ageSeconds),
      dueInDays: fresh.ageSeconds === null ? null : days(fresh.maxAgeSeconds - fresh.ageSeconds),
      latestRestoreVerifiedAt: fresh.verifiedAt ?? null,
      platformBackupCompliant: fresh.freshness === 'fresh',
      detail: fresh.message,
    },
  };
}
