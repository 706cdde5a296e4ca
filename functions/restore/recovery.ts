// What the restore function does at start and on its sweep: a run a crash interrupted is put back (or, for
// a v1 switch that had committed, completed), recorded and announced; and the copies in-place restores
// set aside are dropped once FLUX_RESTORE_KEEP_PREVIOUS_HOURS have passed.
import type { Runtime } from '../../shared/kit/runtime.js';
import { endsOf } from './ends.js';
import type { RestoreMetrics } from './metrics.js';
import { type RecordStore, type RestoreRecord, writeReceipt } from './record.js';
import { announceFailure, undoRun } from './rollback.js';
import { dropPrevious } from './run.js';

export interface RecoveryDeps {
  rt: Runtime;
  records: RecordStore;
  metrics: RestoreMetrics;
}

/** Finishes one run found `running` at start: puts the live copy back, or completes a committed switch. */
export async function recoverRun(deps: RecoveryDeps, record: RestoreRecord): Promise<void> {
  const { rt, records, metrics } = deps;
  const { config, catalog, log } = rt;
  const project = rt.registry.byId(record.projectId);
  let message: string;
  let ok = false;
  let switched = false;
  if (!project) {
    message = `project ${record.slug} is gone from the registry; check its server by hand (record ${record.restoreId})`;
  } else {
    try {
      const ends = endsOf(
        rt.registry,
        project,
        rt.env,
        record.targetRef === 'registry' ? undefined : record.targetRef,
      );
      const undo = await undoRun(record, ends);
      ({ ok, message } = undo);
      switched = undo.switched === true;
    } catch (error) {
      message = `could not put things back: ${(error as Error).message}`;
    }
  }
  if (switched) {
    // The switch had committed: the restored database was proven before it; the run is complete.
    record.status = 'completed';
    record.stage = 'done';
    record.previous = {
      kind: 'database',
      name: record.aside!,
      dropAfter: new Date(Date.now() + config.FLUX_RESTORE_KEEP_PREVIOUS_HOURS * 3_600_000).toISOString(),
    };
    await records.save(record);
    await writeReceipt(catalog.root, record, config.FLUX_MANIFEST_SECRETS).catch(() => undefined);
    log.warn({ restoreId: record.restoreId }, 'an interrupted in-place restore had switched: completed');
    return;
  }
  record.status = 'failed';
  record.reason = 'interrupted';
  record.rolledBack = ok;
  record.error = `the restore process stopped during the ${record.stage} stage (crash or kill); ${message}`;
  await records.save(record);
  await writeReceipt(catalog.root, record, config.FLUX_MANIFEST_SECRETS).catch(() => undefined);
  metrics.runs.inc({ mode: record.mode, outcome: 'failed', reason: 'interrupted' });
  log.warn({ restoreId: record.restoreId, ok, message }, 'put back an interrupted restore');
  await announceFailure(rt, record, record.stage);
}

/** Drops every set-aside copy whose time has come; returns how many. */
export async function sweepPrevious(deps: RecoveryDeps, now: Date): Promise<number> {
  const { rt, records, metrics } = deps;
  const { log } = rt;
  let dropped = 0;
  for (const record of await records.list()) {
    if (record.status !== 'completed' || !record.previous || record.previousDroppedAt) continue;
    if (Date.parse(record.previous.dropAfter) > now.getTime()) continue;
    const project = rt.registry.byId(record.projectId);
    if (!project) continue;
    try {
      await dropPrevious(
        { rt, records, ends: endsOf(rt.registry, project, rt.env, undefined) },
        record,
        'expired',
      );
      metrics.previousDropped.inc({ reason: 'expired' });
      dropped += 1;
    } catch (error) {
      log.warn({ err: error, restoreId: record.restoreId }, 'could not drop an expired previous copy');
    }
  }
  return dropped;
}
