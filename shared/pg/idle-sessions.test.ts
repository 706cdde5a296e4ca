// Kept snapshot sessions, against a real server: the next dump from the same URL runs on the session the
// last one left (no new backend), with its dump slot given back while it waits; a session the server ended
// while kept is not used; a failed dump's session is never kept; the idle time and close() end them.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PgCluster, startPostgres } from '../../test/support/pg.js';
import { eventually } from '../../test/support/runtime.js';
import { AppError } from '../errors.js';
import { createIdleSessions, type IdleSessions } from './idle-sessions.js';
import { runSnapshotDump, type SnapshotDumpOptions } from './snapshot.js';

const DB = 'kept';
const APP = 'flux-ops-dump-kept-test';
let cluster: PgCluster;
let dir: string;
let n = 0;

beforeAll(async () => {
  cluster = await startPostgres();
  await cluster.createDatabase(DB);
  await cluster.query(
    `CREATE SCHEMA t_one; CREATE TABLE t_one.items (id serial PRIMARY KEY, note text);
     INSERT INTO t_one.items (note) SELECT 'n' || g FROM generate_series(1, 50) g;`,
    [],
    DB,
  );
  dir = await mkdtemp(path.join(tmpdir(), 'flux-kept-'));
}, 120_000);

afterAll(async () => {
  await cluster?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Our snapshot sessions on the server, and the advisory locks (dump slots) they hold. */
async function sessions(): Promise<{ pids: number[]; slots: number }> {
  const rows = await cluster.query<{ pid: number; slots: number }>(
    `SELECT a.pid, (SELECT count(*)::int FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory') AS slots
       FROM pg_stat_activity a WHERE a.application_name = $1 ORDER BY a.pid`,
    [APP],
  );
  return { pids: rows.map((r) => r.pid), slots: rows.reduce((s, r) => s + r.slots, 0) };
}

async function dump(idle: IdleSessions, schema = 't_one', url = cluster.url(DB)) {
  const target = path.join(dir, `d${n++}.dump`);
  const options: SnapshotDumpOptions = {
    url,
    scope: { kind: 'tenant_export', schema },
    pathEnv: process.env.PATH,
    compression: 1,
    lockWaitTimeoutMs: 10_000,
    timeoutMs: 60_000,
    applicationName: APP,
    admission: { key: 'kept-test', slots: 1 },
    target,
    fsError: (error) => new AppError('internal', String(error)),
    idle,
  };
  const result = await runSnapshotDump(options);
  await result.file.commit();
  await result.ended;
  return result;
}

describe('kept snapshot sessions', () => {
  it('the next dump runs on the session the last one left, its dump slot given back while kept', async () => {
    const idle = createIdleSessions({ idleMs: 60_000, perKey: 4 });
    try {
      const first = await dump(idle);
      expect(first.facts.tables).toEqual([{ schema: 't_one', name: 'items', rows: 50 }]);
      const kept = await sessions();
      expect(kept.pids).toHaveLength(1);
      expect(kept.slots).toBe(0);
      expect(idle.size).toBe(1);
      // Each dump's snapshot is its own: a row written in between is in the second one.
      await cluster.query(`INSERT INTO t_one.items (note) VALUES ('later')`, [], DB);
      const second = await dump(idle);
      expect(second.facts.tables[0]!.rows).toBe(51);
      expect(second.facts.snapshotId).not.toBe(first.facts.snapshotId);
      expect((await sessions()).pids).toEqual(kept.pids);
      expect(idle.size).toBe(1);
    } finally {
      await idle.close();
    }
    await eventually(async () => (await sessions()).pids.length === 0);
    expect(idle.size).toBe(0);
  });

  it('a session the server ended while kept is not used: the next dump connects its own', async () => {
    const idle = createIdleSessions({ idleMs: 60_000, perKey: 4 });
    try {
      await dump(idle);
      const [pid] = (await sessions()).pids;
      await cluster.query('SELECT pg_terminate_backend($1)', [pid]);
      await eventually(async () => (await sessions()).pids.length === 0);
      const next = await dump(idle);
      expect(next.facts.tables[0]!.rows).toBeGreaterThan(0);
      const now = (await sessions()).pids;
      expect(now).toHaveLength(1);
      expect(now[0]).not.toBe(pid);
    } finally {
      await idle.close();
    }
  });

  it('a failed dump leaves no session behind, kept or not, and no slot held', async () => {
    const idle = createIdleSessions({ idleMs: 60_000, perKey: 4 });
    try {
      await dump(idle);
      await expect(dump(idle, 't_missing')).rejects.toThrow(/schema t_missing does not exist/);
      expect(idle.size).toBe(0);
      await eventually(async () => (await sessions()).pids.length === 0);
    } finally {
      await idle.close();
    }
  });

  it('a kept session is ended after the idle time, and a closed keeper keeps nothing', async () => {
    const idle = createIdleSessions({ idleMs: 200, perKey: 4 });
    await dump(idle);
    expect(idle.size).toBe(1);
    await eventually(async () => idle.size === 0 && (await sessions()).pids.length === 0);
    await idle.close();
    await dump(idle);
    expect(idle.size).toBe(0);
    await eventually(async () => (await sessions()).pids.length === 0);
  });
});
