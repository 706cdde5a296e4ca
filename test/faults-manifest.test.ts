// Crashes at the two moments between "pg_dump finished" and "everyone was told", at fault points
// (FLUX_TEST_FAULT_POINTS: the process stops itself there, the test then acts): the all-in-one process
// kill -9'd the moment a backup's manifest lands still gets that backup announced, replicated and verified
// after its restart; a dump process whose Postgres dies after pg_dump finished, before the snapshot's
// COMMIT, fails the backup and leaves no temp dump behind, without waiting for a restart.
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createdEventIdOf } from '../functions/dump/created-event.js';
import { TEMP_PREFIX } from '../shared/atomic.js';
import type { ApiBackup } from '../shared/catalog/read-model.js';
import {
  type DedupeSink,
  type FnProcess,
  isAlive,
  killStartedFunctions,
  startDedupeSink,
  startFunction,
  stoppedAtFaultPoint,
  writeProjectsFile,
} from './support/faults.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

const tenantId = randomUUID();
const tenant = { id: tenantId, hash: tenantId.replaceAll('-', '').slice(0, 7), slug: 'manifest-kill' };

let pg: PgCluster;
let testEnv: TestEnv;
let sink: DedupeSink;
let verifyScratch: string;
let env: NodeJS.ProcessEnv;

const projectDir = () => path.join(testEnv.config.FLUX_BACKUPS_LOCAL_DIR, tenantId);
const exists = (file: string) =>
  stat(file).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: tenantId, rows: 2_000 });
  sink = await startDedupeSink();
  verifyScratch = await mkdtemp(path.join(tmpdir(), 'flux-manifest-verify-'));
  // The local sandbox's server runs as an unprivileged user: its parent dir must be searchable by it.
  await chmod(verifyScratch, 0o755);
  testEnv = await makeTestEnv({ MANIFEST_SHARED_URL: pg.url('shared') });
  await writeProjectsFile(testEnv.config.FLUX_PROJECTS_FILE, {
    clusters: [{ name: 'shared-1', url: 'env:MANIFEST_SHARED_URL', maxConcurrentDumps: 1 }],
    projects: [{ ...tenant, engine: 'v2_shared', cluster: 'shared-1' }],
  });
  env = {
    ...testEnv.env,
    FLUX_LOG_LEVEL: 'info',
    FLUX_EVENT_SINKS: JSON.stringify([{ url: sink.url, types: ['*'] }]),
    FLUX_OUTBOX_RETRY_SCHEDULE_MS: [0, 100, 200, ...Array(50).fill(400)].join(','),
    // Verification as configured by default: on flux.backup.created.
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: verifyScratch,
  };
});

afterAll(async () => {
  await killStartedFunctions();
  await sink?.close();
  await pg?.destroy();
  await testEnv?.cleanup();
  if (verifyScratch) await rm(verifyScratch, { recursive: true, force: true });
});

async function createAsync(proc: FnProcess): Promise<string> {
  const res = await proc.fetch(`/api/cli/v1/projects/${tenant.hash}/backups`, {
    method: 'POST',
    headers: { prefer: 'respond-async' },
  });
  expect(res.status).toBe(202);
  return ((await res.json()) as { backup: { id: string } }).backup.id;
}

async function listed(proc: FnProcess, backupId: string): Promise<ApiBackup | undefined> {
  const res = await proc.fetch(`/api/cli/v1/projects/${tenant.hash}/backups`);
  if (!res.ok) return undefined;
  return ((await res.json()) as { backups: ApiBackup[] }).backups.find((b) => b.id === backupId);
}

/** How many created events about `subject` dump's event log holds. */
async function loggedCreated(subject: string): Promise<number> {
  const dir = path.join(testEnv.config.FLUX_STATE_DIR, 'events', 'dump');
  let n = 0;
  for (const name of await readdir(dir)) {
    if (!/^\d+\.json$/.test(name)) continue;
    const { events } = JSON.parse(await readFile(path.join(dir, name), 'utf8')) as {
      events: Array<{ type: string; subject?: string }>;
    };
    n += events.filter((e) => e.type === 'flux.backup.created' && e.subject === subject).length;
  }
  return n;
}

describe('crashes between pg_dump and the announcement', () => {
  it('all-in-one kill -9 the moment the manifest lands: after the restart the backup is announced once, replicated and verified', async () => {
    const first = await startFunction('all', { ...env, FLUX_TEST_FAULT_POINTS: 'dump.manifest_written' });
    const backupId = await createAsync(first);
    const subject = `${tenantId}/${backupId}`;
    const eventId = createdEventIdOf(tenantId, backupId);
    await stoppedAtFaultPoint(first);

    // The backup is complete on disk, and nobody has been told: not the sink, not the outbox.
    const manifestFile = path.join(projectDir(), `${backupId}.manifest.json`);
    const stateFile = path.join(projectDir(), `${backupId}.state.json`);
    expect(await exists(manifestFile)).toBe(true);
    expect(JSON.parse(await readFile(stateFile, 'utf8'))).toMatchObject({ status: 'running' });
    const pendingDir = path.join(testEnv.config.FLUX_STATE_DIR, 'outbox', 'dump', 'pending');
    const pendingCreated = async () =>
      (await readdir(pendingDir).catch(() => [] as string[])).filter((n) => n.startsWith(eventId));
    expect(await pendingCreated()).toEqual([]);
    expect(sink.events('flux.backup.created').filter((e) => e.subject === subject)).toEqual([]);
    await first.kill9();

    const second = await startFunction('all', env);
    const created = await eventually(() =>
      sink.events('flux.backup.created').find((e) => e.subject === subject),
    );
    expect(created.id).toBe(eventId);
    const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as { sha256: string };
    expect(created.data).toMatchObject({ backupId, sha256: manifest.sha256, projectId: tenantId });
    // No stale running state: the start that announced it removed the mark.
    expect(await exists(stateFile)).toBe(false);

    const settled = await eventually(
      async () => {
        const b = await listed(second, backupId);
        return b?.offsiteStatus === 'complete' && b.restoreVerificationStatus === 'restore_verified'
          ? b
          : undefined;
      },
      240_000,
      250,
    );
    expect(settled).toMatchObject({
      status: 'complete',
      artifactValidationStatus: 'artifact_valid',
      offsiteStatus: 'complete',
      offsiteContentSha256: manifest.sha256,
      restoreVerificationStatus: 'restore_verified',
    });
    expect(sink.events('flux.backup.created').filter((e) => e.subject === subject)).toHaveLength(1);
    expect(sink.unverified).toBe(0);
    expect(await second.stop()).toBe(0);

    // A normal restart owes nothing: the created event is not enqueued again (dump's event log holds
    // every event it enqueued, across restarts).
    expect(await loggedCreated(subject)).toBe(1);
    const third = await startFunction('all', env);
    expect(await third.stop()).toBe(0);
    expect(await loggedCreated(subject)).toBe(1);
    expect(third.output()).not.toContain('sent the created event of a backup completed just before a crash');
  });

  it('Postgres dies after pg_dump finished, before the COMMIT: the backup fails at once and no temp dump stays', async () => {
    const dump = await startFunction('dump', { ...env, FLUX_TEST_FAULT_POINTS: 'dump.pg_dump_finished' });
    const backupId = await createAsync(dump);
    await stoppedAtFaultPoint(dump);
    // pg_dump wrote the whole archive into its temp file; the snapshot's transaction is still open.
    const temps = (await readdir(projectDir())).filter(
      (n) => n.startsWith(TEMP_PREFIX) && n.includes(backupId),
    );
    expect(temps).toHaveLength(1);
    expect((await stat(path.join(projectDir(), temps[0]!))).size).toBeGreaterThan(0);

    await pg.stop();
    process.kill(dump.pid, 'SIGCONT');

    const failed = await eventually(
      () => sink.events('flux.backup.failed').find((e) => e.subject === `${tenantId}/${backupId}`),
      60_000,
    );
    expect(failed.data).toMatchObject({ backupId });
    expect(failed.data).not.toMatchObject({ reason: 'interrupted' });
    // Removed by the failing process itself, which lives on: no restart was needed.
    expect(isAlive(dump.pid)).toBe(true);
    expect((await readdir(projectDir())).filter((n) => n.startsWith(TEMP_PREFIX))).toEqual([]);
    expect(await exists(path.join(projectDir(), `${backupId}.dump`))).toBe(false);
    const state = JSON.parse(await readFile(path.join(projectDir(), `${backupId}.state.json`), 'utf8'));
    expect(state).toMatchObject({ status: 'failed' });
    expect(await dump.stop()).toBe(0);
  });
});
