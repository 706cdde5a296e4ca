// Scheduled re-verification (FLUX_VERIFY_REVERIFY_AFTER_MS, off at 0): each project's newest complete
// backup is verified again once its last verification finished that long ago, or, never verified, once the
// backup is that old. A dump that rots on disk, an offsite copy that changed, or a sandbox image that no
// longer restores it then shows up without anyone asking. Scheduled work waits its turn: it queues into
// half of the verify queue at most (new backups' verifications keep the other half), and what does not
// fit is left for the next sweep.
import type { Catalog } from '../../shared/catalog/catalog.js';
import { copyVerifications } from '../../shared/catalog/read-model.js';
import { isAppError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { counter, type MetricsRegistry } from '../../shared/metrics.js';
import type { ProjectRegistry } from '../../shared/registry.js';
import type { Verifier, VerifySource } from './verifier.js';

export interface ReverifyOptions {
  registry: ProjectRegistry;
  catalog: Catalog;
  verifier: Pick<Verifier, 'start' | 'isRunning' | 'queued'>;
  /** FLUX_VERIFY_QUEUE_MAX: scheduled work queues into half of it, the rest stays free for new backups. */
  queueMax: number;
  log: Logger;
  metrics: MetricsRegistry;
  /** A verification older than this is due again; 0 = no schedule. */
  afterMs: number;
  source: VerifySource;
  /** How often the catalog is scanned (default: a tenth of afterMs, between 1 s and 1 h). */
  sweepMs?: number;
}

export interface SweepSummary {
  projects: number;
  due: number;
  started: number;
  /** Due, but the queue was full: left for the next sweep. */
  busy: number;
  failed: number;
}

export interface ReverifySchedule {
  /** One scan now: starts what is due (not awaited). */
  sweep(now?: number): Promise<SweepSummary>;
  start(): void;
  stop(): void;
}

export function createReverifySchedule(options: ReverifyOptions): ReverifySchedule {
  const { registry, catalog, verifier, log, afterMs } = options;
  const sweepMs = options.sweepMs ?? Math.min(60 * 60_000, Math.max(1000, Math.floor(afterMs / 10)));
  const scheduled = counter(
    options.metrics,
    'flux_verify_scheduled_total',
    'Scheduled re-verifications by result (started; busy: its half of the queue is full; failed: could not start)',
    ['result'],
  );
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<SweepSummary> | undefined;

  /** Whether `projectId`'s newest complete backup is due, and which one it is. */
  async function dueBackup(projectId: string, now: number): Promise<string | undefined> {
    const newest = await catalog.newest(projectId, (e) => e.manifest !== undefined);
    if (!newest?.manifest || verifier.isRunning(projectId, newest.backupId, options.source)) return undefined;
    // The copy this schedule restores carries its own last verification (copyVerifications).
    const since = copyVerifications(newest)[options.source]?.finishedAt ?? newest.manifest.completedAt;
    return now - Date.parse(since) >= afterMs ? newest.backupId : undefined;
  }

  async function sweepOnce(now: number): Promise<SweepSummary> {
    const summary: SweepSummary = { projects: 0, due: 0, started: 0, busy: 0, failed: 0 };
    for (const project of registry.list()) {
      summary.projects++;
      let backupId: string | undefined;
      try {
        backupId = await dueBackup(project.id, now);
      } catch (error) {
        log.warn(
          { err: error, projectId: project.id },
          'scheduled re-verification could not read the catalog',
        );
        summary.failed++;
        continue;
      }
      if (!backupId) continue;
      summary.due++;
      if (options.queueMax > 0 && verifier.queued >= Math.ceil(options.queueMax / 2)) {
        summary.busy++;
        scheduled.inc({ result: 'busy' });
        continue;
      }
      try {
        await verifier.start({ projectId: project.id, backupId, source: options.source });
        summary.started++;
        scheduled.inc({ result: 'started' });
      } catch (error) {
        if (isAppError(error) && error.code === 'queue_full') {
          summary.busy++;
          scheduled.inc({ result: 'busy' });
          continue;
        }
        summary.failed++;
        scheduled.inc({ result: 'failed' });
        log.warn(
          { err: error, projectId: project.id, backupId },
          'scheduled re-verification could not start',
        );
      }
    }
    if (summary.due > 0) log.info(summary, 'scheduled re-verification sweep');
    return summary;
  }

  return {
    sweep(now = Date.now()) {
      // One sweep at a time: a slow catalog never stacks scans.
      running ??= sweepOnce(now).finally(() => {
        running = undefined;
      });
      return running;
    },
    start() {
      if (afterMs <= 0 || timer) return;
      timer = setInterval(() => void this.sweep().catch(() => undefined), sweepMs);
      timer.unref();
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
    },
  };
}
