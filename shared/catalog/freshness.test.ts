import { describe, expect, it } from 'vitest';
import { HOUR_MS } from '../units.js';
import type { BackupFacts } from './classifier.js';
import { destructiveGate, freshnessOf, isRestorable, upstreamFreshnessOf } from './freshness.js';

const now = new Date('2026-11-26T12:00:00Z');
const MAX_AGE = 26 * HOUR_MS;
const at = (msAgo: number) => new Date(now.getTime() - msAgo).toISOString();
const backup = (msAgo: number) => ({ backupId: '01JDZ0000000000000000000AA', createdAt: at(msAgo) });
const restorable = { tier: 'restorable' as const, message: 'restore-verified and replicated offsite' };

describe('freshness', () => {
  it('fresh below maxAge, stale at and above it, never_verified without a restorable backup', () => {
    expect(freshnessOf(backup(HOUR_MS), MAX_AGE, now)).toMatchObject({
      freshness: 'fresh',
      ageSeconds: 3600,
      maxAgeSeconds: 26 * 3600,
    });
    expect(freshnessOf(backup(MAX_AGE - 1000), MAX_AGE, now).freshness).toBe('fresh');
    expect(freshnessOf(backup(MAX_AGE), MAX_AGE, now).freshness).toBe('stale');
    const stale = freshnessOf(backup(3 * 24 * HOUR_MS + 4 * HOUR_MS), MAX_AGE, now, 'bloom');
    expect(stale).toMatchObject({ freshness: 'stale', ageSeconds: 76 * 3600 });
    expect(stale.message).toContain('is 3d 4h old, older than maxAge 1d 2h');
    expect(stale.next).toBe('flux-ops backup create -p bloom && flux-ops backup verify -p bloom --latest');
    const never = freshnessOf(undefined, MAX_AGE, now, 'bloom');
    expect(never).toMatchObject({ freshness: 'never_verified', ageSeconds: null });
    expect(never.next).toContain('backup create -p bloom');
  });

  it('counts only complete, artifact-valid, restore-verified backups', () => {
    const good: BackupFacts = {
      backupId: 'b',
      status: 'completed',
      createdAt: at(0),
      artifact: 'valid',
      restore: 'restore_verified',
      offsite: 'pending',
    };
    expect(isRestorable(good)).toBe(true);
    expect(isRestorable({ ...good, artifact: 'invalid' })).toBe(false);
    expect(isRestorable({ ...good, restore: 'unverifiable' })).toBe(false);
    expect(isRestorable({ ...good, restore: 'pending' })).toBe(false);
    expect(isRestorable({ ...good, status: 'failed' })).toBe(false);
  });

  it('the destructive gate needs the restorable tier and a fresh project, and says the age when stale', () => {
    const fresh = freshnessOf(backup(HOUR_MS), MAX_AGE, now, 'bloom');
    const stale = freshnessOf(backup(30 * HOUR_MS), MAX_AGE, now, 'bloom');
    expect(destructiveGate(restorable, fresh).passes).toBe(true);
    const refused = destructiveGate(restorable, stale);
    expect(refused.passes).toBe(false);
    expect(refused.message).toMatch(/restorable but stale: .* is 1d 6h old, older than maxAge 1d 2h/);
    expect(refused.next).toContain('flux-ops backup create -p bloom');
    const failed = destructiveGate(
      {
        tier: 'restore_failed',
        message: 'restore verification failed',
        next: 'flux-ops backup create -p bloom',
      },
      fresh,
    );
    expect(failed.passes).toBe(false);
    expect(failed.message).toContain('tier restore_failed');
  });

  it('the upstream block: fresh is compliant, stale and no backups are not', () => {
    const policy = { retentionCount: 4, retentionDays: 30 };
    const fresh = upstreamFreshnessOf(freshnessOf(backup(12 * HOUR_MS), 24 * HOUR_MS, now), policy, true);
    expect(fresh).toEqual({
      effectivePolicy: { intervalDays: 1, retentionCount: 4, retentionDays: 30 },
      freshness: expect.objectContaining({
        tier: 'fresh',
        ageDays: 0.5,
        dueInDays: 0.5,
        platformBackupCompliant: true,
      }),
    });
    const stale = upstreamFreshnessOf(freshnessOf(backup(48 * HOUR_MS), 24 * HOUR_MS, now), policy, true);
    expect(stale.freshness).toMatchObject({ tier: 'stale', platformBackupCompliant: false, dueInDays: -1 });
    const none = upstreamFreshnessOf(freshnessOf(undefined, 24 * HOUR_MS, now), policy, false);
    expect(none.freshness).toMatchObject({
      tier: 'no_backups',
      ageDays: null,
      platformBackupCompliant: false,
    });
  });
});
