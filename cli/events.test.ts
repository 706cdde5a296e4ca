import { describe, expect, it } from 'vitest';
import { eventLine, mergeEvents, sinceTime } from './events.js';

describe('events output', () => {
  it('merges the functions’ events in time order, ids breaking ties', () => {
    const merged = mergeEvents([
      [
        { id: 'b', type: 'flux.backup.created', time: '2026-01-01T00:00:02Z' },
        { id: 'd', type: 'flux.backup.deleted', time: '2026-01-01T00:00:04Z' },
      ],
      [
        { id: 'c', type: 'flux.backup.replicated', time: '2026-01-01T00:00:02Z' },
        { id: 'a', type: 'flux.backup.requested', time: '2026-01-01T00:00:01Z' },
      ],
    ]);
    expect(merged.map((e) => e.id)).toEqual(['a', 'b', 'c', 'd']);
  });

  it('prints one line with the facts an operator looks for', () => {
    expect(
      eventLine({
        id: 'x',
        type: 'flux.backup.created',
        time: '2026-01-01T00:00:00Z',
        subject: 'p/b',
        data: { slug: 'bloom', sizeBytes: 2048 },
      }),
    ).toBe('2026-01-01T00:00:00Z  flux.backup.created  p/b  bloom  2.00 KiB');
    expect(
      eventLine({
        id: 'y',
        type: 'flux.backup.failed',
        time: '2026-01-01T00:00:00Z',
        data: { reason: 'dump_failed', error: 'pg_dump:\n  connection refused' },
      }),
    ).toBe('2026-01-01T00:00:00Z  flux.backup.failed  -  reason=dump_failed  pg_dump: connection refused');
  });
});

describe('sinceTime', () => {
  const now = Date.parse('2026-12-01T12:00:00.000Z');
  it('takes a time with a zone, or a duration ago', () => {
    expect(sinceTime('2026-12-01T10:00:00+01:00', now)).toBe('2026-12-01T09:00:00.000Z');
    expect(sinceTime('30m', now)).toBe('2026-12-01T11:30:00.000Z');
    expect(sinceTime('2h', now)).toBe('2026-12-01T10:00:00.000Z');
    expect(sinceTime('1d', now)).toBe('2026-11-30T12:00:00.000Z');
  });
  it('refuses a time without a zone or anything else', () => {
    for (const bad of ['2026-12-01T10:00:00', 'yesterday', '2w', '', '-1h'])
      expect(() => sinceTime(bad, now), bad).toThrow(/--since is a time with a zone/);
  });
});
