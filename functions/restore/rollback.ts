// Putting things back after a failed or interrupted restore, from the run record alone (so the same code
// serves a failure in this process and a crash found at the next start): the live copy back under its
// name, and whatever the run created dropped — each step on its own, so one failure does not keep the rest.
import type { Runtime } from '../../shared/kit/runtime.js';
import { hasChanges, rollbackTarget, type TargetChanges } from '../../shared/pg/target.js';
import type { Ends } from './ends.js';
import type { RestoreRecord } from './record.js';
import {
  dropDatabase,
  maintenanceUrl,
  putBackSchema,
  RESTORE_APP_NAME,
  restoreAppNameOf,
  settleSwitch,
} from './server.js';

export interface Undo {
  ok: boolean;
  /** One sentence for the answer, the record and the failed event. */
  message: string;
  /** in_place v1 only: the switch had committed (the restored database, already proven, is live). */
  switched?: boolean;
}

export async function undoRun(record: RestoreRecord, ends: Ends): Promise<Undo> {
  const done: string[] = [];
  const leftovers: string[] = [];
  const step = async (what: string, fn: () => Promise<unknown>) => {
    try {
      await fn();
      done.push(what);
    } catch (error) {
      leftovers.push(`${what}: ${(error as Error).message}`);
    }
  };
  const rollbackOptions = {
    appName: RESTORE_APP_NAME,
    restoreAppName: restoreAppNameOf(record.restoreId),
    lockTimeoutMs: 30_000,
  };
  const rollbackIn = async (url: string, changes: TargetChanges) => {
    const result = await rollbackTarget(url, changes, rollbackOptions);
    if (!result.ok) throw new Error(result.leftovers.map((l) => `${l.object} (${l.error})`).join('; '));
  };
  let switched = false;

  if (ends.engine === 'v2_shared' && record.mode === 'in_place') {
    const schema = ends.schema!;
    if (record.aside) {
      const aside = record.aside;
      await step(`the live schema ${schema} put back from ${aside}`, async () => {
        const outcome = await putBackSchema(ends.targetUrl, { live: schema, aside }, rollbackOptions);
        if (outcome === 'never_moved') done.push(`the live schema ${schema} had not been moved`);
      });
    }
    // prepare recorded the new schema under the live name: never dropped by name here (putBackSchema
    // drops it only when the live copy is proven to be aside).
    const changes = record.changes ? { ...record.changes, schema: undefined } : undefined;
    if (changes && hasChanges(changes))
      await step('the roles this run created dropped', () => rollbackIn(ends.targetUrl, changes));
  } else {
    const database = record.created ?? record.staging;
    if (record.mode === 'in_place' && record.staging && record.aside) {
      const names = { live: ends.liveDatabase, staging: record.staging, aside: record.aside };
      const side = await settleSwitch(maintenanceUrl(ends.targetUrl, Object.values(names)), names).catch(
        () => 'unknown' as const,
      );
      switched = side === 'switched';
    }
    if (!switched && database) {
      const maint = maintenanceUrl(ends.targetUrl, [database]);
      // The database first: the roles this run created may own it and what is in it.
      await step(`database ${database} dropped`, () => dropDatabase(maint, database));
      if (record.changes && hasChanges(record.changes)) {
        const changes = { ...record.changes, schema: undefined };
        await step('the roles this run created dropped', () => rollbackIn(maint, changes));
      }
    }
  }
  const live =
    record.mode === 'new'
      ? 'the live data was not touched'
      : switched
        ? `the restored database (already proven) is live; the previous copy is ${record.aside}`
        : 'the live copy is as it was';
  const message =
    leftovers.length === 0
      ? `${live}${done.length ? ` (${done.join(', ')})` : ''}`
      : `ROLLBACK INCOMPLETE — ${live === 'the live copy is as it was' ? 'check the live copy' : live}; by hand: ${leftovers.join('; ')}`;
  return { ok: leftovers.length === 0, message, ...(switched ? { switched } : {}) };
}

/** `flux.restore.failed` from the record of a failed run (here or found at start), errors bounded. */
export async function announceFailure(
  rt: Pick<Runtime, 'emit'>,
  record: RestoreRecord,
  stage: string,
  causedBy?: string,
): Promise<void> {
  await rt.emit('flux.restore.failed', {
    subject: `${record.projectId}/${record.backupId}`,
    causedBy,
    data: {
      projectId: record.projectId,
      slug: record.slug,
      backupId: record.backupId,
      restoreId: record.restoreId,
      stage,
      rolledBack: record.rolledBack === true,
      reason: record.reason ?? 'restore_failed',
      error: (record.error ?? '').slice(0, 4000),
    },
  });
}
