// Restore verification: one backup at a time per id, a global concurrency limit with a bounded queue, a
// timeout that kills the restore and removes the sandbox; the rungs are climbed in ladder.ts and reported
// (receipt, metrics, event) in report.ts. A verification that could not run is recorded as `unverifiable`,
// never as a pass.
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import type { Manifest, VerifyReceipt } from '../../shared/catalog/records.js';
import { AppError, isAppError } from '../../shared/errors.js';
import { createJobRunner } from '../../shared/kit/jobs.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { createLimiter } from '../../shared/limiter.js';
import { type Artifact, openArtifact } from '../../shared/offsite/artifact.js';
import { lazyOffsiteStore } from '../../shared/offsite/index.js';
import { createDriverSelection, type DriverSelection } from '../../shared/sandbox/select.js';
import { MINUTE_MS } from '../../shared/units.js';
import { type Climb, climbRungs, stageTimer } from './ladder.js';
import { verifyMetrics } from './metrics.js';
import { createVerifyReport } from './report.js';

export const VERIFY_SOURCES = ['local', 'offsite'] as const;
export type VerifySource = (typeof VERIFY_SOURCES)[number];

/** Leftover sandboxes are swept this often (and at start-up). */
export const REAP_INTERVAL_MS = 5 * MINUTE_MS;

export interface VerifyRequest {
  projectId: string;
  backupId: string;
  source?: VerifySource;
  causedBy?: string | undefined;
}

export interface StartedVerification {
  backupId: string;
  /** An identical verification was already running; this call joined it. */
  joined: boolean;
  done: Promise<VerifyReceipt>;
}

export interface Verifier {
  readonly selection: DriverSelection;
  /** Validates the backup and starts (or joins) its verification; throws 404/409/422/503 before any work. */
  start(request: VerifyRequest): Promise<StartedVerification>;
  /** Whether a verification of the backup runs: of `source`'s copy, or of either when none is given. */
  isRunning(projectId: string, backupId: string, source?: VerifySource): boolean;
  readonly running: number;
  /** Verifications waiting for a slot (FLUX_VERIFY_QUEUE_MAX at most). */
  readonly queued: number;
  /** Called each time a verification settles (its slot is free again). */
  onSettled(listener: () => void): void;
  /** Sweeps leftover sandboxes now, then every REAP_INTERVAL_MS. */
  startReaper(): Promise<void>;
  reap(): Promise<number>;
  stop(): Promise<void>;
}

export interface VerifierOptions {
  selection?: DriverSelection;
  reapIntervalMs?: number;
  /** Label value for this process's containers (tests find their own by it). */
  instance?: string;
  /** Keep one sandbox started and ready (default true). */
  spare?: boolean;
}

export function createVerifier(rt: Runtime, options: VerifierOptions = {}): Verifier {
  const { config, catalog, log, metrics } = rt;
  const selection =
    options.selection ??
    createDriverSelection(config, rt.env, {
      log,
      ...(options.instance ? { instance: options.instance } : {}),
      ...(options.spare !== undefined ? { spare: options.spare } : {}),
    });
  const limiter = createLimiter({
    concurrency: config.FLUX_VERIFY_CONCURRENCY,
    queueMax: config.FLUX_VERIFY_QUEUE_MAX,
    name: 'verifications',
    retryAfterSeconds: 60,
  });
  // In-flight verifications get the grace period at stop; then they are cancelled (restore killed, sandbox
  // removed) and get 15 s more to clean up.
  const jobs = createJobRunner<StartedVerification>({
    name: 'verify',
    graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
    cancelWaitMs: 15_000,
  });
  let reaper: NodeJS.Timeout | undefined;
  const settled: Array<() => void> = [];

  const m = verifyMetrics(metrics, selection.drivers);
  const report = createVerifyReport(rt, m);

  const updateQueue = () => {
    m.queue.set({ state: 'running' }, limiter.active);
    m.queue.set({ state: 'waiting' }, limiter.waiting);
  };

  async function reap(): Promise<number> {
    let total = 0;
    for (const driver of selection.drivers) {
      try {
        const n = await driver.reap();
        if (n > 0) m.reaped.inc({ driver: driver.name }, n);
        total += n;
      } catch (error) {
        log.warn({ err: error, driver: driver.name }, 'reaping leftover sandboxes failed');
      }
    }
    return total;
  }

  // The offsite copy is read through the store (filesystem or s3), built only when first asked for.
  const offsiteStore = lazyOffsiteStore(config);

  async function verify(
    manifest: Manifest,
    artifact: Artifact | undefined,
    source: VerifySource,
    causedBy: string | undefined,
    signal: AbortSignal,
  ): Promise<VerifyReceipt> {
    const climb: Climb = {
      config,
      selection,
      manifest,
      artifact,
      source,
      signal,
      rungs: {},
      stages: {},
      versions: { pgDump: manifest.pgDump.version, sourceServer: manifest.source.serverVersion },
      driverName: 'none',
    };
    let unverifiable: { reason: string; error: string } | undefined;
    const startedAt = new Date();
    const t0 = performance.now();
    try {
      await climbRungs(climb);
    } catch (error) {
      const reason = signal.aborted ? signal.reason : undefined;
      if (isAppError(reason) && reason.code === 'shutting_down') throw reason;
      if (isAppError(reason) && reason.code === 'timeout') {
        unverifiable = { reason: 'timeout', error: reason.message };
      } else if (isAppError(error) && error.code === 'unverifiable') {
        unverifiable = { reason: String(error.details?.reason ?? 'sandbox_failed'), error: error.message };
      } else {
        log.error({ err: error, backupId: manifest.backupId }, 'verification broke off');
        unverifiable = {
          reason: 'internal_error',
          error: `the verification broke off: ${isAppError(error) ? error.message : (error as Error)?.message}`,
        };
      }
    } finally {
      const box = climb.sandbox;
      if (box) {
        await stageTimer(climb.stages)('teardown', () =>
          box
            .destroy()
            .catch((error) =>
              log.error(
                { err: error, sandbox: box.id, backupId: manifest.backupId },
                'sandbox removal failed',
              ),
            ),
        );
      }
    }
    return report.record({ climb, source, causedBy, unverifiable, startedAt, t0 });
  }

  return {
    selection,
    get running() {
      return jobs.size;
    },

    get queued() {
      return limiter.waiting;
    },

    isRunning(projectId, backupId, source) {
      const copies = source ? [source] : VERIFY_SOURCES;
      return copies.some((copy) => jobs.has(`${projectId}/${backupId}/${copy}`));
    },

    async start(request) {
      jobs.assertOpen();
      const source = request.source ?? 'local';
      // One verification per copy at a time: each copy's receipt is its own (the local and the offsite one).
      const key = `${request.projectId}/${request.backupId}/${source}`;
      const running = jobs.value(key);
      if (running) return { ...running, joined: true };
      const entry = await catalog.get(request.projectId, request.backupId);
      if (!entry) {
        throw new AppError('not_found', `no backup ${request.backupId} for project ${request.projectId}`);
      }
      const manifest = entry.manifest;
      if (!manifest && entry.rejectedManifest) throw await report.refuse(entry, source, request.causedBy);
      if (!manifest) {
        if (entry.state?.status === 'running') {
          throw new AppError(
            'conflict',
            `backup ${request.backupId} is still being written; verify it when it completes`,
            {
              retryAfterSeconds: 30,
            },
          );
        }
        throw new AppError(
          'unprocessable',
          `backup ${request.backupId} did not complete (${entry.state?.error ?? entry.unreadable ?? 'no manifest'}); there is nothing to verify`,
        );
      }
      const artifact = await openArtifact(entry as CatalogEntry & { manifest: Manifest }, source, {
        store: offsiteStore,
        identities: rt.ageKeys.identities(),
      });
      const joined = jobs.value(key);
      if (joined) return { ...joined, joined: true };
      // Refuse at once when the queue is full, rather than accepting work that would be refused later.
      if (
        limiter.active >= config.FLUX_VERIFY_CONCURRENCY &&
        limiter.waiting >= config.FLUX_VERIFY_QUEUE_MAX
      ) {
        throw new AppError(
          'queue_full',
          `verifications: ${limiter.active} running and ${limiter.waiting} queued (FLUX_VERIFY_CONCURRENCY=${config.FLUX_VERIFY_CONCURRENCY}, FLUX_VERIFY_QUEUE_MAX=${config.FLUX_VERIFY_QUEUE_MAX}); retry later`,
          { retryAfterSeconds: 60 },
        );
      }
      const slot = jobs.claim(key);
      // One plain controller for the job's work, aborted by the runner's stop or by the deadline; the
      // deadline runs from the moment a slot is free, not while the verification waits in the queue.
      const controller = new AbortController();
      const onStop = () => controller.abort(slot.signal.reason);
      slot.signal.addEventListener('abort', onStop, { once: true });
      const signal = controller.signal;
      const done = slot.track(
        limiter
          .run(async () => {
            updateQueue();
            const timer = setTimeout(
              () =>
                controller.abort(
                  new AppError(
                    'timeout',
                    `the verification ran longer than FLUX_VERIFY_TIMEOUT_MS (${config.FLUX_VERIFY_TIMEOUT_MS} ms); the restore was killed and the sandbox removed`,
                  ),
                ),
              config.FLUX_VERIFY_TIMEOUT_MS,
            );
            try {
              return await verify(manifest, artifact, source, request.causedBy, signal);
            } finally {
              clearTimeout(timer);
            }
          }, signal)
          .finally(() => {
            slot.signal.removeEventListener('abort', onStop);
            updateQueue();
            for (const listener of settled) listener();
          }),
      );
      done.catch(() => undefined);
      const started: StartedVerification = { backupId: request.backupId, joined: false, done };
      slot.value = started;
      updateQueue();
      return started;
    },

    reap,

    onSettled(listener) {
      settled.push(listener);
    },

    async startReaper() {
      await reap();
      reaper = setInterval(() => void reap(), options.reapIntervalMs ?? REAP_INTERVAL_MS);
      reaper.unref();
    },

    async stop() {
      if (reaper) clearInterval(reaper);
      const left = await jobs.stop();
      if (left.length > 0) {
        log.warn(
          { verifications: left },
          'verifications still running 15 s after they were cancelled; closing their sandboxes under them',
        );
      }
      await selection.close();
    },
  };
}
