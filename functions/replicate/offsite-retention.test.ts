import { describe, expect, it } from 'vitest';
import { type OffsiteCopyFacts, selectOffsiteExpiry } from './offsite-retention.js';

const now = new Date('2026-12-01T12:00:00Z');
const DAY = 24 * 60 * 60 * 1000;

function copy(ageDays: number, overrides: Partial<OffsiteCopyFacts> = {}): OffsiteCopyFacts {
  return {
    backupId: `b-${String(ageDays).padStart(3, '0')}`,
    createdAt: new Date(now.getTime() - ageDays * DAY).toISOString(),
    hasDump: true,
    proven: true,
    restore: 'restore_verified',
    isLocal: false,
    ...overrides,
  };
}

describe('offsite retention selection', () => {
  it('is off without a policy', () => {
    expect(selectOffsiteExpiry([copy(1), copy(50)], { keepCount: 0, keepDays: 0 }, now)).toEqual([]);
  });

  it('keeps the N newest verified and proven copies, expires the rest', () => {
    const list = [copy(1), copy(2), copy(3), copy(4)];
    expect(selectOffsiteExpiry(list, { keepCount: 2, keepDays: 0 }, now)).toEqual(['b-003', 'b-004']);
  });

  it('never expires a copy whose backup is still local, nor one of unknown age', () => {
    const list = [copy(1), copy(2, { isLocal: true }), copy(3), copy(4, { createdAt: undefined })];
    expect(selectOffsiteExpiry(list, { keepCount: 1, keepDays: 0 }, now)).toEqual(['b-003']);
  });

  it('keeps the newest restorable copy even when it is older than keepDays; an unproven or altered copy is not restorable', () => {
    const list = [
      copy(1, { proven: false }), // a re-hash found it altered
      copy(2, { proven: undefined }), // never proven
      copy(40),
      copy(50),
    ];
    const expired = selectOffsiteExpiry(list, { keepCount: 1, keepDays: 7 }, now);
    expect(expired).toEqual(['b-050']);
  });

  it('expires nothing when no copy is restorable', () => {
    const list = [
      copy(30, { restore: 'pending' }),
      copy(40, { hasDump: false }),
      copy(50, { proven: false }),
    ];
    expect(selectOffsiteExpiry(list, { keepCount: 1, keepDays: 1 }, now)).toEqual([]);
  });
});
