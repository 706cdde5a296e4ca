// Creating backups: one per project at a time, per-cluster concurrency with a bounded queue, a state
// file while running, the snapshot-consistent dump streamed into the catalog, the manifest written last,
// then retention and events. Start-up recovery is recovery.ts; the created event, created-event.ts.
import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { BackupProgress } from '../../shared/api-types.js';
import { ensureDir } from '../../shared/atomic.js';
import { newBackupId } from '../../shared/catalog/ids.js';
import { signManifest } from '../../shared/catalog/manifest-auth.js';
import { type ApiBackup, factsOf } from '../../shared/catalog/read-model.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { AppError, fsWriteError, isAppError } from '../../shared/errors.js';
import { createChildPids } from '../../shared/kit/child-pids.js';
import { createFaultPoints } from '../../shared/kit/fault-points.js';
import { createJobRunner } from '../../shared/kit/jobs.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { createLimiter, type Limiter, type Slot } from '../../shared/limiter.js';
import { createIdleSessions } from '../../shared/pg/idle-sessions.js';
import { runSnapshotDump } from '../../shared/pg/snapshot.js';
import { dumpAdmissionOf, type Project, sourceOf } from '../../shared/registry.js';
import { announceCreated } from './created-event.js';
import { dumpMetrics } from './metrics.js';
import { recoverDumps } from './recovery.js';
import { isRetentionEnabled, selectForDeletion } from './retention.js';

/** How long a clean snapshot session waits for the next dump from its source before it is ended. */
const SNAPSHOT_SESSION_IDLE_MS = 10_000;
/** Kept sessions per source at most (no more come back than dumps ran at once). */
const SNAPSHOT_SESSIONS_KEPT = 4;

/** A create's place in its cluster's dump queue, and what it was taken for. */
interface Admission {
  source: ReturnType<typeof sourceOf>;
  clusterKey: string;
  limiter: Limiter;
  slot: Slot;
}

export interface StartedBackup {
  backupId: string;
  /** Settles when the backup is complete (manifest written) or failed (state file says why). */
  done: Promise<{ backup: ApiBackup; manifest: Manifest }>;
}

export interface Dumper {
  recover(): Promise<void>;
  /** Progress of a running backup (stage and bytes written so far), for the API and the CLI. */
  progress(backupId: string): BackupProgress | undefined;
  /** Validates, takes the project lease and starts; throws 409/503 before any file is written. */
  start(project: Project, options?: { causedBy?: string }): Promise<StartedBackup>;
  stop(): Promise<void>;
  readonly running: number;
  /** Dumps running and waiting for one cluster's slots here (a dedicated project's is `dedicated:<slug>`). */
  queueOf(cluster: string): { running: number; waiting: number };
  /** A backup of the project is running (its lease is held). */
  isRunning(projectId: string): boolean;
  /** Dumps running or queued on the project's concurrency group (its cluster, or its dedicated database). */
  load(project: Project): number;
}

export function createDumper(rt: Runtime): Dumper {
  const { config, catalog, log } = rt;
  const limiters = new Map<string, Limiter>();
  // One backup per project at a time: a job's key is its project id.
  const jobs = createJobRunner({
    name: 'dump',
    graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
    cancelWaitMs: 10_000,
  });
  const progress = new Map<string, BackupProgress>();
  // pg_dump pids while they run: a pg_dump whose dump process was kill -9'd is killed at the next start.
  const children = createChildPids({
    dir: path.join(config.FLUX_STATE_DIR, 'children', rt.name),
    log,
  });
  const reachFault = createFaultPoints(config.FLUX_TEST_FAULT_POINTS, log);
  // Snapshot sessions a clean dump leaves, for the next dump from the same source (a fleet's backups).
  const idle = createIdleSessions({ idleMs: SNAPSHOT_SESSION_IDLE_MS, perKey: SNAPSHOT_SESSIONS_KEPT });

  const { outcomes, durations, bytes, lastSuccess, queue: queueGauge } = dumpMetrics(rt.metrics);

  function limiterFor(key: string, concurrency: number): Limiter {
    let limiter = limiters.get(key);
    if (!limiter) {
      limiter = createLimiter({
        concurrency,
        queueMax: config.FLUX_DUMP_QUEUE_MAX,
        name: `dumps on ${key}`,
        retryAfterSeconds: 60,
      });
      limiters.set(key, limiter);
    }
    return limiter;
  }

  /**
   * A place in the cluster's dump queue, taken when the create is asked for: a full queue refuses the
   * create (503 queue_full) before anything is recorded, so a refusal is never a failed backup that
   * becomes the project's newest.
   */
  function admit(project: Project, signal: AbortSignal): Admission {
    const source = sourceOf(rt.registry, project, rt.env);
    const clusterKey = source.cluster?.name ?? `dedicated:${project.slug}`;
    const limiter = limiterFor(clusterKey, source.cluster?.maxConcurrentDumps ?? 1);
    return { source, clusterKey, limiter, slot: limiter.acquire(signal) };
  }

  /**
   * Runs `fn` in `slot`, held until `heldUntil(result)` settles (the caller goes on meanwhile); `released`
   * runs once the slot is free.
   */
  async function runInSlot<T>(
    slot: Slot,
    fn: () => Promise<T>,
    heldUntil: (result: T) => Promise<unknown>,
    released: () => void,
  ): Promise<T> {
    const release = () => {
      slot.release();
      released();
    };
    let result: T;
    try {
      await slot.ready;
      result = await fn();
    } catch (error) {
      release();
      throw error;
    }
    void heldUntil(result)
      .catch(() => undefined)
      .finally(release);
    return result;
  }

  async function applyRetention(project: Project, causedBy: string | undefined): Promise<void> {
    const policy = {
      keepCount: project.retention?.keepCount ?? config.FLUX_RETENTION_KEEP_COUNT,
      keepDays: project.retention?.keepDays ?? config.FLUX_RETENTION_KEEP_DAYS,
    };
    // Off by default: then nothing is listed or re-hashed after a create.
    if (!isRetentionEnabled(policy)) return;
    const entries = await catalog.list(project.id);
    const facts = await Promise.all(entries.map(async (e) => factsOf(e, await catalog.checkArtifact(e))));
    for (const backupId of selectForDeletion(facts, policy, new Date())) {
      await catalog.remove(project.id, backupId);
      log.info({ projectId: project.id, backupId }, 'retention removed a backup');
      await rt.emit('flux.backup.deleted', {
        subject: `${project.id}/${backupId}`,
        data: { projectId: project.id, projectHash: project.hash, backupId, reason: 'retention' },
        causedBy,
      });
    }
  }

  async function run(
    project: Project,
    backupId: string,
    createdAt: string,
    causedBy: string | undefined,
    signal: AbortSignal,
    admitted: Admission | undefined,
  ) {
    const kind = project.engine === 'v2_shared' ? 'tenant_export' : 'project_db';
    const paths = catalog.paths(project.id, backupId);
    const started = performance.now();
    let manifest: Manifest;
    try {
      const { source, clusterKey, limiter, slot } = admitted ?? admit(project, signal);
      queueGauge.set({ cluster: clusterKey, state: 'waiting' }, limiter.waiting);
      const live: BackupProgress = { stage: 'queued', bytes: 0, startedAt: createdAt };
      progress.set(backupId, live);
      const result = await runInSlot(
        slot,
        async () => {
          live.stage = 'dumping';
          queueGauge.set({ cluster: clusterKey, state: 'running' }, limiter.active);
          queueGauge.set({ cluster: clusterKey, state: 'waiting' }, limiter.waiting);
          return runSnapshotDump({
            url: source.url,
            admission: dumpAdmissionOf(project, source),
            scope: kind === 'tenant_export' ? { kind, schema: source.schema! } : { kind },
            pathEnv: rt.env.PATH,
            compression: config.FLUX_DUMP_COMPRESSION,
            lockWaitTimeoutMs: config.FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS,
            timeoutMs: config.FLUX_DUMP_TIMEOUT_MS,
            signal,
            target: paths.dump,
            children,
            onPgDumpFinished: () => reachFault('dump.pg_dump_finished'),
            fsError: (error, file) => fsWriteError(error, file, 'writing the dump'),
            onProgress: (n) => {
              live.bytes = n;
            },
            idle,
          });
        },
        // The slot is this process's share of the source's dump slots: free once the session that held
        // the source's slot has ended, while this backup goes on with its file.
        (dumped) => dumped.ended,
        () => queueGauge.set({ cluster: clusterKey, state: 'running' }, limiter.active),
      );
      live.stage = 'finishing';
      try {
        await result.file.commit();
      } catch (error) {
        await result.file.discard();
        throw fsWriteError(error, paths.dump, 'committing the dump');
      }
      const s = await stat(paths.dump);
      catalog.rememberArtifact(paths.dump, s.size, s.mtimeMs, result.file.sha256);
      const f = result.facts;
      const facts: Manifest = {
        manifestVersion: 1,
        backupId,
        projectId: project.id,
        projectHash: project.hash,
        slug: project.slug,
        kind,
        format: 'custom',
        file: path.basename(paths.dump),
        sizeBytes: result.file.sizeBytes,
        sha256: result.file.sha256,
        createdAt,
        completedAt: new Date().toISOString(),
        source: {
          engine: project.engine,
          ...(source.cluster ? { cluster: source.cluster.name } : {}),
          host: f.host,
          port: f.port,
          database: f.database,
          systemIdentifier: f.systemIdentifier,
          serverVersion: f.serverVersion,
          serverVersionNum: f.serverVersionNum,
        },
        pgDump: result.pgDump,
        snapshot: { id: f.snapshotId, isolation: 'repeatable read', takenAt: f.takenAt },
        schemas: f.schemas,
        tables: f.tables,
        sequences: f.sequences,
        extensions: f.extensions,
        roles: f.roles,
        ...(causedBy ? { causationId: causedBy } : {}),
      };
      // Tagged, so a copy edited where it is stored (offsite) is told apart from the one written here.
      manifest = signManifest(facts, config.FLUX_MANIFEST_SECRETS);
      // The manifest is the last write: its arrival means "complete" to every reader. The state file
      // stays until the created event is durable in the outbox: a crash in between leaves both, and the
      // next start sends the event then (recover()).
      await catalog.writeManifest(manifest);
    } catch (error) {
      const appError = isAppError(error)
        ? error
        : new AppError('internal', (error as Error).message, { cause: error });
      // A manifest a failing write may have put in place names a dump that is removed here: both go.
      await rm(paths.manifest, { force: true }).catch(() => undefined);
      await rm(paths.dump, { force: true }).catch(() => undefined);
      await catalog
        .writeState({
          backupId,
          projectId: project.id,
          kind,
          status: 'failed',
          createdAt,
          updatedAt: new Date().toISOString(),
          reason: appError.code,
          error: appError.message,
        })
        .catch((e) => log.error({ err: e, backupId }, 'could not record the failed state'));
      outcomes.inc({ project: project.slug, kind, outcome: 'failed', reason: appError.code });
      log.error(
        { projectId: project.id, backupId, code: appError.code, err: appError.message },
        'backup failed',
      );
      await rt.emit('flux.backup.failed', {
        subject: `${project.id}/${backupId}`,
        causedBy,
        data: {
          projectId: project.id,
          projectHash: project.hash,
          backupId,
          reason: appError.code,
          error: appError.message,
        },
      });
      throw appError;
    }
    reachFault('dump.manifest_written');
    const seconds = (performance.now() - started) / 1000;
    durations.observe({ kind }, seconds);
    bytes.inc({ kind }, manifest.sizeBytes);
    outcomes.inc({ project: project.slug, kind, outcome: 'created', reason: 'ok' });
    lastSuccess.set({ project: project.slug }, Date.parse(manifest.completedAt) / 1000);
    log.info(
      {
        projectId: project.id,
        backupId,
        sizeBytes: manifest.sizeBytes,
        seconds,
        tables: manifest.tables.length,
      },
      'backup created',
    );
    // Complete on disk whatever happens next; a created event that cannot be made durable fails the
    // request loudly (the state file keeps it owed until the next start) instead of being dropped.
    await announceCreated(rt, manifest, causedBy);
    await applyRetention(project, causedBy).catch((error) =>
      log.error({ err: error, projectId: project.id }, 'retention failed'),
    );
    const entry = await catalog.get(project.id, backupId);
    return { manifest, backup: catalog.toApi(entry!, { status: 'valid' }) };
  }

  return {
    get running() {
      return jobs.size;
    },

    progress: (backupId) => progress.get(backupId),

    queueOf(cluster) {
      const limiter = limiters.get(cluster);
      return { running: limiter?.active ?? 0, waiting: limiter?.waiting ?? 0 };
    },

    isRunning: (projectId) => jobs.has(projectId),

    load(project) {
      // The same key run() gives its limiter.
      const key = project.engine === 'v2_shared' ? project.cluster! : `dedicated:${project.slug}`;
      const limiter = limiters.get(key);
      return limiter ? limiter.active + limiter.waiting : 0;
    },

    recover: () => recoverDumps(rt, children),

    async start(project, options = {}) {
      jobs.assertOpen();
      if (jobs.has(project.id)) {
        throw new AppError(
          'conflict',
          `a backup of ${project.slug} is already running; wait for it to finish`,
          { retryAfterSeconds: 30 },
        );
      }
      const job = jobs.claim(project.id);
      // A source that cannot be resolved is the backup's failure (run() records it); a full queue is a
      // refusal of the request, thrown here before any record exists.
      let admitted: Admission | undefined;
      try {
        admitted = admit(project, job.signal);
      } catch (error) {
        if (isAppError(error) && error.code === 'queue_full') {
          job.release();
          throw error;
        }
      }
      const backupId = newBackupId();
      const createdAt = new Date().toISOString();
      const kind = project.engine === 'v2_shared' ? 'tenant_export' : 'project_db';
      try {
        await ensureDir(path.dirname(catalog.paths(project.id, backupId).dump)).catch((error) => {
          throw fsWriteError(error, catalog.root, 'creating the project backup directory');
        });
        await catalog.writeState({
          backupId,
          projectId: project.id,
          kind,
          status: 'running',
          createdAt,
          updatedAt: createdAt,
          pid: process.pid,
        });
      } catch (error) {
        admitted?.slot.release();
        job.release();
        throw error;
      }
      const done = job.track(
        run(project, backupId, createdAt, options.causedBy, job.signal, admitted).finally(() => {
          progress.delete(backupId);
        }),
      );
      done.catch(() => undefined);
      return { backupId, done };
    },

    async stop() {
      // In-flight dumps get the grace period to finish; then they are cancelled (pg_dump killed, partial removed).
      await jobs.stop();
      await idle.close();
    },
  };
}
