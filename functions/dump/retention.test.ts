import { describe, expect, it } from 'vitest';
import type { BackupFacts } from '../../shared/catalog/classifier.js';
import { selectForDeletion } from './retention.js';

const now = new Date('2026-11-26T12:00:00Z');
const DAY = 24 * 60 * 60 * 1000;
let seq = 0;
function backup(
  ageDays: number,
  restore: BackupFacts['restore'],
  status: BackupFacts['status'] = 'completed',
): BackupFacts {
  seq += 1;
  return {
    backupId: `b${String(seq).padStart(3, '0')}-${ageDays}d-${restore}`,
    status,
    createdAt: new Date(now.getTime() - ageDays * DAY).toISOString(),
    artifact: 'valid',
    restore,
    offsite: 'replicated',
  };
}

describe('retention selection', () => {
  it('is off without a policy', () => {
    expect(
      selectForDeletion(
        [backup(1, 'restore_verified'), backup(40, 'restore_verified')],
        { keepCount: 0, keepDays: 0 },
        now,
      ),
    ).toEqual([]);
  });

  it('keeps the N newest restore-verified; unverified ones do not count toward the floor', () => {
    const list = [
      backup(0, 'restore_verified'),
      backup(1, 'pending'),
      backup(2, 'restore_failed'),
      backup(3, 'restore_verified'),
      backup(4, 'restore_verified'),
    ];
    const deleted = selectForDeletion(list, { keepCount: 2, keepDays: 0 }, now);
    expect(deleted).toEqual([list[1]!.backupId, list[2]!.backupId, list[4]!.backupId]);
  });

  it('never deletes the newest restorable backup, even past every age limit', () => {
    const list = [
      backup(1, 'restore_failed'),
      backup(2, 'unverifiable'),
      backup(90, 'restore_verified'),
      backup(100, 'restore_verified'),
    ];
    const deleted = selectForDeletion(list, { keepCount: 1, keepDays: 7 }, now);
    expect(deleted).not.toContain(list[2]!.backupId);
    expect(deleted).toContain(list[3]!.backupId);
    // Newer than the newest restorable: still in their pipeline, kept.
    expect(deleted).not.toContain(list[0]!.backupId);
    expect(deleted).not.toContain(list[1]!.backupId);
  });

  it('deletes nothing when no backup is restorable', () => {
    expect(
      selectForDeletion(
        [backup(50, 'restore_failed'), backup(60, 'pending')],
        { keepCount: 1, keepDays: 1 },
        now,
      ),
    ).toEqual([]);
  });

  it('keeps everything younger than keepDays and never a running backup', () => {
    const list = [
      backup(0, 'pending', 'running'),
      backup(1, 'restore_verified'),
      backup(3, 'restore_verified'),
      backup(10, 'restore_verified'),
    ];
    expect(selectForDeletion(list, { keepCount: 1, keepDays: 5 }, now)).toEqual([list[3]!.backupId]);
  });
});
