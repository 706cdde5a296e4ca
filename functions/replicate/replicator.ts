// Replication: copies each complete backup (dump, then its manifest) to the offsite store and proves
// the copy by re-reading it, then writes the local `.offsite.json` receipt last. One job per backup at a
// time (triggers join it until it reads the backup's files, later ones queue one follow-up), bounded
// copies in flight, retries with backoff, a failure receipt and event when attempts run out. The
// reconcile scan compares every local manifest with its receipt.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Catalog } from '../../shared/catalog/catalog.js';
import { isProjectHash } from '../../shared/catalog/ids.js';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import type { OffsiteReceipt } from '../../shared/catalog/records.js';
import { AppError, isAppError } from '../../shared/errors.js';
import { createJobRunner } from '../../shared/kit/jobs.js';
import type { Emit } from '../../shared/kit/runtime.js';
import { createLimiter } from '../../shared/limiter.js';
import type { Logger } from '../../shared/log.js';
import type { MetricsRegistry } from '../../shared/metrics.js';
import type { AgeIdentities } from '../../shared/offsite/age.js';
import { dumpKeyOf } from '../../shared/offsite/keys.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import { MINUTE_MS } from '../../shared/units.js';
import { createCopier, errorText } from './copier.js';
import type { StoreIdentity } from './identity.js';
import { copyMetrics } from './metrics.js';
import {
  backoffMs,
  type FailureReason,
  type GapKind,
  isPermanent,
  reasonOf,
  type SkipKind,
} from './reconcile.js';
import { createReconcileScan, emptySummary } from './reconcile-scan.js';

export type Trigger = 'watch' | 'event' | 'reconcile' | 'startup' | 'manual';

export interface ReplicateRequest {
  projectId: string;
  backupId: string;
  trigger: Trigger;
  /** Id of the event that asked for this copy (becomes the causation id of what we emit). */
  causedBy?: string | undefined;
  /** Copy even when the receipt says replicated (the offsite listing disagrees with it). */
  force?: boolean;
}

export type ReplicateResult =
  | { outcome: 'replicated'; created: boolean; receipt: OffsiteReceipt }
  | { outcome: 'already' }
  | { outcome: 'conflict'; receipt: OffsiteReceipt }
  | { outcome: 'failed'; reason: FailureReason; error: string; receipt?: OffsiteReceipt }
  | { outcome: 'skipped'; reason: 'no_manifest' | 'stopping' }
  /** The local dump is missing and no matching offsite copy could be proven: left pending, no receipt. */
  | { outcome: 'skipped'; reason: 'local_dump_missing'; detail: string };

export interface ReconcileSummary {
  trigger: Trigger;
  startedAt: string;
  finishedAt: string;
  seconds: number;
  projects: number;
  /** Complete backups (with a manifest) looked at. */
  backups: number;
  /** Backups found without a proven offsite copy and not already being copied, by why. */
  gaps: Record<GapKind, number>;
  /** Backups being copied already when the scan reached them (a watcher or webhook got there first). */
  inFlight: number;
  skipped: Record<SkipKind, number>;
  /** Outcomes of the copies this scan started. */
  results: Record<ReplicateResult['outcome'], number>;
  /** Projects whose offsite listing could not be read (their receipts were trusted as they are). */
  listingErrors: number;
}

export interface ReplicatorOptions {
  catalog: Catalog;
  store: OffsiteStore;
  log: Logger;
  metrics: MetricsRegistry;
  emit: Emit;
  concurrency: number;
  maxAttempts: number;
  retryBaseDelayMs: number;
  retryMaxDelayMs?: number;
  /** Checked before every copy: the store is the one this replicator has been writing to. */
  identity?: StoreIdentity;
  /**
   * Encrypt every new copy to these age recipients (FLUX_BACKUP_AGE_RECIPIENTS), staging the encrypted
   * file under `stagingDir`; `identities` (FLUX_BACKUP_AGE_IDENTITY_FILE) let a copy found encrypted be
   * proven without its local dump.
   */
  sealing?: { recipients: readonly string[]; stagingDir: string } | undefined;
  identities?: () => AgeIdentities | undefined;
}

export interface Replicator {
  /** Copies one backup (joining a job already running for it); never rejects. */
  request(request: ReplicateRequest): Promise<ReplicateResult>;
  /** Diffs one project's local manifests against receipts and the offsite listing; copies the gaps. */
  reconcileProject(projectId: string, trigger: Trigger): Promise<ReconcileSummary>;
  /** The same for every project; a reconcile already running is joined, not doubled. */
  reconcile(trigger: Trigger): Promise<ReconcileSummary>;
  readonly lastReconcile: ReconcileSummary | undefined;
  /** Jobs not settled yet (queued, copying or waiting to retry). */
  readonly pending: number;
  /** A job for this backup has not settled yet. */
  isCopying(projectId: string, backupId: string): boolean;
  readonly isStopping: boolean;
  /** Stops taking work; waits `graceMs` for copies in flight, then cancels them (temp files removed). */
  stop(graceMs: number): Promise<void>;
}

interface Job {
  promise: Promise<ReplicateResult>;
  causedBy: string | undefined;
  /**
   * Set while the job acts on files it has read: a trigger from now on may be about a change it never saw
   * (a manifest rewritten while the last copy was still emitting its event), so it cannot just join.
   */
  hasReadLedger: boolean;
  /** The one job queued behind this one for such triggers; it reads the files afresh once this settles. */
  followUp?: { request: ReplicateRequest; promise: Promise<ReplicateResult> };
}

export function createReplicator(options: ReplicatorOptions): Replicator {
  const { catalog, store, log, metrics, emit } = options;
  const retryMaxDelayMs = options.retryMaxDelayMs ?? 5 * MINUTE_MS;
  // A backup's copy is one job (keyed by backup); the scan of every project is another. The copies listen
  // on the runner's shared signal, which stop() aborts after the grace period.
  const jobs = createJobRunner<Job>({ name: 'replicate', graceMs: 0, cancelWaitMs: 10_000 });
  const scans = createJobRunner<Promise<ReconcileSummary>>({
    name: 'replicate',
    graceMs: 0,
    cancelWaitMs: 10_000,
  });
  // Pending work is already bounded by the number of backups on disk (one job per backup), so the
  // queue itself needs no second bound: nothing here should ever be refused with a 503.
  const limiter = createLimiter({
    concurrency: options.concurrency,
    queueMax: Number.MAX_SAFE_INTEGER,
    name: 'offsite copies',
  });

  const { results, failures, attemptsFailed, bytes, lag, copySeconds, pendingGauge } = copyMetrics(metrics);
  const updateJobGauges = () => {
    pendingGauge.set({ state: 'pending' }, jobs.size);
    pendingGauge.set({ state: 'copying' }, limiter.active);
  };

  const copier = createCopier({
    catalog,
    store,
    signal: jobs.signal,
    identity: options.identity,
    sealing: options.sealing,
    identities: options.identities,
    copySeconds,
    bytes,
  });

  async function run(request: ReplicateRequest, job: Job): Promise<ReplicateResult> {
    const { projectId, backupId } = request;
    const subject = `${projectId}/${backupId}`;
    let lastError: unknown;
    let attempts = 0;
    let entry: CatalogEntry | undefined;
    for (let attempt = 1; attempt <= options.maxAttempts; attempt++) {
      if (jobs.isStopping) return { outcome: 'skipped', reason: 'stopping' };
      try {
        const outcome = await limiter.run(async () => {
          // The grace period is for copies under way: one still queued when the stop began is left.
          if (jobs.isStopping) return { kind: 'stopping' as const };
          updateJobGauges();
          // Read the ledger inside the job: a copy that finished a moment ago is not redone.
          job.hasReadLedger = true;
          entry = await catalog.get(projectId, backupId);
          if (!entry?.manifest) return { kind: 'no_manifest' as const };
          const r = entry.offsite;
          if (
            !request.force &&
            r?.status === 'replicated' &&
            r.manifestSha256 === entry.manifest.sha256 &&
            r.contentSha256 === entry.manifest.sha256
          ) {
            return { kind: 'already' as const };
          }
          attempts = attempt;
          if (!entry.dump) {
            const proven = await copier.proveOffsiteOnly({ ...entry, manifest: entry.manifest }, attempt);
            return 'pending' in proven
              ? { kind: 'pending' as const, detail: proven.pending }
              : { kind: 'copied' as const, receipt: proven.receipt, created: false };
          }
          return {
            kind: 'copied' as const,
            ...(await copier.copy({ ...entry, manifest: entry.manifest }, attempt)),
          };
        }, jobs.signal);
        if (outcome.kind === 'stopping') return { outcome: 'skipped', reason: 'stopping' };
        if (outcome.kind === 'no_manifest') return { outcome: 'skipped', reason: 'no_manifest' };
        if (outcome.kind === 'already') return { outcome: 'already' };
        if (outcome.kind === 'pending') {
          log.warn(
            { projectId, backupId, trigger: request.trigger, reason: outcome.detail },
            'local dump missing: nothing to copy; the backup stays pending offsite (no failure receipt)',
          );
          return { outcome: 'skipped', reason: 'local_dump_missing', detail: outcome.detail };
        }
        const { receipt, created } = outcome;
        if (receipt.lagSeconds !== undefined) lag.observe(receipt.lagSeconds);
        log.info(
          {
            projectId,
            backupId,
            key: receipt.key,
            sizeBytes: receipt.sizeBytes,
            created,
            attempts,
            trigger: request.trigger,
          },
          created ? 'backup replicated offsite' : 'offsite copy already present and proven; receipt written',
        );
        await emit('flux.backup.replicated', {
          subject,
          causedBy: job.causedBy,
          data: {
            projectId,
            ...(isProjectHash(entry!.manifest!.projectHash)
              ? { projectHash: entry!.manifest!.projectHash }
              : {}),
            backupId,
            sha256: receipt.contentSha256!,
            sizeBytes: receipt.sizeBytes!,
            store: receipt.store,
            key: receipt.key,
            lagSeconds: receipt.lagSeconds,
            attempts,
            created,
            trigger: request.trigger,
          },
        });
        return { outcome: 'replicated', created, receipt };
      } catch (error) {
        if (jobs.isStopping) return { outcome: 'skipped', reason: 'stopping' };
        lastError = error;
        const reason = reasonOf(error);
        attemptsFailed.inc({ reason });
        if (isPermanent(reason) || attempt >= options.maxAttempts) break;
        const delay = backoffMs(attempt, options.retryBaseDelayMs, retryMaxDelayMs);
        log.warn(
          { projectId, backupId, attempt, reason, err: errorText(error), retryInMs: delay },
          'offsite copy failed; will retry',
        );
        // The next attempt reads the files again: triggers until then can join this job.
        job.hasReadLedger = false;
        try {
          // A retry waiting out its back-off is not a copy under way: a stop ends the wait.
          await sleep(delay, undefined, { signal: jobs.draining });
        } catch {
          return { outcome: 'skipped', reason: 'stopping' };
        }
      }
    }
    return fail(request, job, entry, lastError, attempts);
  }

  async function fail(
    request: ReplicateRequest,
    job: Job,
    entry: CatalogEntry | undefined,
    error: unknown,
    attempts: number,
  ): Promise<ReplicateResult> {
    const { projectId, backupId } = request;
    const reason = reasonOf(error);
    const message = errorText(error);
    const details = isAppError(error) ? (error.details ?? {}) : {};
    const status = reason === 'conflict' ? 'conflict' : 'failed';
    failures.inc({ reason });
    const manifest = entry?.manifest;
    // The same failure again (a reconcile retrying while the store is still down) updates the receipt
    // but does not page anyone twice: one event per failure state, the receipt keeps the running count.
    const prior = entry?.offsite;
    const repeated =
      prior !== undefined &&
      manifest !== undefined &&
      prior.status === status &&
      prior.reason === reason &&
      prior.manifestSha256 === manifest.sha256;
    const totalAttempts = repeated ? prior.attempts + attempts : attempts;
    let receipt: OffsiteReceipt | undefined;
    if (manifest) {
      receipt = {
        backupId,
        projectId,
        status,
        store: store.location,
        key: typeof details.key === 'string' ? details.key : dumpKeyOf(projectId, backupId),
        ...(typeof details.foundSha256 === 'string' ? { contentSha256: details.foundSha256 } : {}),
        manifestSha256: manifest.sha256,
        attempts: totalAttempts,
        at: new Date().toISOString(),
        reason,
        error: message,
      };
      try {
        await catalog.writeOffsiteReceipt(receipt);
      } catch (writeError) {
        log.error({ err: writeError, projectId, backupId }, 'could not write the failure receipt');
        receipt = undefined;
      }
    }
    log.error(
      {
        projectId,
        backupId,
        reason,
        attempts: totalAttempts,
        trigger: request.trigger,
        err: message,
        repeated,
      },
      status === 'conflict'
        ? 'ALARM: a different offsite copy exists for this backup; it was not overwritten'
        : repeated
          ? 'offsite replication still failing (already reported)'
          : 'offsite replication failed',
    );
    if (!repeated) {
      await emit('flux.backup.replication_failed', {
        subject: `${projectId}/${backupId}`,
        causedBy: job.causedBy,
        data: {
          projectId,
          ...(manifest && isProjectHash(manifest.projectHash) ? { projectHash: manifest.projectHash } : {}),
          backupId,
          reason,
          error: message,
          attempts: totalAttempts,
          trigger: request.trigger,
          ...(typeof details.key === 'string' ? { key: details.key } : {}),
          ...(typeof details.expectedSha256 === 'string' ? { expectedSha256: details.expectedSha256 } : {}),
          ...(typeof details.foundSha256 === 'string' ? { foundSha256: details.foundSha256 } : {}),
        },
      });
    }
    if (status === 'conflict' && receipt) return { outcome: 'conflict', receipt };
    return { outcome: 'failed', reason, error: message, ...(receipt ? { receipt } : {}) };
  }

  function request(req: ReplicateRequest): Promise<ReplicateResult> {
    if (jobs.isStopping) return Promise.resolve({ outcome: 'skipped', reason: 'stopping' });
    const key = `${req.projectId}/${req.backupId}`;
    const existing = jobs.value(key);
    if (existing && !existing.hasReadLedger) {
      // Watch and webhook firing for the same backup: one copy; the event becomes its cause.
      existing.causedBy ??= req.causedBy;
      return existing.promise;
    }
    if (existing) {
      // The job has read the files already and may act on what they were: one follow-up looks again.
      // A webhook still names the copy in flight as its outcome (it announced this very backup).
      existing.causedBy ??= req.causedBy;
      const queued = existing.followUp;
      if (queued) {
        queued.request.causedBy ??= req.causedBy;
        if (req.force) queued.request.force = true;
        return queued.promise;
      }
      const followUp = { ...req };
      existing.followUp = {
        request: followUp,
        promise: existing.promise.then(() => request(followUp)),
      };
      return existing.followUp.promise;
    }
    const slot = jobs.claim(key);
    const job: Job = {
      causedBy: req.causedBy,
      hasReadLedger: false,
      promise: Promise.resolve({ outcome: 'already' }),
    };
    slot.value = job;
    job.promise = slot.track(
      run(req, job)
        .catch((error): ReplicateResult => {
          log.error({ err: error, key }, 'replication job crashed');
          return { outcome: 'failed', reason: 'internal', error: errorText(error) };
        })
        .then((result) => {
          results.inc({
            outcome:
              result.outcome === 'replicated' && !result.created ? 'replicated_existing' : result.outcome,
          });
          return result;
        }),
    );
    void job.promise.finally(updateJobGauges);
    updateJobGauges();
    return job.promise;
  }

  const scan = createReconcileScan({
    catalog,
    store,
    log,
    metrics,
    isCopying: (projectId, backupId) => jobs.has(`${projectId}/${backupId}`),
    request,
  });

  return {
    request,
    reconcileProject(projectId, trigger) {
      if (jobs.isStopping) return Promise.resolve(emptySummary(trigger));
      return scan.reconcileProject(projectId, trigger).catch((error) => {
        log.error({ err: errorText(error), projectId }, 'reconcile of a project failed');
        return emptySummary(trigger);
      });
    },
    reconcile(trigger) {
      if (jobs.isStopping) return Promise.reject(new AppError('shutting_down', 'replicate is stopping'));
      const running = scans.value('all');
      if (running) return running;
      const slot = scans.claim('all');
      slot.value = slot.track(scan.reconcileAll(trigger));
      return slot.value;
    },
    get lastReconcile() {
      return scan.last;
    },
    get pending() {
      return jobs.size;
    },
    isCopying(projectId, backupId) {
      return jobs.has(`${projectId}/${backupId}`);
    },
    get isStopping() {
      return jobs.isStopping;
    },
    async stop(graceMs) {
      // A scan still walking the catalog (the start-up one is not awaited by start) asks for no more
      // copies once stopping; it is waited for so that nothing of it writes after the stop.
      await Promise.all([jobs.stop({ graceMs }), scans.stop({ graceMs })]);
    },
  };
}
