// replicate's upkeep of what is retained: offsite retention (FLUX_OFFSITE_KEEP_*) and the rotating
// re-hash of every retained copy, local and offsite (FLUX_REHASH_*), one sweep every
// FLUX_REHASH_SWEEP_INTERVAL_MS. replicate owns it because it already reads both sides and writes the
// offsite receipt; a local dump that no longer matches gets a `.rehash.json` finding beside it (its one
// writer is replicate), which every process's catalog reads, so the artifact status flips everywhere.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { STREAM_CHUNK_BYTES } from '../../shared/atomic.js';
import type { Catalog, CatalogEntry } from '../../shared/catalog/catalog.js';
import type { RestoreStatus } from '../../shared/catalog/classifier.js';
import { isProjectHash, isUuid } from '../../shared/catalog/ids.js';
import { parseCatalogName } from '../../shared/catalog/layout.js';
import { authenticateManifest } from '../../shared/catalog/manifest-auth.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { isRetentionEnabled, type RetentionPolicy } from '../../shared/catalog/retention.js';
import { AppError, errnoOf, isAppError } from '../../shared/errors.js';
import type { Emit } from '../../shared/kit/runtime.js';
import type { Logger } from '../../shared/log.js';
import { counter, gauge, type Registry } from '../../shared/metrics.js';
import { readOffsiteManifest } from '../../shared/offsite/artifact.js';
import { dumpKeyOf, manifestKeyOf } from '../../shared/offsite/keys.js';
import type { OffsiteObject, OffsiteStore } from '../../shared/offsite/types.js';
import { type OffsiteCopyFacts, selectOffsiteExpiry } from './offsite-retention.js';
import { createPacer, type Pacer, pacedHash } from './paced-hash.js';
import { type CopyPlace, copyId, fullRotationMs, type RetainedCopy, selectForRehash } from './rotation.js';
import { loadUpkeepState, saveUpkeepState, type UpkeepState } from './upkeep-state.js';

/** The offsite receipt's reason when a re-hash found the offsite copy missing or different. */
export const OFFSITE_INVALID = 'offsite_invalid';
/** The state file is written at most this often during a sweep (and always at its end). */
const SAVE_EVERY_MS = 2000;

export interface UpkeepOptions {
  catalog: Catalog;
  store: OffsiteStore;
  log: Logger;
  metrics: Registry;
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
}

export interface SweepSummary {
  startedAt: string;
  seconds: number;
  retained: Record<CopyPlace, { copies: number; bytes: number }>;
  rehashed: Record<CopyPlace, number>;
  /** The copy ids read this sweep, in order. */
  rehashedCopies: string[];
  rehashedBytes: number;
  invalid: Array<{ place: CopyPlace; projectId: string; backupId: string; reason: string }>;
  expired: Array<{ projectId: string; backupId: string }>;
  listingError?: string;
}

export interface Upkeep {
  /** One sweep (retention, then the re-hash share); a sweep already running is joined. */
  sweep(): Promise<SweepSummary>;
  readonly last: SweepSummary | undefined;
  /** The readiness line: what retention and the rotation do, and whether the rate can keep up. */
  describe(): { ok: boolean; detail: string };
  /** Copy ids whose last re-hash did not match (from the state, so a restart still knows). */
  invalid(): string[];
  stop(): void;
}

interface OffsiteBackup {
  projectId: string;
  backupId: string;
  dump?: OffsiteObject;
  manifest?: OffsiteObject;
}

interface Work {
  copy: RetainedCopy;
  place: CopyPlace;
  projectId: string;
  backupId: string;
  entry?: CatalogEntry & { manifest: Manifest };
  /** offsite: the dump object as listed. */
  object?: OffsiteObject;
}

const keyOf = (projectId: string, backupId: string) => `${projectId}/${backupId}`;

export function createUpkeep(options: UpkeepOptions): Upkeep {
  const { catalog, store, log, emit } = options;
  const controller = new AbortController();
  let state: UpkeepState | undefined;
  let running: Promise<SweepSummary> | undefined;
  let last: SweepSummary | undefined;
  let lastSave = 0;

  const rehashed = counter(
    options.metrics,
    'flux_rehash_copies_total',
    'Retained copies re-hashed, by place and result',
    ['place', 'result'],
  );
  const rehashBytes = counter(
    options.metrics,
    'flux_rehash_bytes_total',
    'Bytes read by the rotating re-hash',
    ['place'],
  );
  const invalidGauge = gauge(
    options.metrics,
    'flux_rehash_invalid_copies',
    'Retained copies whose last re-hash did not match their manifest',
    ['place'],
  );
  const oldestGauge = gauge(
    options.metrics,
    'flux_rehash_oldest_proof_age_seconds',
    'Age of the least recently proven retained copy (stays under FLUX_REHASH_EVERY_MS when the rotation keeps up)',
    ['place'],
  );
  const retainedGauge = gauge(
    options.metrics,
    'flux_rehash_retained_bytes',
    'Bytes of retained copies the rotation covers',
    ['place'],
  );
  const lastSweepGauge = gauge(
    options.metrics,
    'flux_rehash_last_sweep_timestamp_seconds',
    'When the last upkeep sweep finished',
  );
  const expiredTotal = counter(
    options.metrics,
    'flux_offsite_expired_total',
    'Offsite copies removed by offsite retention',
  );
  const expiryFailures = counter(
    options.metrics,
    'flux_offsite_expiry_failures_total',
    'Offsite copies retention selected but could not remove',
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

  async function listOffsite(): Promise<Map<string, Map<string, OffsiteBackup>>> {
    const out = new Map<string, Map<string, OffsiteBackup>>();
    for await (const object of store.list('')) {
      const [projectId, name, ...deeper] = object.key.split('/');
      if (!projectId || !name || deeper.length > 0 || !isUuid(projectId)) continue;
      const parsed = parseCatalogName(name);
      if (!parsed || (parsed.file !== 'dump' && parsed.file !== 'manifest')) continue;
      let backups = out.get(projectId);
      if (!backups) {
        backups = new Map();
        out.set(projectId, backups);
      }
      const found = backups.get(parsed.backupId) ?? { projectId, backupId: parsed.backupId };
      found[parsed.file] = object;
      backups.set(parsed.backupId, found);
    }
    return out;
  }

  /** The offsite manifest of an offsite-only backup, when it is one this deployment can trust. */
  async function trustedOffsiteManifest(projectId: string, backupId: string): Promise<Manifest | string> {
    try {
      const manifest = await readOffsiteManifest(store, projectId, backupId, controller.signal);
      if (!manifest) return 'no offsite manifest';
      const auth = authenticateManifest(manifest, options.manifestSecrets);
      if (auth === 'forged') return 'the offsite manifest’s tag matches none of FLUX_MANIFEST_SECRETS';
      return manifest;
    } catch (error) {
      if (isAppError(error) && error.code === 'artifact_invalid') return error.message;
      throw error;
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
    const localEntries = new Map<string, CatalogEntry & { manifest: Manifest }>();
    const seen = new Set<string>();

    // The local side: every complete backup, what it is (remembered for after local retention), its dump.
    for (const projectId of await catalog.listProjects()) {
      for (const entry of await catalog.list(projectId)) {
        const m = entry.manifest;
        if (!m) continue;
        const key = keyOf(projectId, entry.backupId);
        const withManifest = { ...entry, manifest: m };
        localEntries.set(key, withManifest);
        const restore: RestoreStatus =
          entry.verify && entry.verify.sha256 === m.sha256 ? entry.verify.status : 'pending';
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
      offsite = await listOffsite();
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
            object: b.dump,
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
          w.place === 'local' ? await rehashLocal(w, pacer, summary) : await rehashOffsite(w, pacer, summary);
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

  /** true = matches, false = does not, undefined = not read (the file changed while it was read). */
  async function rehashLocal(w: Work, pacer: Pacer, summary: SweepSummary): Promise<boolean | undefined> {
    const entry = w.entry!;
    const m = entry.manifest;
    const file = entry.paths.dump;
    let before: Awaited<ReturnType<typeof stat>>;
    try {
      before = await stat(file);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return undefined; // retention removed it meanwhile
      throw error;
    }
    const found = await pacedHash(
      createReadStream(file, { highWaterMark: Math.max(1024, Math.min(before.size, STREAM_CHUNK_BYTES)) }),
      pacer,
      controller.signal,
    );
    rehashBytes.inc({ place: 'local' }, found.sizeBytes);
    const after = await stat(file).catch(() => undefined);
    if (!after || after.mtimeMs !== before.mtimeMs || after.size !== before.size) return undefined;
    const ok = found.sha256 === m.sha256 && found.sizeBytes === m.sizeBytes;
    if (ok) {
      if (entry.rehash) {
        await catalog.writeRehashRecord(w.projectId, w.backupId, undefined);
        log.info(
          { projectId: w.projectId, backupId: w.backupId },
          'the local dump matches its manifest again',
        );
      }
      catalog.rememberArtifact(file, after.size, after.mtimeMs, found.sha256);
      return true;
    }
    const repeated =
      entry.rehash?.foundSha256 === found.sha256 &&
      entry.rehash.mtimeMs === after.mtimeMs &&
      entry.rehash.sizeBytes === after.size;
    await catalog.writeRehashRecord(w.projectId, w.backupId, {
      backupId: w.backupId,
      projectId: w.projectId,
      manifestSha256: m.sha256,
      foundSha256: found.sha256,
      sizeBytes: after.size,
      mtimeMs: after.mtimeMs,
      at: new Date().toISOString(),
    });
    catalog.rememberArtifact(file, after.size, after.mtimeMs, found.sha256);
    const reason = found.sizeBytes === m.sizeBytes ? 'sha256_mismatch' : 'size_mismatch';
    summary.invalid.push({ place: 'local', projectId: w.projectId, backupId: w.backupId, reason });
    log.error(
      {
        projectId: w.projectId,
        backupId: w.backupId,
        file,
        expected: m.sha256,
        found: found.sha256,
        repeated,
      },
      'ALARM: a retained local dump no longer matches its manifest (re-hash); its artifact is invalid',
    );
    if (!repeated) {
      await emit('flux.backup.artifact_invalid', {
        subject: keyOf(w.projectId, w.backupId),
        data: {
          projectId: w.projectId,
          ...(isProjectHash(m.projectHash) ? { projectHash: m.projectHash } : {}),
          backupId: w.backupId,
          expectedSha256: m.sha256,
          foundSha256: found.sha256,
          sizeBytes: found.sizeBytes,
          reason,
        },
      });
    }
    return false;
  }

  async function rehashOffsite(w: Work, pacer: Pacer, summary: SweepSummary): Promise<boolean | undefined> {
    if (options.isCopying(w.projectId, w.backupId)) return undefined;
    const key = dumpKeyOf(w.projectId, w.backupId);
    const known = state?.backups[keyOf(w.projectId, w.backupId)];
    let expected: { sha256: string; sizeBytes: number; projectHash?: string } | undefined;
    let refused: string | undefined;
    if (w.entry) expected = w.entry.manifest;
    else if (known) expected = known;
    else {
      const manifest = await trustedOffsiteManifest(w.projectId, w.backupId);
      if (typeof manifest === 'string') refused = manifest;
      else expected = manifest;
    }
    let found: { sha256: string; sizeBytes: number } | undefined;
    if (expected) {
      try {
        found = await pacedHash(await store.get(key, controller.signal), pacer, controller.signal);
        rehashBytes.inc({ place: 'offsite' }, found.sizeBytes);
      } catch (error) {
        if (!(isAppError(error) && error.code === 'not_found')) throw error;
      }
    }
    const ok =
      !!expected && !!found && found.sha256 === expected.sha256 && found.sizeBytes === expected.sizeBytes;
    const wasOk = state?.copies[w.copy.id]?.ok !== false;
    const receipt = w.entry?.offsite;
    if (ok) {
      if (w.entry && receipt?.reason === OFFSITE_INVALID) {
        await catalog.writeOffsiteReceipt({
          ...receipt,
          status: 'replicated',
          contentSha256: found!.sha256,
          sizeBytes: found!.sizeBytes,
          at: new Date().toISOString(),
          reason: undefined,
          error: undefined,
        });
        log.info(
          { projectId: w.projectId, backupId: w.backupId, key },
          'the offsite copy matches its manifest again',
        );
      }
      return true;
    }
    const reason = refused ? 'manifest_invalid' : !found ? 'offsite_missing' : 'sha256_mismatch';
    const error = refused
      ? `the offsite copy cannot be proven: ${refused}`
      : !found
        ? `the offsite copy ${store.location}/${key} is gone`
        : `re-hash of ${store.location}/${key} read ${found.sizeBytes} B sha256 ${found.sha256.slice(0, 12)}…, not the manifest's ${expected!.sizeBytes} B ${expected!.sha256.slice(0, 12)}…; ` +
          'move the object aside (the next reconcile copies the local backup again, when there is one)';
    summary.invalid.push({ place: 'offsite', projectId: w.projectId, backupId: w.backupId, reason });
    log.error(
      { projectId: w.projectId, backupId: w.backupId, key, reason, repeated: !wasOk },
      `ALARM: ${error}`,
    );
    if (w.entry && expected && receipt) {
      await catalog.writeOffsiteReceipt({
        ...receipt,
        status: 'failed',
        ...(found ? { contentSha256: found.sha256, sizeBytes: found.sizeBytes } : {}),
        manifestSha256: w.entry.manifest.sha256,
        at: new Date().toISOString(),
        reason: OFFSITE_INVALID,
        error,
      });
    }
    if (wasOk) {
      const hash = w.entry?.manifest.projectHash ?? expected?.projectHash;
      await emit('flux.backup.offsite_invalid', {
        subject: keyOf(w.projectId, w.backupId),
        data: {
          projectId: w.projectId,
          ...(hash && isProjectHash(hash) ? { projectHash: hash } : {}),
          backupId: w.backupId,
          store: store.location,
          key,
          ...(expected ? { expectedSha256: expected.sha256 } : {}),
          ...(found ? { foundSha256: found.sha256 } : {}),
          reason,
        },
      });
    }
    return false;
  }

  async function expire(
    offsite: Map<string, Map<string, OffsiteBackup>>,
    localEntries: Map<string, CatalogEntry & { manifest: Manifest }>,
    summary: SweepSummary,
  ): Promise<void> {
    if (options.immutable || !isRetentionEnabled(options.retention)) return;
    const s = state!;
    const now = new Date();
    for (const [projectId, backups] of offsite) {
      const facts: OffsiteCopyFacts[] = [];
      for (const b of backups.values()) {
        if (!b.manifest) continue; // a copy still being made
        const key = keyOf(projectId, b.backupId);
        let known = s.backups[key];
        if (!known) {
          const manifest = await trustedOffsiteManifest(projectId, b.backupId);
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
      for (const backupId of selectOffsiteExpiry(facts, options.retention, now)) {
        if (controller.signal.aborted) return;
        const keys = [dumpKeyOf(projectId, backupId), manifestKeyOf(projectId, backupId)];
        try {
          // The dump first: a crash in between leaves a manifest alone, which the next sweep selects again.
          for (const key of keys) await store.remove(key);
        } catch (error) {
          expiryFailures.inc();
          log.error(
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
        log.info(
          { projectId, backupId, keys, createdAt: known?.createdAt },
          'offsite retention removed a copy',
        );
        await emit('flux.backup.offsite_expired', {
          subject: keyOf(projectId, backupId),
          data: {
            projectId,
            backupId,
            store: store.location,
            keys,
            createdAt: known?.createdAt ?? '',
            reason: 'retention',
            keepCount: options.retention.keepCount,
            keepDays: options.retention.keepDays,
          },
        });
      }
    }
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
    stop() {
      controller.abort(new AppError('shutting_down', 'replicate is stopping'));
    },
  };
}
