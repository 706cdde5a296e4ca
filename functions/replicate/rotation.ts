// Which retained copies a re-hash sweep reads, pure: the least recently proven first, about
// sweep interval / FLUX_REHASH_EVERY_MS of all retained bytes per sweep, so every copy comes round at
// least once per period without a burst. Copies overdue (a first start over an old store, or after
// downtime) catch up at a bounded rate: at most twice the normal share per sweep.

export type CopyPlace = 'local' | 'offsite';

export interface RetainedCopy {
  /** `local:<projectId>/<backupId>` or `offsite:<projectId>/<backupId>`: the key of the rotation state. */
  id: string;
  sizeBytes: number;
  /** When the copy was last proven by reading all of it (a re-hash, or the copy's own proof); ms. */
  lastProvenMs: number;
}

export interface RotationPolicy {
  everyMs: number;
  sweepIntervalMs: number;
}

export const copyId = (place: CopyPlace, projectId: string, backupId: string) =>
  `${place}:${projectId}/${backupId}`;

/** A sweep's share of `totalBytes`: the bytes that, read every sweep, cover everything once per period. */
export function shareBytes(totalBytes: number, policy: RotationPolicy): number {
  if (policy.everyMs <= 0) return 0;
  const sweeps = Math.max(1, policy.everyMs / Math.max(1, policy.sweepIntervalMs));
  return Math.ceil(totalBytes / sweeps);
}

/** The copies to read in this sweep, in the order to read them. */
export function selectForRehash(
  copies: readonly RetainedCopy[],
  policy: RotationPolicy,
  nowMs: number,
): RetainedCopy[] {
  if (policy.everyMs <= 0 || copies.length === 0) return [];
  const ordered = [...copies].sort((a, b) => a.lastProvenMs - b.lastProvenMs || a.id.localeCompare(b.id));
  const total = ordered.reduce((n, c) => n + c.sizeBytes, 0);
  const share = shareBytes(total, policy);
  // Due within the next sweep: read now, or the copy would pass its period before the sweep after.
  const dueBy = nowMs + policy.sweepIntervalMs - policy.everyMs;
  const dueBytes = ordered.filter((c) => c.lastProvenMs <= dueBy).reduce((n, c) => n + c.sizeBytes, 0);
  const budget = Math.max(share, Math.min(dueBytes, 2 * share));
  const picked: RetainedCopy[] = [];
  let spent = 0;
  for (const copy of ordered) {
    // The copy that crosses the budget is still read: a sweep never spends less than its share (the
    // rotation would fall behind by half a copy per sweep), and a huge dump never starves it.
    if (spent >= budget && picked.length > 0) break;
    picked.push(copy);
    spent += copy.sizeBytes;
  }
  return picked;
}

/** How long reading every retained byte once takes at `bytesPerSecond` (0 = unthrottled: undefined). */
export function fullRotationMs(totalBytes: number, bytesPerSecond: number): number | undefined {
  return bytesPerSecond > 0 ? Math.ceil((totalBytes / bytesPerSecond) * 1000) : undefined;
}
