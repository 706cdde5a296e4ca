// The report of one verification: the receipt written beside the backup, the metrics, the log line and
// the event. A receipt vouches only for the manifest's sha256; a refused pair gets a tagged receipt that
// says why and vouches for nothing.
import { rejectionOf } from '../../shared/catalog/catalog.js';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import type { VerifyReceipt } from '../../shared/catalog/records.js';
import type { AppError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { completeRungs, FINDINGS, outcomeOf } from '../../shared/proof/rungs.js';
import { type Climb, since } from './ladder.js';
import type { VerifyMetrics } from './metrics.js';

export interface VerifyEnd {
  climb: Climb;
  source: VerifyReceipt['source'];
  causedBy: string | undefined;
  /** Set when the climb could not finish (timeout, sandbox, internal error): the backup is unverifiable. */
  unverifiable: { reason: string; error: string } | undefined;
  startedAt: Date;
  /** performance.now() at the start. */
  t0: number;
}

export function createVerifyReport(rt: Runtime, m: VerifyMetrics) {
  const { catalog, log } = rt;
  return {
    /** Writes the receipt, then records the metrics and emits the outcome's event. */
    async record(end: VerifyEnd): Promise<VerifyReceipt> {
      const { climb, source, causedBy, unverifiable, startedAt, t0 } = end;
      const { manifest, rungs, stages, versions, driverName, image } = climb;
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
        m.stageSeconds.observe({ stage: name, driver: driverName }, value);
      m.totalSeconds.observe({ driver: driverName, outcome: outcome.status }, seconds);
      for (const r of all) m.rungResults.inc({ rung: r.rung, result: r.result, code: r.code });
      m.outcomes.inc({ outcome: outcome.status, reason: outcome.reason, driver: driverName });
      if (outcome.status === 'restore_verified')
        m.lastVerified.set({ project: manifest.slug }, finishedAt.getTime() / 1000);

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
    },

    /**
     * A pair whose manifest is not believed (catalog finding manifest_not_authentic or manifest_misplaced)
     * is not verified: its facts would be an attacker's. The refusal is recorded in a (tagged) receipt beside
     * it, with the finding as its reason, and answered as the finding's error.
     */
    async refuse(
      entry: CatalogEntry,
      source: VerifyReceipt['source'],
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
      m.outcomes.inc({ outcome: 'restore_failed', reason: code, driver: 'none' });
      log.warn({ projectId: entry.projectId, backupId: entry.backupId, reason: code, causedBy }, message);
      return refusal;
    },
  };
}
