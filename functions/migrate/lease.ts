// A migration's leases: one run per project in this process, and an advisory lock in the target.
import type { Config } from '../../shared/config.js';
import { AppError } from '../../shared/errors.js';
import { createJobRunner } from '../../shared/kit/jobs.js';
import { takeSessionLease } from '../../shared/pg/lease.js';
import type { Project } from '../../shared/registry.js';
import { MIGRATE_APP_NAME } from './preflight.js';

/**
 * How long stop() waits for cancelled runs to clean up: a rollback of the target waits up to 30 s for its
 * locks, so this covers one; the process's shutdown watchdog stays the outer bound.
 */
const CANCEL_WAIT_MS = 60_000;

export interface RunLeases {
  readonly size: number;
  /** Why a run of `project` cannot start now: 503 once stop() has begun, 409 while one is in flight. */
  refusalOf(project: Project): AppError | undefined;
  /** Runs `work` holding the project's slot, with a signal aborted by stop() or by the deadline. */
  hold<T>(project: Project, work: (signal: AbortSignal) => Promise<T>): Promise<T>;
  /** Runs get the grace period to finish; then they are cancelled (children killed, target rolled back). */
  stop(): Promise<string[]>;
}

export function createRunLeases(config: Config, onChange: (running: number) => void): RunLeases {
  const jobs = createJobRunner({
    name: 'migrate',
    graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
    cancelWaitMs: CANCEL_WAIT_MS,
  });
  return {
    get size() {
      return jobs.size;
    },
    refusalOf(project) {
      if (jobs.isStopping) return new AppError('shutting_down', 'migrate is stopping; retry later');
      if (!jobs.has(project.id)) return undefined;
      return new AppError(
        'conflict',
        `a migration of ${project.slug} is already running; wait for it to finish`,
        { retryAfterSeconds: 60 },
      );
    },
    async hold(project, work) {
      const running = jobs.run(project.id, work, {
        timeoutMs: config.FLUX_MIGRATE_TIMEOUT_MS,
        timeoutError: () =>
          new AppError(
            'timeout',
            `the migration ran past FLUX_MIGRATE_TIMEOUT_MS (${config.FLUX_MIGRATE_TIMEOUT_MS} ms) and was cancelled`,
          ),
      });
      onChange(jobs.size);
      try {
        return await running;
      } finally {
        onChange(jobs.size);
      }
    },
    stop: () => jobs.stop(),
  };
}

/** The cross-process lease: a session advisory lock in the target; resolves with its release. */
export function lockTarget(url: string, project: Project): Promise<() => Promise<void>> {
  return takeSessionLease(url, `flux-ops-migrate:${project.id}`, {
    appName: `${MIGRATE_APP_NAME}-lease`,
    busy: `a migration of ${project.slug} into this dedicated database is running in another migrate process; wait for it to finish`,
    what: 'taking the migration lease in the target',
  });
}
