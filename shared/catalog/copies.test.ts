// Per-copy verifications, both directions: a failed copy is never hidden by a passing one, a pass counts
// only for the copy it was about and only while that copy still holds the manifest's bytes.
import { describe, expect, it } from 'vitest';
import { type CopiesEntry, copiesNote, copyVerifications, restoreViewOf, verifiedCopies } from './copies.js';
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
