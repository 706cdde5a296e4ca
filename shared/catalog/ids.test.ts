import { describe, expect, it } from 'vitest';
import { AppError } from '../errors.js';
import { newBackupId, parseBackupId, parseProjectHash, parseProjectId, tenantSchemaOf } from './ids.js';
import { backupPaths, parseCatalogName } from './layout.js';

const project = '550e8400-e29b-41d4-a716-446655440000';

describe('ids and paths', () => {
  it('accepts canonical ids and derives the tenant schema', () => {
    expect(parseProjectId(project)).toBe(project);
    expect(parseBackupId(newBackupId())).toMatch(/^[0-9A-Z]{26}$/);
    expect(parseBackupId(project)).toBe(project);
    expect(parseProjectHash('0a1b2c3')).toBe('0a1b2c3');
    expect(tenantSchemaOf(project)).toBe('t_550e8400e29b_api');
  });

  it.each([
    '../etc/passwd',
    '..%2F..%2Fetc',
    `${project}/..`,
    project.toUpperCase(),
    '550e8400-e29b-41d4-a716-44665544000０', // full-width digit look-alike
    'x'.repeat(10_000),
    '',
  ])('rejects %j before any path is built', (bad) => {
    expect(() => parseProjectId(bad)).toThrow(AppError);
    expect(() => parseBackupId(bad)).toThrow(AppError);
    expect(() => backupPaths('/srv/flux/backups', bad, newBackupId())).toThrow(/projectId/);
    expect(() => backupPaths('/srv/flux/backups', project, bad)).toThrow(/backupId/);
  });

  it('backup ids are time-ordered, so newest-first needs no clock comparison', () => {
    const a = newBackupId();
    const b = newBackupId();
    expect(b > a).toBe(true);
  });

  it('parses catalog file names and ignores temp files and strangers', () => {
    const id = newBackupId();
    expect(parseCatalogName(`${id}.manifest.json`)).toEqual({ backupId: id, file: 'manifest' });
    expect(parseCatalogName(`${id}.dump`)).toEqual({ backupId: id, file: 'dump' });
    expect(parseCatalogName(`.tmp-${id}.dump.abc`)).toBeUndefined();
    expect(parseCatalogName('notes.txt')).toBeUndefined();
  });

  it('paths stay under the root', () => {
    const id = newBackupId();
    const p = backupPaths('/srv/flux/backups', project, id);
    expect(p.dump).toBe(`/srv/flux/backups/${project}/${id}.dump`);
    expect(p.manifest).toBe(`/srv/flux/backups/${project}/${id}.manifest.json`);
  });
});
