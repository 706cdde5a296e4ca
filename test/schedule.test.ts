// Dump's backup scheduler on a real Postgres: with a schedule of a few seconds backups happen by
// themselves, one per project per window; a restart mid-window does not take the window's backup again
// (from the state file, and from the catalog alone when the state file is gone); 50 projects of one
// cluster with maxConcurrentDumps 2 never have more than 2 pg_dumps on the server at once and are spread
// over the window instead of all starting together.
import { randomUUID } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../functions/dump/app.js';
import { slotAt } from '../functions/dump/due.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Cluster, Project } from '../shared/registry.js';
import { parseSchedule } from '../shared/schedule.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv, type TestRuntime, testRuntime } from './support/runtime.js';

const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);

let pg: PgCluster;
const envs: TestEnv[] = [];
const apps: FunctionApp[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
});

afterAll(async () => {
  for (const app of apps) await app.stop().catch(() => undefined);
  await pg?.destroy();
  for (const env of envs) await env.cleanup();
});

async function tenants(n: number, cluster: string, schedule: string): Promise<Project[]> {
  const projects: Project[] = [];
  for (let i = 0; i < n; i++) {
    const id = randomUUID();
    await seedTenant(pg, { db: 'shared', projectId: id, rows: 20 });
    projects.push({ id, hash: hashOf(id), slug: `${cluster}-t${i}`, engine: 'v2_shared', cluster, schedule });
  }
  return projects;
}

async function startDump(env: TestEnv, projects: Project[], clusters: Cluster[]) {
  const rt = testRuntime('dump', env, { projects, clusters });
  const app = createApp(rt);
  apps.push(app);
  await app.start();
  return { rt, app };
}

async function completed(rt: TestRuntime, projectId: string) {
  return (await rt.catalog.list(projectId)).filter((e) => e.manifest);
}

async function metricValue(app: FunctionApp, series: string): Promise<number | undefined> {
  const text = await (await app.app.request('/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('a schedule of a few seconds', () => {
  let env: TestEnv;
  let projects: Project[];
  const clusters: Cluster[] = [{ name: 'fast', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }];

  beforeAll(async () => {
    env = await makeTestEnv({
      TEST_SHARED_URL: pg.url('shared'),
      FLUX_BACKUP_SCHEDULE_TICK_MS: '100',
      FLUX_BACKUP_SCHEDULE_CATCHUP_PER_MINUTE: '600',
    });
    envs.push(env);
    projects = await tenants(3, 'fast', '3s');
  });

  it('backups happen by themselves, one per project per window, each decision logged', async () => {
    const startAt = Date.now();
    const { rt, app } = await startDump(env, projects, clusters);
    const startedAt = Date.now();
    const schedule = parseSchedule('3s');
    for (const p of projects) {
      const backups = await eventually(
        async () => {
          const list = await completed(rt, p.id);
          return list.length >= 3 ? list : undefined;
        },
        60_000,
        100,
      );
      // Never two backups for one window: each created in its own slot of the project's schedule.
      const slots = backups.map((b) => slotAt(schedule, p.id, Date.parse(b.manifest!.createdAt), 100)!.dueMs);
      expect(new Set(slots).size).toBe(slots.length);
    }
    const started = rt.logs.lines.filter((l) => l.msg === 'scheduled backup' && l.decision === 'started');
    expect(started.length).toBeGreaterThanOrEqual(9);
    expect(started[0]).toMatchObject({
      projectId: expect.any(String),
      slotAt: expect.any(String),
      backupId: expect.any(String),
    });
    // A project whose first due time passed before the scheduler started is caught up; one due after is not.
    for (const l of started) {
      const slot = Date.parse(l.slotAt as string);
      if (slot < startAt) expect(l.catchUp, JSON.stringify(l)).toBe(true);
      if (slot > startedAt) expect(l.catchUp, JSON.stringify(l)).toBe(false);
    }
    expect(started.some((l) => l.catchUp === true)).toBe(true);
    expect(await metricValue(app, 'flux_schedule_decisions_total{decision="started"}')).toBe(started.length);
    await app.stop();
  });
});

describe('a restart mid-window', () => {
  let env: TestEnv;
  let projects: Project[];
  const clusters: Cluster[] = [{ name: 'hourly', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }];

  beforeAll(async () => {
    env = await makeTestEnv({
      TEST_SHARED_URL: pg.url('shared'),
      FLUX_BACKUP_SCHEDULE_TICK_MS: '100',
      FLUX_BACKUP_SCHEDULE_CATCHUP_PER_MINUTE: '600',
    });
    envs.push(env);
    projects = await tenants(3, 'hourly', '1h');
  });

  /** Until the scheduler of `app` has ticked a few times after `since`. */
  async function ticked(app: FunctionApp, since: number) {
    await eventually(
      async () =>
        ((await metricValue(app, 'flux_schedule_last_tick_timestamp_seconds')) ?? 0) > since / 1000 + 1,
      10_000,
      100,
    );
  }

  it('does not take the window’s backup again, from the state file or from the catalog alone', async () => {
    const first = await startDump(env, projects, clusters);
    for (const p of projects)
      await eventually(async () => (await completed(first.rt, p.id)).length === 1, 60_000, 100);
    await ticked(first.app, Date.now());
    await first.app.stop();

    // Restarted within the hour: the state file says the window's backup was taken.
    const again = await startDump(env, projects, clusters);
    await ticked(again.app, Date.now());
    for (const p of projects) expect(await completed(again.rt, p.id)).toHaveLength(1);
    expect(again.rt.logs.lines.filter((l) => l.msg === 'scheduled backup')).toEqual([]);
    await again.app.stop();

    // Without the state file the catalog still shows the window has its backup.
    await rm(path.join(env.config.FLUX_STATE_DIR, 'schedule'), { recursive: true, force: true });
    const bare = await startDump(env, projects, clusters);
    await ticked(bare.app, Date.now());
    for (const p of projects) expect(await completed(bare.rt, p.id)).toHaveLength(1);
    const satisfied = bare.rt.logs.lines.filter((l) => l.decision === 'satisfied');
    expect(satisfied.map((l) => l.projectId).sort()).toEqual(projects.map((p) => p.id).sort());
    expect(satisfied[0]).toMatchObject({ by: 'backup' });
    await bare.app.stop();
  });
});

describe('50 projects on one cluster with maxConcurrentDumps 2', () => {
  const WINDOW_S = 60;
  let env: TestEnv;
  let projects: Project[];
  const clusters: Cluster[] = [{ name: 'crowd', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }];

  beforeAll(async () => {
    env = await makeTestEnv({ TEST_SHARED_URL: pg.url('shared'), FLUX_BACKUP_SCHEDULE_TICK_MS: '100' });
    envs.push(env);
    projects = await tenants(50, 'crowd', `${WINDOW_S}s`);
  }, 300_000);

  it('never more than 2 pg_dumps at once on the server, and spread over the window', async () => {
    // The scheduler already took this window's backups: the next window's are each due at the project's
    // own offset into it, within the next WINDOW_S seconds.
    const schedule = parseSchedule(`${WINDOW_S}s`);
    const now = Date.now();
    const state = {
      version: 1,
      projects: Object.fromEntries(
        projects.map((p) => [
          p.id,
          {
            slotAt: new Date(slotAt(schedule, p.id, now, 100)!.dueMs).toISOString(),
            startedAt: new Date(now).toISOString(),
          },
        ]),
      ),
    };
    const dir = path.join(env.config.FLUX_STATE_DIR, 'schedule');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'dump.json'), JSON.stringify(state));

    let sampling = true;
    let maxDumps = 0;
    let maxSlots = 0;
    const sampler = (async () => {
      while (sampling) {
        // pg_dump's own sessions (named flux-ops-dump, holding no slot) and the sessions holding a dump slot.
        const [row] = await pg.query<{ dumps: number; slots: number }>(
          `SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'))::int AS dumps,
                  count(*) FILTER (WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'))::int AS slots
             FROM pg_stat_activity a WHERE a.application_name = 'flux-ops-dump' AND a.datname = 'shared'`,
          [],
          'shared',
        );
        maxDumps = Math.max(maxDumps, row!.dumps);
        maxSlots = Math.max(maxSlots, row!.slots);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();

    const { rt } = await startDump(env, projects, clusters);
    try {
      await eventually(
        async () => {
          for (const p of projects) if ((await completed(rt, p.id)).length < 1) return false;
          return true;
        },
        (WINDOW_S + 90) * 1000,
        250,
      );
    } finally {
      sampling = false;
      await sampler;
    }
    expect(maxSlots).toBeGreaterThanOrEqual(1);
    expect(maxDumps).toBeGreaterThanOrEqual(1);
    expect(maxSlots).toBeLessThanOrEqual(2);
    expect(maxDumps).toBeLessThanOrEqual(2);

    // Spread: each project's backup started at or after its own due time in the window, and those due
    // times cover the window (its offsets), so the starts are not one burst at the window's beginning.
    const due = projects.map((p) => Date.parse(state.projects[p.id]!.slotAt) + WINDOW_S * 1000);
    for (const [i, p] of projects.entries()) {
      const createdAt = Date.parse((await completed(rt, p.id)).at(-1)!.manifest!.createdAt);
      expect(createdAt, p.slug).toBeGreaterThanOrEqual(due[i]!);
    }
    expect((Math.max(...due) - Math.min(...due)) / 1000).toBeGreaterThan(WINDOW_S / 2);
    const first = Math.min(...due);
    expect(due.filter((t) => t - first < (WINDOW_S * 1000) / 10).length).toBeLessThan(25);
    // No start was refused by the cluster's queue: the scheduler never asked beyond the free slots.
    expect(rt.logs.lines.filter((l) => l.msg === 'scheduled backup' && l.decision !== 'started')).toEqual([]);
    expect(rt.logs.lines.filter((l) => l.msg === 'backup failed')).toEqual([]);
  }, 300_000);
});
