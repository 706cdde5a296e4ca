// Restore verification: one backup at a time per id, a global concurrency limit with a bounded queue, a
// timeout that kills the restore and removes the sandbox, the rungs in order, then the receipt, the event
// and the metrics. A verification that could not run is recorded as `unverifiable`, never as a pass.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { type CatalogEntry, rejectionOf } from '../../shared/catalog/catalog.js';
import type { Manifest, Rung, RungName, VerifyReceipt } from '../../shared/catalog/records.js';
import { AppError, isAppError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { createLimiter } from '../../shared/limiter.js';
import { counter, DURATION_BUCKETS_S, Gauge, gauge, histogram, metric } from '../../shared/metrics.js';
import { type Artifact, openArtifact } from '../../shared/offsite/artifact.js';
import { lazyOffsiteStore } from '../../shared/offsite/index.js';
import {
  type ArchiveHeader,
  ArchiveHeaderError,
  checkCompatibility,
  HEADER_READ_BYTES,
  imageFor,
  parseArchiveHeader,
} from '../../shared/pg/archive-header.js';
import { excludeEntries, extensionEntries } from '../../shared/pg/restore-list.js';
import {
  completeRungs,
  evaluateArchive,
  evaluateArtifact,
  evaluateIntegrity,
  evaluateRestore,
  evaluateSequences,
  evaluateStructure,
  evaluateVolume,
  FINDINGS,
  outcomeOf,
  rung,
} from '../../shared/proof/rungs.js';
import { parseLastJson, queryJson, runSql, sqlError, throwIfCanceled } from '../../shared/sandbox/query.js';
import { createDriverSelection, type DriverSelection, sandboxTtlMs } from '../../shared/sandbox/select.js';
import type { ExecResult, Sandbox } from '../../shared/sandbox/types.js';
import { watchServer } from '../../shared/sandbox/watch.js';
import { MINUTE_MS } from '../../shared/units.js';
import {
  extensionsSql,
  missingExtensionsSelect,
  postRestoreSql,
  preRestoreSql,
  type ReadBack,
  readBackSql,
  restoreRoleOf,
} from './sql.js';

export const VERIFY_SOURCES = ['local', 'offsite'] as const;
export type VerifySource = (typeof VERIFY_SOURCES)[number];

/** Leftover sandboxes are swept this often (and at start-up). */
export const REAP_INTERVAL_MS = 5 * MINUTE_MS;
/** What the checks read back when the manifest names no schema (nothing to ask the sandbox). */
const EMPTY_READ_BACK: ReadBack = {
  schemas: [],
  relations: [],
  counts: [],
  sequences: [],
  integrity: null,
  seconds: { structure: 0, volume: 0, sequences: 0, integrity: 0 },
};
/** Where the dump lands inside the sandbox. */
const SANDBOX_DUMP_NAME = 'backup.dump';

/**
 * pg_restore flags: one transaction (WAL-skipping COPY with wal_level=minimal), nothing reaching outside,
 * and nothing that would need more privilege than the restore role has (owners, grants).
 */
export const RESTORE_FLAGS = [
  '--dbname=postgres',
  '--single-transaction',
  '--no-owner',
  '--no-acl',
  '--no-tablespaces',
  '--no-publications',
  '--no-subscriptions',
  '--no-security-labels',
] as const;

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

/** Thrown inside a verification to end it as unverifiable with a bounded reason. */
function unverifiableError(reason: string, message: string): AppError {
  return new AppError('unverifiable', message, { details: { reason } });
}

const since = (t: number) => (performance.now() - t) / 1000;

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
  const inFlight = new Map<string, StartedVerification>();
  const controllers = new Set<AbortController>();
  let stopping = false;
  let reaper: NodeJS.Timeout | undefined;

  const outcomes = counter(
    metrics,
    'flux_verify_verifications_total',
    'Verifications by outcome and reason',
    ['outcome', 'reason', 'driver'],
  );
  const stageSeconds = histogram(
    metrics,
    'flux_verify_stage_duration_seconds',
    'Duration of each verification stage (sandbox, prepare, transfer, archive, restore, checks, teardown)',
    ['stage', 'driver'],
    DURATION_BUCKETS_S,
  );
  const totalSeconds = histogram(
    metrics,
    'flux_verify_duration_seconds',
    'Verification wall time from sandbox start to teardown (measured RTO)',
    ['driver', 'outcome'],
    DURATION_BUCKETS_S,
  );
  const rungResults = counter(metrics, 'flux_verify_rungs_total', 'Rung results by finding code', [
    'rung',
    'result',
    'code',
  ]);
  const lastVerified = gauge(
    metrics,
    'flux_verify_last_verified_timestamp_seconds',
    'Finish time of the newest restore-verified backup',
    ['project'],
  );
  const queueGauge = gauge(metrics, 'flux_verify_queue', 'Verifications running and waiting', ['state']);
  const reaped = counter(
    metrics,
    'flux_verify_leftovers_removed_total',
    'Leftover sandboxes removed by the reaper',
    ['driver'],
  );

  // Read at scrape time: 1 while a started sandbox waits for the next verification (it then skips the
  // sandbox start), 0 while one is being prepared or none is kept.
  const drivers = selection.drivers;
  metric(
    metrics,
    'flux_verify_spare_ready',
    (registers) =>
      new Gauge({
        name: 'flux_verify_spare_ready',
        help: 'A started sandbox is ready for the next verification (1) or not (0), per driver',
        labelNames: ['driver'],
        registers,
        collect() {
          for (const driver of drivers) {
            if (driver.spareState() !== 'off')
              this.set({ driver: driver.name }, driver.spareState() === 'ready' ? 1 : 0);
          }
        },
      }),
  );

  const updateQueue = () => {
    queueGauge.set({ state: 'running' }, limiter.active);
    queueGauge.set({ state: 'waiting' }, limiter.waiting);
  };

  async function reap(): Promise<number> {
    let total = 0;
    for (const driver of selection.drivers) {
      try {
        const n = await driver.reap();
        if (n > 0) reaped.inc({ driver: driver.name }, n);
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
    const rungs: Partial<Record<RungName, Rung>> = {};
    const stages: Record<string, number> = {};
    const versions: Record<string, string> = {
      pgDump: manifest.pgDump.version,
      sourceServer: manifest.source.serverVersion,
    };
    let driverName = 'none';
    let image: string | undefined;
    let unverifiable: { reason: string; error: string } | undefined;
    let sandbox: Sandbox | undefined;
    const startedAt = new Date();
    const t0 = performance.now();
    const opts = { signal };

    const stage = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const s = performance.now();
      try {
        return await fn();
      } finally {
        stages[name] = Number(since(s).toFixed(3));
      }
    };

    async function body(): Promise<void> {
      // Artifact presence and size are known before any sandbox starts.
      if (!artifact) {
        rungs.artifact = rung(
          'artifact',
          'failed',
          FINDINGS.artifactMissing,
          0,
          `the ${source} dump file is missing`,
        );
        return;
      }
      const size = artifact.sizeBytes;
      if (size !== manifest.sizeBytes) {
        rungs.artifact = evaluateArtifact(manifest, { sizeBytes: size, sha256: '' }, 0);
        return;
      }
      let header: ArchiveHeader | undefined;
      try {
        header = parseArchiveHeader(await artifact.readHead(HEADER_READ_BYTES, signal));
        versions.archive = header.versionText;
        if (header.pgDumpVersion) versions.archivePgDump = header.pgDumpVersion;
      } catch (error) {
        if (!(error instanceof ArchiveHeaderError)) throw error;
        // The archive rung reports it with pg_restore's own words.
      }
      const compatibility = (v: {
        serverMajor?: number;
        pgRestoreMajor?: number;
        server?: string;
        pgRestore?: string;
      }) => {
        if (!header || !v.serverMajor || !v.pgRestoreMajor) return;
        const c = checkCompatibility({
          archive: header.version,
          sourceServerMajor: Math.floor(manifest.source.serverVersionNum / 10000),
          pgDumpMajor: manifest.pgDump.major,
          sandbox: {
            serverMajor: v.serverMajor,
            pgRestoreMajor: v.pgRestoreMajor,
            ...(v.server ? { server: v.server } : {}),
            ...(v.pgRestore ? { pgRestore: v.pgRestore } : {}),
          },
        });
        if (!c.ok) throw unverifiableError(c.code, c.message);
      };

      const { driver, status } = await selection.resolve();
      driverName = driver.name;
      image = status.image;
      // Known versions (local tools, the image's PG_VERSION) refuse early, before a sandbox starts.
      compatibility(status.versions ?? {});

      sandbox = await stage('sandbox', () =>
        driver.create({
          projectId: manifest.projectId,
          backupId: manifest.backupId,
          ttlMs: sandboxTtlMs(config),
          signal,
        }),
      );
      const box = sandbox;
      image = box.image ?? image;
      versions.sandboxServer = box.versions.server;
      versions.pgRestore = box.versions.pgRestore;
      compatibility(box.versions);

      // The roles go in while the dump streams in: both wait on the sandbox, neither on the other. A
      // sandbox that cannot take the roles stops the transfer at once.
      const transferAbort = new AbortController();
      const preparing = stage('prepare', async () => {
        await requireExtensions(
          box,
          manifest.extensions.map((e) => e.name),
          opts,
        );
        const prepared = await runSql(
          box,
          preRestoreSql(manifest, { amcheck: config.FLUX_VERIFY_AMCHECK }),
          opts,
        );
        throwIfCanceled(prepared, signal);
        if (prepared.failed) {
          throw unverifiableError(
            'sandbox_failed',
            `preparing roles in the sandbox failed: ${prepared.stderr.trim().slice(-400)}`,
          );
        }
      });
      preparing.catch(() => transferAbort.abort(new AppError('shutting_down', 'the sandbox is not usable')));

      // Size and SHA-256 of exactly the bytes the sandbox receives.
      const hash = createHash('sha256');
      let bytes = 0;
      // Opened at transfer time: an offsite stream must not sit idle while the sandbox starts.
      const input = await artifact.open(signal);
      async function* hashed() {
        for await (const chunk of input) {
          hash.update(chunk as Buffer);
          bytes += (chunk as Buffer).length;
          yield chunk as Buffer;
        }
      }
      const transferStarted = performance.now();
      const [prepared, transferred] = await Promise.allSettled([
        preparing,
        stage('transfer', () =>
          box.putFile(SANDBOX_DUMP_NAME, Readable.from(hashed(), { objectMode: false }), size, {
            signal: AbortSignal.any([signal, transferAbort.signal]),
          }),
        ),
      ]);
      if (transferred.status === 'rejected') input.destroy();
      if (
        transferred.status === 'rejected' &&
        isAppError(transferred.reason) &&
        transferred.reason.code === 'artifact_invalid'
      ) {
        rungs.artifact = rung(
          'artifact',
          'failed',
          FINDINGS.sizeMismatch,
          since(transferStarted),
          transferred.reason.message,
        );
        return;
      }
      if (prepared.status === 'rejected') throw prepared.reason;
      if (transferred.status === 'rejected') throw transferred.reason;
      const inside = transferred.value;
      rungs.artifact = evaluateArtifact(
        manifest,
        { sizeBytes: bytes, sha256: hash.digest('hex') },
        since(transferStarted),
      );
      if (rungs.artifact.result !== 'passed') return;

      // The listing comes first: it is the archive rung, and it says which entries the superuser
      // handles before the restore (a project database's extensions).
      const listed = await stage('archive', () => box.exec(['pg_restore', '--list', inside], opts));
      throwIfCanceled(listed, signal);
      rungs.archive = evaluateArchive(listed, listed.seconds);
      if (rungs.archive.result === 'could_not_verify') {
        const needed = Math.max(manifest.pgDump.major, Math.floor(manifest.source.serverVersionNum / 10000));
        throw unverifiableError(
          FINDINGS.archiveVersionUnsupported,
          `${rungs.archive.message}; set FLUX_BACKUP_VERIFY_POSTGRES_IMAGE=${imageFor(needed)} (PostgreSQL ${needed} or newer)`,
        );
      }
      if (rungs.archive.result !== 'passed') return;

      const listFile = await stage('extensions', () => prepareExtensions(box, manifest, listed.stdout, opts));
      if (listFile === undefined) delete stages.extensions;

      // The tenant's objects are created by, and its code runs as, its own unprivileged role; whether
      // the server stayed up meanwhile is watched, not read from what the restore printed.
      const watch = await watchServer(box, opts);
      let restored: ExecResult;
      let isServerGone: boolean;
      try {
        restored = await stage('restore', () =>
          box.exec(
            ['pg_restore', ...RESTORE_FLAGS, ...(listFile ? [`--use-list=${listFile}`] : []), inside],
            { ...opts, user: restoreRoleOf(manifest) },
          ),
        );
        throwIfCanceled(restored, signal);
        isServerGone =
          restored.sandboxGone === true || (restored.exitCode !== 0 && !(await watch.isIntact()));
      } finally {
        watch.stop();
      }
      rungs.restore = evaluateRestore(restored, restored.seconds, { isServerGone });
      if (rungs.restore.result !== 'passed') return;

      await stage('checks', async () => {
        const readBack = await readBackFor(box, manifest, opts);
        rungs.structure = evaluateStructure(manifest, readBack, readBack.seconds.structure);
        rungs.volume = evaluateVolume(manifest.tables, readBack.counts, readBack.seconds.volume);
        rungs.sequences = evaluateSequences(
          manifest.sequences,
          readBack.sequences,
          readBack.seconds.sequences,
        );
        rungs.integrity = integrityRung(readBack);
      });
    }

    try {
      await body();
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
      if (sandbox) {
        const box = sandbox;
        await stage('teardown', () =>
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

    const all = completeRungs(
      rungs,
      unverifiable
        ? { code: unverifiable.reason, message: `not run: ${unverifiable.reason}` }
        : { code: FINDINGS.blocked, message: 'not run: an earlier rung failed' },
    );
    const outcome = outcomeOf(all, unverifiable);
    const finishedAt = new Date();
    const seconds = Number(since(t0).toFixed(3));
    const receipt: VerifyReceipt = {
      backupId: manifest.backupId,
      projectId: manifest.projectId,
      status: outcome.status,
      sha256: manifest.sha256,
      source,
      driver: driverName,
      ...(image ? { image } : {}),
      versions,
      rungs: all,
      stages,
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      seconds,
      reason: outcome.reason,
      ...(outcome.error ? { error: outcome.error } : {}),
    };
    await catalog.writeVerifyReceipt(receipt);

    for (const [name, value] of Object.entries(stages))
      stageSeconds.observe({ stage: name, driver: driverName }, value);
    totalSeconds.observe({ driver: driverName, outcome: outcome.status }, seconds);
    for (const r of all) rungResults.inc({ rung: r.rung, result: r.result, code: r.code });
    outcomes.inc({ outcome: outcome.status, reason: outcome.reason, driver: driverName });
    if (outcome.status === 'restore_verified')
      lastVerified.set({ project: manifest.slug }, finishedAt.getTime() / 1000);

    const ref = {
      projectId: manifest.projectId,
      projectHash: manifest.projectHash,
      backupId: manifest.backupId,
    };
    const findings = all.map((r) => ({
      rung: r.rung,
      result: r.result,
      code: r.code,
      ...(r.message ? { message: r.message.slice(0, 1000) } : {}),
    }));
    const subject = `${manifest.projectId}/${manifest.backupId}`;
    const logFields = { ...ref, driver: driverName, source, seconds, reason: outcome.reason };
    if (outcome.status === 'restore_verified') {
      log.info(logFields, 'backup restore-verified');
      await rt.emit('flux.backup.verified', {
        subject,
        causedBy,
        data: {
          ...ref,
          driver: driverName,
          sha256: manifest.sha256,
          rungs: findings,
          seconds,
          source,
          stages,
          ...(image ? { image } : {}),
        },
      });
    } else if (outcome.status === 'restore_failed') {
      log.warn({ ...logFields, error: outcome.error }, 'restore verification failed');
      await rt.emit('flux.backup.verify_failed', {
        subject,
        causedBy,
        data: {
          ...ref,
          driver: driverName,
          rungs: findings,
          reason: outcome.reason.slice(0, 64),
          error: (outcome.error ?? outcome.reason).slice(0, 4000),
          source,
        },
      });
    } else {
      log.warn({ ...logFields, error: outcome.error }, 'backup could not be verified');
      await rt.emit('flux.backup.unverifiable', {
        subject,
        causedBy,
        data: {
          ...ref,
          ...(driverName !== 'none' ? { driver: driverName } : {}),
          reason: outcome.reason.slice(0, 64),
          error: (outcome.error ?? outcome.reason).slice(0, 4000),
          source,
          ...(image ? { image } : {}),
        },
      });
    }
    return receipt;
  }

  /** Refuses (unverifiable) a sandbox that cannot install every one of `names`. */
  async function requireExtensions(
    box: Sandbox,
    names: readonly string[],
    opts: { signal: AbortSignal },
  ): Promise<void> {
    if (names.length === 0) return;
    const missing = await queryJson<{ name: string }>(
      box,
      missingExtensionsSelect(names),
      'listing available extensions',
      opts,
    );
    if (missing.length > 0) {
      throw unverifiableError(
        'extension_unavailable',
        `the sandbox cannot install extension(s) the backup uses: ${missing.map((m) => m.name).join(', ')}; ` +
          `use a FLUX_BACKUP_VERIFY_POSTGRES_IMAGE (or local PostgreSQL packages) that ships them`,
      );
    }
  }

  /**
   * A project database's archive creates its extensions: the superuser creates them first (our fixed
   * statements, in the schemas the manifest recorded) and the restore skips those entries. Returns the
   * restore list to use, or undefined when the archive names no extension.
   */
  async function prepareExtensions(
    box: Sandbox,
    manifest: Manifest,
    list: string,
    opts: { signal: AbortSignal },
  ): Promise<string | undefined> {
    const names = extensionEntries(list);
    if (names.length === 0) return undefined;
    await requireExtensions(box, names, opts);
    const { sql, schemas } = extensionsSql(names, manifest);
    const created = await runSql(box, sql, opts);
    throwIfCanceled(created, opts.signal);
    if (created.failed) {
      throw unverifiableError(
        'extension_unavailable',
        `creating the extension(s) ${names.join(', ')} in the sandbox failed: ${created.stderr.trim().slice(-400)}`,
      );
    }
    const filtered = excludeEntries(list, { schemas, extensions: true }).list;
    return box.putFile(
      'restore.list',
      Readable.from([Buffer.from(filtered)]),
      Buffer.byteLength(filtered),
      opts,
    );
  }

  /** Reads back schemas, tables, counts, sequences and amcheck results in one psql call. */
  async function readBackFor(
    box: Sandbox,
    manifest: Manifest,
    opts: { signal: AbortSignal },
  ): Promise<ReadBack> {
    if (manifest.schemas.length === 0) return EMPTY_READ_BACK;
    const granted = await runSql(box, postRestoreSql(manifest), opts);
    throwIfCanceled(granted, opts.signal);
    if (granted.failed) throw sqlError('preparing the read-back', granted);
    const result = await runSql(
      box,
      readBackSql({
        schemas: manifest.schemas,
        tables: manifest.tables,
        sequences: manifest.sequences,
        amcheck: config.FLUX_VERIFY_AMCHECK,
      }),
      { ...opts, user: restoreRoleOf(manifest) },
    );
    throwIfCanceled(result, opts.signal);
    if (result.failed) throw sqlError('reading back the restored database', result);
    return parseLastJson<ReadBack>(result.stdout, 'reading back the restored database');
  }

  function integrityRung(readBack: ReadBack): Rung {
    const seconds = readBack.seconds.integrity;
    if (!config.FLUX_VERIFY_AMCHECK) {
      return rung('integrity', 'not_applicable', FINDINGS.disabled, 0, 'FLUX_VERIFY_AMCHECK=false');
    }
    const integrity = readBack.integrity;
    if (!integrity) return evaluateIntegrity([], seconds);
    if (!integrity.available) {
      return rung(
        'integrity',
        'not_applicable',
        FINDINGS.amcheckUnavailable,
        seconds,
        'the sandbox has no amcheck extension (contrib); the integrity rung is optional',
      );
    }
    if (integrity.error !== null) {
      return rung(
        'integrity',
        'could_not_verify',
        FINDINGS.amcheckUnavailable,
        seconds,
        `amcheck could not run: ${integrity.error.slice(0, 300)}`,
      );
    }
    return evaluateIntegrity(integrity.indexes, seconds);
  }

  /**
   * A pair whose manifest is not believed (catalog finding manifest_not_authentic or manifest_misplaced)
   * is not verified: its facts would be an attacker's. The refusal is recorded in a (tagged) receipt beside
   * it, with the finding as its reason, and answered as the finding's error.
   */
  async function refuseRejected(
    entry: CatalogEntry,
    source: VerifySource,
    causedBy: string | undefined,
  ): Promise<AppError> {
    const refusal = rejectionOf(entry, 'verified') as AppError;
    const code = refusal.code;
    const message = refusal.message;
    const now = new Date().toISOString();
    const claimed = entry.rejectedManifest;
    await catalog.writeVerifyReceipt({
      backupId: entry.backupId,
      projectId: entry.projectId,
      status: 'restore_failed',
      // The hash the rejected manifest claims: this receipt vouches for nothing, it says why.
      sha256: claimed?.sha256 ?? '0'.repeat(64),
      source,
      driver: 'none',
      versions: {},
      rungs: [],
      stages: {},
      startedAt: now,
      finishedAt: now,
      seconds: 0,
      reason: code,
      error: message,
    });
    outcomes.inc({ outcome: 'restore_failed', reason: code, driver: 'none' });
    log.warn({ projectId: entry.projectId, backupId: entry.backupId, reason: code, causedBy }, message);
    return refusal;
  }

  return {
    selection,
    get running() {
      return inFlight.size;
    },

    get queued() {
      return limiter.waiting;
    },

    isRunning(projectId, backupId, source) {
      const copies = source ? [source] : VERIFY_SOURCES;
      return copies.some((copy) => inFlight.has(`${projectId}/${backupId}/${copy}`));
    },

    async start(request) {
      if (stopping) throw new AppError('shutting_down', 'verify is stopping; retry against the new process');
      const source = request.source ?? 'local';
      // One verification per copy at a time: each copy's receipt is its own (the local and the offsite one).
      const key = `${request.projectId}/${request.backupId}/${source}`;
      const running = inFlight.get(key);
      if (running) return { ...running, joined: true };
      const entry = await catalog.get(request.projectId, request.backupId);
      if (!entry) {
        throw new AppError('not_found', `no backup ${request.backupId} for project ${request.projectId}`);
      }
      const manifest = entry.manifest;
      if (!manifest && entry.rejectedManifest) throw await refuseRejected(entry, source, request.causedBy);
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
      const joined = inFlight.get(key);
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
      const controller = new AbortController();
      controllers.add(controller);
      const done = limiter
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
            return await verify(manifest, artifact, source, request.causedBy, controller.signal);
          } finally {
            clearTimeout(timer);
          }
        }, controller.signal)
        .finally(() => {
          controllers.delete(controller);
          inFlight.delete(key);
          updateQueue();
        });
      done.catch(() => undefined);
      const started: StartedVerification = { backupId: request.backupId, joined: false, done };
      inFlight.set(key, started);
      updateQueue();
      return started;
    },

    reap,

    async startReaper() {
      await reap();
      reaper = setInterval(() => void reap(), options.reapIntervalMs ?? REAP_INTERVAL_MS);
      reaper.unref();
    },

    async stop() {
      stopping = true;
      if (reaper) clearInterval(reaper);
      // In-flight verifications get the grace period; then they are cancelled (restore killed, sandbox removed).
      const graceEnds = Date.now() + config.FLUX_SHUTDOWN_GRACE_MS;
      while (inFlight.size > 0 && Date.now() < graceEnds) await new Promise((r) => setTimeout(r, 50));
      for (const c of controllers) c.abort(new AppError('shutting_down', 'verify is stopping'));
      const deadline = Date.now() + 15_000;
      while (inFlight.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
      if (inFlight.size > 0) {
        log.warn(
          { verifications: [...inFlight.keys()] },
          'verifications still running 15 s after they were cancelled; closing their sandboxes under them',
        );
      }
      await selection.close();
    },
  };
}
