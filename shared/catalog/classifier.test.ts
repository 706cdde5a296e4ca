import { describe, expect, it } from 'vitest';
import { type BackupFacts, classify, PIPELINE_GRACE_MS } from './classifier.js';

const now = new Date('2026-11-26T12:00:00Z');
const healthy: BackupFacts = {
  backupId: '01JDZ0000000000000000000AA',
  status: 'completed',
  createdAt: new Date(now.getTime() - 60_000).toISOString(),
  artifact: 'valid',
  restore: 'restore_verified',
  offsite: 'replicated',
};
const old = new Date(now.getTime() - PIPELINE_GRACE_MS - 1).toISOString();

describe('trust classifier', () => {
  // Each row: a fact set, the tier it must give; the healthy fixture must never give it (both directions).
  const cases: Array<[string, BackupFacts | undefined, string]> = [
    ['no backups', undefined, 'no_backups'],
    ['newest still running', { ...healthy, status: 'running' }, 'latest_not_complete'],
    ['newest failed', { ...healthy, status: 'failed', error: 'pg_dump exited 1' }, 'latest_not_complete'],
    ['artifact not yet validated', { ...healthy, artifact: 'pending' }, 'artifact_pending'],
    [
      'artifact corrupted',
      { ...healthy, artifact: 'invalid', error: 'sha256 differs' },
      'pipeline_incomplete',
    ],
    ['artifact missing', { ...healthy, artifact: 'missing' }, 'pipeline_incomplete'],
    [
      'restore failed',
      { ...healthy, restore: 'restore_failed', error: 'volume: rows differ' },
      'restore_failed',
    ],
    ['verify could not run', { ...healthy, restore: 'unverifiable', error: 'no docker' }, 'unverifiable'],
    [
      'verification pending, recent',
      { ...healthy, restore: 'pending', offsite: 'pending' },
      'not_restore_verified',
    ],
    ['verification pending, old', { ...healthy, restore: 'pending', createdAt: old }, 'not_restore_verified'],
    ['verification skipped', { ...healthy, restore: 'skipped' }, 'not_restore_verified'],
  ];

  it.each(cases)('%s → its tier, and the healthy backup does not get it', (_name, facts, tier) => {
    const trust = classify(facts, now);
    expect(trust.tier).toBe(tier);
    expect(trust.trustworthy).toBe(false);
    expect(trust.message.length).toBeGreaterThan(10);
    expect(classify(healthy, now).tier).not.toBe(tier);
  });

  it('restorable only when artifact validated and restore-verified; offsite is a separate label', () => {
    const trust = classify(healthy, now);
    expect(trust).toMatchObject({
      tier: 'restorable',
      trustworthy: true,
      labels: { artifactValidated: true, restoreVerified: true, offsiteReplicated: true },
    });
    const notOffsite = classify({ ...healthy, offsite: 'failed' }, now);
    expect(notOffsite).toMatchObject({ tier: 'restorable', labels: { offsiteReplicated: false } });
    expect(notOffsite.message).toMatch(/offsite/);
  });

  it('unverifiable is never a pass and never restore_failed', () => {
    const trust = classify({ ...healthy, restore: 'unverifiable', error: 'image missing' }, now);
    expect(trust.tier).toBe('unverifiable');
    expect(trust.trustworthy).toBe(false);
    expect(trust.labels.restoreVerified).toBe(false);
    expect(trust.message).toMatch(/not a pass/);
  });

  it('a backup only the offsite store holds (rebuilt catalog): never restorable, next names --source offsite', () => {
    const rebuilt: BackupFacts = {
      ...healthy,
      artifact: 'missing',
      restore: 'pending',
      offsite: 'replicated',
    };
    const trust = classify(rebuilt, now, 'bloom');
    expect(trust).toMatchObject({ tier: 'pipeline_incomplete', trustworthy: false });
    expect(trust.labels).toEqual({
      artifactValidated: false,
      restoreVerified: false,
      offsiteReplicated: true,
    });
    expect(trust.next).toBe(`flux-ops backup verify -p bloom --id ${healthy.backupId} --source offsite`);
    // Verified from the offsite copy: still not restorable (no local artifact), and no verify loop.
    const verified = classify({ ...rebuilt, restore: 'restore_verified' }, now, 'bloom');
    expect(verified).toMatchObject({ tier: 'pipeline_incomplete', trustworthy: false });
    expect(verified.labels.restoreVerified).toBe(false);
    expect(verified.message).toMatch(/--source offsite/);
    expect(verified.next).toBe('flux-ops backup create -p bloom');
    // Offsite not proven (yet): the plain missing-artifact message.
    expect(classify({ ...rebuilt, offsite: 'pending' }, now).message).toMatch(
      /^the local dump file is missing:/,
    );
  });

  it('a verification still on its way and one never done share the tier; the message tells them apart', () => {
    const recent = classify({ ...healthy, restore: 'pending' }, now);
    const stale = classify({ ...healthy, restore: 'pending', createdAt: old }, now);
    expect(recent.tier).toBe(stale.tier);
    expect(recent.message).toMatch(/still running/);
    expect(stale.message).toMatch(/never restore-verified/);
  });

  it('names the next command with the project slug', () => {
    expect(classify(undefined, now, 'bloom-atelier').next).toBe('flux-ops backup create -p bloom-atelier');
    expect(classify({ ...healthy, restore: 'skipped' }, now, 'bloom').next).toContain(
      'backup verify -p bloom --id',
    );
  });
});
