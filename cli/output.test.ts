import { describe, expect, it } from 'vitest';
import { humanAge, humanBytes, humanDuration, humanRate, table } from './output.js';

describe('sizes, rates and durations', () => {
  it('prints binary sizes with three significant digits', () => {
    expect(humanBytes(0)).toBe('0 B');
    expect(humanBytes(1023)).toBe('1023 B');
    expect(humanBytes(1536)).toBe('1.50 KiB');
    expect(humanBytes(20 * 1024 * 1024)).toBe('20.0 MiB');
    expect(humanBytes(300 * 1024 ** 3)).toBe('300 GiB');
    expect(humanBytes(null)).toBe('-');
    expect(humanRate(2 * 1024 * 1024)).toBe('2.00 MiB/s');
    expect(humanRate(undefined)).toBe('- B/s');
  });

  it('prints at most two units of time', () => {
    expect(humanDuration(999)).toBe('0s');
    expect(humanDuration(45_000)).toBe('45s');
    expect(humanDuration(185_000)).toBe('3m 05s');
    expect(humanDuration(2 * 3600_000 + 10 * 60_000)).toBe('2h 10m');
    expect(humanDuration(4 * 86400_000 + 3 * 3600_000)).toBe('4d 3h');
    const now = new Date('2026-01-01T00:10:00Z');
    expect(humanAge('2026-01-01T00:07:00Z', now)).toBe('3m 00s ago');
    expect(humanAge(null, now)).toBe('-');
    expect(humanAge('not a date', now)).toBe('-');
  });
});

describe('table', () => {
  it('aligns columns, right-aligns numbers, keeps one row per line', () => {
    const text = table(
      [
        { name: 'bloom-atelier', size: '1.50 KiB', note: 'a\nb' },
        { name: 'x', size: '20.0 MiB', note: '' },
      ],
      [
        { header: 'PROJECT', value: (r) => r.name },
        { header: 'SIZE', value: (r) => r.size, right: true },
        { header: 'NOTE', value: (r) => r.note },
      ],
    );
    expect(text.split('\n')).toEqual([
      'PROJECT            SIZE  NOTE',
      'bloom-atelier  1.50 KiB  a b',
      'x              20.0 MiB',
    ]);
  });
});
