// A FLUX_STATE_DIR that cannot take an event (full, read-only) fails the request that emits it, loudly and
// with the reason, instead of dropping the event: the outbox on a real read-only mount refuses in
// FLUX_STATE_DIR's words, and a backup whose created event finds the state dir full is answered 507, kept
// complete on disk, and announced by the next start of dump (once, under its one event id).
import { randomUUID } from 'node:crypto';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createdEventIdOf } from '../functions/dump/created-event.js';
import { isAppError } from '../shared/errors.js';
import { createEvent } from '../shared/events/envelope.js';
import { createOutbox } from '../shared/events/outbox.js';
import { createLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import type { Project } from '../shared/registry.js';
import {
  type DedupeSink,
  fillLeaving,
  mountSmallFs,
  type SmallFs,
  startDedupeSink,
} from './support/faults.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv, testRuntime } from './support/runtime.js';

const tenantId = randomUUID();
const tenant: Project = {
  id: tenantId,
  hash: tenantId.replaceAll('-', '').slice(0, 7),
  slug: 'full-state',
  engine: 'v2_shared',
  cluster: 'shared-1',
};
const clusters = [{ name: 'shared-1', url: 'env:FULL_SHARED_URL', maxConcurrentDumps: 1 }];

let pg: PgCluster;
let base: TestEnv;
let sink: DedupeSink;
const mounts: SmallFs[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: tenantId, rows: 500 });
  sink = await startDedupeSink();
  base = await makeTestEnv();
});

afterAll(async () => {
  for (const m of mounts) await m.unmount();
  await sink?.close();
  await pg?.destroy();
  await base?.cleanup();
});

async function smallStateDir(name: string): Promise<SmallFs> {
  const fs = await mountSmallFs(path.join(base.root, name), 2);
  mounts.push(fs);
  return fs;
}

/** Events of `type` about `subject` in a function's event log under `stateDir`. */
async function logged(stateDir: string, fn: string, type: string, subject: string): Promise<number> {
  const dir = path.join(stateDir, 'events', fn);
  let n = 0;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!/^\d+\.json$/.test(name)) continue;
    const { events } = JSON.parse(await readFile(path.join(dir, name), 'utf8')) as {
      events: Array<{ type: string; subject?: string }>;
    };
    n += events.filter((e) => e.type === type && e.subject === subject).length;
  }
  return n;
}

describe('a state directory that cannot take the event', () => {
  it('read-only: the outbox refuses the enqueue in FLUX_STATE_DIR words and keeps nothing half-written', async () => {
    const fs = await smallStateDir('ro-state');
    const outbox = createOutbox({
      dir: path.join(fs.dir, 'outbox', 'dump'),
      sinks: () => [{ url: sink.url, types: ['*'] }],
      secrets: [],
      log: createLogger('dump', { level: 'silent' }),
      metrics: createRegistry({ defaultMetrics: false }),
      retryScheduleMs: [0],
    });
    // Started on a writable dir (its directories made), then the filesystem goes read-only under it.
    await outbox.start();
    const remount = await execa('mount', ['-o', 'remount,ro', fs.dir], { reject: false });
    expect(remount.exitCode, String(remount.stderr)).toBe(0);
    try {
      const event = createEvent({
        type: 'flux.backup.deleted',
        source: '/flux-ops/dump',
        data: { projectId: tenantId, backupId: randomUUID(), reason: 'retention' },
      });
      const error = await outbox.enqueue(event).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isAppError(error) && error.code, String(error)).toBe('dir_not_writable');
      expect((error as Error).message).toMatch(/FLUX_STATE_DIR must be writable/);
      expect((error as Error).message).toContain(event.id);
      expect(outbox.depth()).toBe(0);
      expect(await outbox.idle(1000)).toBe(true);
      expect(sink.accepted.has(event.id)).toBe(false);
    } finally {
      await outbox.stop();
      await execa('mount', ['-o', 'remount,rw', fs.dir], { reject: false });
    }
  });

  it('full: the backup request answers 507, the backup stays complete, the next start of dump announces it once', async () => {
    const fs = await smallStateDir('full-state');
    const env = await makeTestEnv({
      FLUX_BACKUPS_LOCAL_DIR: base.config.FLUX_BACKUPS_LOCAL_DIR,
      FLUX_STATE_DIR: fs.dir,
      FULL_SHARED_URL: pg.url('shared'),
      FLUX_EVENT_SINKS: JSON.stringify([{ url: sink.url, types: ['flux.backup.*'] }]),
    });
    const makeDump = () => {
      const rt = testRuntime('dump', env, { projects: [tenant], clusters });
      return { rt, fn: createDumpApp(rt) };
    };
    const first = makeDump();
    await first.fn.start();
    // Nothing left on the state dir's filesystem: the next file written there fails with ENOSPC.
    await fillLeaving(fs.dir, 0);

    const res = await first.fn.app.request(`/api/cli/v1/projects/${tenant.hash}/backups`, {
      method: 'POST',
      headers: ADMIN.header,
    });
    const body = (await res.json()) as { code: string; error: string; backupId?: string };
    expect(res.status, JSON.stringify(body)).toBe(507);
    expect(body.code).toBe('disk_full');
    expect(body.error).toMatch(/is complete, but receivers were not told/);
    expect(body.error).toMatch(/FLUX_STATE_DIR/);
    const backupId = String(body.backupId);
    const subject = `${tenantId}/${backupId}`;
    expect(first.rt.logs.text()).toMatch(/could not be made durable; it is sent at the next start/);

    // The backup itself is complete and kept; the state file is the mark that its event is owed.
    const projectDir = path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, tenantId);
    expect((await stat(path.join(projectDir, `${backupId}.manifest.json`))).isFile()).toBe(true);
    expect((await stat(path.join(projectDir, `${backupId}.dump`))).size).toBeGreaterThan(0);
    const state = JSON.parse(await readFile(path.join(projectDir, `${backupId}.state.json`), 'utf8'));
    expect(state).toMatchObject({ status: 'running' });
    expect(sink.events('flux.backup.created').filter((e) => e.subject === subject)).toEqual([]);
    await first.fn.stop();

    // Space again; the next start sends what was owed, under the backup's one created-event id.
    await rm(path.join(fs.dir, 'filler.bin'));
    const second = makeDump();
    await second.fn.start();
    const created = await eventually(() =>
      sink.events('flux.backup.created').find((e) => e.subject === subject),
    );
    expect(created.id).toBe(createdEventIdOf(tenantId, backupId));
    expect(created.data).toMatchObject({
      backupId,
      sha256: JSON.parse(await readFile(path.join(projectDir, `${backupId}.manifest.json`), 'utf8')).sha256,
    });
    await expect(stat(path.join(projectDir, `${backupId}.state.json`))).rejects.toThrow();
    expect(second.rt.logs.text()).toMatch(/sent the created event of a backup completed just before a crash/);
    const list = await second.fn.app.request(`/api/cli/v1/projects/${tenant.hash}/backups`, {
      headers: ADMIN.header,
    });
    const [listed] = ((await list.json()) as { backups: Array<{ id: string; status: string }> }).backups;
    expect(listed).toMatchObject({ id: backupId, status: 'complete' });
    expect(await second.rt.outbox.idle(10_000)).toBe(true);
    await second.fn.stop();

    // A normal restart owes nothing: the event is not sent again.
    const third = makeDump();
    await third.fn.start();
    expect(await third.rt.outbox.idle(10_000)).toBe(true);
    await third.fn.stop();
    expect(await logged(fs.dir, 'dump', 'flux.backup.created', subject)).toBe(1);
    expect(sink.duplicates).toBe(0);
    expect(sink.events('flux.backup.created').filter((e) => e.subject === subject)).toHaveLength(1);
    await env.cleanup();
  });
});
