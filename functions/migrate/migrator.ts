// Pooled → dedicated migrations: the dry run, the real run under its leases, the newest run's record,
// and the crash recovery at start. The pieces live beside this file: dry-run.ts, run.ts (refusals and
// the answer), phases.ts (the ordered phases), record.ts (the run record, rollback and recovery),
// lease.ts (one run per project here, and across processes).
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { AppError, isAppError } from '../../shared/errors.js';
import { createChildPids } from '../../shared/kit/child-pids.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import type { Project } from '../../shared/registry.js';
import { type MigrateAnswer, type MigrateOptions, refusal } from './answer.js';
import { dryRun } from './dry-run.js';
import { createRunLeases } from './lease.js';
import { migrateMetrics } from './metrics.js';
import { createRunRecords, type RunRecord, recoverRuns } from './record.js';
import { executeRun } from './run.js';

export type { MigrateAnswer, MigrateOptions } from './answer.js';
export type { RunRecord } from './record.js';

export interface Migrator {
  /** The dry run: preflight and plan, never gated, no side effect anywhere. */
  plan(project: Project, options: MigrateOptions): Promise<MigrateAnswer>;
  /** A real run: refusals throw (400/404/409/412/503); failures after the start answer `{ ok: false }`. */
  run(project: Project, options: MigrateOptions): Promise<MigrateAnswer>;
  lastRun(projectId: string): Promise<RunRecord | undefined>;
  recover(): Promise<void>;
  stop(): Promise<void>;
  readonly running: number;
}

export function createMigrator(rt: Runtime): Migrator {
  const { config, log } = rt;
  const metrics = migrateMetrics(rt.metrics);
  const leases = createRunLeases(config, (running) => metrics.running.set(running));
  const baseDir = path.join(config.FLUX_STATE_DIR, 'migrate');
  const records = createRunRecords(path.join(baseDir, 'runs'));
  const workDir = path.join(baseDir, 'work');
  // pg_dump pids while they run (as dump records its own): one a kill -9 of this process left running is
  // killed at the next start, before recovery removes its temp dump.
  const children = createChildPids({ dir: path.join(config.FLUX_STATE_DIR, 'children', rt.name), log });

  return {
    get running() {
      return leases.size;
    },

    async plan(project, options) {
      try {
        return await dryRun(rt, project, options);
      } catch (error) {
        metrics.outcomes.inc({
          outcome: 'refused',
          phase: 'preflight',
          reason: isAppError(error) ? error.code : 'internal',
        });
        throw refusal('preflight', error);
      }
    },

    async run(project, options) {
      if (!options.yes) {
        metrics.outcomes.inc({ outcome: 'refused', phase: 'confirm', reason: 'precondition_failed' });
        throw refusal(
          'confirm',
          new AppError(
            'precondition_failed',
            `a real migration of ${project.slug} needs "yes": true (flux migrate --yes); run with "dryRun": true first to see the plan. Nothing was done`,
          ),
        );
      }
      const refused = leases.refusalOf(project);
      if (refused) {
        if (refused.code === 'conflict') {
          metrics.outcomes.inc({ outcome: 'refused', phase: 'lease', reason: 'conflict' });
        }
        throw refusal('lease', refused);
      }
      return leases.hold(project, (signal) =>
        executeRun({ rt, metrics, records, children, workDir }, project, options, signal),
      );
    },

    lastRun: (projectId) => records.read(projectId),

    async recover() {
      // First the pg_dumps a crashed predecessor left running (they would go on holding their snapshot on
      // the shared cluster), then the temp dumps of runs a crash interrupted; no run of this process exists yet.
      await children.reap();
      await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
      await recoverRuns(rt, records);
    },

    async stop() {
      const left = await leases.stop();
      if (left.length > 0) log.warn({ projects: left }, 'migrations still cleaning up after their cancel');
    },
  };
}
