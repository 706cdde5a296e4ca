// migrate's pg_dump never outlives its migrate process for long: killed with kill -9 mid-dump, migrate
// leaves its pg_dump running (it holds the snapshot on the shared cluster); the next start of migrate on
// the same state dir kills it before its recovery, and forgets it, as dump does with its own.
import { randomUUID } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  descendantsOf,
  isAlive,
  killStartedFunctions,
  startFunction,
  writeProjectsFile,
} from './support/faults.js';
import { seedTenant, tenantSchemaOf } from './support/fixtures.js';
import { type PgCluster, quoteIdent, startPostgres } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

const tenantId = randomUUID();
const project = {
  id: tenantId,
  hash: tenantId.replaceAll('-', '').slice(0, 7),
  slug: 'orphan-migrate',
  engine: 'v2_shared',
  cluster: 'shared-1',
  dedicatedUrl: 'env:CHILDREN_DEDICATED_URL',
};

let source: PgCluster;
let target: PgCluster;
let testEnv: TestEnv;
let blocker: pg.Client | undefined;

beforeAll(async () => {
  [source, target] = await Promise.all([startPostgres(), startPostgres()]);
  await source.createDatabase('shared');
  await target.createDatabase('dedicated');
  await seedTenant(source, { db: 'shared', projectId: tenantId, rows: 500 });
  testEnv = await makeTestEnv({
    CHILDREN_SHARED_URL: source.url('shared'),
    CHILDREN_DEDICATED_URL: target.url('dedicated'),
    // pg_dump waits this long for a table lock: without the reaper, an orphan would sit for minutes.
    FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS: '300000',
  });
  await writeProjectsFile(testEnv.config.FLUX_PROJECTS_FILE, {
    clusters: [{ name: 'shared-1', url: 'env:CHILDREN_SHARED_URL', maxConcurrentDumps: 2 }],
    projects: [project],
  });
});

afterAll(async () => {
  await blocker?.query('ROLLBACK').catch(() => undefined);
  await blocker?.end().catch(() => undefined);
  await killStartedFunctions();
  await Promise.all([source?.destroy(), target?.destroy()]);
  await testEnv?.cleanup();
});

describe('pg_dump children of a killed migrate process', () => {
  it('are killed at the next start of migrate, and their records forgotten', async () => {
    // A session holding a table lock keeps pg_dump waiting: a pg_dump in mid-dump, for as long as needed.
    blocker = await source.connect('shared');
    await blocker.query('BEGIN');
    await blocker.query(`LOCK TABLE ${quoteIdent(tenantSchemaOf(tenantId))}.orders IN ACCESS EXCLUSIVE MODE`);

    const first = await startFunction('migrate', testEnv.env);
    // Answered only when the run ends, which it never does here: not awaited.
    const run = first
      .fetch('/api/cli/v1/migrate', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ slug: project.slug, hash: project.hash, yes: true, skipBackupCheck: true }),
      })
      .catch(() => undefined);
    const pgDump = await eventually(
      () => descendantsOf(first.pid).find((p) => p.argv.some((a) => a.startsWith('--snapshot='))),
      60_000,
      20,
    ).catch((error) => {
      throw new Error(`${error}\n${first.output().slice(-3000)}`);
    });
    // Past its snapshot import (which needs the dying process's transaction), waiting for the table.
    await eventually(
      async () =>
        (
          await source.query(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'",
            [],
            'shared',
          )
        ).length > 0,
      60_000,
      20,
    );
    const childrenDir = path.join(testEnv.config.FLUX_STATE_DIR, 'children', 'migrate');
    await eventually(async () => (await readdir(childrenDir)).includes(`${pgDump.pid}.json`), 10_000, 20);
    await first.kill9();
    await run;
    // Orphaned and still running: nothing it writes goes to the dead process.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(isAlive(pgDump.pid)).toBe(true);

    const second = await startFunction('migrate', testEnv.env);
    // Start-up (before the first answer) killed it and forgot it.
    await eventually(() => !isAlive(pgDump.pid), 5_000, 20);
    expect(await readdir(childrenDir)).toEqual([]);
    expect(second.output()).toContain('killed a child a crashed process left running');
    expect(await second.stop()).toBe(0);
  });
});
