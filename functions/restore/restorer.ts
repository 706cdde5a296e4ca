// The restore function's work: the plan, one run per project at a time (here and across processes, by a
// lease on the project's server), runs in flight with their progress, the crash recovery at start, and the
// sweep that drops set-aside copies once FLUX_RESTORE_KEEP_PREVIOUS_HOURS have passed. What a restore must
// establish before it touches anything (backup, gate, readable archive) is in preconditions.ts.
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { newBackupId } from '../../shared/catalog/ids.js';
import { AppError, isAppError } from '../../shared/errors.js';
import { createJobRunner } from '../../shared/kit/jobs.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { lazyOffsiteStore } from '../../shared/offsite/index.js';
import { takeSessionLease } from '../../shared/pg/lease.js';
import { clusterNameOf, type Project } from '../../shared/registry.js';
import { MINUTE_MS } from '../../shared/units.js';
import { type Ends, endsOf, requireOwnServer, whereOf } from './ends.js';
import { restoreMetrics } from './metrics.js';
import {
  asideNameOf,
  planSteps,
  type RestoreBody,
  restoredNameOf,
  stagesOf,
  stagingNameOf,
  totalsOf,
} from './plan.js';
import { createPreconditions, gateRefusal } from './preconditions.js';
import { createRecordStore, type RestoreRecord, writeReceipt } from './record.js';
import { recoverRun, sweepPrevious } from './recovery.js';
import { dropPrevious, executeRun, type RestoreProgress } from './run.js';
import { databaseExists, maintenanceUrl, RESTORE_APP_NAME } from './server.js';

export interface StartedRestore {
  record: RestoreRecord;
  done: Promise<RestoreRecord>;
}

export interface Restorer {
  plan(project: Project, backupId: string, body: RestoreBody): Promise<Record<string, unknown>>;
  start(project: Project, backupId: string, body: RestoreBody): Promise<StartedRestore>;
  get(restoreId: string): Promise<(RestoreRecord & { progress?: RestoreProgress }) | undefined>;
  dropPrevious(project: Project, restoreId: string): Promise<RestoreRecord>;
  recover(): Promise<void>;
  sweep(now?: Date): Promise<number>;
  stop(): Promise<void>;
  readonly running: number;
}

const SWEEP_EVERY_MS = MINUTE_MS;
/**
 * How long stop() waits for cancelled runs to put things back: an in-place run restores the live copy,
 * which waits on locks; the process's shutdown watchdog stays the outer bound.
 */
const CANCEL_WAIT_MS = 60_000;

/** A run in flight, as GET …/restores/:id shows it. */
interface RunningRestore {
  restoreId: string;
  progress: RestoreProgress;
}

export function createRestorer(rt: Runtime): Restorer {
  const { config, catalog, log } = rt;
  const metrics = restoreMetrics(rt.metrics);
  const baseDir = path.join(config.FLUX_STATE_DIR, 'restore');
  const records = createRecordStore(path.join(baseDir, 'runs'));
  const workDir = path.join(baseDir, 'work');
  const store = lazyOffsiteStore(config);
  // One run per project in this process, keyed by project id (the lease on the project's server guards
  // across processes); each slot's value is what a reader of that run's progress sees.
  const jobs = createJobRunner<RunningRestore>({
    name: 'restore',
    graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
    cancelWaitMs: CANCEL_WAIT_MS,
  });
  let sweepTimer: NodeJS.Timeout | undefined;

  const { backupOf, gateOf, requireReadable, serverVersionOf } = createPreconditions(rt, store);

  function namesOf(ends: Ends, body: RestoreBody, restoreId: string, at: Date) {
    if (body.mode === 'new') {
      const base = ends.engine === 'v2_shared' ? ends.schema! : ends.liveDatabase;
      return { newDatabase: body.targetName ?? restoredNameOf(base, at) };
    }
    if (ends.engine === 'v2_shared') return { aside: asideNameOf(ends.schema!, restoreId) };
    return {
      staging: stagingNameOf(ends.liveDatabase, restoreId),
      aside: asideNameOf(ends.liveDatabase, restoreId),
    };
  }

  function checkRequest(project: Project, body: RestoreBody, ends: Ends) {
    if (body.mode === 'in_place') requireOwnServer(ends, project.slug);
    if (body.mode === 'in_place' && body.targetName)
      throw new AppError(
        'unprocessable',
        'targetName is for "mode": "new"; an in-place restore keeps the live names',
      );
  }

  function runningOf(restoreId: string): RunningRestore | undefined {
    for (const key of jobs.keys()) {
      const run = jobs.value(key);
      if (run?.restoreId === restoreId) return run;
    }
    return undefined;
  }

  function sweep(now = new Date()): Promise<number> {
    return sweepPrevious({ rt, records, metrics }, now);
  }

  return {
    get running() {
      return jobs.size;
    },

    async plan(project, backupId, body) {
      const ends = endsOf(rt.registry, project, rt.env, body.targetUrl);
      checkRequest(project, body, ends);
      const { entry, manifest } = await backupOf(project, backupId, body.source);
      const gate = await gateOf(project, entry, body.source);
      const problems: Array<{ code: string; message: string }> = [];
      let archive: Record<string, unknown> | undefined;
      try {
        const { tool, header } = await requireReadable(manifest, entry, body.source);
        archive = { format: header.versionText, pgDump: manifest.pgDump.version, pgRestore: tool.version };
      } catch (error) {
        if (!isAppError(error)) throw error;
        problems.push({ code: error.code, message: error.message });
      }
      let targetServer: string | undefined;
      try {
        targetServer = await serverVersionOf(ends.targetUrl);
      } catch (error) {
        problems.push({
          code: isAppError(error) ? error.code : 'internal',
          message: (error as Error).message,
        });
      }
      const names = namesOf(ends, body, '<tag>', new Date());
      if (body.mode === 'in_place' && !gate.passes && !body.skipBackupCheck)
        problems.push({
          code: 'backup_gate',
          message: `backup gate for ${project.slug} on cluster ${clusterNameOf(project)}: ${gate.message}`,
        });
      const ageSeconds = Math.round((Date.now() - Date.parse(manifest.completedAt)) / 1000);
      return {
        ok: problems.length === 0,
        dryRun: true,
        plan: {
          mode: body.mode,
          source: body.source,
          engine: ends.engine,
          cluster: clusterNameOf(project),
          target: { ...whereOf(ends.targetUrl), ref: ends.targetRef, serverVersion: targetServer ?? null },
          ...(ends.schema ? { schema: ends.schema } : {}),
          ...names,
          backup: {
            id: manifest.backupId,
            createdAt: manifest.createdAt,
            ageSeconds,
            tier: gate.tier,
            gate:
              body.mode === 'in_place'
                ? body.skipBackupCheck
                  ? 'skipped'
                  : gate.passes
                    ? 'passes'
                    : 'refused'
                : 'not_needed',
            ...totalsOf(manifest),
          },
          archive: archive ?? null,
          stages: stagesOf(body.mode, ends.engine),
          steps: planSteps({
            mode: body.mode,
            engine: ends.engine,
            slug: project.slug,
            liveDatabase: ends.liveDatabase,
            schema: ends.schema,
            keepPreviousHours: config.FLUX_RESTORE_KEEP_PREVIOUS_HOURS,
            lockWrites: body.lockWrites,
            ...names,
          }),
        },
        problems,
      };
    },

    async start(project, backupId, body) {
      jobs.assertOpen();
      const ends = endsOf(rt.registry, project, rt.env, body.targetUrl);
      checkRequest(project, body, ends);
      if (body.mode === 'in_place' && !body.yes) {
        metrics.runs.inc({ mode: body.mode, outcome: 'refused', reason: 'precondition_failed' });
        throw new AppError(
          'precondition_failed',
          `an in-place restore replaces the live data of ${project.slug}: confirm with --yes ("yes": true); see the plan first with --dry-run. Nothing was done`,
        );
      }
      const { entry, manifest } = await backupOf(project, backupId, body.source);
      if (body.mode === 'in_place' && !body.skipBackupCheck) {
        const gate = await gateOf(project, entry, body.source);
        if (!gate.passes) {
          metrics.runs.inc({ mode: body.mode, outcome: 'refused', reason: 'precondition_failed' });
          throw gateRefusal(project, gate);
        }
      }
      const { tool } = await requireReadable(manifest, entry, body.source);
      if (body.mode === 'new') {
        const name = namesOf(ends, body, 'X', new Date()).newDatabase!;
        if (await databaseExists(maintenanceUrl(ends.targetUrl, [name]), name)) {
          throw new AppError(
            'conflict',
            `database ${name} already exists on the target: choose another name ("targetName", --target-name) or drop it; nothing was changed`,
          );
        }
      }
      if (jobs.has(project.id)) {
        throw new AppError(
          'conflict',
          `a restore of ${project.slug} is already running; wait for it to finish`,
          {
            retryAfterSeconds: 60,
          },
        );
      }
      const deadline = Date.now() + config.FLUX_RESTORE_TIMEOUT_MS;
      const slot = jobs.claim(project.id, {
        timeoutMs: config.FLUX_RESTORE_TIMEOUT_MS,
        timeoutError: () => new AppError('timeout', 'the restore ran past FLUX_RESTORE_TIMEOUT_MS'),
      });
      let release: (() => Promise<void>) | undefined;
      try {
        release = await takeSessionLease(ends.serverUrl, `flux-ops-restore:${project.id}`, {
          appName: `${RESTORE_APP_NAME}-lease`,
          busy: `a restore of ${project.slug} is running in another restore process; wait for it to finish`,
          what: 'taking the restore lease on the project server',
        });
      } catch (error) {
        slot.release();
        throw error;
      }
      const restoreId = newBackupId();
      const now = new Date().toISOString();
      const record: RestoreRecord = {
        restoreId,
        projectId: project.id,
        slug: project.slug,
        backupId: manifest.backupId,
        mode: body.mode,
        source: body.source,
        engine: project.engine,
        status: 'running',
        stage: 'plan',
        startedAt: now,
        updatedAt: now,
        targetRef: ends.targetRef,
        database: ends.liveDatabase,
        ...(ends.schema ? { schema: ends.schema } : {}),
        stages: [],
      };
      try {
        await records.save(record);
      } catch (error) {
        slot.release();
        await release();
        throw error;
      }
      const progress: RestoreProgress = {
        stage: 'plan',
        bytes: 0,
        totalBytes: manifest.sizeBytes,
        stageStartedAt: Date.now(),
      };
      slot.value = { restoreId, progress };
      metrics.running.set(jobs.size);
      const done = slot.track(
        (async () => {
          try {
            const final = await executeRun({
              rt,
              records,
              metrics,
              workDir,
              store,
              project,
              ends,
              entry,
              manifest,
              body,
              record,
              progress,
              pgRestore: tool,
              signal: slot.signal,
              deadline,
            });
            await writeReceipt(catalog.root, final, config.FLUX_MANIFEST_SECRETS).catch((error) =>
              log.error({ err: error, restoreId }, 'could not write the restore receipt'),
            );
            return final;
          } finally {
            await release?.();
          }
        })(),
      );
      // After track's own handler: by then the slot is free.
      const updateGauge = () => metrics.running.set(jobs.size);
      done.then(updateGauge, updateGauge);
      return { record, done };
    },

    async get(restoreId) {
      const record = await records.read(restoreId);
      if (!record) return undefined;
      const running = runningOf(restoreId);
      return running ? { ...record, progress: { ...running.progress } } : record;
    },

    async dropPrevious(project, restoreId) {
      const record = await records.read(restoreId);
      if (!record || record.projectId !== project.id)
        throw new AppError('not_found', `no restore ${restoreId} of ${project.slug}`);
      if (!record.previous)
        throw new AppError(
          'unprocessable',
          `restore ${restoreId} set nothing aside (it was ${record.mode}, ${record.status})`,
        );
      const ends = endsOf(rt.registry, project, rt.env, undefined);
      await dropPrevious({ rt, records, ends }, record, 'requested');
      metrics.previousDropped.inc({ reason: 'requested' });
      return record;
    },

    async recover() {
      for (const record of await records.list()) {
        if (record.status !== 'running' || runningOf(record.restoreId)) continue;
        await recoverRun({ rt, records, metrics }, record);
      }
      await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
      sweepTimer = setInterval(() => {
        void sweep().catch((error) => log.warn({ err: error }, 'sweep of previous copies failed'));
      }, SWEEP_EVERY_MS);
      sweepTimer.unref();
      await sweep().catch((error) => log.warn({ err: error }, 'sweep of previous copies failed'));
    },

    sweep,

    async stop() {
      if (sweepTimer) clearInterval(sweepTimer);
      const left = await jobs.stop();
      if (left.length > 0)
        log.warn({ projects: left }, 'restores still putting things back after their cancel');
    },
  };
}
