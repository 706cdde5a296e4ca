// Verify's reconcile: the catalog, not the events, says what must be verified. At start-up and every
// FLUX_VERIFY_RECONCILE_INTERVAL_MS, every complete backup that FLUX_VERIFY_ON says must be verified and has
// no receipt for its content is queued, newest first — so a created event lost to a crash, a verify
// process that was down, or a queue that was full, end in a verification all the same. It queues into half
// of FLUX_VERIFY_QUEUE_MAX at most (new backups' verifications keep the other half); what does not fit
// waits for the next scan.
import type { Catalog } from '../../shared/catalog/catalog.js';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import { copyVerifications } from '../../shared/catalog/read-model.js';
import { isAppError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { counter, gauge, type MetricsRegistry } from '../../shared/metrics.js';
import type { Verifier, VerifySource } from './verifier.js';

/** The events of FLUX_VERIFY_ON that make a backup owed a verification, and which copy each one restores. */
const OWED_BY = { created: 'flux.backup.created', replicated: 'flux.backup.replicated' } as const;

/**
 * Which copy of `entry` the policy wants verified now, or undefined when nothing is owed: not complete, that
 * copy already holding its own receipt for this content, or no trigger of FLUX_VERIFY_ON covers it. Created
 * covers every complete backup's local copy (the offsite one where only that is left); replicated covers the
 * offsite copy of a backup whose copy replicate proved for this content. The local copy comes first.
 */
export function owedVerification(
  entry: Pick<CatalogEntry, 'manifest' | 'verify' | 'verifyOffsite' | 'offsite' | 'dump'>,
  triggers: readonly string[],
): VerifySource | undefined {
  const { manifest } = entry;
  if (!manifest) return undefined;
  const verified = copyVerifications(entry);
  const isReplicated =
    entry.offsite?.status === 'replicated' && entry.offsite.contentSha256 === manifest.sha256;
  const onCreated = triggers.includes(OWED_BY.created);
  const onReplicated = triggers.includes(OWED_BY.replicated);
  if (onCreated && entry.dump && !verified.local) return 'local';
  const coversOffsite = onReplicated || (onCreated && !entry.dump);
  return coversOffsite && isReplicated && !verified.offsite ? 'offsite' : undefined;
}

export interface VerifyReconcileOptions {
  catalog: Catalog;
  verifier: Pick<Verifier, 'start' | 'isRunning' | 'queued'>;
  /** verifyTriggers(config): FLUX_VERIFY_ON as a list (empty for `none`: nothing is owed). */
  triggers: readonly string[];
  /** FLUX_VERIFY_QUEUE_MAX: reconcile queues into half of it, the rest stays free for new backups. */
  queueMax: number;
  /** FLUX_VERIFY_RECONCILE_INTERVAL_MS. */
  intervalMs: number;
  log: Logger;
  metrics: MetricsRegistry;
}

export interface ReconcileSummary {
  /** Complete backups owed a verification (running ones excluded). */
  owed: number;
  started: number;
  /** Owed, but its half of the queue was full: left for the next scan. */
  busy: number;
  /** Could not start (the reason is logged once per backup). */
  failed: number;
  /** Already being verified. */
  running: number;
}

export interface VerifyReconcile {
  /** One scan now: starts what is owed (the verifications themselves are not awaited). */
  scan(trigger?: 'startup' | 'interval' | 'demand'): Promise<ReconcileSummary>;
  /** A start-up scan (in the background), then one every intervalMs. */
  start(): void;
  stop(): void;
}

export function createVerifyReconcile(options: VerifyReconcileOptions): VerifyReconcile {
  const { catalog, verifier, log, triggers } = options;
  const room = Math.ceil(options.queueMax / 2);
  const results = counter(
    options.metrics,
    'flux_verify_reconciled_total',
    'Verifications the reconcile scan asked for, by result (started; busy: its half of the queue is full; failed: could not start)',
    ['result'],
  );
  const owedGauge = gauge(
    options.metrics,
    'flux_verify_reconcile_owed',
    'Complete backups FLUX_VERIFY_ON says must be verified that had no receipt at the last reconcile scan',
  );
  const scans = counter(options.metrics, 'flux_verify_reconcile_scans_total', 'Reconcile scans by trigger', [
    'trigger',
  ]);
  /** Backups whose start failed, so a scan every few minutes does not log the same reason again. */
  const reported = new Set<string>();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<ReconcileSummary> | undefined;

  async function owedBackups(): Promise<Array<{ entry: CatalogEntry; source: VerifySource }>> {
    const owed: Array<{ entry: CatalogEntry; source: VerifySource }> = [];
    for (const projectId of await catalog.listProjects()) {
      for (const entry of await catalog.list(projectId)) {
        const source = owedVerification(entry, triggers);
        if (source) owed.push({ entry, source });
      }
    }
    // Newest first: the backup a restore would use is the one to prove before older ones.
    const completed = (e: CatalogEntry) => Date.parse(e.manifest?.completedAt ?? '') || 0;
    return owed.sort((a, b) => completed(b.entry) - completed(a.entry));
  }

  async function scanOnce(trigger: string): Promise<ReconcileSummary> {
    scans.inc({ trigger });
    const summary: ReconcileSummary = { owed: 0, started: 0, busy: 0, failed: 0, running: 0 };
    for (const { entry, source } of await owedBackups()) {
      const { projectId, backupId } = entry;
      if (verifier.isRunning(projectId, backupId, source)) {
        summary.running++;
        continue;
      }
      summary.owed++;
      // Once full, everything after is busy too: counted, not tried.
      if (summary.busy > 0 || (options.queueMax > 0 && verifier.queued >= room)) {
        summary.busy++;
        continue;
      }
      try {
        await verifier.start({ projectId, backupId, source });
        summary.started++;
        reported.delete(`${projectId}/${backupId}`);
      } catch (error) {
        if (isAppError(error) && (error.code === 'queue_full' || error.code === 'shutting_down')) {
          summary.busy++;
          continue;
        }
        summary.failed++;
        const key = `${projectId}/${backupId}`;
        if (!reported.has(key)) {
          reported.add(key);
          log.warn(
            { err: error, projectId, backupId, source },
            'verify reconcile: an owed verification could not start',
          );
        }
      }
    }
    owedGauge.set(summary.owed);
    if (summary.started > 0) results.inc({ result: 'started' }, summary.started);
    if (summary.busy > 0) results.inc({ result: 'busy' }, summary.busy);
    if (summary.failed > 0) results.inc({ result: 'failed' }, summary.failed);
    if (summary.owed > 0) log.info({ ...summary, trigger }, 'verify reconcile: backups owed a verification');
    return summary;
  }

  return {
    scan(trigger = 'demand') {
      // One scan at a time: a slow catalog never stacks scans.
      running ??= scanOnce(trigger).finally(() => {
        running = undefined;
      });
      return running;
    },
    start() {
      if (triggers.length === 0 || timer) return;
      const scanLogged = (trigger: 'startup' | 'interval') =>
        void this.scan(trigger).catch((error) =>
          log.error({ err: error, trigger }, 'verify reconcile failed'),
        );
      scanLogged('startup');
      timer = setInterval(() => scanLogged('interval'), options.intervalMs);
      timer.unref();
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
    },
  };
}
