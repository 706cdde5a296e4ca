// Offsite retention, applied: per project, the facts of each offsite copy (from what replicate remembers
// of the backup and the copy's last proof), the selection of offsite-retention.ts, then the dump and the
// manifest object removed, each removal an event and a metric. With FLUX_OFFSITE_IMMUTABLE nothing is.
import { isRetentionEnabled, type RetentionPolicy } from '../../shared/catalog/retention.js';
import { dumpKeyOf, manifestKeyOf } from '../../shared/offsite/keys.js';
import { expiryMetrics } from './metrics.js';
import { trustedOffsiteManifest } from './offsite-inventory.js';
import { type OffsiteCopyFacts, selectOffsiteExpiry } from './offsite-retention.js';
import { copyId } from './rotation.js';
import {
  keyOf,
  type LocalEntry,
  type OffsiteBackup,
  type SweepSummary,
  type UpkeepContext,
} from './upkeep-types.js';

export type OffsiteExpiry = (
  offsite: Map<string, Map<string, OffsiteBackup>>,
  localEntries: Map<string, LocalEntry>,
  summary: SweepSummary,
) => Promise<void>;

export function createOffsiteExpiry(
  ctx: UpkeepContext,
  policy: { retention: RetentionPolicy; immutable: boolean },
): OffsiteExpiry {
  const { expiredTotal, expiryFailures } = expiryMetrics(ctx.metrics);
  return async function expire(
    offsite: Map<string, Map<string, OffsiteBackup>>,
    localEntries: Map<string, LocalEntry>,
    summary: SweepSummary,
  ): Promise<void> {
    if (policy.immutable || !isRetentionEnabled(policy.retention)) return;
    const s = ctx.state();
    const now = new Date();
    for (const [projectId, backups] of offsite) {
      const facts: OffsiteCopyFacts[] = [];
      for (const b of backups.values()) {
        if (!b.manifest) continue; // a copy still being made
        const key = keyOf(projectId, b.backupId);
        let known = s.backups[key];
        if (!known) {
          const manifest = await trustedOffsiteManifest(ctx, projectId, b.backupId);
          if (typeof manifest !== 'string') {
            known = {
              createdAt: manifest.createdAt,
              sha256: manifest.sha256,
              sizeBytes: manifest.sizeBytes,
              restore: 'pending',
            };
            s.backups[key] = known;
          }
        }
        const proof = s.copies[copyId('offsite', projectId, b.backupId)];
        facts.push({
          backupId: b.backupId,
          createdAt: known?.createdAt,
          hasDump: !!b.dump && (!known || b.dump.sizeBytes === known.sizeBytes),
          proven: proof?.ok,
          restore: known?.restore ?? 'pending',
          isLocal: localEntries.has(key),
        });
      }
      for (const backupId of selectOffsiteExpiry(facts, policy.retention, now)) {
        if (ctx.signal.aborted) return;
        const keys = [dumpKeyOf(projectId, backupId), manifestKeyOf(projectId, backupId)];
        try {
          // The dump first: a crash in between leaves a manifest alone, which the next sweep selects again.
          for (const key of keys) await ctx.store.remove(key);
        } catch (error) {
          expiryFailures.inc();
          ctx.log.error(
            { err: error, projectId, backupId },
            'offsite retention could not remove a copy; the next sweep tries again',
          );
          continue;
        }
        const known = s.backups[keyOf(projectId, backupId)];
        backups.delete(backupId);
        delete s.copies[copyId('offsite', projectId, backupId)];
        delete s.backups[keyOf(projectId, backupId)];
        expiredTotal.inc();
        summary.expired.push({ projectId, backupId });
        ctx.log.info(
          { projectId, backupId, keys, createdAt: known?.createdAt },
          'offsite retention removed a copy',
        );
        await ctx.emit('flux.backup.offsite_expired', {
          subject: keyOf(projectId, backupId),
          data: {
            projectId,
            backupId,
            store: ctx.store.location,
            keys,
            createdAt: known?.createdAt ?? '',
            reason: 'retention',
            keepCount: policy.retention.keepCount,
            keepDays: policy.retention.keepDays,
          },
        });
      }
    }
  };
}
