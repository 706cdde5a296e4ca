import { describe, expect, it } from 'vitest';
import {
  ArchiveHeaderError,
  canRead,
  checkCompatibility,
  minRestoreMajorFor,
  parseArchiveHeader,
} from './archive-header.js';

/** Builds a custom-format header the way pg_dump's WriteHead does. */
function header(options: { major?: number; minor?: number; rev?: number; strings?: boolean } = {}): Buffer {
  const { major = 1, minor = 14, rev = 0, strings = true } = options;
  const intSize = 4;
  const bytes: number[] = [...Buffer.from('PGDMP'), major, minor, rev, intSize, 8, 1];
  const int = (v: number) => {
    bytes.push(v < 0 ? 1 : 0);
    const abs = Math.abs(v);
    for (let i = 0; i < intSize; i++) bytes.push((abs >> (8 * i)) & 0xff);
  };
  const str = (s: string) => {
    const b = Buffer.from(s);
    int(b.length);
    bytes.push(...b);
  };
  if (minor >= 15) bytes.push(1);
  else int(1);
  for (const v of [56, 0, 57, 13, 0, 26, 0]) int(v);
  if (strings) {
    str('postgres');
    str('15.18 (Debian 15.18-0+deb12u1)');
    str('15.18 (Debian 15.18-0+deb12u1)');
  }
  return Buffer.from(bytes);
}

describe('parseArchiveHeader', () => {
  it('reads the version, format, compression and the version strings of a pg_dump 15 archive', () => {
    expect(parseArchiveHeader(header())).toEqual({
      version: { major: 1, minor: 14, rev: 0 },
      versionText: '1.14-0',
      format: 'custom',
      intSize: 4,
      offSize: 8,
      compression: 'gzip level 1',
      database: 'postgres',
      serverVersion: '15.18 (Debian 15.18-0+deb12u1)',
      pgDumpVersion: '15.18 (Debian 15.18-0+deb12u1)',
    });
  });

  it('reads the compression algorithm byte of 1.15+ archives', () => {
    const h = parseArchiveHeader(header({ minor: 15 }));
    expect(h.versionText).toBe('1.15-0');
    expect(h.compression).toBe('gzip');
    expect(h.database).toBe('postgres');
  });

  it('keeps the version when the strings are cut off, and refuses what is not an archive', () => {
    const cut = header({ strings: false });
    expect(parseArchiveHeader(cut.subarray(0, 14)).version).toEqual({ major: 1, minor: 14, rev: 0 });
    expect(() => parseArchiveHeader(Buffer.from('-- PostgreSQL database dump\n'))).toThrow(
      ArchiveHeaderError,
    );
    expect(() => parseArchiveHeader(Buffer.from('PGDMP'))).toThrow(/truncated/);
  });
});

describe('version matching', () => {
  it('knows the oldest pg_restore that reads each archive version', () => {
    expect(minRestoreMajorFor({ major: 1, minor: 12, rev: 0 })).toBe(9);
    expect(minRestoreMajorFor({ major: 1, minor: 14, rev: 0 })).toBe(12);
    expect(minRestoreMajorFor({ major: 1, minor: 15, rev: 0 })).toBe(16);
    expect(minRestoreMajorFor({ major: 1, minor: 16, rev: 0 })).toBe(17);
    expect(minRestoreMajorFor({ major: 1, minor: 17, rev: 0 })).toBeUndefined();
  });

  it('a pg_restore newer than the table reads what its own or an older pg_dump wrote', () => {
    expect(canRead(18, { major: 1, minor: 17, rev: 0 }, 18)).toBe(true);
    expect(canRead(17, { major: 1, minor: 17, rev: 0 }, 18)).toBe(false);
    expect(canRead(15, { major: 1, minor: 14, rev: 0 }, 15)).toBe(true);
    expect(canRead(15, { major: 1, minor: 15, rev: 0 }, 16)).toBe(false);
  });

  it('passes a pg_dump 15 archive in a PostgreSQL 15 sandbox', () => {
    expect(
      checkCompatibility({
        archive: { major: 1, minor: 14, rev: 0 },
        sourceServerMajor: 15,
        pgDumpMajor: 15,
        sandbox: { serverMajor: 15, pgRestoreMajor: 15 },
      }),
    ).toEqual({ ok: true });
  });

  it('an archive newer than the sandbox pg_restore names the image to set', () => {
    const c = checkCompatibility({
      archive: { major: 1, minor: 15, rev: 0 },
      sourceServerMajor: 16,
      pgDumpMajor: 16,
      sandbox: { serverMajor: 15, pgRestoreMajor: 15, pgRestore: '15.18' },
    });
    expect(c).toMatchObject({ ok: false, code: 'archive_version_unsupported', neededMajor: 16 });
    expect(!c.ok && c.message).toMatch(/FLUX_BACKUP_VERIFY_POSTGRES_IMAGE=postgres:16-alpine/);
    expect(!c.ok && c.message).toMatch(/pg_restore 15\.18/);
  });

  it('a server older than the dumped one is not a faithful test', () => {
    const c = checkCompatibility({
      archive: { major: 1, minor: 14, rev: 0 },
      sourceServerMajor: 15,
      pgDumpMajor: 15,
      sandbox: { serverMajor: 14, pgRestoreMajor: 14 },
    });
    expect(c).toMatchObject({ ok: false, code: 'server_version_older', neededMajor: 15 });
    expect(!c.ok && c.message).toMatch(/postgres:15-alpine/);
  });

  it('an archive newer than any known version asks for the pg_dump major that wrote it', () => {
    const c = checkCompatibility({
      archive: { major: 1, minor: 17, rev: 0 },
      sourceServerMajor: 18,
      pgDumpMajor: 18,
      sandbox: { serverMajor: 17, pgRestoreMajor: 17 },
    });
    expect(c).toMatchObject({ ok: false, code: 'archive_version_unsupported', neededMajor: 18 });
  });
});
