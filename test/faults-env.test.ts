// Faults of the environment around the functions, each function a real process: a full disk under the
// local backup root and under the offsite store (clear error, partial removed, earlier backups intact),
// Postgres restarted in the middle of a dump (a failed backup with its reason, no artifact), and the
// Docker engine dying in the middle of a restore (unverifiable, never a pass or a restore_failed).
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEMP_PREFIX } from '../shared/atomic.js';
import type { ApiBackup } from '../shared/catalog/read-model.js';
import type { BackupState, OffsiteReceipt, VerifyReceipt } from '../shared/catalog/records.js';
import { LABEL, sandboxNamePrefix } from '../shared/sandbox/docker-engine.js';
import { readReceipt, writeBackup, writeLargeBackup } from './replicate-fixtures.js';
import {
  containersLabelled,
  type DedupeSink,
  descendantsOf,
  type FnProcess,
  faultsEnv,
  fillLeaving,
  hashTree,
  isAlive,
  killStartedFunctions,
  largestTempFile,
  mountSmallFs,
  type SecondEngine,
  type SmallFs,
  shimOf,
  startDedupeSink,
  startFunction,
  startSecondEngine,
  type ThrottledPgDump,
  tempFilesUnder,
  throttledPgDump,
  writeProjectsFile,
} from './support/faults.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv } from './support/runtime.js';
import { describeDocker, dockerGate } from './support/sandbox-contract.js';

const IMAGE = process.env.FLUX_TEST_VERIFY_IMAGE ?? 'flux-ops/postgres-verify:15';
const SOCKET = process.env.FLUX_DOCKER_SOCKET ?? '/var/run/docker.sock';
const gate = await dockerGate(SOCKET, IMAGE);

const tenantOf = (slug: string) => {
  const id = randomUUID();
  return { id, hash: id.replaceAll('-', '').slice(0, 7), slug };
};
const small = tenantOf('small-tenant');
const large = tenantOf('large-tenant');
// Backups written by the test for replicate (writeBackup's manifest names the project this way).
const copied = (() => {
  const id = randomUUID();
  return { id, hash: id.slice(0, 7), slug: `p-${id.slice(0, 8)}` };
})();
const FS_MB = 20;
const LEAVE_BYTES = 256 * 1024;

let pg: PgCluster;
let testEnv: TestEnv;
let sink: DedupeSink;
let throttle: ThrottledPgDump;
let base: NodeJS.ProcessEnv;
/** dump on the ordinary dirs: lists the catalog over HTTP, runs the Postgres-restart fault. */
let dump: FnProcess;
const mounts: SmallFs[] = [];
let engine: SecondEngine | undefined;

async function list(fn: FnProcess, project: { hash: string }): Promise<ApiBackup[]> {
  const res = await fn.fetch(`/api/cli/v1/projects/${project.hash}/backups`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { backups: ApiBackup[] }).backups;
}

async function tierOf(fn: FnProcess, projectId: string): Promise<string | undefined> {
  const body = (await (await fn.fetch('/api/ops/v1/status')).json()) as {
    projects: Array<{ id: string; tier: string }>;
  };
  return body.projects.find((p) => p.id === projectId)?.tier;
}

async function smallFs(name: string): Promise<SmallFs> {
  const fs = await mountSmallFs(path.join(testEnv.root, name), FS_MB);
  mounts.push(fs);
  return fs;
}

/** Files present before must be byte-for-byte the same after; returns the names that are new. */
function expectIntact(before: Map<string, string>, after: Map<string, string>): string[] {
  for (const [file, sha] of before) expect(after.get(file), file).toBe(sha);
  return [...after.keys()].filter((f) => !before.has(f));
}

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: small.id, rows: 20 });
  await seedTenant(pg, { db: 'shared', projectId: large.id, rows: 30_000 });
  sink = await startDedupeSink();
  testEnv = await makeTestEnv({ FAULTS_SHARED_URL: pg.url('shared') });
  throttle = await throttledPgDump(testEnv.root, { chunkBytes: 16 * 1024, delayMs: 25 });
  await throttle.setThrottled(false);
  await writeProjectsFile(testEnv.config.FLUX_PROJECTS_FILE, {
    clusters: [{ name: 'shared-1', url: 'env:FAULTS_SHARED_URL', maxConcurrentDumps: 2 }],
    projects: [
      { ...small, engine: 'v2_shared', cluster: 'shared-1' },
      { ...large, engine: 'v2_shared', cluster: 'shared-1' },
      { ...copied, engine: 'v1_dedicated', databaseUrl: 'env:FAULTS_UNUSED_URL' },
    ],
  });
  base = faultsEnv(testEnv.env, throttle, sink, {
    FLUX_REPLICATE_MAX_ATTEMPTS: '2',
    FLUX_REPLICATE_RETRY_BASE_DELAY_MS: '50',
  });
  dump = await startFunction('dump', base);
});

afterAll(async () => {
  await killStartedFunctions();
  await engine?.cleanup();
  for (const fs of mounts) await fs.unmount();
  await sink?.close();
  await pg?.destroy();
  await testEnv?.cleanup();
});

describe('full disk', () => {
  it('under FLUX_BACKUPS_LOCAL_DIR: 507 disk_full saying what to do, partial removed, earlier backups intact', async () => {
    const fs = await smallFs('small-local');
    // A second dump process beside the suite's: its own state dir (one owner per function per directory).
    const fn = await startFunction('dump', {
      ...base,
      FLUX_BACKUPS_LOCAL_DIR: fs.dir,
      FLUX_STATE_DIR: path.join(testEnv.root, 'small-local-state'),
    });
    const earlier = await fn.fetch(`/api/cli/v1/projects/${small.hash}/backups`, { method: 'POST' });
    expect(earlier.status).toBe(200);
    await fillLeaving(fs.dir, LEAVE_BYTES);
    const before = await hashTree(fs.dir);

    const res = await fn.fetch(`/api/cli/v1/projects/${large.hash}/backups`, { method: 'POST' });
    const body = (await res.json()) as { code: string; error: string };
    expect(res.status).toBe(507);
    expect(body.code).toBe('disk_full');
    expect(body.error).toMatch(/no space left/);
    expect(body.error).toMatch(/partial file was removed/);
    expect(body.error).toMatch(/Free space or apply retention, then retry/);

    const added = expectIntact(before, await hashTree(fs.dir));
    expect(await tempFilesUnder(fs.dir)).toEqual([]);
    // The only new file is the failed backup's state record: no dump, no manifest.
    expect(added).toHaveLength(1);
    expect(added[0]).toMatch(new RegExp(`^${large.id}/[0-9A-Z]{26}\\.state\\.json$`));
    const state = JSON.parse(await readFile(path.join(fs.dir, added[0]!), 'utf8')) as BackupState;
    expect(state).toMatchObject({ status: 'failed', reason: 'disk_full' });
    const [failed] = await list(fn, large);
    expect(failed).toMatchObject({ id: state.backupId, status: 'failed', localArtifactStatus: 'missing' });
    expect(failed!.error).toMatch(/no space left/);
    const event = await eventually(() =>
      sink.events('flux.backup.failed').find((e) => e.subject === `${large.id}/${state.backupId}`),
    );
    expect(event.data).toMatchObject({ reason: 'disk_full' });
    const [kept] = await list(fn, small);
    expect(kept).toMatchObject({ status: 'complete', artifactValidationStatus: 'artifact_valid' });

    // Doing what the message says works.
    await rm(path.join(fs.dir, 'filler.bin'));
    const retried = await fn.fetch(`/api/cli/v1/projects/${large.hash}/backups`, { method: 'POST' });
    expect(retried.status).toBe(200);
    await fn.stop();
  });

  it('under FLUX_BACKUPS_OFFSITE_DIR: a disk_full failure receipt, nothing partial, earlier copies intact', async () => {
    const fs = await smallFs('small-offsite');
    const local = path.join(testEnv.root, 'replicate-local');
    await mkdir(local, { recursive: true });
    const earlier = await writeBackup(local, copied.id);
    const fn = await startFunction('replicate', {
      ...base,
      FLUX_BACKUPS_LOCAL_DIR: local,
      FLUX_BACKUPS_OFFSITE_DIR: fs.dir,
    });
    await eventually(async () => (await readReceipt(local, earlier))?.status === 'replicated');
    await fillLeaving(fs.dir, LEAVE_BYTES);
    const before = await hashTree(fs.dir);

    const bigger = await writeLargeBackup(local, copied.id, 4 * 1024 * 1024);
    const receipt = (await eventually(async () => {
      const r = await readReceipt(local, bigger);
      return r?.status === 'failed' ? r : undefined;
    })) as OffsiteReceipt;
    expect(receipt).toMatchObject({ reason: 'disk_full', attempts: 2 });
    expect(receipt.error).toMatch(/no space left/);
    expect(receipt.error).toMatch(/Free space/);

    expect(expectIntact(before, await hashTree(fs.dir))).toEqual([]);
    expect(await tempFilesUnder(fs.dir)).toEqual([]);
    const event = await eventually(() =>
      sink
        .events('flux.backup.replication_failed')
        .find((e) => e.subject === `${copied.id}/${bigger.backupId}`),
    );
    expect(event.data).toMatchObject({ reason: 'disk_full' });
    // As the HTTP API lists them (a dump process on the same local dir).
    const lister = await startFunction('dump', {
      ...base,
      FLUX_BACKUPS_LOCAL_DIR: local,
      FLUX_STATE_DIR: path.join(testEnv.root, 'lister-state'),
    });
    const backups = await list(lister, copied);
    expect(backups.map((b) => [b.id, b.status, b.offsiteStatus])).toEqual([
      [bigger.backupId, 'complete', 'failed'],
      [earlier.backupId, 'complete', 'complete'],
    ]);
    await lister.stop();
    await fn.stop();
  });
});

describe('Postgres restarted during a dump', () => {
  let completedId: string;

  it('fails the backup with the reason (the server shut down), leaves no artifact; the next backup works', async () => {
    await throttle.setThrottled(true);
    const res = await dump.fetch(`/api/cli/v1/projects/${large.hash}/backups`, {
      method: 'POST',
      headers: { prefer: 'respond-async' },
    });
    expect(res.status).toBe(202);
    const backupId = ((await res.json()) as { backup: { id: string } }).backup.id;
    const projectDir = path.join(testEnv.config.FLUX_BACKUPS_LOCAL_DIR, large.id);
    await eventually(
      async () =>
        (await largestTempFile(projectDir)) > 128 * 1024 &&
        descendantsOf(dump.pid).some((p) => p.argv.some((a) => a.startsWith('--snapshot='))),
      60_000,
      20,
    );
    await pg.restart();

    const failed = await eventually(
      async () => (await list(dump, large)).find((b) => b.id === backupId && b.status === 'failed'),
      60_000,
    );
    expect(failed.error).toMatch(/pg_dump exited 1/);
    expect(failed.error).toMatch(
      /terminating connection due to administrator command|server closed the connection/,
    );
    expect(failed).toMatchObject({ localArtifactStatus: 'missing', checksumSha256: null });
    const names = await readdir(projectDir);
    expect(names.filter((n) => n.startsWith(TEMP_PREFIX) || n.startsWith(backupId))).toEqual([
      `${backupId}.state.json`,
    ]);
    const state = JSON.parse(
      await readFile(path.join(projectDir, `${backupId}.state.json`), 'utf8'),
    ) as BackupState;
    expect(state).toMatchObject({ status: 'failed', reason: 'dump_failed' });
    const event = await eventually(() =>
      sink.events('flux.backup.failed').find((e) => e.subject === `${large.id}/${backupId}`),
    );
    expect(event.data).toMatchObject({ reason: 'dump_failed' });
    expect(await tierOf(dump, large.id)).toBe('latest_not_complete');

    await throttle.setThrottled(false);
    const next = await dump.fetch(`/api/cli/v1/projects/${large.hash}/backups`, { method: 'POST' });
    expect(next.status).toBe(200);
    completedId = ((await next.json()) as { backup: ApiBackup }).backup.id;
  });

  describeDocker(gate, 'Docker engine stopped mid-verify', () => {
    it('is unverifiable with the engine named, never a pass and never restore_failed', async () => {
      expect(completedId).toBeDefined();
      engine = await startSecondEngine(IMAGE);
      const verify = await startFunction('verify', {
        ...base,
        FLUX_VERIFY_DRIVER: 'docker',
        FLUX_DOCKER_SOCKET: engine.socket,
        FLUX_BACKUP_VERIFY_POSTGRES_IMAGE: IMAGE,
      });
      const route = `/api/cli/v1/projects/${large.hash}/backups/${completedId}/verify`;
      const res = await verify.fetch(route, { method: 'POST', headers: { prefer: 'respond-async' } });
      expect(res.status).toBe(202);
      // A claimed warm spare carries the backup id in its name (labels cannot change after creation).
      const mine = [`${LABEL.verify}=1`];
      const named = sandboxNamePrefix(completedId);
      let container: string | undefined;
      // The restore is running inside the second engine's container: freeze it there, then kill the engine.
      const restore = await eventually(
        async () => {
          container ??= (await containersLabelled(mine, engine!.host, named))[0];
          const shim = container ? shimOf(container) : undefined;
          return shim
            ? descendantsOf(shim.pid).find(
                (p) => p.argv[0]?.endsWith('pg_restore') && p.argv.includes('--single-transaction'),
              )
            : undefined;
        },
        90_000,
        5,
      );
      process.kill(restore.pid, 'SIGSTOP');
      expect(isAlive(restore.pid)).toBe(true);
      await engine.kill();

      const status = await eventually(
        async () => {
          const s = (await (await verify.fetch(route)).json()) as {
            running: boolean;
            restoreVerificationStatus: string;
            restoreVerificationOutcome: string;
            verification: VerifyReceipt | null;
          };
          return s.running || !s.verification ? undefined : s;
        },
        60_000,
        100,
      );
      expect(status, JSON.stringify(status.verification?.rungs)).toMatchObject({
        restoreVerificationStatus: 'pending',
        restoreVerificationOutcome: 'unverifiable',
      });
      const receipt = status.verification!;
      expect(receipt).toMatchObject({
        status: 'unverifiable',
        reason: 'docker_unavailable',
        driver: 'docker',
      });
      expect(receipt.error).toContain(`Docker engine at FLUX_DOCKER_SOCKET=${engine.socket} does not answer`);
      expect(receipt.rungs.find((r) => r.rung === 'restore')?.result).toBe('could_not_verify');
      expect(receipt.rungs.some((r) => r.result === 'failed')).toBe(false);
      const event = await eventually(() =>
        sink.events('flux.backup.unverifiable').find((e) => e.subject === `${large.id}/${completedId}`),
      );
      expect(event.data).toMatchObject({ reason: 'docker_unavailable', driver: 'docker' });
      expect(
        sink.events('flux.backup.verified').some((e) => e.subject === `${large.id}/${completedId}`),
      ).toBe(false);
      expect(
        sink.events('flux.backup.verify_failed').some((e) => e.subject === `${large.id}/${completedId}`),
      ).toBe(false);

      const [newest] = await list(dump, large);
      expect(newest).toMatchObject({
        id: completedId,
        restoreVerificationStatus: 'pending',
        restoreVerificationOutcome: 'unverifiable',
      });
      expect(await tierOf(dump, large.id)).toBe('unverifiable');
      await verify.stop();
      await engine.cleanup();
      engine = undefined;
    });
  });
});
