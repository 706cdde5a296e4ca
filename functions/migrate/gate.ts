// The backup gate of a migration: a restorable newest backup, fresh within maxAge, re-hashed now.
import { GATE_ARTIFACT_PROOF } from '../../shared/catalog/catalog.js';
import { destructiveGate } from '../../shared/catalog/freshness.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { clusterNameOf, type Project } from '../../shared/registry.js';
import { backupPolicyOf } from '../../shared/schedule.js';

export type BackupGate = Awaited<ReturnType<typeof backupGate>>;

export async function backupGate(rt: Pick<Runtime, 'config' | 'catalog'>, project: Project) {
  const { maxAgeMs } = backupPolicyOf(project, rt.config);
  // The dumps the gate leans on are re-hashed in full now, not taken from the validation cache.
  const trust = await rt.catalog.trust(project.id, project.slug, new Date(), {
    maxAgeMs,
    proof: GATE_ARTIFACT_PROOF,
  });
  const verdict = destructiveGate(trust, trust.freshness);
  const next = trust.tier === 'restorable' ? trust.freshness.next : (trust.next ?? trust.freshness.next);
  return {
    // Which cluster holds what the gate protects: the one a maintenance ticket would name.
    cluster: clusterNameOf(project),
    tier: trust.tier,
    freshness: trust.freshness.freshness,
    ageSeconds: trust.freshness.ageSeconds,
    maxAgeSeconds: trust.freshness.maxAgeSeconds,
    passes: verdict.passes,
    message: verdict.passes ? trust.message : verdict.message,
    ...(next ? { next } : {}),
    ...(trust.backupId ? { backupId: trust.backupId } : {}),
  };
}
