import { describe, expect, it } from 'vitest';
import type { TrustTier } from '../shared/catalog/classifier.js';
import { checkProjects } from './backup.js';

const HOUR_S = 3600;
const row = (
  slug: string,
  tier: TrustTier,
  freshness: 'fresh' | 'stale' | 'never_verified',
  ageSeconds: number | null,
) => ({
  id: slug,
  slug,
  hash: '0000000',
  tier,
  message: `${tier} message`,
  labels: { artifactValidated: true, restoreVerified: tier === 'restorable', offsiteReplicated: true },
  freshness: {
    freshness,
    ageSeconds,
    maxAgeSeconds: 26 * HOUR_S,
    message: 'm',
    next: `flux-ops backup create -p ${slug}`,
  },
});
const healthy = row('healthy', 'restorable', 'fresh', HOUR_S);

describe('backup status --check', () => {
  it('OK only when every project is restorable and fresh', () => {
    const ok = checkProjects([healthy, { ...healthy, slug: 'other' }]);
    expect(ok).toMatchObject({
      code: 0,
      status: 'OK',
      summary: '2 of 2 projects restorable and fresh',
      details: [],
    });
    expect(ok.perfdata).toBe(
      'projects=2 fresh=2 restorable=2 stale=0 never_verified=0 oldest_restorable_age=3600s',
    );
  });

  it('WARNING when fresh but the newest backup is not restorable yet; the healthy project is never named', () => {
    const w = checkProjects([healthy, row('busy', 'pipeline_incomplete', 'fresh', 2 * HOUR_S)]);
    expect(w).toMatchObject({ code: 1, status: 'WARNING' });
    expect(w.details).toEqual([
      expect.stringMatching(/^WARNING busy: fresh \(2h old\) but the newest backup is pipeline_incomplete/),
    ]);
  });

  it('CRITICAL when stale, never restorable, or the newest backup failed restore verification', () => {
    for (const bad of [
      row('old', 'restorable', 'stale', 30 * HOUR_S),
      row('new', 'no_backups', 'never_verified', null),
      row('broken', 'restore_failed', 'fresh', HOUR_S),
    ]) {
      const c = checkProjects([healthy, bad, row('busy', 'pipeline_incomplete', 'fresh', HOUR_S)]);
      expect(c.code, bad.slug).toBe(2);
      expect(c.details.filter((d) => d.startsWith('CRITICAL'))).toEqual([
        expect.stringContaining(`CRITICAL ${bad.slug}: `),
      ]);
    }
    expect(checkProjects([row('old', 'restorable', 'stale', 30 * HOUR_S)]).summary).toBe(
      '0 of 1 project restorable and fresh, 1 stale',
    );
  });

  it('--max-age judges every project against it, in both directions', () => {
    const old = row('old', 'restorable', 'stale', 30 * HOUR_S);
    expect(checkProjects([old], 48 * HOUR_S * 1000).code).toBe(0);
    expect(checkProjects([healthy], 30 * 60 * 1000).code).toBe(2);
    expect(checkProjects([healthy], 26 * HOUR_S * 1000).perfdata).toMatch(
      /oldest_restorable_age=3600s;;93600$/,
    );
  });

  it('UNKNOWN when there is nothing to judge or the server gives no freshness', () => {
    expect(checkProjects([])).toMatchObject({ code: 3, status: 'UNKNOWN' });
    const { freshness: _, ...older } = healthy;
    expect(checkProjects([older]).summary).toMatch(/gives no freshness/);
    expect(checkProjects([older]).code).toBe(3);
  });
});
