// Creating backups: one per project at a time, per-cluster concurrency with a bounded queue, a state
// file while running, the snapshot-consistent dump streamed into the catalog, the manifest written last,
// then retention and events. Crash leftovers are cleaned at start-up.
import { createHash } from 'node:crypto';
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir } from '../../shared/atomic.js';
import type { ApiBackup } from '../../shared/catalog/catalog.js';
import { newBackupId } from '../../shared/catalog/ids.js';
import { type CatalogFile, tempFileTarget } from '../../shared/catalog/layout.js';
import { signManifest } from '../../shared/catalog/manifest-auth.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { AppError, fsWriteError, isAppError } from '../../shared/errors.js';
import type { EventData } from '../../shared/events/envelope.js';
import { createChildPids } from '../../shared/kit/child-pids.js';
import { createFaultPoints } from '../../shared/kit/fault-points.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { createLimiter, type Limiter, type Slot } from '../../shared/limiter.js';
import { counter, DURATION_BUCKETS_S, gauge, histogram } from '../../shared/metrics.js';
import { runSnapshotDump } from '../../shared/pg/snapshot.js';
import { dumpAdmissionOf, type Project, sourceOf } from '../../shared/registry.js';
import { isRetentionEnabled, selectForDeletion } from './retention.js';

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

export interface DumpProgress {
  stage: 'queued' | 'dumping' | 'finishing';
  bytes: number;
  startedAt: string;
}

export interface Dumper {
  recover(): Promise<void>;
  /** Progress of a running backup (stage and bytes written so far), for the API and the CLI. */
  progress(backupId: string): DumpProgress | undefined;
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

/**
 * The id of a backup's one `flux.backup.created` event: the same every time it is sent (a crash between
 * its enqueue and the state file's removal sends it again), so receivers dedupe it by webhook-id.
 */
export function createdEventIdOf(projectId: string, backupId: string): string {
  const h = createHash('sha256').update(`flux.backup.created\n${projectId}/${backupId}`).digest('hex');
  return `evt_${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** What `flux.backup.created` says about a backup: all of it read from its manifest. */
export function createdDataOf(manifest: Manifest): EventData<'flux.backup.created'> {
  return {
    projectId: manifest.projectId,
    projectHash: manifest.projectHash,
    backupId: manifest.backupId,
    kind: manifest.kind,
    sizeBytes: manifest.sizeBytes,
    sha256: manifest.sha256,
    createdAt: manifest.createdAt,
    completedAt: manifest.completedAt,
    tables: manifest.tables.length,
    rows: manifest.tables.reduce((n, t) => n + t.rows, 0),
    sequences: manifest.sequences.length,
    serverVersion: manifest.source.serverVersion,
    slug: manifest.slug,
  };
}

/** The catalog files dump writes (and so the only ones whose temp files its recovery removes). */
const DUMP_WRITES: ReadonlySet<CatalogFile> = new Set(['dump', 'manifest', 'state']);

export function createDumper(rt: Runtime): Dumper {
  const { config, catalog, log, metrics } = rt;
  const leases = new Set<string>();
  const limiters = new Map<string, Limiter>();
  const controllers = new Set<AbortController>();
  const progress = new Map<string, DumpProgress>();
  // pg_dump pids while they run: a pg_dump whose dump process was kill -9'd is killed at the next start.
  const children = createChildPids({
    dir: path.join(config.FLUX_STATE_DIR, 'children', rt.name),
    log,
  });
  let stopping = false;
  const reachFault = createFaultPoints(config.FLUX_TEST_FAULT_POINTS, log);

  const outcomes = counter(metrics, 'flux_dump_backups_total', 'Backups by outcome', [
    'project',
    'kind',
    'outcome',
    'reason',
  ]);
  const durations = histogram(
    metrics,
    'flux_dump_duration_seconds',
    'Backup wall time',
    ['kind'],
    DURATION_BUCKETS_S,
  );
  const bytes = counter(metrics, 'flux_dump_bytes_total', 'Bytes written by dumps', ['kind']);
  const lastSuccess = gauge(
    metrics,
    'flux_dump_last_success_timestamp_seconds',
    'Completion time of the newest good backup',
    ['project'],
  );
  const queueGauge = gauge(metrics, 'flux_dump_queue', 'Dumps running and waiting per cluster', [
    'cluster',
    'state',
  ]);

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

  async function runInSlot<T>(slot: Slot, fn: () => Promise<T>): Promise<T> {
    try {
      await slot.ready;
      return await fn();
    } finally {
      slot.release();
    }
  }

  async function applyRetention(project: Project, causedBy: string | undefined): Promise<void> {
    const policy = {
      keepCount: project.retention?.keepCount ?? config.FLUX_RETENTION_KEEP_COUNT,
      keepDays: project.retention?.keepDays ?? config.FLUX_RETENTION_KEEP_DAYS,
    };
    // Off by default: then nothing is listed or re-hashed after a create.
    if (!isRetentionEnabled(policy)) return;
    const entries = await catalog.list(project.id);
    const facts = await Promise.all(
      entries.map(async (e) => catalog.facts(e, await catalog.checkArtifact(e))),
    );
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
    controller: AbortController,
    admitted: Admission | undefined,
  ) {
    const kind = project.engine === 'v2_shared' ? 'tenant_export' : 'project_db';
    const paths = catalog.paths(project.id, backupId);
    const started = performance.now();
    let manifest: Manifest;
    try {
      const { source, clusterKey, limiter, slot } = admitted ?? admit(project, controller.signal);
      queueGauge.set({ cluster: clusterKey, state: 'waiting' }, limiter.waiting);
      const live: DumpProgress = { stage: 'queued', bytes: 0, startedAt: createdAt };
      progress.set(backupId, live);
      const result = await runInSlot(slot, async () => {
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
          signal: controller.signal,
          target: paths.dump,
          children,
          onPgDumpFinished: () => reachFault('dump.pg_dump_finished'),
          fsError: (error, file) => fsWriteError(error, file, 'writing the dump'),
          onProgress: (n) => {
            live.bytes = n;
          },
        });
      });
      queueGauge.set({ cluster: clusterKey, state: 'running' }, limiter.active);
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
    await announceCreated(manifest, causedBy);
    await applyRetention(project, causedBy).catch((error) =>
      log.error({ err: error, projectId: project.id }, 'retention failed'),
    );
    const entry = await catalog.get(project.id, backupId);
    return { manifest, backup: catalog.toApi(entry!, { status: 'valid' }) };
  }

  /**
   * Makes `flux.backup.created` durable, then removes the backup's state file (the mark that the event is
   * still owed). Its id is fixed per backup, so one sent again after a crash is the same event to receivers.
   */
  async function announceCreated(manifest: Manifest, causedBy: string | undefined): Promise<void> {
    const { projectId, backupId } = manifest;
    try {
      await rt.emit('flux.backup.created', {
        id: createdEventIdOf(projectId, backupId),
        required: true,
        subject: `${projectId}/${backupId}`,
        causedBy,
        data: createdDataOf(manifest),
      });
    } catch (error) {
      const cause = isAppError(error)
        ? error
        : new AppError('internal', (error as Error).message, { cause: error });
      log.error(
        { projectId, backupId, code: cause.code, err: cause.message },
        'backup complete, but its flux.backup.created event could not be made durable; it is sent at the next start',
      );
      throw new AppError(
        cause.code,
        `backup ${backupId} is complete, but receivers were not told: ${cause.message}. ` +
          'The event is sent when dump next starts; the backup itself is kept.',
        { cause, details: { ...cause.details, backupId, complete: true } },
      );
    }
    // Left behind, the mark only makes the next start send the same event (same id) once more.
    await rm(catalog.paths(projectId, backupId).state, { force: true }).catch((error) =>
      log.warn({ err: error, projectId, backupId }, 'could not remove the state file of a completed backup'),
    );
  }

  return {
    get running() {
      return controllers.size;
    },

    progress: (backupId) => progress.get(backupId),

    queueOf(cluster) {
      const limiter = limiters.get(cluster);
      return { running: limiter?.active ?? 0, waiting: limiter?.waiting ?? 0 };
    },

    isRunning: (projectId) => leases.has(projectId),

    load(project) {
      // The same key run() gives its limiter.
      const key = project.engine === 'v2_shared' ? project.cluster! : `dedicated:${project.slug}`;
      const limiter = limiters.get(key);
      return limiter ? limiter.active + limiter.waiting : 0;
    },

    async recover() {
      // First the pg_dumps a crashed predecessor left running: they would go on writing (and holding their
      // snapshot on the source) while their temp files are removed below.
      await children.reap();
      for (const projectId of await catalog.listProjects()) {
        const dir = path.join(catalog.root, projectId);
        // Only the temp files of dump's own files (dump, manifest, state): a receipt replicate or verify is
        // writing at this moment is theirs to finish or clean up.
        for (const name of await readdir(dir).catch(() => [] as string[])) {
          const target = tempFileTarget(name);
          if (target && DUMP_WRITES.has(target.file)) await rm(path.join(dir, name), { force: true });
        }
        for (const entry of await catalog.list(projectId)) {
          if (entry.state?.status === 'running' && entry.manifest) {
            // Complete, but the process died before its created event was durable: owed, sent now.
            await announceCreated(entry.manifest, entry.manifest.causationId).then(
              () =>
                log.warn(
                  { projectId, backupId: entry.backupId },
                  'sent the created event of a backup completed just before a crash',
                ),
              () => undefined,
            );
            continue;
          }
          if (entry.state?.status === 'running' && !entry.manifest) {
            await rm(entry.paths.dump, { force: true });
            const error =
              'the dump process stopped before the backup completed (crash or restart); the partial file was removed';
            await catalog.writeState({
              ...entry.state,
              status: 'failed',
              updatedAt: new Date().toISOString(),
              reason: 'interrupted',
              error,
            });
            log.warn({ projectId, backupId: entry.backupId }, 'marked an interrupted backup failed');
            // Whoever waits for this backup's outcome (a scheduler, the CLI) hears it ended; the dead
            // process never could say so. Enqueued before the outbox starts, delivered once it does.
            const hash = rt.registry.byId(projectId)?.hash;
            await rt.emit('flux.backup.failed', {
              subject: `${projectId}/${entry.backupId}`,
              data: {
                projectId,
                ...(hash ? { projectHash: hash } : {}),
                backupId: entry.backupId,
                reason: 'interrupted',
                error,
              },
            });
          }
        }
      }
    },

    async start(project, options = {}) {
      if (stopping) throw new AppError('shutting_down', 'dump is stopping; retry against the new process');
      if (leases.has(project.id)) {
        throw new AppError(
          'conflict',
          `a backup of ${project.slug} is already running; wait for it to finish`,
          { retryAfterSeconds: 30 },
        );
      }
      const controller = new AbortController();
      // A source that cannot be resolved is the backup's failure (run() records it); a full queue is a
      // refusal of the request, thrown here before any record exists.
      let admitted: Admission | undefined;
      try {
        admitted = admit(project, controller.signal);
      } catch (error) {
        if (isAppError(error) && error.code === 'queue_full') throw error;
      }
      leases.add(project.id);
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
        leases.delete(project.id);
        throw error;
      }
      controllers.add(controller);
      const done = run(project, backupId, createdAt, options.causedBy, controller, admitted).finally(() => {
        progress.delete(backupId);
        leases.delete(project.id);
        controllers.delete(controller);
      });
      done.catch(() => undefined);
      return { backupId, done };
    },

    async stop() {
      stopping = true;
      // In-flight dumps get the grace period to finish; then they are cancelled (pg_dump killed, partial removed).
      const graceEnds = Date.now() + config.FLUX_SHUTDOWN_GRACE_MS;
      while (controllers.size > 0 && Date.now() < graceEnds) await new Promise((r) => setTimeout(r, 50));
      for (const c of controllers) c.abort(new AppError('shutting_down', 'dump is stopping'));
      const deadline = Date.now() + 10_000;
      while (controllers.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    },
  };
}
