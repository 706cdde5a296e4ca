// The pg_dump archive header (custom format) and version matching: which pg_restore can read an archive,
// and which postgres:<major> image an operator must set when the sandbox cannot.
// Layout: src/bin/pg_dump/pg_backup_archiver.c (WriteHead/ReadHead), versions K_VERS_* in pg_backup_archiver.h.

import { open } from 'node:fs/promises';

export const ARCHIVE_MAGIC = 'PGDMP';
/** Enough for the magic, versions, compression, timestamp and three strings of any sane length. */
export const HEADER_READ_BYTES = 4096;

const FORMATS: Record<number, ArchiveHeader['format']> = {
  0: 'unknown',
  1: 'custom',
  2: 'files',
  3: 'tar',
  4: 'null',
  5: 'directory',
};
const COMPRESSION: Record<number, string> = { 0: 'none', 1: 'gzip', 2: 'lz4', 3: 'zstd' };

export interface ArchiveVersion {
  major: number;
  minor: number;
  rev: number;
}

export interface ArchiveHeader {
  version: ArchiveVersion;
  /** "1.14-0", as pg_restore prints it. */
  versionText: string;
  format: 'unknown' | 'custom' | 'files' | 'tar' | 'null' | 'directory';
  intSize: number;
  offSize: number;
  compression?: string;
  database?: string;
  /** Server version string of the dumped server, e.g. "15.18 (Debian 15.18-0+deb12u1)". */
  serverVersion?: string;
  /** Version string of the pg_dump that wrote it. */
  pgDumpVersion?: string;
}

export class ArchiveHeaderError extends Error {
  override readonly name = 'ArchiveHeaderError';
  constructor(
    readonly code: 'not_custom_archive' | 'header_truncated',
    message: string,
  ) {
    super(message);
  }
}

export const atLeast = (v: ArchiveVersion, major: number, minor: number) =>
  v.major > major || (v.major === major && v.minor >= minor);

/**
 * Reads pg_dump's archive primitives from a buffer (pg_backup_archiver.c ReadInt/ReadStr): an int is a
 * sign byte then intSize bytes little-endian; a string an int length (-1 = null) then its bytes. Reading
 * past the end throws ArchiveHeaderError('header_truncated').
 */
export class ArchiveCursor {
  intSize = 4;
  constructor(
    readonly buf: Buffer,
    public pos = 0,
  ) {}
  need(n: number): void {
    if (this.pos + n > this.buf.length) {
      throw new ArchiveHeaderError('header_truncated', 'the archive header is truncated');
    }
  }
  byte(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  int(): number {
    const negative = this.byte() !== 0;
    this.need(this.intSize);
    let value = 0;
    for (let i = 0; i < this.intSize; i++) value += this.buf[this.pos + i]! * 2 ** (8 * i);
    this.pos += this.intSize;
    return negative ? -value : value;
  }
  str(): string | undefined {
    const length = this.int();
    if (length < 0) return undefined;
    this.need(length);
    const s = this.buf.toString('utf8', this.pos, this.pos + length);
    this.pos += length;
    return s;
  }
  skip(n: number): void {
    this.need(n);
    this.pos += n;
  }
}

/** Parses the start of a custom-format archive (throws ArchiveHeaderError on anything else). */
export function parseArchiveHeader(bytes: Uint8Array): ArchiveHeader {
  return readHeader(bytes).header;
}

/**
 * The header and where it ends (the table of contents starts there); `end` is undefined when the
 * informative part after the version bytes was cut short.
 */
export function readHeader(bytes: Uint8Array): { header: ArchiveHeader; end?: number } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 5 || buf.toString('latin1', 0, 5) !== ARCHIVE_MAGIC) {
    throw new ArchiveHeaderError(
      'not_custom_archive',
      'the file does not start with PGDMP: not a pg_dump custom-format archive',
    );
  }
  const c = new ArchiveCursor(buf, 5);
  const version: ArchiveVersion = { major: c.byte(), minor: c.byte(), rev: 0 };
  if (version.major > 1 || (version.major === 1 && version.minor > 0)) version.rev = c.byte();
  const intSize = c.byte();
  const offSize = c.byte();
  const formatCode = c.byte();
  const header: ArchiveHeader = {
    version,
    versionText: `${version.major}.${version.minor}-${version.rev}`,
    format: FORMATS[formatCode] ?? 'unknown',
    intSize,
    offSize,
  };
  if (intSize < 1 || intSize > 8) {
    throw new ArchiveHeaderError('not_custom_archive', `implausible integer size ${intSize} in the header`);
  }
  c.intSize = intSize;
  try {
    if (atLeast(version, 1, 15)) {
      const algorithm = c.byte();
      header.compression = COMPRESSION[algorithm] ?? `algorithm ${algorithm}`;
    } else if (atLeast(version, 1, 2)) {
      const level = c.int();
      header.compression = level === 0 ? 'none' : `gzip level ${level}`;
    }
    if (atLeast(version, 1, 4)) {
      for (let i = 0; i < 7; i++) c.int(); // creation time: sec, min, hour, mday, mon, year, isdst
      const database = c.str();
      if (database !== undefined) header.database = database;
    }
    if (atLeast(version, 1, 10)) {
      const server = c.str();
      const dump = c.str();
      if (server !== undefined) header.serverVersion = server;
      if (dump !== undefined) header.pgDumpVersion = dump;
    }
    return { header, end: c.pos };
  } catch (error) {
    // The version bytes are what matching needs; the rest is informative.
    if (!(error instanceof ArchiveHeaderError)) throw error;
    return { header };
  }
}

export async function readArchiveHeader(file: string): Promise<ArchiveHeader> {
  const handle = await open(file, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(HEADER_READ_BYTES), 0, HEADER_READ_BYTES, 0);
    return parseArchiveHeader(buffer.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
}

/** The newest archive version each pg_restore major reads (K_VERS_MAX), for the majors we know. */
const MAX_ARCHIVE_BY_MAJOR: Array<[minMajor: number, minor: number]> = [
  [17, 16],
  [16, 15],
  [12, 14],
  [11, 13],
  [9, 12],
];
/** The newest pg_restore major whose archive limit is in the table above. */
export const NEWEST_KNOWN_MAJOR = 17;

export function maxArchiveMinorFor(pgRestoreMajor: number): number {
  for (const [major, minor] of MAX_ARCHIVE_BY_MAJOR) if (pgRestoreMajor >= major) return minor;
  return 11;
}

/** The oldest pg_restore major that reads `version`; undefined for an archive newer than any we know. */
export function minRestoreMajorFor(version: ArchiveVersion): number | undefined {
  if (version.major !== 1) return undefined;
  for (const [major, minor] of [...MAX_ARCHIVE_BY_MAJOR].reverse()) if (version.minor <= minor) return major;
  return undefined;
}

export interface CompatibilityInput {
  archive: ArchiveVersion;
  /** Major of the server that was dumped (manifest.source.serverVersionNum / 10000). */
  sourceServerMajor: number;
  /** Major of the pg_dump that wrote the archive (manifest.pgDump.major). */
  pgDumpMajor: number;
  sandbox: { serverMajor: number; pgRestoreMajor: number; server?: string; pgRestore?: string };
}

export type Compatibility =
  | { ok: true }
  | {
      ok: false;
      code: 'archive_version_unsupported' | 'server_version_older';
      neededMajor: number;
      message: string;
    };

/** Whether the sandbox's pg_restore reads `archive` (a newer-than-known pg_restore reads what its own or an older pg_dump wrote). */
export function canRead(pgRestoreMajor: number, archive: ArchiveVersion, pgDumpMajor: number): boolean {
  if (archive.major === 1 && archive.minor <= maxArchiveMinorFor(pgRestoreMajor)) return true;
  return pgRestoreMajor > NEWEST_KNOWN_MAJOR && pgRestoreMajor >= pgDumpMajor;
}

export function imageFor(major: number): string {
  return `postgres:${major}-alpine`;
}

/**
 * Can this sandbox verify this archive? Its pg_restore must read the archive version, and its server must
 * not be older than the dumped one (restoring into an older major proves nothing about a real restore).
 */
export function checkCompatibility(input: CompatibilityInput): Compatibility {
  const { archive, sandbox } = input;
  const readerMajor = minRestoreMajorFor(archive) ?? Math.max(input.pgDumpMajor, NEWEST_KNOWN_MAJOR + 1);
  const neededMajor = Math.max(readerMajor, input.sourceServerMajor);
  const fix =
    `set FLUX_BACKUP_VERIFY_POSTGRES_IMAGE=${imageFor(neededMajor)} (PostgreSQL ${neededMajor} or newer; make sure the image is present on the Docker host), ` +
    `or give the local driver PostgreSQL ${neededMajor} server and client tools`;
  if (!canRead(sandbox.pgRestoreMajor, archive, input.pgDumpMajor)) {
    return {
      ok: false,
      code: 'archive_version_unsupported',
      neededMajor,
      message:
        `the archive (format ${archive.major}.${archive.minor}-${archive.rev}, written by pg_dump ${input.pgDumpMajor}) cannot be read by the sandbox's ` +
        `pg_restore ${sandbox.pgRestore ?? sandbox.pgRestoreMajor}: ${fix}`,
    };
  }
  if (sandbox.serverMajor < input.sourceServerMajor) {
    return {
      ok: false,
      code: 'server_version_older',
      neededMajor,
      message:
        `the backup comes from a PostgreSQL ${input.sourceServerMajor} server but the sandbox runs ${sandbox.server ?? sandbox.serverMajor}; ` +
        `a restore into an older major is not a faithful test: ${fix}`,
    };
  }
  return { ok: true };
}
