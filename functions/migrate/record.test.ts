import { describe, expect, it } from 'vitest';
import { failureMessage } from './record.js';

describe('failureMessage', () => {
  it('says the target was not touched when the run created nothing there', () => {
    expect(failureMessage('pg_dump failed', undefined)).toEqual({
      message: 'pg_dump failed; the target was not touched and the source was not modified',
      rolledBack: true,
    });
  });

  it('names what a complete rollback dropped, and when', () => {
    const rollback = { ok: true, dropped: ['schema t1', 'role r1'], leftovers: [] };
    expect(failureMessage('validation failed', rollback).message).toBe(
      'validation failed; the target was rolled back (dropped schema t1, role r1); the source was not modified',
    );
    expect(failureMessage('the process stopped', rollback, 'at restart')).toEqual({
      message:
        'the process stopped; the target was rolled back at restart (dropped schema t1, role r1); the source was not modified',
      rolledBack: true,
    });
  });

  it('lists each leftover of an incomplete rollback for the operator to drop', () => {
    const rollback = {
      ok: false,
      dropped: ['role r1'],
      leftovers: [{ object: 'schema t1', error: 'lock timeout' }],
    };
    expect(failureMessage('restore failed', rollback)).toEqual({
      message: 'restore failed; ROLLBACK INCOMPLETE, drop by hand: schema t1 (lock timeout)',
      rolledBack: false,
    });
  });
});
