import { describe, expect, it } from 'vitest';
import { loadConfig } from './config.js';
import { createStaticRegistry } from './registry.js';
import {
  backupPolicyOf,
  DEFAULT_MAX_AGE_MS,
  formatDuration,
  parseDuration,
  parseSchedule,
  scheduleProblem,
} from './schedule.js';

describe('policy words', () => {
  it('durations: units, compounds and bounds', () => {
    expect(parseDuration('26h')).toBe(26 * 3_600_000);
    expect(parseDuration('1h30m')).toBe(90 * 60_000);
    expect(parseDuration('7d')).toBe(7 * 86_400_000);
    expect(parseDuration('2s')).toBe(2000);
    for (const bad of ['', '0s', '24', 'h', '1.5h', '-1h', '400d', '24 h', '1w']) {
      expect(parseDuration(bad), bad).toBeUndefined();
    }
    expect(formatDuration(26 * 3_600_000)).toBe('1d 2h');
    expect(formatDuration(90_000)).toBe('1m 30s');
    expect(formatDuration(0)).toBe('0s');
  });

  it('schedules: a duration or a 5-field cron expression, anything else refused with what is accepted', () => {
    expect(parseSchedule('24h')).toMatchObject({ kind: 'every', everyMs: 86_400_000 });
    const cron = parseSchedule('0 2 * * *');
    expect(cron.kind).toBe('cron');
    expect(cron.kind === 'cron' && cron.cron.nextRun(new Date('2026-01-01T03:00:00Z'))?.toISOString()).toBe(
      '2026-01-02T02:00:00.000Z',
    );
    expect(scheduleProblem('*/5 * * * * *')).toMatch(/neither a duration .* nor a 5-field cron/);
    expect(scheduleProblem('61 * * * *')).toMatch(/not a valid cron expression/);
    expect(scheduleProblem('off')).toBeDefined();
    expect(scheduleProblem('off', true)).toBeUndefined();
  });

  it('a project policy: its own fields over the defaults; "off" turns a default schedule off', () => {
    const defaults = { FLUX_BACKUP_SCHEDULE: '24h', FLUX_BACKUP_MAX_AGE: '26h' };
    expect(backupPolicyOf({}, defaults)).toMatchObject({
      schedule: { text: '24h' },
      maxAgeMs: DEFAULT_MAX_AGE_MS,
    });
    expect(backupPolicyOf({ schedule: '0 3 * * *', maxAge: '2d' }, defaults)).toMatchObject({
      schedule: { kind: 'cron' },
      maxAgeMs: 2 * 86_400_000,
    });
    expect(backupPolicyOf({ schedule: 'off' }, defaults).schedule).toBeUndefined();
    expect(backupPolicyOf({}, { FLUX_BACKUP_MAX_AGE: '26h' }).schedule).toBeUndefined();
  });
});

describe('policy in the registry and the config', () => {
  const project = {
    id: '550e8400-e29b-41d4-a716-446655440000',
    hash: '0a1b2c3',
    slug: 'bloom-atelier',
    engine: 'v1_dedicated' as const,
    databaseUrl: 'env:X',
  };

  it('a registry entry with a bad schedule or maxAge is refused, naming what is accepted', () => {
    expect(() => createStaticRegistry({ projects: [{ ...project, schedule: 'every day' }] })).toThrow(
      /neither a duration .* nor a 5-field cron expression/,
    );
    expect(() => createStaticRegistry({ projects: [{ ...project, maxAge: '26' }] })).toThrow(
      /a duration like 26h/,
    );
    const ok = createStaticRegistry({ projects: [{ ...project, schedule: '0 2 * * *', maxAge: '2d' }] });
    expect(ok.list()[0]).toMatchObject({ schedule: '0 2 * * *', maxAge: '2d' });
    expect(createStaticRegistry({ projects: [{ ...project, schedule: 'off' }] }).list()[0]?.schedule).toBe(
      'off',
    );
  });

  it('FLUX_BACKUP_SCHEDULE is off unless set, FLUX_BACKUP_MAX_AGE defaults to 26h; bad values are named', () => {
    const config = loadConfig({});
    expect(config.FLUX_BACKUP_SCHEDULE).toBeUndefined();
    expect(config.FLUX_BACKUP_MAX_AGE).toBe('26h');
    expect(loadConfig({ FLUX_BACKUP_SCHEDULE: '0 3 * * *' }).FLUX_BACKUP_SCHEDULE).toBe('0 3 * * *');
    expect(() => loadConfig({ FLUX_BACKUP_SCHEDULE: 'nightly', FLUX_BACKUP_MAX_AGE: 'a day' })).toThrow(
      /FLUX_BACKUP_SCHEDULE: "nightly" is neither[\s\S]*FLUX_BACKUP_MAX_AGE: must be a duration like 26h/,
    );
  });
});
