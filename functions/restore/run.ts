// One restore run, stage by stage: each stage is entered through one helper that records it (and its
// duration) in the run record before it changes anything, so a crash at any instant leaves a record that
// says what to put back. On failure the live copy is put back (in_place) and whatever the run created
// is dropped; the answer says which.
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir } from '../../shared/atomic.js';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { AppError, fsWriteError, isAppError } from '../../shared/errors.js';
import { requestBackup } from '../../shared/kit/peer.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import type { ExcludedEntries } from '../../shared/pg/restore-list.js';
import {
  dropRestoreLogin,
  prepareTarget,
  type RestoreLogin,
  type RestoreRunner,
  restoreDump,
  type TargetChanges,
} from '../../shared/pg/target.js';
import { proveTarget } from '../../shared/proof/on-target.js';
import type { Project } from '../../shared/registry.js';
import type { ToolInfo } from '../../shared/tools.js';
import type { Ends } from './ends.js';
import { fetchArtifact } from './fetch.js';
import type { RestoreMetrics } from './metrics.js';
import { asideNameOf, type RestoreBody, restoredNameOf, type Stage, stagingNameOf } from './plan.js';
import type { RecordStore, RestoreRecord } from './record.js';
import { announceFailure, undoRun } from './rollback.js';
import {
  carryGrants,
  createDatabase,
  databaseExists,
  dropDatabase,
  dropSchema,
  maintenanceUrl,
  ownerFor,
  prepareDatabase,
  RESTORE_APP_NAME,
  restoreAppNameOf,
  setAsideSchema,
  switchDatabases,
  urlWithDatabase,
} from './server.js';

export const RESTORE_RUNNER: RestoreRunner = {
  fn: 'restore',
  failCode: 'restore_failed',
  timeoutNote: 'the time left of FLUX_RESTORE_TIMEOUT_MS',
};

/** What GET …/restores/:id shows while a run is in flight. */
export interface RestoreProgress {
  stage: Stage;
  bytes: number;
  totalBytes: number;
  stageStartedAt: number;
}

export interface RunContext {
  rt: Runtime;
  records: RecordStore;
  metrics: RestoreMetrics;
  workDir: string;
  store: () => OffsiteStore;
  project: Project;
  ends: Ends;
  entry: CatalogEntry | undefined;
  manifest: Manifest;
  body: RestoreBody;
  record: RestoreRecord;
  progress: RestoreProgress;
  pgRestore: ToolInfo;
  signal: AbortSignal;
  deadline: number;
}

/** Runs every stage; resolves with the final record (completed or failed, never throws). */
export async function executeRun(ctx: RunContext): Promise<RestoreRecord> {
  const { rt, record, manifest, ends, project, body } = ctx;
  const log = rt.log.child({ restoreId: record.restoreId, projectId: project.id });
  let stageStarted = performance.now();
  const enter = async (stage: Stage) => {
    const seconds = (performance.now() - stageStarted) / 1000;
    ctx.metrics.stageSeconds.observe({ stage: record.stage, mode: record.mode }, seconds);
    record.stages.push({ stage: record.stage, seconds: Number(seconds.toFixed(3)) });
    stageStarted = performance.now();
    record.stage = stage;
    ctx.progress.stage = stage;
    ctx.progress.stageStartedAt = Date.now();
    await ctx.records.save(record);
  };
  const remaining = () => {
    const left = ctx.deadline - Date.now();
    if (left <= 0) throw new AppError('timeout', 'the restore ran past FLUX_RESTORE_TIMEOUT_MS');
    return left;
  };
  const listFile = path.join(ctx.workDir, `${record.restoreId}.list`);
  let fetched: { discard(): Promise<void> } | undefined;
  let startedEventId: string | undefined;
  let unavailableFrom: number | undefined;
  const subject = `${project.id}/${manifest.backupId}`;
  try {
    try {
      await ensureDir(ctx.workDir);
    } catch (error) {
      throw fsWriteError(error, ctx.workDir, 'creating the restore work directory under FLUX_STATE_DIR');
    }
    // The copy is read and proven first: a tampered or missing one is refused before anything happens.
    await enter('fetch');
    ctx.progress.totalBytes = manifest.sizeBytes;
    const artifact = await fetchArtifact({
      entry: ctx.entry,
      manifest,
      source: record.source,
      store: ctx.store,
      identities: ctx.rt.ageKeys.identities(),
      workDir: ctx.workDir,
      restoreId: record.restoreId,
      signal: ctx.signal,
      onBytes: (bytes) => {
        ctx.progress.bytes = bytes;
      },
    });
    fetched = artifact;
    record.bytes = artifact.bytes;
    ctx.metrics.bytes.inc({ source: record.source }, artifact.bytes);
    if (record.mode === 'in_place') {
      await enter('safety_backup');
      const safety = await requestBackup(rt, project, {
        reason: 'pre_restore',
        signal: ctx.signal,
        timeoutMs: remaining(),
        onAccepted: async (backupId) => {
          record.safetyBackupId = backupId;
          await ctx.records.save(record);
        },
      });
      record.safetyBackupId = safety.backupId;
      log.info({ safetyBackupId: safety.backupId }, 'safety backup of the live state taken');
    }

    const started = await rt.emit('flux.restore.started', {
      subject,
      data: {
        projectId: project.id,
        slug: project.slug,
        backupId: manifest.backupId,
        restoreId: record.restoreId,
        mode: record.mode,
        lockWrites: record.mode === 'in_place' && body.lockWrites,
        ...(record.safetyBackupId ? { safetyBackupId: record.safetyBackupId } : {}),
      },
    });
    startedEventId = started.id;

    const restoreLogin = `flux_restore_${record.restoreId.toLowerCase()}`;
    const restoreOptions = {
      dumpFile: artifact.file,
      listFile,
      pgRestore: ctx.pgRestore,
      pathEnv: rt.env.PATH,
      appName: restoreAppNameOf(record.restoreId),
      signal: ctx.signal,
      runner: RESTORE_RUNNER,
    };
    const saveChanges = async (changes: RestoreRecord['changes']) => {
      record.changes = changes;
      await ctx.records.save(record);
    };
    /** pg_restore as `role` through the run's login, which is dropped once it has done its one job. */
    const restoreAs = async (
      url: string,
      prepared: { changes: TargetChanges; login: RestoreLogin },
      role: string,
      entries: { schema?: string; exclude?: ExcludedEntries },
    ) => {
      await saveChanges(prepared.changes);
      await enter('restore');
      await restoreDump({
        ...restoreOptions,
        ...entries,
        url,
        login: prepared.login,
        tenantRole: role,
        timeoutMs: remaining(),
      });
      await dropRestoreLogin(url, prepared.changes, { appName: RESTORE_APP_NAME });
      await saveChanges(prepared.changes);
    };
    // The database the restore lands in, and how it is validated.
    let dbUrl: string;
    if (ends.engine === 'v2_shared') {
      const schema = ends.schema!;
      if (record.mode === 'new') {
        dbUrl = await createOwnDatabase(ctx, restoredNameOf(schema, new Date(record.startedAt)));
      } else {
        dbUrl = ends.targetUrl;
        await enter('set_aside');
        record.aside = asideNameOf(schema, record.restoreId);
        await ctx.records.save(record);
        unavailableFrom = performance.now();
        await setAsideSchema(dbUrl, { live: schema, aside: record.aside }, 30_000);
      }
      await enter('prepare');
      const prepared = await prepareTarget(
        dbUrl,
        { schema, tenantRole: ends.tenantRole, policyRoles: manifest.roles, restoreLogin },
        { appName: RESTORE_APP_NAME, lockTimeoutMs: 30_000, record: saveChanges },
      );
      await restoreAs(dbUrl, prepared, ends.tenantRole, { schema });
      if (record.aside) await carryGrants(dbUrl, dbUrl, [{ from: record.aside, to: schema }]);
    } else {
      const maint = maintenanceUrl(ends.targetUrl, [ends.liveDatabase]);
      const owner = await ownerFor(maint, ends.liveDatabase, ends.tenantRole);
      if (record.mode === 'new') {
        dbUrl = await createOwnDatabase(ctx, restoredNameOf(ends.liveDatabase, new Date(record.startedAt)));
      } else {
        record.staging = stagingNameOf(ends.liveDatabase, record.restoreId);
        await ctx.records.save(record);
        await createDatabase(maint, record.staging);
        dbUrl = urlWithDatabase(ends.targetUrl, record.staging);
      }
      await enter('prepare');
      const prepared = await prepareDatabase(
        dbUrl,
        { owner: owner.role, policyRoles: manifest.roles, restoreLogin, extensions: manifest.extensions },
        { record: saveChanges },
      );
      await restoreAs(dbUrl, prepared, owner.role, {
        exclude: { schemas: prepared.extensionSchemas, extensions: true },
      });
    }

    await enter('validate');
    const scope =
      ends.engine === 'v2_shared'
        ? { kind: 'tenant_export' as const, schema: ends.schema! }
        : { kind: 'project_db' as const };
    const proof = await proveTarget(dbUrl, manifest, {
      scope,
      appName: RESTORE_APP_NAME,
      statementTimeoutMs: remaining(),
    });
    record.rungs = proof.rungs;
    for (const r of proof.rungs) ctx.metrics.rungs.inc({ rung: r.rung, result: r.result });
    const failed = proof.rungs.filter((r) => r.result === 'failed');
    if (failed.length > 0) {
      throw new AppError(
        'restore_failed',
        `validation against the manifest failed: ${failed.map((r) => `${r.rung}: ${r.message ?? r.code}`).join('; ')}`,
        { details: { rungs: proof.rungs } },
      );
    }

    if (record.mode === 'in_place' && ends.engine === 'v1_dedicated') {
      // The live database's grants, onto the proven copy, while the live one still serves.
      await carryGrants(
        ends.serverUrl,
        dbUrl,
        manifest.schemas.map((s) => ({ from: s, to: s })),
      );
      await enter('switch');
      record.aside = asideNameOf(ends.liveDatabase, record.restoreId);
      await ctx.records.save(record);
      const maint = maintenanceUrl(ends.targetUrl, [ends.liveDatabase, record.staging!, record.aside]);
      const switched = await switchDatabases(
        maint,
        { live: ends.liveDatabase, staging: record.staging!, aside: record.aside },
        30_000,
      );
      record.writeUnavailableSeconds = Number(switched.unavailableSeconds.toFixed(3));
    } else if (unavailableFrom !== undefined) {
      record.writeUnavailableSeconds = Number(((performance.now() - unavailableFrom) / 1000).toFixed(3));
    }
    if (record.mode === 'in_place' && record.aside) {
      const keepMs = rt.config.FLUX_RESTORE_KEEP_PREVIOUS_HOURS * 3_600_000;
      record.previous = {
        kind: ends.engine === 'v2_shared' ? 'schema' : 'database',
        name: record.aside,
        dropAfter: new Date(Date.now() + keepMs).toISOString(),
      };
    }
    await enter('done');
    record.status = 'completed';
    await ctx.records.save(record);
    if (record.previous && rt.config.FLUX_RESTORE_KEEP_PREVIOUS_HOURS === 0) {
      await dropPrevious(ctx, record, 'keep_previous_hours_0').catch((error) =>
        log.warn({ err: error }, 'could not drop the previous copy; the sweep retries'),
      );
    }
    ctx.metrics.runs.inc({ mode: record.mode, outcome: 'completed', reason: 'ok' });
    if (record.writeUnavailableSeconds !== undefined)
      ctx.metrics.unavailable.set({ project: project.slug }, record.writeUnavailableSeconds);
    const seconds = record.stages.reduce((n, s) => n + s.seconds, 0);
    ctx.metrics.lastSuccess.set({ project: project.slug }, Date.now() / 1000);
    log.info({ seconds, mode: record.mode, stages: record.stages }, 'restore completed');
    await rt.emit('flux.restore.completed', {
      subject,
      causedBy: startedEventId,
      data: {
        projectId: project.id,
        slug: project.slug,
        backupId: manifest.backupId,
        restoreId: record.restoreId,
        mode: record.mode,
        seconds: Number(seconds.toFixed(3)),
        ...(record.created ? { database: record.created } : {}),
        ...(record.previous ? { previous: record.previous.name } : {}),
        ...(record.safetyBackupId ? { safetyBackupId: record.safetyBackupId } : {}),
      },
    });
    return record;
  } catch (error) {
    let e = isAppError(error)
      ? error
      : new AppError('restore_failed', (error as Error)?.message ?? String(error), { cause: error });
    const reason: unknown = ctx.signal.reason;
    if (ctx.signal.aborted && isAppError(reason) && e !== reason) {
      e = new AppError(reason.code, `${reason.message} during the ${record.stage} stage (${e.message})`, {
        cause: e,
      });
    }
    const failedStage = record.stage;
    const undo = await undoRun(record, ends);
    record.status = 'failed';
    record.reason = e.code;
    record.rolledBack = undo.ok;
    record.error = `${e.message}; ${undo.message}`;
    record.stages.push({
      stage: failedStage,
      seconds: Number(((performance.now() - stageStarted) / 1000).toFixed(3)),
    });
    await ctx.records.save(record).catch((err) => log.error({ err }, 'could not record the failed restore'));
    ctx.metrics.runs.inc({ mode: record.mode, outcome: 'failed', reason: e.code });
    log.error({ stage: failedStage, code: e.code, err: e.message, undo }, 'restore failed');
    await announceFailure(rt, record, failedStage, startedEventId);
    return record;
  } finally {
    await fetched?.discard().catch(() => undefined);
    await rm(listFile, { force: true }).catch(() => undefined);
  }
}

/** mode new: the database created beside the live one, refusing a name that is taken (nothing touched). */
async function createOwnDatabase(ctx: RunContext, fallbackName: string): Promise<string> {
  const { record, ends } = ctx;
  const name = ctx.body.targetName ?? fallbackName;
  const maint = maintenanceUrl(ends.targetUrl, [name]);
  if (await databaseExists(maint, name)) {
    throw new AppError(
      'conflict',
      `database ${name} already exists on the target: choose another name ("targetName", --target-name) or drop it; nothing was changed`,
    );
  }
  record.created = name;
  await ctx.records.save(record);
  try {
    await createDatabase(maint, name);
  } catch (error) {
    // Another actor took the name between the check and the create: it is not ours to drop.
    if (isAppError(error) && error.code === 'conflict') record.created = undefined;
    throw error;
  }
  return urlWithDatabase(ends.targetUrl, name);
}

/** Drops the copy an in-place restore set aside, recording when. */
export async function dropPrevious(
  ctx: Pick<RunContext, 'rt' | 'records' | 'ends'>,
  record: RestoreRecord,
  reason: string,
): Promise<void> {
  const previous = record.previous;
  if (!previous || record.previousDroppedAt) return;
  if (previous.kind === 'schema') await dropSchema(ctx.ends.serverUrl, previous.name);
  else await dropDatabase(maintenanceUrl(ctx.ends.serverUrl, [previous.name]), previous.name);
  record.previousDroppedAt = new Date().toISOString();
  await ctx.records.save(record);
  ctx.rt.log.info(
    { restoreId: record.restoreId, previous: previous.name, reason },
    'dropped the previous copy',
  );
  await ctx.rt.emit('flux.restore.previous_dropped', {
    subject: `${record.projectId}/${record.backupId}`,
    data: {
      projectId: record.projectId,
      slug: record.slug,
      restoreId: record.restoreId,
      previous: previous.name,
      reason,
    },
  });
}
