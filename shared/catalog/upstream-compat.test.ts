// Every catalog state, read two ways through the read model: our classifier over factsOf, and the upstream
// flux CLI's classifier (rewritten in test/support/upstream-classifier.ts) over the row apiBackupOf gives
// the CLI-compatible list. The tiers must agree for every state, and every upstream field must be one of upstream's words.
import { describe, expect, it } from 'vitest';
import { fakeVerifyReceipt } from '../../test/replicate-fixtures.js';
import { upstreamClassify } from '../../test/support/upstream-classifier.js';
import {
  type ArtifactStatus,
  classify,
  PIPELINE_GRACE_MS,
  TRUST_TIERS,
  type TrustTier,
} from './classifier.js';
import { backupPaths } from './layout.js';
import {
  type ArtifactCheck,
  apiBackupOf,
  type CatalogEntry,
  factsOf,
  UPSTREAM_ARTIFACT_STATUSES,
  UPSTREAM_BACKUP_STATUSES,
  UPSTREAM_OFFSITE_STATUSES,
  UPSTREAM_RESTORE_STATUSES,
  upstreamTierOf,
} from './read-model.js';
import type { Manifest, OffsiteReceipt, VerifyReceipt } from './records.js';

const root = '/srv/flux/backups';
const projectId = '550e8400-e29b-41d4-a716-446655440000';
const backupId = '01JDZ0000000000000000000AA';
const now = new Date('2026-11-26T12:00:00Z');
const SHA = 'a'.repeat(64);
const OTHER_SHA = 'b'.repeat(64);

const AGES = { recent: 60_000, old: PIPELINE_GRACE_MS + 60_000 } as const;
const STATUSES = ['completed', 'running', 'failed'] as const;
const ARTIFACTS: ArtifactStatus[] = ['valid', 'invalid', 'missing', 'pending'];
const RESTORES = [
  'none',
  'restore_verified',
  'restore_failed',
  'unverifiable',
  'verified_other_bytes',
] as const;
const OFFSITES = ['none', 'replicated', 'replicated_other_bytes', 'failed', 'conflict'] as const;

function manifestAt(createdAt: string): Manifest {
  return {
    manifestVersion: 1,
    backupId,
    projectId,
    projectHash: '550e840',
    slug: 'bloom',
    kind: 'tenant_export',
    format: 'custom',
    file: `${backupId}.dump`,
    sizeBytes: 4096,
    sha256: SHA,
    createdAt,
    completedAt: createdAt,
    source: {
      engine: 'v2_shared',
      host: 'h',
      port: 5432,
      database: 'd',
      systemIdentifier: '1',
      serverVersion: '17',
      serverVersionNum: 170000,
    },
    pgDump: { version: '17', major: 17, flags: [] },
    snapshot: { id: 's', isolation: 'repeatable read', takenAt: createdAt },
    schemas: [],
    tables: [],
    sequences: [],
    extensions: [],
    roles: [],
  };
}

const verifyReceipt = (status: VerifyReceipt['status'], sha256: string, at: string) =>
  fakeVerifyReceipt(projectId, backupId, sha256, status, at);

function offsiteReceipt(kind: (typeof OFFSITES)[number], at: string): OffsiteReceipt | undefined {
  if (kind === 'none') return undefined;
  const status = kind === 'replicated_other_bytes' ? 'replicated' : kind;
  return {
    backupId,
    projectId,
    status,
    store: 'fs',
    key: `${projectId}/${backupId}.dump`,
    ...(status === 'replicated' ? { contentSha256: kind === 'replicated' ? SHA : OTHER_SHA } : {}),
    manifestSha256: SHA,
    attempts: 1,
    at,
  };
}

interface State {
  name: string;
  entry: CatalogEntry;
  artifact: ArtifactCheck;
}

function states(): State[] {
  const out: State[] = [];
  for (const [ageName, ageMs] of Object.entries(AGES)) {
    const createdAt = new Date(now.getTime() - ageMs).toISOString();
    for (const status of STATUSES) {
      for (const artifact of ARTIFACTS) {
        for (const restore of RESTORES) {
          for (const offsite of OFFSITES) {
            const entry: CatalogEntry = {
              projectId,
              backupId,
              paths: backupPaths(root, projectId, backupId),
            };
            if (status === 'completed') entry.manifest = manifestAt(createdAt);
            else
              entry.state = {
                backupId,
                projectId,
                kind: 'tenant_export',
                status,
                createdAt,
                updatedAt: createdAt,
                ...(status === 'failed' ? { error: 'pg_dump exited 1' } : {}),
              };
            if (artifact !== 'missing') entry.dump = { sizeBytes: 4096, mtimeMs: 1 };
            if (restore !== 'none') {
              entry.verify =
                restore === 'verified_other_bytes'
                  ? verifyReceipt('restore_verified', OTHER_SHA, createdAt)
                  : verifyReceipt(restore, SHA, createdAt);
            }
            const receipt = offsiteReceipt(offsite, createdAt);
            if (receipt) entry.offsite = receipt;
            out.push({
              name: `${status} × artifact ${artifact} × restore ${restore} × offsite ${offsite} × ${ageName}`,
              entry,
              artifact:
                artifact === 'valid' ? { status: 'valid' } : { status: artifact, error: `${artifact}!` },
            });
          }
        }
      }
    }
  }
  return out;
}

describe('the upstream CLI reads our CLI-route rows as we do', () => {
  const all = states();

  it('every catalog state: our tier and upstream’s tier from the row are the same', () => {
    const mismatches: string[] = [];
    const seen = new Set<TrustTier>();
    for (const { name, entry, artifact } of all) {
      const ours = classify(factsOf(entry, artifact), now, 'bloom');
      const row = apiBackupOf(entry, artifact, root);
      seen.add(ours.tier);
      const theirs = upstreamClassify([row]);
      if (upstreamTierOf(ours.tier) !== theirs)
        mismatches.push(`${name}: ours ${ours.tier}, upstream ${theirs}`);
      // Upstream's gate lets a destructive action through only for restorable: so must ours.
      if ((theirs === 'restorable') !== ours.trustworthy)
        mismatches.push(`${name}: destructive gates differ`);
    }
    expect(mismatches).toEqual([]);
    expect(all.length).toBe(2 * 3 * 4 * 5 * 5);
    // The table reaches every tier but no_backups (the empty list, below).
    expect([...seen].sort()).toEqual(TRUST_TIERS.filter((t) => t !== 'no_backups').sort());
    expect(upstreamClassify([])).toBe(classify(undefined, now).tier);
  });

  it('every upstream field is one of upstream’s words; our richer words are in our own fields', () => {
    const words = {
      status: new Set<string>(),
      artifactValidationStatus: new Set<string>(),
      offsiteStatus: new Set<string>(),
      restoreVerificationStatus: new Set<string>(),
    };
    for (const { entry, artifact } of all) {
      const row = apiBackupOf(entry, artifact, root);
      for (const key of Object.keys(words) as Array<keyof typeof words>) words[key].add(row[key]);
    }
    const within = (found: Set<string>, allowed: readonly string[]) =>
      [...found].every((w) => allowed.includes(w));
    expect(within(words.status, UPSTREAM_BACKUP_STATUSES)).toBe(true);
    expect(within(words.artifactValidationStatus, UPSTREAM_ARTIFACT_STATUSES)).toBe(true);
    expect(within(words.offsiteStatus, UPSTREAM_OFFSITE_STATUSES)).toBe(true);
    expect(within(words.restoreVerificationStatus, UPSTREAM_RESTORE_STATUSES)).toBe(true);
    expect([...words.status].sort()).toEqual(['complete', 'failed', 'running']);
  });

  it('unverifiable reads as pending upstream, with the reason; never a pass, never a failure', () => {
    const state = all.find((s) => s.name.startsWith('completed × artifact valid × restore unverifiable'))!;
    const row = apiBackupOf(state.entry, state.artifact, root);
    expect(row).toMatchObject({
      status: 'complete',
      artifactValidationStatus: 'artifact_valid',
      restoreVerificationStatus: 'pending',
      restoreVerificationOutcome: 'unverifiable',
      restoreVerificationError: 'unverifiable: why',
    });
    expect(upstreamClassify([row])).toBe('not_restore_verified');
  });

  it('a missing dump, a conflicting offsite copy: upstream words, our words beside them', () => {
    const state = all.find((s) =>
      s.name.startsWith('completed × artifact missing × restore none × offsite conflict'),
    )!;
    const row = apiBackupOf(state.entry, state.artifact, root);
    expect(row).toMatchObject({
      artifactValidationStatus: 'artifact_invalid',
      artifactValidationOutcome: 'missing',
      offsiteStatus: 'failed',
      offsiteOutcome: 'conflict',
      localArtifactStatus: 'missing',
      primaryArtifactRelativePath: `${projectId}/${backupId}.dump`,
      primaryArtifactAbsolutePath: `${root}/${projectId}/${backupId}.dump`,
    });
  });

  it('the table can fail: our internal words fed to upstream’s classifier disagree', () => {
    // The facts in our own words (completed, valid, …) are what the CLI routes used to send.
    const disagreements = all.filter(({ entry, artifact }) => {
      const facts = factsOf(entry, artifact);
      const ours = classify(facts, now).tier;
      const oldRow = {
        status: facts.status,
        artifactValidationStatus: facts.artifact,
        restoreVerificationStatus: facts.restore === 'unverifiable' ? 'skipped' : facts.restore,
      };
      return upstreamTierOf(ours) !== upstreamClassify([oldRow]);
    });
    // Every complete backup read as "Latest backup not complete", the symptom upstream's CLI showed.
    const completed = all.filter(({ entry }) => entry.manifest);
    expect(disagreements.map((s) => s.name)).toEqual(completed.map((s) => s.name));
  });
});
