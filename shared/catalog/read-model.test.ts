// The read model, pure: per-copy verifications both directions (a failed copy is never hidden by a passing
// one, a pass counts only for the copy it was about and only while that copy still holds the manifest's
// bytes), and a project's trust assembled from its entries (tier, note, row, freshness, findings).
import { describe, expect, it } from 'vitest';
import { fakeManifest } from '../../test/replicate-fixtures.js';
import { backupPaths } from './layout.js';
import {
  type CatalogEntry,
  type CopiesEntry,
  copiesNote,
  copyVerifications,
  mayBeRestorable,
  projectTrust,
  restorableOf,
  restoreViewOf,
  verifiedCopies,
} from './read-model.js';
import type { VerifyReceipt } from './records.js';

const SHA = 'a'.repeat(64);
const OTHER = 'b'.repeat(64);

function receipt(source: 'local' | 'offsite', status: VerifyReceipt['status'], sha256 = SHA): VerifyReceipt {
  return {
    backupId: 'b',
    projectId: '550e8400-e29b-41d4-a716-446655440000',
    status,
    sha256,
    source,
    driver: 'local',
    versions: {},
    rungs: [],
    stages: {},
    startedAt: '2026-01-01T00:00:00.000Z',
    finishedAt: '2026-01-01T00:01:00.000Z',
    seconds: 60,
    ...(status === 'restore_verified' ? {} : { error: `${source} broke` }),
  };
}

const replicated = { status: 'replicated' as const, contentSha256: SHA };
const entry = (over: Partial<CopiesEntry> = {}): CopiesEntry => ({ manifest: { sha256: SHA }, ...over });

describe('copyVerifications', () => {
  it("each copy's receipt is its own; receipts for other bytes do not count", () => {
    expect(
      copyVerifications(
        entry({
          verify: receipt('local', 'restore_failed'),
          verifyOffsite: receipt('offsite', 'restore_verified'),
        }),
      ),
    ).toMatchObject({ local: { status: 'restore_failed' }, offsite: { status: 'restore_verified' } });
    expect(copyVerifications(entry({ verify: receipt('local', 'restore_verified', OTHER) }))).toEqual({});
  });

  it('a .verify.json from before per-copy receipts that was about the offsite copy counts for that copy', () => {
    const legacy = receipt('offsite', 'restore_verified');
    expect(copyVerifications(entry({ verify: legacy }))).toEqual({ offsite: legacy });
    const own = receipt('offsite', 'restore_failed');
    expect(copyVerifications(entry({ verify: legacy, verifyOffsite: own }))).toEqual({ offsite: own });
  });
});

describe('verifiedCopies and the restore view', () => {
  it('a failed local verify and a passing offsite one: the offsite copy is proven, the failure shown', () => {
    const e = entry({
      verify: receipt('local', 'restore_failed'),
      verifyOffsite: receipt('offsite', 'restore_verified'),
      offsite: replicated,
    });
    expect(verifiedCopies(e, 'valid')).toEqual(['offsite']);
    expect(restoreViewOf(e, 'valid')).toMatchObject({
      status: 'restore_verified',
      receipt: { source: 'offsite' },
    });
    expect(copiesNote(e, 'valid')).toBe(
      'proven: the offsite copy; the local copy failed its verification: local broke',
    );
  });

  it('the reverse: the local copy proven, the offsite failure shown', () => {
    const e = entry({
      verify: receipt('local', 'restore_verified'),
      verifyOffsite: receipt('offsite', 'restore_failed'),
      offsite: replicated,
    });
    expect(verifiedCopies(e, 'valid')).toEqual(['local']);
    expect(copiesNote(e, 'valid')).toBe(
      'proven: the local copy; the offsite copy failed its verification: offsite broke',
    );
  });

  it('a pass counts only while its copy holds the bytes: a changed local dump, an offsite copy found invalid', () => {
    const local = entry({ verify: receipt('local', 'restore_verified') });
    expect(verifiedCopies(local, 'invalid')).toEqual([]);
    expect(copiesNote(local, 'invalid')).toBe('the local copy was restore-verified but no longer matches');
    const offsite = entry({
      verifyOffsite: receipt('offsite', 'restore_verified'),
      offsite: { status: 'failed', contentSha256: OTHER },
    });
    expect(verifiedCopies(offsite, 'valid')).toEqual([]);
    expect(restoreViewOf(offsite, 'valid').status).toBe('pending');
  });

  it('both proven, both named; neither copy verified: pending; only failures: restore_failed', () => {
    const both = entry({
      verify: receipt('local', 'restore_verified'),
      verifyOffsite: receipt('offsite', 'restore_verified'),
      offsite: replicated,
    });
    expect(verifiedCopies(both, 'valid')).toEqual(['local', 'offsite']);
    expect(copiesNote(both, 'valid')).toBe('proven: the local and the offsite copy');
    expect(restoreViewOf(entry(), 'valid')).toEqual({ status: 'pending' });
    expect(
      restoreViewOf(entry({ verifyOffsite: receipt('offsite', 'restore_failed') }), 'valid').status,
    ).toBe('restore_failed');
    expect(restoreViewOf(entry({ verify: receipt('local', 'unverifiable') }), 'valid').status).toBe(
      'unverifiable',
    );
  });
});

describe("a project's trust from its entries", () => {
  const root = '/srv/flux/backups';
  const projectId = '550e8400-e29b-41d4-a716-446655440000';
  const now = new Date('2026-01-02T00:00:00.000Z');
  const DAY = 86_400_000;
  const full = (backupId: string, over: Partial<CatalogEntry> = {}): CatalogEntry => ({
    projectId,
    backupId,
    paths: backupPaths(root, projectId, backupId),
    manifest: {
      ...fakeManifest(projectId, backupId, { sizeBytes: 1, sha256: SHA }),
      createdAt: '2026-01-01T00:00:00.000Z',
    },
    dump: { sizeBytes: 1, mtimeMs: 1 },
    ...over,
  });
  const A = '01JDZ0000000000000000000AA';
  const B = '01JDZ0000000000000000000BB';

  it('only a complete backup with a passing receipt for its current bytes may be restorable', () => {
    expect(mayBeRestorable(full(A, { verify: receipt('local', 'restore_verified') }))).toBe(true);
    // The receipt-currency rule: a pass for other bytes proves nothing about these.
    expect(mayBeRestorable(full(A, { verify: receipt('local', 'restore_verified', OTHER) }))).toBe(false);
    expect(mayBeRestorable(full(A, { verify: receipt('local', 'restore_failed') }))).toBe(false);
    const { manifest: _, ...noManifest } = full(A, { verify: receipt('local', 'restore_verified') });
    expect(mayBeRestorable(noManifest)).toBe(false);
  });

  it('restorableOf needs the artifact valid now, and says when the data is from and when it was proven', () => {
    const e = full(A, { verify: receipt('local', 'restore_verified') });
    expect(restorableOf(e, { status: 'valid' })).toEqual({
      backupId: A,
      createdAt: '2026-01-01T00:00:00.000Z',
      verifiedAt: '2026-01-01T00:01:00.000Z',
    });
    expect(restorableOf(e, { status: 'invalid', error: 'sha256 differs' })).toBeUndefined();
  });

  it('no believed backup: no_backups and never_verified, with the findings kept', () => {
    const rejected = full(A, {
      findings: [{ code: 'manifest_not_authentic', file: 'manifest', message: 'tag does not verify' }],
    });
    const trust = projectTrust({
      projectId,
      root,
      findings: rejected.findings!.map((f) => ({ projectId, backupId: A, ...f })),
      maxAgeMs: DAY,
      now,
    });
    expect(trust.tier).toBe('no_backups');
    expect(trust.freshness.freshness).toBe('never_verified');
    expect(trust.findings).toEqual([
      {
        projectId,
        backupId: A,
        code: 'manifest_not_authentic',
        file: 'manifest',
        message: 'tag does not verify',
      },
    ]);
    expect(trust.backup).toBeUndefined();
  });

  it('the newest tier with the copies note and its row; freshness from the restorable one given', () => {
    const newest = full(B, {
      verify: receipt('local', 'restore_verified'),
      verifyOffsite: receipt('offsite', 'restore_failed'),
    });
    const older = full(A, { verify: receipt('local', 'restore_verified') });
    const trust = projectTrust({
      projectId,
      slug: 'bloom',
      root,
      newest: { entry: newest, artifact: { status: 'valid' } },
      restorable: restorableOf(older, { status: 'valid' }),
      maxAgeMs: 2 * DAY,
      now,
    });
    expect(trust.tier).toBe('restorable');
    expect(trust.trustworthy).toBe(true);
    expect(trust.message).toContain(
      'proven: the local copy; the offsite copy failed its verification: offsite broke',
    );
    expect(trust.backup).toMatchObject({
      id: B,
      restoreVerificationStatus: 'restore_verified',
      primaryArtifactRelativePath: `${projectId}/${B}.dump`,
    });
    expect(trust.freshness).toMatchObject({ freshness: 'fresh', backupId: A });
    expect(trust.findings).toBeUndefined();
    // The same newest with its dump changed since: the pass no longer counts, and the tier says so.
    const changed = projectTrust({
      projectId,
      slug: 'bloom',
      root,
      newest: { entry: newest, artifact: { status: 'invalid', error: 'sha256 differs' } },
      maxAgeMs: 2 * DAY,
      now,
    });
    expect(changed.tier).toBe('pipeline_incomplete');
    expect(changed.backup?.restoreVerificationStatus).toBe('pending');
    expect(changed.freshness.freshness).toBe('never_verified');
  });
});
