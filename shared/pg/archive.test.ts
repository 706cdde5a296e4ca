// The sequence values read in-process from a real pg_dump archive's table of contents are exactly what
// pg_restore prints for it, quoted names and never-called sequences included; a cut archive is refused.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PgCluster, startPostgres } from '../../test/support/pg.js';
import { requireTool } from '../tools.js';
import { parseTocSequences, readArchiveSequences, sequencesByPgRestore } from './archive.js';
import { ArchiveHeaderError } from './archive-header.js';

let cluster: PgCluster;
let dir: string;
let archive: string;

beforeAll(async () => {
  cluster = await startPostgres();
  await cluster.createDatabase('seqs');
  await cluster.query(
    `CREATE SCHEMA "we""ird";
     CREATE SEQUENCE "we""ird"."it's" START 5;
     SELECT nextval('"we""ird"."it''s"'), nextval('"we""ird"."it''s"');
     CREATE SEQUENCE public.untouched;
     CREATE TABLE public.items (id bigserial PRIMARY KEY, note text);
     INSERT INTO public.items (note) SELECT 'n' || g FROM generate_series(1, 300) g;
     CREATE SEQUENCE public.big START 9000000000000;
     SELECT setval('public.big', 9000000000123, false);`,
    [],
    'seqs',
  );
  dir = await mkdtemp(path.join(tmpdir(), 'flux-archive-'));
  archive = path.join(dir, 'seqs.dump');
  await execa('pg_dump', ['-Fc', '-Z1', '-f', archive, 'seqs'], {
    env: { ...process.env, ...cluster.env('seqs') },
  });
}, 120_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await cluster?.destroy();
});

describe('sequence values from the archive', () => {
  it('the table of contents gives what pg_restore prints, entry for entry', async () => {
    const pgRestore = await requireTool('pg_restore', process.env.PATH);
    const byTool = await sequencesByPgRestore(pgRestore.path, archive, process.env.PATH);
    const inProcess = parseTocSequences(await readFile(archive));
    expect(byTool).toHaveLength(4);
    expect(inProcess).toEqual(byTool);
    expect(inProcess).toContainEqual({ qualified: '"we""ird"."it\'s"', lastValue: '6', isCalled: true });
    expect(inProcess).toContainEqual({ qualified: 'public.untouched', lastValue: '1', isCalled: false });
    expect(inProcess).toContainEqual({
      qualified: 'public.big',
      lastValue: '9000000000123',
      isCalled: false,
    });
    expect(inProcess).toContainEqual({ qualified: 'public.items_id_seq', lastValue: '300', isCalled: true });
    expect(await readArchiveSequences(pgRestore.path, archive, process.env.PATH)).toEqual(byTool);
  });

  it('an archive cut inside its table of contents is short, never a partial list', async () => {
    const bytes = await readFile(archive);
    expect(() => parseTocSequences(bytes.subarray(0, 400))).toThrow(ArchiveHeaderError);
    const cut = path.join(dir, 'cut.dump');
    await writeFile(cut, bytes.subarray(0, 400));
    const pgRestore = await requireTool('pg_restore', process.env.PATH);
    // Unreadable in-process, so pg_restore is asked, and it refuses the archive.
    await expect(readArchiveSequences(pgRestore.path, cut, process.env.PATH)).rejects.toMatchObject({
      code: 'artifact_invalid',
    });
  });
});
