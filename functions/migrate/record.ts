// The run record of a migration, its crash recovery, and the one message for a failure's rollback.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, writeJsonAtomic } from '../../shared/atomic.js';
import { AppError, errnoOf, fsWriteError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import {
  describeChanges,
  hasChanges,
  type RollbackResult,
  rollbackTarget,
  type TargetChanges,
} from '../../shared/pg/target.js';
import { resolveUrl } from '../../shared/registry.js';
import type { Phase } from './plan.js';
import { MIGRATE_APP_NAME, restoreAppNameOf } from './preflight.js';

export interface RunRecord {
  runId: string;
  projectId: string;
  slug: string;
  status: 'running' | 'completed' | 'failed';
  phase: Phase;
  dumpOnly: boolean;
  lockWrites: boolean;
  startedAt: string;
  updatedAt: string;
  pid: number;
  changes?: TargetChanges | undefined;
  backupId?: string | undefined;
  reason?: string | undefined;
  error?: string | undefined;
  rollback?: RollbackResult | undefined;
}

export interface RunRecords {
  save(record: RunRecord): Promise<void>;
  read(projectId: string): Promise<RunRecord | undefined>;
  list(): Promise<RunRecord[]>;
}

/** A write under FLUX_STATE_DIR that failed, with the fix when the directory is not this process's to write. */
export function stateDirError(error: unknown, file: string, what: string): AppError {
  const errno = errnoOf(error);
  if (errno === 'EACCES' || errno === 'EPERM' || errno === 'EROFS') {
    return new AppError(
      'dir_not_writable',
      `${what}: cannot write ${file} (${errno}): FLUX_STATE_DIR must be writable by this process (uid ${process.getuid?.()}); chown it to uid 1001 and retry`,
      { cause: error },
    );
  }
  return fsWriteError(error, file, what);
}

export function createRunRecords(runsDir: string): RunRecords {
  const fileOf = (projectId: string) => path.join(runsDir, `${projectId}.json`);
  async function readFrom(file: string): Promise<RunRecord | undefined> {
    try {
      return JSON.parse(await readFile(file, 'utf8')) as RunRecord;
    } catch {
      return undefined;
    }
  }
  return {
    async save(record) {
      const file = fileOf(record.projectId);
      try {
        await ensureDir(runsDir);
        await writeJsonAtomic(file, { ...record, updatedAt: new Date().toISOString() });
      } catch (error) {
        throw stateDirError(error, file, 'recording the migration run');
      }
    },
    read: (projectId) => readFrom(fileOf(projectId)),
    async list() {
      let names: string[];
      try {
        names = await readdir(runsDir);
      } catch {
        return [];
      }
      const records: RunRecord[] = [];
      for (const name of names.filter((n) => n.endsWith('.json'))) {
        const record = await readFrom(path.join(runsDir, name));
        if (record) records.push(record);
      }
      return records;
    },
  };
}

/** Drops what a run created in the target, with time of its own (it must run after a timeout too). */
export function rollBackRun(
  targetUrl: string,
  runId: string,
  changes: TargetChanges,
): Promise<RollbackResult> {
  return rollbackTarget(targetUrl, changes, {
    appName: MIGRATE_APP_NAME,
    restoreAppName: restoreAppNameOf(runId),
    lockTimeoutMs: 30_000,
  });
}

/**
 * A failed run's error with what became of the target: `cause` is why the run failed; `rollback` is
 * undefined when the run had created nothing there. The source is only ever read, so it is never modified.
 */
export function failureMessage(
  cause: string,
  rollback: RollbackResult | undefined,
  when?: 'at restart',
): { message: string; rolledBack: boolean } {
  const at = when ? ` ${when}` : '';
  const outcome = !rollback
    ? 'the target was not touched and the source was not modified'
    : rollback.ok
      ? `the target was rolled back${at} (dropped ${rollback.dropped.join(', ')}); the source was not modified`
      : `ROLLBACK INCOMPLETE, drop by hand: ${rollback.leftovers.map((l) => `${l.object} (${l.error})`).join('; ')}`;
  return { message: `${cause}; ${outcome}`, rolledBack: rollback ? rollback.ok : true };
}

/** The flux.migrate.failed event of a failed run, from its record (phase, reason and error set). */
export async function announceFailure(
  rt: Pick<Runtime, 'emit'>,
  record: RunRecord,
  rolledBack: boolean,
  causedBy?: string,
): Promise<void> {
  await rt.emit('flux.migrate.failed', {
    subject: `${record.projectId}/${record.runId}`,
    ...(causedBy ? { causedBy } : {}),
    data: {
      projectId: record.projectId,
      slug: record.slug,
      phase: record.phase,
      reason: record.reason ?? 'migrate_failed',
      error: (record.error ?? '').slice(0, 4000),
      runId: record.runId,
      rolledBack,
    },
  });
}

/** Rolls back every run found `running` at start (a crash or a kill stopped it), records and announces it. */
export async function recoverRuns(
  rt: Pick<Runtime, 'registry' | 'env' | 'log' | 'emit'>,
  records: RunRecords,
): Promise<void> {
  for (const record of await records.list()) {
    if (record.status !== 'running') continue;
    const rollback =
      record.changes && hasChanges(record.changes)
        ? await rollBackInterrupted(rt, record, record.changes)
        : undefined;
    const { message, rolledBack } = failureMessage(
      'the migrate process stopped during this run (crash or kill)',
      rollback,
      'at restart',
    );
    const failed: RunRecord = {
      ...record,
      status: 'failed',
      reason: 'interrupted',
      error: message,
      rollback,
    };
    await records.save(failed);
    rt.log.warn(
      { projectId: record.projectId, runId: record.runId, rollback },
      'rolled back an interrupted migration',
    );
    await announceFailure(rt, failed, rolledBack);
  }
}

async function rollBackInterrupted(
  rt: Pick<Runtime, 'registry' | 'env'>,
  record: RunRecord,
  changes: TargetChanges,
): Promise<RollbackResult> {
  const project = rt.registry.byId(record.projectId);
  if (!project?.dedicatedUrl) {
    const error = `project ${record.slug} or its dedicatedUrl is gone from the registry; drop by hand: ${describeChanges(changes)}`;
    return { ok: false, dropped: [], leftovers: [{ object: 'target', error }] };
  }
  try {
    const url = resolveUrl(project.dedicatedUrl, rt.env, `project ${project.slug} dedicatedUrl`);
    return await rollBackRun(url, record.runId, changes);
  } catch (error) {
    return { ok: false, dropped: [], leftovers: [{ object: 'target', error: (error as Error).message }] };
  }
}
