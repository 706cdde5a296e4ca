// replicate: copies every complete backup to the offsite store and proves it. Triggered by a manifest
// arriving in FLUX_BACKUPS_LOCAL_DIR (watch), by `flux.backup.created`, and by a reconcile scan at
// start-up and every FLUX_REPLICATE_RECONCILE_INTERVAL_MS; `POST /replicate/run` runs a scan on demand.
import path from 'node:path';
import { parseBackupId, parseProjectId } from '../../shared/catalog/ids.js';
import { AppError } from '../../shared/errors.js';
import { createKit } from '../../shared/kit/app.js';
import { createLifecycle } from '../../shared/kit/lifecycle.js';
import type { FunctionApp, Runtime } from '../../shared/kit/runtime.js';
import { createOffsiteStore } from '../../shared/offsite/index.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import { dirWritableCheck } from '../../shared/readiness.js';
import { createStoreIdentity } from './identity.js';
import { createReplicator } from './replicator.js';
import { createUpkeep } from './upkeep.js';
import { createManifestWatcher } from './watcher.js';

/** Temp files of interrupted offsite writes older than this are removed (a live copy keeps its temp fresh). */
const TEMP_SWEEP_AGE_MS = 60 * 60 * 1000;

export interface ReplicateDeps {
  /** The offsite store; by default chosen from FLUX_BACKUPS_OFFSITE_DIR. */
  store?: OffsiteStore;
}

export function createApp(rt: Runtime, deps: ReplicateDeps = {}): FunctionApp {
  const { config, log, catalog } = rt;
  const store = deps.store ?? createOffsiteStore(config);
  const identity = createStoreIdentity({ store, stateDir: config.FLUX_STATE_DIR });
  const replicator = createReplicator({
    catalog,
    store,
    identity,
    log,
    metrics: rt.metrics,
    emit: rt.emit,
    concurrency: config.FLUX_REPLICATE_CONCURRENCY,
    maxAttempts: config.FLUX_REPLICATE_MAX_ATTEMPTS,
    retryBaseDelayMs: config.FLUX_REPLICATE_RETRY_BASE_DELAY_MS,
    sealing:
      rt.ageKeys.recipients.length > 0
        ? {
            recipients: rt.ageKeys.recipients,
            stagingDir: path.join(config.FLUX_STATE_DIR, 'replicate-sealed'),
          }
        : undefined,
    identities: rt.ageKeys.identities,
  });
  const upkeep = createUpkeep({
    catalog,
    store,
    log,
    metrics: rt.metrics,
    emit: rt.emit,
    stateDir: config.FLUX_STATE_DIR,
    everyMs: config.FLUX_REHASH_EVERY_MS,
    sweepIntervalMs: config.FLUX_REHASH_SWEEP_INTERVAL_MS,
    maxBytesPerSecond: config.FLUX_REHASH_MAX_BYTES_PER_SECOND,
    retention: { keepCount: config.FLUX_OFFSITE_KEEP_COUNT, keepDays: config.FLUX_OFFSITE_KEEP_DAYS },
    immutable: config.FLUX_OFFSITE_IMMUTABLE,
    manifestSecrets: config.FLUX_MANIFEST_SECRETS,
    isCopying: (projectId, backupId) => replicator.isCopying(projectId, backupId),
    identities: rt.ageKeys.identities,
  });
  const watcher = createManifestWatcher({
    root: config.FLUX_BACKUPS_LOCAL_DIR,
    log,
    onManifest: (projectId, backupId) => void replicator.request({ projectId, backupId, trigger: 'watch' }),
    onProjectDir: (projectId) => void replicator.reconcileProject(projectId, 'watch'),
  });
  let timer: NodeJS.Timeout | undefined;
  let upkeepTimer: NodeJS.Timeout | undefined;
  const runUpkeep = () => upkeep.sweep().catch((error) => log.error({ err: error }, 'upkeep sweep failed'));
  let started = false;

  const runReconcile = (trigger: 'startup' | 'reconcile') =>
    replicator.reconcile(trigger).catch((error) => log.error({ err: error, trigger }, 'reconcile failed'));

  // Temp files of copies a crash interrupted: at start-up and with every scan, not only at the next
  // restart, so a crash mid-copy does not leave a dump's worth of bytes in the store for weeks.
  const sweepTemp = async () => {
    const swept = await store.sweepTemp(TEMP_SWEEP_AGE_MS).catch((error) => {
      log.warn({ err: error }, 'could not sweep offsite temp files');
      return 0;
    });
    if (swept > 0) log.info({ swept }, 'removed leftovers of interrupted offsite copies');
  };

  const kit = createKit({
    name: 'replicate',
    config,
    log,
    metrics: rt.metrics,
    inbox: rt.inbox,
    outbox: rt.outbox,
    checks: () => [
      dirWritableCheck(config.FLUX_BACKUPS_LOCAL_DIR, 'FLUX_BACKUPS_LOCAL_DIR'),
      {
        name: `offsite:${store.driver}`,
        async run() {
          return { ...(await store.check()), location: store.location };
        },
      },
      {
        name: 'offsite:identity',
        async run() {
          return { ...(await identity.status()), location: store.location };
        },
      },
      {
        name: 'offsite:upkeep',
        async run() {
          return upkeep.describe();
        },
      },
      {
        name: 'watch',
        async run() {
          const ok = !started || watcher.isWatchingRoot;
          return {
            ok,
            detail: ok
              ? `${watcher.watched} director${watcher.watched === 1 ? 'y' : 'ies'} watched`
              : `FLUX_BACKUPS_LOCAL_DIR is not watched; arrivals wait for the next reconcile (every ${config.FLUX_REPLICATE_RECONCILE_INTERVAL_MS} ms)`,
            watched: watcher.watched,
          };
        },
      },
    ],
    handlers: {
      'flux.backup.created': async (event) => {
        const { data } = event;
        const projectId = parseProjectId(data.projectId);
        const backupId = parseBackupId(data.backupId);
        // Replicate follows the catalog, not the registry; an event naming neither is refused, not recorded.
        if (!rt.registry.byId(projectId) && !(await catalog.listProjects()).includes(projectId)) {
          throw new AppError(
            'not_found',
            `project ${projectId} is neither in the registry (FLUX_PROJECTS_FILE) nor in the backup catalog: nothing to replicate`,
          );
        }
        const entry = await catalog.get(projectId, backupId);
        if (!entry?.manifest) {
          // Complete means "manifest on disk": without it there is nothing to copy (yet, or any more).
          return {
            status: 202,
            body: { ignored: true, reason: 'no local manifest for this backup', backupId },
          };
        }
        if (entry.manifest.sha256 !== data.sha256) {
          log.warn(
            { projectId, backupId, eventId: event.id },
            'flux.backup.created names another sha256 than the local manifest; the manifest wins',
          );
        }
        if (replicator.isStopping) {
          throw new AppError(
            'shutting_down',
            'replicate is stopping; the sender retries against the next process',
            {
              retryAfterSeconds: 5,
            },
          );
        }
        // Answer at once (a large copy outlasts any webhook timeout); the receipt and events tell the rest.
        void replicator.request({ projectId, backupId, trigger: 'event', causedBy: event.id });
        return { status: 202, body: { queued: true, backupId } };
      },
    },
  });
  const { app, requireScope } = kit;

  /** What new copies are encrypted to, and which recipients this host can open (public keys only). */
  const encryptionView = () => ({
    format: rt.ageKeys.recipients.length > 0 ? 'age' : 'none',
    recipients: [...rt.ageKeys.recipients],
    identities: [...(rt.ageKeys.identities()?.recipients ?? [])],
  });

  app.post('/replicate/run', requireScope('backups:write'), async (c) => {
    await sweepTemp();
    const summary = await replicator.reconcile('manual');
    return c.json({ ok: true, reconcile: summary });
  });

  app.post('/replicate/upkeep', requireScope('backups:write'), async (c) => {
    const summary = await upkeep.sweep();
    return c.json({ ok: true, upkeep: summary });
  });

  app.get('/replicate/status', requireScope('backups:read'), (c) =>
    c.json({
      pending: replicator.pending,
      watched: watcher.watched,
      store: { driver: store.driver, location: store.location },
      encryption: encryptionView(),
      lastReconcile: replicator.lastReconcile ?? null,
      upkeep: { ...upkeep.describe(), invalidCopies: upkeep.invalid(), lastSweep: upkeep.last ?? null },
    }),
  );

  /** The watcher, the periodic reconcile and the upkeep sweep: what finds work, so it stops first. */
  function startFinding(): void {
    started = true;
    void runReconcile('startup');
    timer = setInterval(() => {
      void watcher
        .refresh()
        .then(sweepTemp)
        .then(() => runReconcile('reconcile'));
    }, config.FLUX_REPLICATE_RECONCILE_INTERVAL_MS);
    timer.unref();
    if (config.FLUX_OFFSITE_IMMUTABLE) {
      log.info(
        { store: store.location },
        'FLUX_OFFSITE_IMMUTABLE: offsite expiry is left to the store (object lock / lifecycle rules); replicate removes nothing',
      );
    }
    // The first sweep waits one interval: start-up belongs to the reconcile of what is not copied yet.
    upkeepTimer = setInterval(() => void runUpkeep(), config.FLUX_REHASH_SWEEP_INTERVAL_MS);
    upkeepTimer.unref();
  }

  // Started in this order, stopped in reverse: what finds work, then the upkeep and the copies, then the
  // outbox that carries their last events, the catalog's cache last.
  const lifecycle = createLifecycle(log)
    .step('catalog cache', undefined, () => rt.catalog.flush())
    // A wrong identity fails here, with the fix, not at the first copy that needs it.
    .step('age identity', () => rt.ageKeys.checkNewest(store, log))
    .step('inbox', () => rt.inbox.start())
    .step(
      'outbox',
      () => rt.outbox.start(),
      () => rt.outbox.stop(),
    )
    .step('copies', undefined, () => replicator.stop(config.FLUX_SHUTDOWN_GRACE_MS))
    .step('upkeep', undefined, () => upkeep.stop())
    .step('temp sweep', () => sweepTemp())
    // Watch first, then scan: a manifest landing in between is seen by one or the other (or both, which is
    // harmless: jobs are deduplicated and receipts make repeats no-ops).
    .step(
      'watcher',
      () => watcher.start(),
      () => watcher.stop(),
    )
    .step('reconcile and upkeep timers', startFinding, () => {
      if (timer) clearInterval(timer);
      if (upkeepTimer) clearInterval(upkeepTimer);
    });

  return {
    name: 'replicate',
    app,
    accepts: ['flux.backup.created'],
    start: () => lifecycle.start(),
    stop: () => lifecycle.stop(),
  };
}
