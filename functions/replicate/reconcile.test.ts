import { describe, expect, it } from 'vitest';
import { AppError } from '../../shared/errors.js';
import { type BackupLedger, backoffMs, conflictError, decide, isPermanent, reasonOf } from './reconcile.js';

const SHA = 'a'.repeat(64);
const OTHER = 'b'.repeat(64);
const keys = { dump: 'p/b.dump', manifest: 'p/b.manifest.json' };
const manifest = { sha256: SHA, sizeBytes: 100 };
const at = '2025-01-01T00:00:00.000Z';
const replicated = {
  status: 'replicated' as const,
  key: keys.dump,
  manifestSha256: SHA,
  contentSha256: SHA,
  at,
};
const listed = (entries: Array<[string, number]>) => new Map(entries);
const both = listed([
  [keys.dump, 100],
  [keys.manifest, 900],
]);

function ledger(over: Partial<BackupLedger>): BackupLedger {
  return { manifest, keys, ...over };
}

describe('decide', () => {
  it('leaves an offsite copy a re-hash found altered (never overwritten) until it is moved aside', () => {
    const invalid = {
      ...replicated,
      status: 'failed' as const,
      reason: 'offsite_invalid',
      contentSha256: OTHER,
    };
    expect(decide(ledger({ receipt: invalid, offsite: both }))).toEqual({
      action: 'skip',
      state: 'offsite_invalid',
    });
    expect(decide(ledger({ receipt: invalid }))).toEqual({ action: 'skip', state: 'offsite_invalid' });
    expect(decide(ledger({ receipt: invalid, offsite: listed([[keys.manifest, 900]]) }))).toEqual({
      action: 'replicate',
      gap: 'offsite_missing',
    });
  });

  it('never replicates a backup without a manifest, whatever else is there', () => {
    expect(decide({ keys, dumpMtimeMs: 1, offsite: listed([]) })).toEqual({
      action: 'skip',
      state: 'no_manifest',
    });
  });

  it('replicates a complete backup that has no receipt', () => {
    expect(decide(ledger({}))).toEqual({ action: 'replicate', gap: 'unreplicated' });
  });

  it('leaves a proven copy alone when the listing agrees, and when there is no listing', () => {
    expect(decide(ledger({ receipt: replicated, offsite: both }))).toEqual({
      action: 'skip',
      state: 'replicated',
    });
    expect(decide(ledger({ receipt: replicated }))).toEqual({ action: 'skip', state: 'replicated' });
  });

  it('copies again when the offsite object or its manifest is gone, or the size changed', () => {
    expect(decide(ledger({ receipt: replicated, offsite: listed([[keys.manifest, 900]]) }))).toEqual({
      action: 'replicate',
      gap: 'offsite_missing',
    });
    expect(decide(ledger({ receipt: replicated, offsite: listed([[keys.dump, 100]]) }))).toEqual({
      action: 'replicate',
      gap: 'offsite_missing',
    });
    const shrunk = listed([
      [keys.dump, 99],
      [keys.manifest, 900],
    ]);
    expect(decide(ledger({ receipt: replicated, offsite: shrunk }))).toEqual({
      action: 'replicate',
      gap: 'offsite_changed',
    });
  });

  it('treats a receipt about other content as no proof', () => {
    expect(decide(ledger({ receipt: { ...replicated, manifestSha256: OTHER } }))).toEqual({
      action: 'replicate',
      gap: 'stale',
    });
    expect(decide(ledger({ receipt: { ...replicated, contentSha256: OTHER } }))).toEqual({
      action: 'replicate',
      gap: 'stale',
    });
  });

  it('retries failures on the next reconcile, but not a bad local file that has not changed', () => {
    const failed = {
      status: 'failed' as const,
      key: keys.dump,
      manifestSha256: SHA,
      at,
      reason: 'dir_not_writable',
    };
    expect(decide(ledger({ receipt: failed }))).toEqual({ action: 'replicate', gap: 'failed' });
    const bad = { ...failed, reason: 'artifact_invalid' };
    const atMs = Date.parse(at);
    expect(decide(ledger({ receipt: bad, dumpMtimeMs: atMs - 1000 }))).toEqual({
      action: 'skip',
      state: 'gave_up',
    });
    expect(decide(ledger({ receipt: { ...bad, reason: 'artifact_missing' } }))).toEqual({
      action: 'skip',
      state: 'gave_up',
    });
    expect(decide(ledger({ receipt: bad, dumpMtimeMs: atMs + 1000 }))).toEqual({
      action: 'replicate',
      gap: 'failed',
    });
  });

  it('does not re-raise a conflict until the conflicting offsite object is moved aside', () => {
    const conflict = {
      status: 'conflict' as const,
      key: keys.dump,
      manifestSha256: SHA,
      at,
      reason: 'conflict',
    };
    expect(decide(ledger({ receipt: conflict, offsite: both }))).toEqual({
      action: 'skip',
      state: 'conflict',
    });
    expect(decide(ledger({ receipt: conflict }))).toEqual({ action: 'skip', state: 'conflict' });
    expect(decide(ledger({ receipt: conflict, offsite: listed([[keys.manifest, 900]]) }))).toEqual({
      action: 'replicate',
      gap: 'offsite_missing',
    });
    // A conflict on the manifest key stays a conflict while that key is occupied, even with the dump there.
    const onManifest = { ...conflict, key: keys.manifest };
    expect(decide(ledger({ receipt: onManifest, offsite: both }))).toEqual({
      action: 'skip',
      state: 'conflict',
    });
    expect(decide(ledger({ receipt: onManifest, offsite: listed([[keys.dump, 100]]) }))).toEqual({
      action: 'replicate',
      gap: 'offsite_missing',
    });
  });
});

describe('failure reasons', () => {
  it('come from codes and details, never from message text', () => {
    expect(reasonOf(conflictError('k', SHA, OTHER))).toBe('conflict');
    expect(reasonOf(new AppError('artifact_invalid', 'conflict everywhere'))).toBe('artifact_invalid');
    expect(reasonOf(new AppError('artifact_invalid', 'x', { details: { reason: 'artifact_missing' } }))).toBe(
      'artifact_missing',
    );
    expect(reasonOf(new AppError('dir_not_writable', 'x'))).toBe('dir_not_writable');
    expect(reasonOf(new AppError('dependency_unavailable', 'x'))).toBe('store_unavailable');
    expect(reasonOf(new AppError('internal', 'x', { details: { reason: 'made_up' } }))).toBe('internal');
    expect(reasonOf(new Error('dir_not_writable'))).toBe('internal');
  });

  it('are permanent only for conflicts and bad local files', () => {
    expect(isPermanent('conflict')).toBe(true);
    expect(isPermanent('artifact_invalid')).toBe(true);
    expect(isPermanent('dir_not_writable')).toBe(false);
    expect(isPermanent('readback_mismatch')).toBe(false);
  });
});

describe('backoffMs', () => {
  it('doubles per attempt within [exp/2, exp] and stays under the cap', () => {
    expect(backoffMs(1, 100, 10_000, () => 0)).toBe(50);
    expect(backoffMs(1, 100, 10_000, () => 1)).toBe(100);
    expect(backoffMs(4, 100, 10_000, () => 1)).toBe(800);
    expect(backoffMs(30, 100, 10_000, () => 1)).toBe(10_000);
  });
});
