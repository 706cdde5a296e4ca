// A pg_dump never outlives its dump process for long: killed with kill -9, the dump process leaves its
// pg_dump running (nothing reads from it, so nothing tells it); the next start of dump on the same state
// dir kills it before recovery, and only that pg_dump.
import { randomUUID } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEMP_PREFIX } from '../shared/atomic.js';
import {
  descendantsOf,
  type FnProcess,
  isAlive,
  killStartedFunctions,
  startFunction,
  writeProjectsFile,
} from './support/faults.js';
import { seedTenant, tenantSchemaOf } from './support/fixtures.js';
import { type PgCluster, quoteIdent, startPostgres } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

const tenantId = randomUUID();
const tenant = { id: tenantId, hash: tenantId.replaceAll('-', '').slice(0, 7), slug: 'orphan-dump' };

let pgc: PgCluster;
let testEnv: TestEnv;
let blocker: pg.Client | undefined;

beforeAll(async () => {
  pgc = await startPostgres();
  await pgc.createDatabase('shared');
  await seedTenant(pgc, { db: 'shared', projectId: tenantId, rows: 1_000 });
  testEnv = await makeTestEnv({
    CHILDREN_SHARED_URL: pgc.url('shared'),
    // pg_dump waits this long for a table lock: without the reaper, an orphan would sit for minutes.
    FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS: '300000',
  });
  await writeProjectsFile(testEnv.config.FLUX_PROJECTS_FILE, {
    clusters: [{ name: 'shared-1', url: 'env:CHILDREN_SHARED_URL', maxConcurrentDumps: 2 }],
    projects: [{ ...tenant, engine: 'v2_shared', cluster: 'shared-1' }],
  });
});

afterAll(async () => {
  await blocker?.query('ROLLBACK').catch(() => undefined);
  await blocker?.end().catch(() => undefined);
  await killStartedFunctions();
  await pgc?.destroy();
  await testEnv?.cleanup();
});

describe('pg_dump children of a killed dump process', () => {
  it('are killed at the next start (and their partial removed); the next start after that finds none', async () => {
    // A session holding a table lock keeps pg_dump waiting: a pg_dump in mid-dump, for as long as needed.
    blocker = await pgc.connect('shared');
    await blocker.query('BEGIN');
    await blocker.query(`LOCK TABLE ${quoteIdent(tenantSchemaOf(tenantId))}.orders IN ACCESS EXCLUSIVE MODE`);

    const first = await startFunction('dump', testEnv.env);
    const res = await first.fetch(`/api/cli/v1/projects/${tenant.hash}/backups`, {
      method: 'POST',
      headers: { prefer: 'respond-async' },
    });
    expect(res.status).toBe(202);
    const pgDump = await eventually(
      () => descendantsOf(first.pid).find((p) => p.argv.some((a) => a.startsWith('--snapshot='))),
      60_000,
      20,
    );
    // Past its snapshot import (which needs the dying process's transaction), waiting for the table.
    await eventually(
      async () =>
        (
          await pgc.query(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'",
            [],
            'shared',
          )
        ).length > 0,
      60_000,
      20,
    );
    const childrenDir = path.join(testEnv.config.FLUX_STATE_DIR, 'children', 'dump');
    await eventually(async () => (await readdir(childrenDir)).includes(`${pgDump.pid}.json`), 10_000, 20);
    await first.kill9();
    // Orphaned and still running: nothing it writes goes to the dead process.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(isAlive(pgDump.pid)).toBe(true);

    const second: FnProcess = await startFunction('dump', testEnv.env);
    // Start-up (before the first answer) killed it and forgot it; recovery removed its temp file.
    await eventually(() => !isAlive(pgDump.pid), 5_000, 20);
    expect(await readdir(childrenDir)).toEqual([]);
    expect(second.output()).toContain('killed a child a crashed process left running');
    const projectDir = path.join(testEnv.config.FLUX_BACKUPS_LOCAL_DIR, tenantId);
    expect((await readdir(projectDir)).filter((n) => n.startsWith(TEMP_PREFIX))).toEqual([]);

    // With the table free again, a backup completes and leaves no record behind.
    await blocker.query('ROLLBACK');
    const next = await second.fetch(`/api/cli/v1/projects/${tenant.hash}/backups`, { method: 'POST' });
    expect(next.status).toBe(200);
    expect(await readdir(childrenDir)).toEqual([]);
    expect(await second.stop()).toBe(0);
  });
});
