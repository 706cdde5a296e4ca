// Replication: copies each complete backup (dump, then its manifest) to the offsite store and proves
// the copy by re-reading it, then writes the local `.offsite.json` receipt last. One job per backup at a
// time (triggers join it until it reads the backup's files, later ones queue one follow-up), bounded
// copies in flight, retries with backoff, a failure receipt and event when attempts run out. The
// reconcile scan compares every local manifest with its receipt.
import { setMaxListeners } from 'node:events';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import { hashFile, STREAM_CHUNK_BYTES } from '../../shared/atomic.js';
import type { Catalog, CatalogEntry } from '../../shared/catalog/catalog.js';
import { isProjectHash } from '../../shared/catalog/ids.js';
import type { OffsiteReceipt } from '../../shared/catalog/records.js';
import { MINUTE_MS } from '../../shared/config.js';
import { AppError, errnoOf, isAppError } from '../../shared/errors.js';
import type { Emit } from '../../shared/kit/runtime.js';
import { createLimiter } from '../../shared/limiter.js';
import type { Logger } from '../../shared/log.js';
import { counter, DURATION_BUCKETS_S, gauge, histogram, type Registry } from '../../shared/metrics.js';
import { type AgeIdentities, isAgeHead, storedSizeFits } from '../../shared/offsite/age.js';
import { readOffsiteManifest } from '../../shared/offsite/artifact.js';
import { dumpKeyOf, manifestKeyOf } from '../../shared/offsite/keys.js';
import type { ContentHash, OffsiteStore } from '../../shared/offsite/types.js';
import type { StoreIdentity } from './identity.js';
import {
  backoffMs,
  conflictError,
  decide,
  type FailureReason,
  GAP_KINDS,
  type GapKind,
  isPermanent,
  reasonOf,
  type SkipKind,
} from './reconcile.js';
import { proveSealedObject, stageSealed } from './sealed-copy.js';

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
  metrics: Registry;
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

const ERROR_TEXT_MAX = 2000;
const truncate = (s: string) => (s.length > ERROR_TEXT_MAX ? `${s.slice(0, ERROR_TEXT_MAX)}…` : s);
const errorText = (error: unknown) => truncate(error instanceof Error ? error.message : String(error));

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

function emptySummary(trigger: Trigger): ReconcileSummary {
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

export function createReplicator(options: ReplicatorOptions): Replicator {
  const { catalog, store, log, metrics, emit } = options;
  const retryMaxDelayMs = options.retryMaxDelayMs ?? 5 * MINUTE_MS;
  const jobs = new Map<string, Job>();
  /** Offsite copies of backups without a local dump that failed their proof, by key: not re-hashed until they change. */
  const failedOffsiteProofs = new Map<string, { seen: string; why: string }>();
  const controller = new AbortController();
  // Every queued job and copy listens on this one signal: thousands of listeners are expected.
  setMaxListeners(0, controller.signal);
  let stopping = false;
  let running: Promise<ReconcileSummary> | undefined;
  let lastReconcile: ReconcileSummary | undefined;
  // Pending work is already bounded by the number of backups on disk (one job per backup), so the
  // queue itself needs no second bound: nothing here should ever be refused with a 503.
  const limiter = createLimiter({
    concurrency: options.concurrency,
    queueMax: Number.MAX_SAFE_INTEGER,
    name: 'offsite copies',
  });

  const results = counter(metrics, 'flux_replicate_results_total', 'Replication jobs by outcome', [
    'outcome',
  ]);
  const failures = counter(metrics, 'flux_replicate_failures_total', 'Replications given up, by reason', [
    'reason',
  ]);
  const attemptsFailed = counter(
    metrics,
    'flux_replicate_attempt_failures_total',
    'Failed copy attempts (retried or not), by reason',
    ['reason'],
  );
  const bytes = counter(metrics, 'flux_replicate_bytes_total', 'Bytes written to the offsite store');
  const lag = histogram(
    metrics,
    'flux_replicate_lag_seconds',
    'From the manifest arriving locally to the offsite copy proven',
    [],
    DURATION_BUCKETS_S,
  );
  const copySeconds = histogram(
    metrics,
    'flux_replicate_copy_duration_seconds',
    'Copy and proof time of one backup',
    [],
    DURATION_BUCKETS_S,
  );
  const pendingGauge = gauge(metrics, 'flux_replicate_jobs', 'Replication jobs by state', ['state']);
  const gapGauge = gauge(
    metrics,
    'flux_replicate_reconcile_gap',
    'Backups the last full reconcile found without a proven offsite copy (missed by watch and webhook)',
    ['gap'],
  );
  const gapTotal = counter(
    metrics,
    'flux_replicate_reconcile_gaps_total',
    'Backups reconcile scans found without a proven offsite copy',
    ['gap'],
  );
  const lastReconcileGauge = gauge(
    metrics,
    'flux_replicate_last_reconcile_timestamp_seconds',
    'When the last full reconcile finished',
  );
  const updateJobGauges = () => {
    pendingGauge.set({ state: 'pending' }, jobs.size);
    pendingGauge.set({ state: 'copying' }, limiter.active);
  };

  /** The first bytes of a stored object (enough to tell an age file). */
  async function firstBytesOf(key: string): Promise<Buffer> {
    const stream = await store.get(key, controller.signal);
    try {
      for await (const chunk of stream) return chunk as Buffer;
      return Buffer.alloc(0);
    } finally {
      stream.destroy();
    }
  }

  /** Puts `key` (unless an identical object is there) and proves it by re-reading. */
  async function copyAndProve(
    key: string,
    open: () => Readable,
    expected: ContentHash,
  ): Promise<{ created: boolean; proof: ContentHash }> {
    const put = await store.put(key, open(), { ...expected, signal: controller.signal });
    if (put.outcome === 'conflict') throw conflictError(key, expected.sha256, put.sha256);
    // exists: the store compared by re-reading the object already there; created: re-read it now.
    const proof = put.outcome === 'exists' ? put : await store.hash(key, controller.signal);
    if (!proof || proof.sha256 !== expected.sha256 || proof.sizeBytes !== expected.sizeBytes) {
      throw new AppError(
        'replication_failed',
        `offsite object ${key} read back ${proof ? `as ${proof.sizeBytes} B sha256 ${proof.sha256.slice(0, 12)}…` : 'as missing'}, ` +
          `not the ${expected.sizeBytes} B ${expected.sha256.slice(0, 12)}… just written: the store is not keeping what it is given`,
        { details: { reason: 'readback_mismatch', key } },
      );
    }
    return { created: put.outcome === 'created', proof };
  }

  /** One attempt: the dump, then the manifest, then the receipt (the receipt is the last write). */
  async function attemptCopy(
    entry: CatalogEntry & { manifest: NonNullable<CatalogEntry['manifest']> },
    attempt: number,
  ): Promise<{ receipt: OffsiteReceipt; created: boolean }> {
    const m = entry.manifest;
    const dumpKey = dumpKeyOf(entry.projectId, entry.backupId);
    const manifestKey = manifestKeyOf(entry.projectId, entry.backupId);
    const started = performance.now();
    const manifestArrivedMs = (await stat(entry.paths.manifest)).mtimeMs;
    let local: Awaited<ReturnType<typeof stat>>;
    try {
      local = await stat(entry.paths.dump);
    } catch (error) {
      if (errnoOf(error) !== 'ENOENT') throw error;
      throw new AppError(
        'artifact_invalid',
        `the local dump ${entry.paths.dump} is missing; nothing was copied`,
        {
          details: { reason: 'artifact_missing' },
        },
      );
    }
    if (local.size !== m.sizeBytes) {
      throw new AppError(
        'artifact_invalid',
        `the local dump is ${local.size} B but its manifest says ${m.sizeBytes} B (partial or altered file); nothing was copied`,
      );
    }
    // Not into a store that is not the one recorded (an unmounted mount point looks like an empty store).
    await options.identity?.ensure();
    const sealing = options.sealing;
    let dump: { created: boolean; proof: ContentHash };
    let encryption: OffsiteReceipt['encryption'];
    let staged: Awaited<ReturnType<typeof stageSealed>> | undefined;
    if (sealing && sealing.recipients.length > 0) {
      // The plaintext is hashed while it is encrypted (it must be the manifest's), the stored bytes are
      // proven by re-reading them: together, the store holds this backup, readable by these recipients.
      staged = await stageSealed({
        stagingDir: sealing.stagingDir,
        projectId: entry.projectId,
        backupId: entry.backupId,
        dumpFile: entry.paths.dump,
        expected: { sha256: m.sha256, sizeBytes: m.sizeBytes },
        recipients: sealing.recipients,
        signal: controller.signal,
      });
      const file = staged.file;
      const stored = await copyAndProve(
        dumpKey,
        () => createReadStream(file, { highWaterMark: STREAM_CHUNK_BYTES }),
        staged.stored,
      );
      dump = { created: stored.created, proof: { sha256: m.sha256, sizeBytes: m.sizeBytes } };
      encryption = {
        format: 'age',
        recipients: staged.recipients,
        storedSha256: stored.proof.sha256,
        storedSizeBytes: stored.proof.sizeBytes,
      };
    } else {
      // The hash is checked while streaming: a local file that is not what the manifest says never lands.
      dump = await copyAndProve(
        dumpKey,
        // 1 MiB chunks for real dumps; a small file gets a buffer its own size (streams allocate a whole chunk).
        () =>
          createReadStream(entry.paths.dump, {
            highWaterMark: Math.max(1024, Math.min(local.size, STREAM_CHUNK_BYTES)),
          }),
        { sha256: m.sha256, sizeBytes: m.sizeBytes },
      );
    }
    const manifestHash = await hashFile(entry.paths.manifest);
    await copyAndProve(manifestKey, () => createReadStream(entry.paths.manifest), manifestHash);
    const provenAt = Date.now();
    const receipt: OffsiteReceipt = {
      backupId: entry.backupId,
      projectId: entry.projectId,
      status: 'replicated',
      store: store.location,
      key: dumpKey,
      contentSha256: dump.proof.sha256,
      sizeBytes: dump.proof.sizeBytes,
      manifestSha256: m.sha256,
      attempts: attempt,
      at: new Date(provenAt).toISOString(),
      lagSeconds: Math.max(0, (provenAt - manifestArrivedMs) / 1000),
      ...(encryption ? { encryption } : {}),
    };
    await catalog.writeOffsiteReceipt(receipt);
    // Only once the receipt holds the stored hash: a retry before it puts the same file again.
    await staged?.discard().catch(() => undefined);
    copySeconds.observe((performance.now() - started) / 1000);
    if (dump.created) bytes.inc(m.sizeBytes);
    return { receipt, created: dump.created };
  }

  /**
   * A manifest whose local dump is missing (a catalog rebuilt from the offsite store after the host was
   * lost, or a dump removed by hand): there is nothing to copy, and that is no replication failure. When
   * the offsite copy exists, is re-hashed to the manifest's size and SHA-256 (the same proof a copy gets)
   * and the offsite manifest is this one, the normal `replicated` receipt is written: the store does hold
   * a proven copy, which is what the receipt says. Otherwise the backup stays pending with the reason
   * logged and no receipt: a failure receipt would raise `replication_failed` for a copy nobody can make,
   * and the next reconcile looks again (a copy that failed its proof is not re-hashed until it changes).
   */
  async function proveOffsiteOnly(
    entry: CatalogEntry & { manifest: NonNullable<CatalogEntry['manifest']> },
    attempt: number,
  ): Promise<{ receipt: OffsiteReceipt } | { pending: string }> {
    const m = entry.manifest;
    const dumpKey = dumpKeyOf(entry.projectId, entry.backupId);
    const manifestKey = manifestKeyOf(entry.projectId, entry.backupId);
    const at = `${store.location}/${dumpKey}`;
    try {
      await options.identity?.ensure();
      const head = await store.head(dumpKey);
      if (!head)
        return { pending: `the local dump is missing and ${at} does not exist: nothing to copy or prove` };
      if (!storedSizeFits(head.sizeBytes, m.sizeBytes)) {
        return {
          pending: `the local dump is missing and ${at} is ${head.sizeBytes} B, not the manifest's ${m.sizeBytes} B (nor its age encryption)`,
        };
      }
      const seen = `${head.sizeBytes}:${head.modifiedAt}`;
      const failed = failedOffsiteProofs.get(dumpKey);
      if (failed?.seen === seen) return { pending: failed.why };
      let encryption: OffsiteReceipt['encryption'];
      let proof: ContentHash | undefined;
      if (head.sizeBytes !== m.sizeBytes && isAgeHead(await firstBytesOf(dumpKey))) {
        // Encrypted: the stored bytes and the plaintext they open to, in one read (needs an identity).
        const sealed = await proveSealedObject(
          store,
          dumpKey,
          head.sizeBytes,
          options.identities?.(),
          controller.signal,
        );
        proof = sealed.plain;
        encryption = {
          format: 'age',
          recipients: [],
          storedSha256: sealed.stored.sha256,
          storedSizeBytes: sealed.stored.sizeBytes,
        };
      } else {
        proof = await store.hash(dumpKey, controller.signal);
      }
      if (!proof || proof.sha256 !== m.sha256 || proof.sizeBytes !== m.sizeBytes) {
        const why =
          `the local dump is missing and ${at} ${proof ? `hashes to ${proof.sha256.slice(0, 12)}…` : 'vanished while read'}, ` +
          `not the manifest's ${m.sha256.slice(0, 12)}…`;
        failedOffsiteProofs.set(dumpKey, { seen, why });
        return { pending: why };
      }
      failedOffsiteProofs.delete(dumpKey);
      const offsiteManifest = await readOffsiteManifest(store, entry.projectId, entry.backupId);
      if (!offsiteManifest) {
        // The manifest beside the copy is ours to put there (it is the local file, not the missing dump).
        await copyAndProve(
          manifestKey,
          () => createReadStream(entry.paths.manifest),
          await hashFile(entry.paths.manifest),
        );
      } else if (!isDeepStrictEqual(offsiteManifest, m)) {
        return {
          pending: `the local dump is missing and the offsite manifest ${manifestKey} differs from the local one`,
        };
      }
      const receipt: OffsiteReceipt = {
        backupId: entry.backupId,
        projectId: entry.projectId,
        status: 'replicated',
        store: store.location,
        key: dumpKey,
        contentSha256: proof.sha256,
        sizeBytes: proof.sizeBytes,
        manifestSha256: m.sha256,
        attempts: attempt,
        at: new Date().toISOString(),
        // No lagSeconds: the local manifest arrived from the store, long after the copy was made.
        ...(encryption ? { encryption } : {}),
      };
      await catalog.writeOffsiteReceipt(receipt);
      return { receipt };
    } catch (error) {
      if (controller.signal.aborted) throw error;
      return {
        pending: `the local dump is missing and the offsite copy could not be proven: ${errorText(error)}`,
      };
    }
  }

  async function run(request: ReplicateRequest, job: Job): Promise<ReplicateResult> {
    const { projectId, backupId } = request;
    const subject = `${projectId}/${backupId}`;
    let lastError: unknown;
    let attempts = 0;
    let entry: CatalogEntry | undefined;
    for (let attempt = 1; attempt <= options.maxAttempts; attempt++) {
      if (stopping) return { outcome: 'skipped', reason: 'stopping' };
      try {
        const outcome = await limiter.run(async () => {
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
            const proven = await proveOffsiteOnly({ ...entry, manifest: entry.manifest }, attempt);
            return 'pending' in proven
              ? { kind: 'pending' as const, detail: proven.pending }
              : { kind: 'copied' as const, receipt: proven.receipt, created: false };
          }
          return {
            kind: 'copied' as const,
            ...(await attemptCopy({ ...entry, manifest: entry.manifest }, attempt)),
          };
        }, controller.signal);
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
        if (stopping || controller.signal.aborted) return { outcome: 'skipped', reason: 'stopping' };
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
          await sleep(delay, undefined, { signal: controller.signal });
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
    if (stopping) return Promise.resolve({ outcome: 'skipped', reason: 'stopping' });
    const key = `${req.projectId}/${req.backupId}`;
    const existing = jobs.get(key);
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
    const job: Job = {
      causedBy: req.causedBy,
      hasReadLedger: false,
      promise: Promise.resolve({ outcome: 'already' }),
    };
    job.promise = run(req, job)
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
      })
      .finally(() => {
        jobs.delete(key);
        updateJobGauges();
      });
    jobs.set(key, job);
    updateJobGauges();
    return job.promise;
  }

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
      if (jobs.has(`${projectId}/${entry.backupId}`)) {
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
    request,
    reconcileProject(projectId, trigger) {
      if (stopping) return Promise.resolve(emptySummary(trigger));
      return reconcileProject(projectId, trigger).catch((error) => {
        log.error({ err: errorText(error), projectId }, 'reconcile of a project failed');
        return emptySummary(trigger);
      });
    },
    reconcile(trigger) {
      if (stopping) return Promise.reject(new AppError('shutting_down', 'replicate is stopping'));
      running ??= reconcileAll(trigger).finally(() => {
        running = undefined;
      });
      return running;
    },
    get lastReconcile() {
      return lastReconcile;
    },
    get pending() {
      return jobs.size;
    },
    isCopying(projectId, backupId) {
      return jobs.has(`${projectId}/${backupId}`);
    },
    get isStopping() {
      return stopping;
    },
    async stop(graceMs) {
      stopping = true;
      const graceEnds = Date.now() + graceMs;
      while (limiter.active > 0 && Date.now() < graceEnds) await sleep(25);
      controller.abort(new AppError('shutting_down', 'replicate is stopping'));
      const deadline = Date.now() + 10_000;
      while (jobs.size > 0 && Date.now() < deadline) await sleep(25);
      // A scan still walking the catalog (the start-up one is not awaited by start) asks for no more
      // copies once stopping; it is waited for so that nothing of it writes after the stop.
      while (running && Date.now() < deadline) await sleep(25);
    },
  };
}
