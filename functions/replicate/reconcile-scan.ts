// replicate's reconcile scan, beside its pure rules (reconcile.ts): each project's local manifests diffed
// against their receipts and the offsite listing, and a copy asked for every gap. A full scan sets the
// gap gauges and says what it found.
import type { Catalog } from '../../shared/catalog/catalog.js';
import type { Logger } from '../../shared/log.js';
import type { MetricsRegistry } from '../../shared/metrics.js';
import { dumpKeyOf, manifestKeyOf } from '../../shared/offsite/keys.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import { errorText } from './copier.js';
import { reconcileMetrics } from './metrics.js';
import { decide, GAP_KINDS, type GapKind } from './reconcile.js';
import type { ReconcileSummary, ReplicateRequest, ReplicateResult, Trigger } from './replicator.js';

export function emptySummary(trigger: Trigger): ReconcileSummary {
  return {
    trigger,
    startedAt: new Date().toISOString(),
    finishedAt: '',
    seconds: 0,
    projects: 0,
    backups: 0,
    gaps: Object.fromEntries(GAP_KINDS.map((g) => [g, 0])) as Record<GapKind, number>,
    inFlight: 0,
    skipped: { no_manifest: 0, replicated: 0, conflict: 0, gave_up: 0, offsite_invalid: 0 },
    results: { replicated: 0, already: 0, conflict: 0, failed: 0, skipped: 0 },
    listingErrors: 0,
  };
}

export interface ReconcileScanOptions {
  catalog: Catalog;
  store: OffsiteStore;
  log: Logger;
  metrics: MetricsRegistry;
  /** A copy job for this backup has not settled yet. */
  isCopying(projectId: string, backupId: string): boolean;
  request(request: ReplicateRequest): Promise<ReplicateResult>;
}

export interface ReconcileScan {
  reconcileProject(projectId: string, trigger: Trigger): Promise<ReconcileSummary>;
  reconcileAll(trigger: Trigger): Promise<ReconcileSummary>;
  readonly last: ReconcileSummary | undefined;
}

export function createReconcileScan(options: ReconcileScanOptions): ReconcileScan {
  const { catalog, store, log, metrics, request } = options;
  let lastReconcile: ReconcileSummary | undefined;

  const { gapGauge, gapTotal, lastReconcileGauge } = reconcileMetrics(metrics);
  /** Counts one project's ledger into `summary` and starts the copies it needs (not awaited). */
  async function scanProject(
    projectId: string,
    trigger: Trigger,
    summary: ReconcileSummary,
  ): Promise<Array<Promise<ReplicateResult>>> {
    summary.projects += 1;
    const entries = await catalog.list(projectId);
    let offsite: Map<string, number> | undefined = new Map();
    try {
      for await (const object of store.list(`${projectId}/`)) offsite.set(object.key, object.sizeBytes);
    } catch (error) {
      summary.listingErrors += 1;
      log.warn(
        { err: errorText(error), projectId },
        'offsite listing failed; reconciling from receipts only',
      );
      offsite = undefined;
    }
    const started: Array<Promise<ReplicateResult>> = [];
    for (const entry of entries) {
      if (!entry.manifest) {
        summary.skipped.no_manifest += 1;
        continue;
      }
      summary.backups += 1;
      if (options.isCopying(projectId, entry.backupId)) {
        summary.inFlight += 1;
        continue;
      }
      const decision = decide({
        manifest: entry.manifest,
        receipt: entry.offsite,
        dumpMtimeMs: entry.dump?.mtimeMs,
        keys: {
          dump: dumpKeyOf(projectId, entry.backupId),
          manifest: manifestKeyOf(projectId, entry.backupId),
        },
        offsite,
      });
      if (decision.action === 'skip') {
        summary.skipped[decision.state] += 1;
        continue;
      }
      summary.gaps[decision.gap] += 1;
      gapTotal.inc({ gap: decision.gap });
      started.push(
        request({
          projectId,
          backupId: entry.backupId,
          trigger,
          force: decision.gap === 'offsite_missing' || decision.gap === 'offsite_changed',
        }),
      );
    }
    return started;
  }

  async function settle(summary: ReconcileSummary, started: Array<Promise<ReplicateResult>>) {
    for (const result of await Promise.all(started)) summary.results[result.outcome] += 1;
    summary.finishedAt = new Date().toISOString();
    summary.seconds = (Date.parse(summary.finishedAt) - Date.parse(summary.startedAt)) / 1000;
    return summary;
  }

  async function reconcileProject(projectId: string, trigger: Trigger): Promise<ReconcileSummary> {
    const summary = emptySummary(trigger);
    return settle(summary, await scanProject(projectId, trigger, summary));
  }

  async function reconcileAll(trigger: Trigger): Promise<ReconcileSummary> {
    const summary = emptySummary(trigger);
    const started: Array<Promise<ReplicateResult>> = [];
    // Projects are scanned one after another; the copies they start run `concurrency` at a time.
    for (const projectId of await catalog.listProjects()) {
      try {
        started.push(...(await scanProject(projectId, trigger, summary)));
      } catch (error) {
        summary.listingErrors += 1;
        log.error({ err: errorText(error), projectId }, 'reconcile could not read a project directory');
      }
    }
    await settle(summary, started);
    for (const gap of GAP_KINDS) gapGauge.set({ gap }, summary.gaps[gap]);
    lastReconcileGauge.set(Date.parse(summary.finishedAt) / 1000);
    const found = GAP_KINDS.reduce((n, g) => n + summary.gaps[g], 0);
    (found > 0 ? log.warn.bind(log) : log.info.bind(log))(
      {
        trigger,
        gaps: summary.gaps,
        backups: summary.backups,
        results: summary.results,
        seconds: summary.seconds,
      },
      found > 0
        ? 'reconcile found backups without a proven offsite copy'
        : 'reconcile: every backup is accounted for',
    );
    lastReconcile = summary;
    return summary;
  }

  return {
    reconcileProject,
    reconcileAll,
    get last() {
      return lastReconcile;
    },
  };
}
