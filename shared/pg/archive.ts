// Reading facts back out of a custom-format archive: the sequence values it will set. Sequences are not
// transactional, so pg_dump records each one when it reads it, not at the snapshot; the manifest records
// the archive's own values so a restore can be compared exactly. The values are in the table of contents
// (each SEQUENCE SET entry's definition is its setval), read here in-process; an archive version this
// reader does not know falls back to asking pg_restore.
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { AppError } from '../errors.js';
import { ArchiveCursor, ArchiveHeaderError, atLeast, readHeader } from './archive-header.js';

export interface ArchiveSequence {
  /** The qualified name as pg_dump wrote it (format('%I.%I', schema, name)). */
  qualified: string;
  lastValue: string;
  isCalled: boolean;
}

const SETVAL = /^SELECT pg_catalog\.setval\('((?:[^']|'')+)', (-?\d+), (true|false)\);$/;

/**
 * The TOC layouts this reader knows: K_VERS_1_12 to K_VERS_1_15 (the pg_dump of PostgreSQL 9.6 to 16).
 * PostgreSQL 17's 1.16 adds fields to each entry; its archives, and any newer, are read by pg_restore.
 */
const TOC_MINORS = { min: 12, max: 15 } as const;
/**
 * The TOC is read from the start of the archive in growing chunks, never more than this: a schema whose
 * definitions are larger (a tenant's DDL is its own) is read by pg_restore, in its own process, instead of
 * growing this one.
 */
const TOC_READ_MAX = 16 * 1024 * 1024;

function setvalOf(defn: string | undefined): ArchiveSequence | undefined {
  const m = defn === undefined ? null : SETVAL.exec(defn.trim());
  return m
    ? { qualified: m[1]!.replaceAll("''", "'"), lastValue: m[2]!, isCalled: m[3] === 'true' }
    : undefined;
}

/**
 * The SEQUENCE SET entries of a custom-format archive's table of contents (pg_backup_archiver.c
 * ReadToc, pg_backup_custom.c _ReadExtraToc), or undefined for a layout this reader does not know.
 * Throws ArchiveHeaderError('header_truncated') when `bytes` ends inside the table of contents.
 */
export function parseTocSequences(bytes: Uint8Array): ArchiveSequence[] | undefined {
  const { header, end } = readHeader(bytes);
  const v = header.version;
  if (header.format !== 'custom' || v.major !== 1 || v.minor < TOC_MINORS.min || v.minor > TOC_MINORS.max)
    return undefined;
  if (end === undefined) throw new ArchiveHeaderError('header_truncated', 'the archive header is truncated');
  const c = new ArchiveCursor(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), end);
  c.intSize = header.intSize;
  const sequences: ArchiveSequence[] = [];
  const count = c.int();
  for (let i = 0; i < count; i++) {
    c.int(); // dumpId
    c.int(); // hadDumper
    c.str(); // catalogId.tableoid
    c.str(); // catalogId.oid
    c.str(); // tag
    const desc = c.str();
    c.int(); // section
    const defn = c.str();
    c.str(); // dropStmt
    c.str(); // copyStmt
    c.str(); // namespace
    c.str(); // tablespace
    if (atLeast(v, 1, 14)) c.str(); // tableam
    if (atLeast(v, 1, 16)) c.int(); // relkind
    c.str(); // owner
    c.str(); // "false": the old WITH OIDS flag
    while (c.str() !== undefined); // dependencies, ended by a null string
    c.byte(); // the data's state flag (custom format)
    c.skip(header.offSize); // and its offset
    if (desc === 'SEQUENCE SET') {
      const seq = setvalOf(defn);
      if (seq) sequences.push(seq);
    }
  }
  return sequences;
}

/** The sequences the archive's table of contents sets, read in-process; undefined for an unknown layout. */
async function tocSequences(archive: string): Promise<ArchiveSequence[] | undefined> {
  const handle = await open(archive, 'r');
  try {
    const size = (await handle.stat()).size;
    for (let chunk = 64 * 1024; ; chunk *= 4) {
      const length = Math.min(chunk, size, TOC_READ_MAX);
      const { buffer, bytesRead } = await handle.read(Buffer.alloc(length), 0, length, 0);
      try {
        return parseTocSequences(buffer.subarray(0, bytesRead));
      } catch (error) {
        const short = error instanceof ArchiveHeaderError && error.code === 'header_truncated';
        if (!short || length >= size || length >= TOC_READ_MAX) return undefined;
      }
    }
  } finally {
    await handle.close();
  }
}

export async function readArchiveSequences(
  pgRestore: string,
  archive: string,
  pathEnv: string | undefined,
): Promise<ArchiveSequence[]> {
  const fromToc = await tocSequences(archive);
  if (fromToc) return fromToc;
  return sequencesByPgRestore(pgRestore, archive, pathEnv);
}

/** The same facts from pg_restore: its --list, then the SEQUENCE SET entries printed as SQL. */
export async function sequencesByPgRestore(
  pgRestore: string,
  archive: string,
  pathEnv: string | undefined,
): Promise<ArchiveSequence[]> {
  const run = (args: string[]) =>
    execa(pgRestore, args, {
      env: { PATH: pathEnv ?? '' },
      extendEnv: false,
      timeout: 120_000,
      reject: false,
    });
  const toc = await run(['--list', archive]);
  if (toc.exitCode !== 0)
    throw new AppError(
      'artifact_invalid',
      `pg_restore --list could not read the archive: ${toc.stderr.slice(0, 500)}`,
    );
  const entries = toc.stdout.split('\n').filter((line) => /^\d+;.* SEQUENCE SET /.test(line));
  if (entries.length === 0) return [];
  const dir = await mkdtemp(path.join(tmpdir(), 'flux-ops-toc-'));
  try {
    const list = path.join(dir, 'sequences.list');
    await writeFile(list, `${entries.join('\n')}\n`);
    const out = await run(['--use-list', list, '--file', '-', archive]);
    if (out.exitCode !== 0)
      throw new AppError(
        'artifact_invalid',
        `pg_restore could not read the sequence values: ${out.stderr.slice(0, 500)}`,
      );
    return out.stdout.split('\n').flatMap((line) => setvalOf(line) ?? []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
