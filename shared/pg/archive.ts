// Reading facts back out of a custom-format archive with pg_restore: the sequence values it will set.
// Sequences are not transactional, so pg_dump records each one when it reads it, not at the snapshot;
// the manifest records the archive's own values so a restore can be compared exactly.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { AppError } from '../errors.js';

export interface ArchiveSequence {
  /** The qualified name as pg_dump wrote it (format('%I.%I', schema, name)). */
  qualified: string;
  lastValue: string;
  isCalled: boolean;
}

const SETVAL = /^SELECT pg_catalog\.setval\('((?:[^']|'')+)', (-?\d+), (true|false)\);$/;

export async function readArchiveSequences(
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
    const sequences: ArchiveSequence[] = [];
    for (const line of out.stdout.split('\n')) {
      const m = SETVAL.exec(line.trim());
      if (m)
        sequences.push({
          qualified: m[1]!.replaceAll("''", "'"),
          lastValue: m[2]!,
          isCalled: m[3] === 'true',
        });
    }
    return sequences;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
