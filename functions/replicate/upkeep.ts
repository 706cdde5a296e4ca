// replicate's upkeep of what is retained: offsite retention (FLUX_OFFSITE_KEEP_*) and the rotating
// re-hash of every retained copy, local and offsite (FLUX_REHASH_*), one sweep every
// FLUX_REHASH_SWEEP_INTERVAL_MS. replicate owns it because it already reads both sides and writes the
// offsite receipt. This module lists what is retained and runs the parts in order: offsite-expiry.ts,
// then the rotation's share (rotation.ts) re-read by copy-rehash.ts.

import type { Catalog } from '../../shared/catalog/catalog.js';
import type { RestoreStatus } from '../../shared/catalog/classifier.js';
import { restoreViewOf } from '../../shared/catalog/read-model.js';
import { isRetentionEnabled, type RetentionPolicy } from '../../shared/catalog/retention.js';
import { AppError } from '../../shared/errors.js';
import type { Emit } from '../../shared/kit/runtime.js';
import type { Logger } from '../../shared/log.js';
import type { MetricsRegistry } from '../../shared/metrics.js';
import type { AgeIdentities } from '../../shared/offsite/age.js';
import type { OffsiteStore } from '../../shared/offsite/types.js';
import { createCopyRehash } from './copy-rehash.js';
import { upkeepMetrics } from './metrics.js';
import { createOffsiteExpiry } from './offsite-expiry.js';
import { listOffsite } from './offsite-inventory.js';
import { createPacer } from './paced-hash.js';
import { copyId, fullRotationMs, selectForRehash } from './rotation.js';
import { emptyUpkeepState, loadUpkeepState, saveUpkeepState, type UpkeepState } from './upkeep-state.js';
import {
  keyOf,
  type LocalEntry,
  OFFSITE_INVALID,
  type OffsiteBackup,
  type SweepSummary,
  type UpkeepContext,
  type Work,
} from './upkeep-types.js';

export type { SweepSummary } from './upkeep-types.js';

/** The state file is written at most this often during a sweep (and always at its end). */
const SAVE_EVERY_MS = 2000;

export interface UpkeepOptions {
  catalog: Catalog;
  store: OffsiteStore;
  log: Logger;
  metrics: MetricsRegistry;
  emit: Emit;
  stateDir: string;
  everyMs: number;
  sweepIntervalMs: number;
  maxBytesPerSecond: number;
  retention: RetentionPolicy;
  /** The store expires objects itself (object lock, lifecycle rules): nothing is removed here. */
  immutable: boolean;
  /** FLUX_MANIFEST_SECRETS: an offsite manifest read for an offsite-only copy must be authentic. */
  manifestSecrets: readonly string[];
  /** A copy job of replicate's is running for this backup: its receipt is the job's to write now. */
  isCopying(projectId: string, backupId: string): boolean;
  /** FLUX_BACKUP_AGE_IDENTITY_FILE's identities, once loaded. */
  identities?: () => AgeIdentities | undefined;
}

export interface Upkeep {
  /** One sweep (retention, then the re-hash share); a sweep already running is joined. */
  sweep(): Promise<SweepSummary>;
  readonly last: SweepSummary | undefined;
  /** The readiness line: what retention and the rotation do, and whether the rate can keep up. */
  describe(): { ok: boolean; detail: string };
  /** Copy ids whose last re-hash did not match (from the state, so a restart still knows). */
  invalid(): string[];
  /** Cancels a running sweep and waits until it has settled (its state written or dropped). */
  stop(): Promise<void>;
}

export function createUpkeep(options: UpkeepOptions): Upkeep {
  const { catalog, store, log } = options;
  const controller = new AbortController();
  let state: UpkeepState | undefined;
  const ctx: UpkeepContext = {
    catalog,
    store,
    log,
    metrics: options.metrics,
    emit: options.emit,
    signal: controller.signal,
    manifestSecrets: options.manifestSecrets,
    state: () => {
      state ??= emptyUpkeepState();
      return state;
    },
    isCopying: options.isCopying,
    ...(options.identities ? { identities: options.identities } : {}),
  };
  const rehashCopy = createCopyRehash(ctx);
  const expire = createOffsiteExpiry(ctx, { retention: options.retention, immutable: options.immutable });
  let running: Promise<SweepSummary> | undefined;
  let last: SweepSummary | undefined;
  let lastSave = 0;

  const { rehashed, invalidGauge, oldestGauge, retainedGauge, lastSweepGauge } = upkeepMetrics(
    options.metrics,
  );
  async function saveState(force: boolean): Promise<void> {
    if (!state || (!force && Date.now() - lastSave < SAVE_EVERY_MS)) return;
    lastSave = Date.now();
    try {
      await saveUpkeepState(options.stateDir, state);
    } catch (error) {
      log.warn(
        { err: error },
        'could not save the upkeep state; the rotation resumes from the last saved one',
      );
    }
  }

  function newer(s: UpkeepState, id: string, provenAt: number, ok: boolean) {
    const had = s.copies[id];
    if (!had || had.provenAt < provenAt) s.copies[id] = { provenAt, ok };
  }

  async function sweepOnce(): Promise<SweepSummary> {
    const startedMs = Date.now();
    state ??= await loadUpkeepState(options.stateDir, log);
    const s = state;
    const summary: SweepSummary = {
      startedAt: new Date(startedMs).toISOString(),
      seconds: 0,
      retained: { local: { copies: 0, bytes: 0 }, offsite: { copies: 0, bytes: 0 } },
      rehashed: { local: 0, offsite: 0 },
      rehashedCopies: [],
      rehashedBytes: 0,
      invalid: [],
      expired: [],
    };
    const work: Work[] = [];
    const localEntries = new Map<string, LocalEntry>();
    const seen = new Set<string>();

    // The local side: every complete backup, what it is (remembered for after local retention), its dump.
    for (const projectId of await catalog.listProjects()) {
      for (const entry of await catalog.list(projectId)) {
        const m = entry.manifest;
        if (!m) continue;
        const key = keyOf(projectId, entry.backupId);
        const withManifest = { ...entry, manifest: m };
        localEntries.set(key, withManifest);
        // Either copy's own verification of these bytes (the offsite copy's was proven by replicate).
        const restore: RestoreStatus = restoreViewOf(entry, 'valid').status;
        s.backups[key] = { createdAt: m.createdAt, sha256: m.sha256, sizeBytes: m.sizeBytes, restore };
        const r = entry.offsite;
        // A copy's own proof (read back after the copy) counts as its first re-hash.
        if (r?.status === 'replicated' && r.contentSha256 === m.sha256) {
          newer(s, copyId('offsite', projectId, entry.backupId), Date.parse(r.at), true);
        }
        if (entry.dump) {
          const id = copyId('local', projectId, entry.backupId);
          seen.add(id);
          const copy = {
            id,
            sizeBytes: entry.dump.sizeBytes,
            lastProvenMs: s.copies[id]?.provenAt ?? Date.parse(m.completedAt),
          };
          work.push({ copy, place: 'local', projectId, backupId: entry.backupId, entry: withManifest });
        }
      }
    }

    // The offsite side, from the store's own listing (copies outlive their local backups).
    let offsite: Map<string, Map<string, OffsiteBackup>> | undefined;
    try {
      offsite = await listOffsite(store);
    } catch (error) {
      summary.listingError = error instanceof Error ? error.message : String(error);
      log.warn(
        { err: summary.listingError },
        'upkeep could not list the offsite store: no offsite expiry or re-hash this sweep',
      );
    }

    if (offsite) {
      await expire(offsite, localEntries, summary);
      for (const [projectId, backups] of offsite) {
        for (const b of backups.values()) {
          if (!b.dump || !b.manifest) continue;
          const entry = localEntries.get(keyOf(projectId, b.backupId));
          const receipt = entry?.offsite;
          // A local backup's copy is retained once replicate proved it (or a re-hash flagged it since);
          // any other receipt, or none yet, is the copy job's business.
          if (entry && !(receipt?.status === 'replicated' || receipt?.reason === OFFSITE_INVALID)) continue;
          const id = copyId('offsite', projectId, b.backupId);
          seen.add(id);
          const copy = {
            id,
            sizeBytes: b.dump.sizeBytes,
            lastProvenMs: s.copies[id]?.provenAt ?? Date.parse(b.dump.modifiedAt),
          };
          work.push({
            copy,
            place: 'offsite',
            projectId,
            backupId: b.backupId,
            ...(entry ? { entry } : {}),
          });
        }
      }
      // Forget what no longer exists anywhere (only with both sides read).
      for (const id of Object.keys(s.copies)) if (!seen.has(id)) delete s.copies[id];
      for (const key of Object.keys(s.backups)) {
        const [projectId, backupId] = key.split('/') as [string, string];
        if (!localEntries.has(key) && !offsite.get(projectId)?.has(backupId)) delete s.backups[key];
      }
    }

    for (const w of work) {
      summary.retained[w.place].copies += 1;
      summary.retained[w.place].bytes += w.copy.sizeBytes;
    }
    const byId = new Map(work.map((w) => [w.copy.id, w]));
    const pacer = createPacer(options.maxBytesPerSecond);
    const picked = selectForRehash(
      work.map((w) => w.copy),
      { everyMs: options.everyMs, sweepIntervalMs: options.sweepIntervalMs },
      startedMs,
    );
    for (const copy of picked) {
      if (controller.signal.aborted) break;
      const w = byId.get(copy.id)!;
      try {
        const ok =
          w.place === 'local'
            ? await rehashCopy.local(w, pacer, summary)
            : await rehashCopy.offsite(w, pacer, summary);
        if (ok === undefined) continue;
        s.copies[copy.id] = { provenAt: Date.now(), ok };
        w.copy.lastProvenMs = Date.now();
        summary.rehashed[w.place] += 1;
        summary.rehashedCopies.push(copy.id);
        rehashed.inc({ place: w.place, result: ok ? 'match' : 'mismatch' });
      } catch (error) {
        if (controller.signal.aborted) break;
        rehashed.inc({ place: w.place, result: 'error' });
        log.warn(
          { err: error, projectId: w.projectId, backupId: w.backupId, place: w.place },
          're-hash of a retained copy could not run; it stays first in line',
        );
      }
      await saveState(false);
    }
    summary.rehashedBytes = pacer.bytes;

    for (const place of ['local', 'offsite'] as const) {
      const mine = work.filter((w) => w.place === place);
      invalidGauge.set({ place }, mine.filter((w) => s.copies[w.copy.id]?.ok === false).length);
      const oldest = Math.min(...mine.map((w) => w.copy.lastProvenMs));
      oldestGauge.set({ place }, mine.length > 0 ? Math.max(0, (Date.now() - oldest) / 1000) : 0);
      retainedGauge.set({ place }, summary.retained[place].bytes);
    }
    await saveState(true);
    summary.seconds = (Date.now() - startedMs) / 1000;
    lastSweepGauge.set(Date.now() / 1000);
    log.info(
      {
        rehashed: summary.rehashed,
        bytes: summary.rehashedBytes,
        invalid: summary.invalid.length,
        expired: summary.expired.length,
        seconds: summary.seconds,
      },
      'upkeep sweep done',
    );
    last = summary;
    return summary;
  }

  return {
    sweep() {
      if (controller.signal.aborted)
        return Promise.reject(new AppError('shutting_down', 'replicate is stopping'));
      running ??= sweepOnce().finally(() => {
        running = undefined;
      });
      return running;
    },
    get last() {
      return last;
    },
    describe() {
      const parts: string[] = [];
      // Never unready for this: the process still copies; the detail and the metrics tell the operator.
      const ok = true;
      if (options.immutable) {
        parts.push(
          'offsite store immutable (FLUX_OFFSITE_IMMUTABLE): expiry is left to its object lock / lifecycle rules; replicate removes nothing',
        );
      } else if (isRetentionEnabled(options.retention)) {
        parts.push(
          `offsite copies expire by keep ${options.retention.keepCount} / ${options.retention.keepDays} days (never while local, never the newest restorable)`,
        );
      } else parts.push('offsite copies never expire (FLUX_OFFSITE_KEEP_COUNT/_DAYS unset)');
      if (options.everyMs <= 0) parts.push('re-hash off (FLUX_REHASH_EVERY_MS=0)');
      else {
        const bytes = last ? last.retained.local.bytes + last.retained.offsite.bytes : 0;
        const full = fullRotationMs(bytes, options.maxBytesPerSecond);
        parts.push(
          `every retained copy re-hashed at least every ${Math.round(options.everyMs / 3_600_000)} h`,
        );
        if (full !== undefined && full > options.everyMs) {
          parts.push(
            `but reading all ${bytes} B at FLUX_REHASH_MAX_BYTES_PER_SECOND=${options.maxBytesPerSecond} takes ${Math.round(full / 3_600_000)} h: raise the rate or FLUX_REHASH_EVERY_MS`,
          );
        }
        const invalid = Object.values(state?.copies ?? {}).filter((c) => !c.ok).length;
        if (invalid > 0) parts.push(`${invalid} copies failed their last re-hash (see /replicate/status)`);
      }
      return { ok, detail: parts.join('; ') };
    },
    invalid() {
      return Object.entries(state?.copies ?? {})
        .filter(([, c]) => !c.ok)
        .map(([id]) => id)
        .sort();
    },
    async stop() {
      controller.abort(new AppError('shutting_down', 'replicate is stopping'));
      // A sweep the timer started may be writing its state or a finding: nothing of it outlives the stop.
      await running?.catch(() => undefined);
    },
  };
}
