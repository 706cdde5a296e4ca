// verify: restores a backup into a disposable Postgres and checks it rung by rung against its manifest;
// the CLI-compatible verify route (sync, or async with Prefer: respond-async), event triggers per
// FLUX_VERIFY_ON, and readiness that reports the selected sandbox driver.
import { z } from 'zod';
import { parseBackupId, parseProjectId } from '../../shared/catalog/ids.js';
import { copyVerifications, restoreViewOf } from '../../shared/catalog/read-model.js';
import type { VerifyReceipt } from '../../shared/catalog/records.js';
import { verifyTriggers } from '../../shared/config.js';
import { AppError, isAppError } from '../../shared/errors.js';
import type { CloudEvent, EventType } from '../../shared/events/envelope.js';
import { createKit, type EventHandler, readJson } from '../../shared/kit/app.js';
import { type PatientOptions, patientJson } from '../../shared/kit/patient.js';
import type { FunctionApp, Runtime } from '../../shared/kit/runtime.js';
import { lazyOffsiteStore } from '../../shared/offsite/index.js';
import { dirWritableCheck } from '../../shared/readiness.js';
import { requireProjectByHash } from '../../shared/registry.js';
import { createHeldVerifications } from './held.js';
import { createVerifyReconcile } from './reconcile.js';
import { createReverifySchedule } from './schedule.js';
import {
  createVerifier,
  VERIFY_SOURCES,
  type Verifier,
  type VerifierOptions,
  type VerifySource,
} from './verifier.js';

/** Events verify can be triggered by, and which copy each one verifies. */
const TRIGGER_SOURCES: Partial<Record<EventType, VerifySource>> = {
  'flux.backup.created': 'local',
  // A replicated copy was re-hashed by replicate; restoring it proves the offsite copy itself.
  'flux.backup.replicated': 'offsite',
};

const VerifyBody = z.object({ source: z.enum(VERIFY_SOURCES).optional() }).loose();

/** The error a sync verify call answers with when the backup did not verify. */
export function receiptError(receipt: VerifyReceipt): AppError {
  const details = {
    backupId: receipt.backupId,
    reason: receipt.reason,
    driver: receipt.driver,
    rungs: receipt.rungs.map(({ rung, result, code, message }) => ({ rung, result, code, message })),
  };
  if (receipt.status === 'restore_failed') {
    return new AppError('verify_failed', `restore verification failed: ${receipt.error ?? receipt.reason}`, {
      details: { ...details, restoreVerificationStatus: 'restore_failed' },
    });
  }
  return new AppError(
    'unverifiable',
    `restore verification could not run (this is not a pass): ${receipt.error ?? receipt.reason}`,
    {
      // Upstream's word is `pending`: verify could not run, which is neither a pass nor a failure.
      details: {
        ...details,
        restoreVerificationStatus: 'pending',
        restoreVerificationOutcome: 'unverifiable',
      },
    },
  );
}

export function createApp(
  rt: Runtime,
  options: VerifierOptions & { patience?: PatientOptions } = {},
): FunctionApp {
  const verifier = createVerifier(rt, options);
  const { catalog, registry, config } = rt;
  const triggers = verifyTriggers(config).filter((t): t is EventType => t in TRIGGER_SOURCES);
  const ignored = verifyTriggers(config).filter((t) => !(t in TRIGGER_SOURCES));
  if (ignored.length > 0) {
    rt.log.warn(
      { ignored, supported: Object.keys(TRIGGER_SOURCES) },
      'FLUX_VERIFY_ON names event types verify cannot act on',
    );
  }

  const held = createHeldVerifications({
    verifier,
    max: config.FLUX_VERIFY_HOLD_MAX,
    log: rt.log,
    metrics: rt.metrics,
  });
  verifier.onSettled(() => void held.drain());
  // What the scans and the status route see: a held backup counts as on its way, so it is not queued twice.
  const scheduling: Pick<Verifier, 'start' | 'isRunning' | 'queued'> = {
    start: (request) => verifier.start(request),
    isRunning: (projectId, backupId, source) =>
      verifier.isRunning(projectId, backupId, source) || held.has(projectId, backupId, source),
    get queued() {
      return verifier.queued;
    },
  };

  const onBackupEvent: EventHandler = async (event: CloudEvent) => {
    const data = event.data as { projectId: string; backupId: string };
    const request = {
      projectId: parseProjectId(data.projectId),
      backupId: parseBackupId(data.backupId),
      source: TRIGGER_SOURCES[event.type] ?? 'local',
      causedBy: event.id,
    };
    // Backups that already wait keep their order: a new one goes behind them, not into a slot they wait for.
    // One whose verification runs joins it at once.
    const running = verifier.isRunning(request.projectId, request.backupId, request.source);
    if (held.size === 0 || running) {
      try {
        const started = await verifier.start(request);
        return { status: 202, body: { verifying: started.backupId, joined: started.joined } };
      } catch (error) {
        if (!(isAppError(error) && error.code === 'queue_full')) throw error;
      }
    }
    const place = held.hold(request);
    if (place === undefined) {
      throw new AppError(
        'queue_full',
        `verifications: every slot busy and ${held.size} backup events held (FLUX_VERIFY_HOLD_MAX=${config.FLUX_VERIFY_HOLD_MAX}); retry later`,
        { retryAfterSeconds: 60 },
      );
    }
    return { status: 202, body: { held: request.backupId, place } };
  };

  const kit = createKit({
    name: 'verify',
    config,
    log: rt.log,
    metrics: rt.metrics,
    inbox: rt.inbox,
    outbox: rt.outbox,
    checks: () => [
      {
        name: 'sandbox',
        async run() {
          const s = await verifier.selection.status();
          return {
            ok: s.ok,
            detail: s.detail,
            ...(s.driver ? { driver: s.driver } : {}),
            drivers: s.statuses,
          };
        },
      },
      dirWritableCheck(config.FLUX_BACKUPS_LOCAL_DIR, 'FLUX_BACKUPS_LOCAL_DIR'),
    ],
    handlers: Object.fromEntries(triggers.map((t) => [t, onBackupEvent])),
  });
  const { app, requireScope } = kit;

  app.post('/api/cli/v1/projects/:hash/backups/:backupId/verify', requireScope('verify'), async (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    const backupId = parseBackupId(c.req.param('backupId'));
    const body = await readJson(c, VerifyBody, { emptyIsObject: true });
    const query = c.req.query('source');
    if (query !== undefined && !(VERIFY_SOURCES as readonly string[]).includes(query)) {
      throw new AppError('bad_request', `source must be one of ${VERIFY_SOURCES.join(', ')}`);
    }
    const source = (query as VerifySource | undefined) ?? body.source ?? 'local';
    const started = await verifier.start({ projectId: project.id, backupId, source });
    const location = `/api/cli/v1/projects/${project.hash}/backups/${backupId}/verify`;
    c.header('Location', location);
    if (/respond-async/i.test(c.req.header('prefer') ?? '')) {
      c.header('Preference-Applied', 'respond-async');
      return c.json({ ok: true, backupId, status: 'running', joined: started.joined, location }, 202);
    }
    // A restore that takes minutes still answers a client that waits (patient.ts).
    const answer = started.done.then((receipt) => {
      if (receipt.status !== 'restore_verified') throw receiptError(receipt);
      return {
        status: 200 as const,
        body: {
          ok: true,
          backupId,
          restoreVerificationStatus: 'restore_verified',
          restoreVerificationAt: receipt.finishedAt,
          driver: receipt.driver,
          seconds: receipt.seconds,
          rungs: receipt.rungs,
        },
      };
    });
    return patientJson(c, answer, {
      ...options.patience,
      onLateError: (error) =>
        rt.log.warn(
          { code: error.code, backupId },
          "verification did not pass after the answer's headers went out",
        ),
    });
  });

  app.get('/api/cli/v1/projects/:hash/backups/:backupId/verify', requireScope('backups:read'), async (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    const backupId = parseBackupId(c.req.param('backupId'));
    const entry = await catalog.get(project.id, backupId);
    if (!entry) throw new AppError('not_found', `no backup ${backupId} for project ${project.slug}`);
    // Each copy's own verification; the backup's status is a proven copy's pass, else a failure of either.
    const copies = copyVerifications(entry);
    const view = restoreViewOf(entry, 'valid');
    const receipt = view.receipt ?? null;
    return c.json({
      backupId,
      running: scheduling.isRunning(project.id, backupId),
      restoreVerificationStatus:
        view.status === 'unverifiable' || view.status === 'skipped' ? 'pending' : view.status,
      restoreVerificationOutcome: view.status,
      verification: receipt,
      verifications: { local: copies.local ?? null, offsite: copies.offsite ?? null },
    });
  });

  const schedule = createReverifySchedule({
    registry,
    catalog,
    verifier: scheduling,
    log: rt.log,
    metrics: rt.metrics,
    afterMs: config.FLUX_VERIFY_REVERIFY_AFTER_MS,
    queueMax: config.FLUX_VERIFY_QUEUE_MAX,
    source: config.FLUX_VERIFY_REVERIFY_SOURCE,
  });

  const reconcile = createVerifyReconcile({
    catalog,
    verifier: scheduling,
    triggers,
    queueMax: config.FLUX_VERIFY_QUEUE_MAX,
    intervalMs: config.FLUX_VERIFY_RECONCILE_INTERVAL_MS,
    log: rt.log,
    metrics: rt.metrics,
  });

  return {
    name: 'verify',
    app,
    accepts: triggers,
    async start() {
      // A wrong identity fails here, with the fix, not at the first offsite verification.
      await rt.ageKeys.checkNewest(lazyOffsiteStore(config), rt.log);
      await rt.inbox.start();
      await verifier.startReaper();
      await rt.outbox.start();
      schedule.start();
      reconcile.start();
    },
    async stop() {
      reconcile.stop();
      schedule.stop();
      const dropped = held.clear();
      if (dropped > 0)
        rt.log.info({ held: dropped }, 'held verifications left to the next start-up reconcile');
      await verifier.stop();
      await rt.outbox.stop();
      await rt.catalog.flush();
    },
  };
}
