import { describe, expect, it } from 'vitest';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import { owedVerification } from './reconcile.js';

const SHA = 'a'.repeat(64);
const OTHER = 'b'.repeat(64);
const CREATED = ['flux.backup.created'];
const REPLICATED = ['flux.backup.replicated'];
type Entry = Pick<CatalogEntry, 'manifest' | 'verify' | 'verifyOffsite' | 'offsite' | 'dump'>;

function entry(
  over: { sha?: string; verified?: string; verifiedOffsite?: string; offsite?: string; dump?: boolean } = {},
): Entry {
  return {
    manifest: { sha256: over.sha ?? SHA } as CatalogEntry['manifest'],
    ...(over.dump === false ? {} : { dump: { sizeBytes: 1, mtimeMs: 1 } }),
    ...(over.verified
      ? { verify: { sha256: over.verified, source: 'local' } as CatalogEntry['verify'] }
      : {}),
    ...(over.verifiedOffsite
      ? { verifyOffsite: { sha256: over.verifiedOffsite, source: 'offsite' } as CatalogEntry['verify'] }
      : {}),
    ...(over.offsite
      ? { offsite: { status: 'replicated', contentSha256: over.offsite } as CatalogEntry['offsite'] }
      : {}),
  };
}

describe('owedVerification', () => {
  it('owes nothing for a backup that is not complete, whatever the policy', () => {
    expect(owedVerification({ dump: { sizeBytes: 1, mtimeMs: 1 } }, CREATED)).toBeUndefined();
    expect(owedVerification({}, [...CREATED, ...REPLICATED])).toBeUndefined();
  });

  it('owes nothing when verify is on demand only (FLUX_VERIFY_ON=none)', () => {
    expect(owedVerification(entry({ offsite: SHA }), [])).toBeUndefined();
  });

  it('created: a complete backup without a receipt owes a verification of its local copy', () => {
    expect(owedVerification(entry(), CREATED)).toBe('local');
  });

  it('a receipt for this content settles it; one for other content (a rewritten manifest) does not', () => {
    expect(owedVerification(entry({ verified: SHA }), CREATED)).toBeUndefined();
    expect(owedVerification(entry({ verified: OTHER }), CREATED)).toBe('local');
  });

  it('created: with the local dump gone, the proven offsite copy is verified instead (else nothing)', () => {
    expect(owedVerification(entry({ dump: false, offsite: SHA }), CREATED)).toBe('offsite');
    expect(owedVerification(entry({ dump: false }), CREATED)).toBeUndefined();
    expect(owedVerification(entry({ dump: false, offsite: OTHER }), CREATED)).toBeUndefined();
  });

  it('replicated: only a backup whose offsite copy was proven for this content, verified from there', () => {
    expect(owedVerification(entry(), REPLICATED)).toBeUndefined();
    expect(owedVerification(entry({ offsite: OTHER }), REPLICATED)).toBeUndefined();
    expect(owedVerification(entry({ offsite: SHA }), REPLICATED)).toBe('offsite');
    expect(owedVerification(entry({ offsite: SHA, verifiedOffsite: SHA }), REPLICATED)).toBeUndefined();
  });

  it("each copy its own receipt: the local copy's does not settle the offsite one, nor the reverse", () => {
    // Replicated asks for the offsite copy's own verification, whatever the local copy's receipt says.
    expect(owedVerification(entry({ offsite: SHA, verified: SHA }), REPLICATED)).toBe('offsite');
    expect(owedVerification(entry({ offsite: SHA, verifiedOffsite: SHA }), CREATED)).toBe('local');
    expect(owedVerification(entry({ offsite: SHA, verified: SHA }), CREATED)).toBeUndefined();
    expect(owedVerification(entry({ offsite: SHA, verified: SHA }), [...CREATED, ...REPLICATED])).toBe(
      'offsite',
    );
    // With the local dump gone, only the offsite copy's own receipt settles it.
    expect(owedVerification(entry({ dump: false, offsite: SHA, verified: SHA }), CREATED)).toBe('offsite');
    expect(
      owedVerification(entry({ dump: false, offsite: SHA, verifiedOffsite: SHA }), CREATED),
    ).toBeUndefined();
    // A receipt of the offsite copy for other content (an older manifest) settles nothing.
    expect(owedVerification(entry({ offsite: SHA, verifiedOffsite: OTHER }), REPLICATED)).toBe('offsite');
  });
});
