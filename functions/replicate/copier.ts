// One backup's copy: the local dump (plain, or age-encrypted through a staged file) put offsite and proven
// by re-reading it, then the manifest, then the receipt (the last write); or, when the local dump is
// gone, the offsite copy proven as it is. The replicator (replicator.ts) runs these as retried jobs.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { isDeepStrictEqual } from 'node:util';
import { hashFile, STREAM_CHUNK_BYTES } from '../../shared/atomic.js';
import type { Catalog } from '../../shared/catalog/catalog.js';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import type { OffsiteReceipt } from '../../shared/catalog/records.js';
import { AppError, errnoOf } from '../../shared/errors.js';
import type { Counter, Histogram } from '../../shared/metrics.js';
import { type AgeIdentities, isAgeHead, storedSizeFits } from '../../shared/offsite/age.js';
import { readOffsiteManifest } from '../../shared/offsite/artifact.js';
import { dumpKeyOf, manifestKeyOf } from '../../shared/offsite/keys.js';
import type { ContentHash, OffsiteStore } from '../../shared/offsite/types.js';
import type { StoreIdentity } from './identity.js';
import { conflictError } from './reconcile.js';
import { proveSealedObject, stageSealed } from './sealed-copy.js';

const ERROR_TEXT_MAX = 2000;
const truncate = (s: string) => (s.length > ERROR_TEXT_MAX ? `${s.slice(0, ERROR_TEXT_MAX)}…` : s);
/** An error's message, bounded (receipts, events and logs carry it). */
export const errorText = (error: unknown) => truncate(error instanceof Error ? error.message : String(error));

export type CompleteEntry = CatalogEntry & { manifest: NonNullable<CatalogEntry['manifest']> };

export interface CopierOptions {
  catalog: Catalog;
  store: OffsiteStore;
  /** Aborted when replicate stops: every put, read and staging in flight is cancelled. */
  signal: AbortSignal;
  identity?: StoreIdentity | undefined;
  sealing?: { recipients: readonly string[]; stagingDir: string } | undefined;
  identities?: (() => AgeIdentities | undefined) | undefined;
  copySeconds: Histogram;
  bytes: Counter;
}

export interface Copier {
  /** One attempt at copying a backup whose local dump exists. */
  copy(entry: CompleteEntry, attempt: number): Promise<{ receipt: OffsiteReceipt; created: boolean }>;
  /** A backup whose local dump is gone: its offsite copy proven (a receipt), or why it stays pending. */
  proveOffsiteOnly(
    entry: CompleteEntry,
    attempt: number,
  ): Promise<{ receipt: OffsiteReceipt } | { pending: string }>;
}

export function createCopier(options: CopierOptions): Copier {
  const { catalog, store, copySeconds, bytes } = options;
  const controller = { signal: options.signal };
  /** Offsite copies of backups without a local dump that failed their proof, by key: not re-hashed until they change. */
  const failedOffsiteProofs = new Map<string, { seen: string; why: string }>();

  /** The first bytes of a stored object (enough to tell an age file). */
  async function firstBytesOf(key: string): Promise<Buffer> {
    const stream = await store.get(key, controller.signal);
    try {
      for await (const chunk of stream) return chunk as Buffer;
      return Buffer.alloc(0);
    } finally {
      stream.destroy();
    }
  }

  /** Puts `key` (unless an identical object is there) and proves it by re-reading. */
  async function copyAndProve(
    key: string,
    open: () => Readable,
    expected: ContentHash,
  ): Promise<{ created: boolean; proof: ContentHash }> {
    const put = await store.put(key, open(), { ...expected, signal: controller.signal });
    if (put.outcome === 'conflict') throw conflictError(key, expected.sha256, put.sha256);
    // exists: the store compared by re-reading the object already there; created: re-read it now.
    const proof = put.outcome === 'exists' ? put : await store.hash(key, controller.signal);
    if (!proof || proof.sha256 !== expected.sha256 || proof.sizeBytes !== expected.sizeBytes) {
      throw new AppError(
        'replication_failed',
        `offsite object ${key} read back ${proof ? `as ${proof.sizeBytes} B sha256 ${proof.sha256.slice(0, 12)}…` : 'as missing'}, ` +
          `not the ${expected.sizeBytes} B ${expected.sha256.slice(0, 12)}… just written: the store is not keeping what it is given`,
        { details: { reason: 'readback_mismatch', key } },
      );
    }
    return { created: put.outcome === 'created', proof };
  }

  /** One attempt: the dump, then the manifest, then the receipt (the receipt is the last write). */
  async function attemptCopy(
    entry: CompleteEntry,
    attempt: number,
  ): Promise<{ receipt: OffsiteReceipt; created: boolean }> {
    const m = entry.manifest;
    const dumpKey = dumpKeyOf(entry.projectId, entry.backupId);
    const manifestKey = manifestKeyOf(entry.projectId, entry.backupId);
    const started = performance.now();
    const manifestArrivedMs = (await stat(entry.paths.manifest)).mtimeMs;
    let local: Awaited<ReturnType<typeof stat>>;
    try {
      local = await stat(entry.paths.dump);
    } catch (error) {
      if (errnoOf(error) !== 'ENOENT') throw error;
      throw new AppError(
        'artifact_invalid',
        `the local dump ${entry.paths.dump} is missing; nothing was copied`,
        {
          details: { reason: 'artifact_missing' },
        },
      );
    }
    if (local.size !== m.sizeBytes) {
      throw new AppError(
        'artifact_invalid',
        `the local dump is ${local.size} B but its manifest says ${m.sizeBytes} B (partial or altered file); nothing was copied`,
      );
    }
    // Not into a store that is not the one recorded (an unmounted mount point looks like an empty store).
    await options.identity?.ensure();
    const sealing = options.sealing;
    let dump: { created: boolean; proof: ContentHash };
    let encryption: OffsiteReceipt['encryption'];
    let staged: Awaited<ReturnType<typeof stageSealed>> | undefined;
    if (sealing && sealing.recipients.length > 0) {
      // The plaintext is hashed while it is encrypted (it must be the manifest's), the stored bytes are
      // proven by re-reading them: together, the store holds this backup, readable by these recipients.
      staged = await stageSealed({
        stagingDir: sealing.stagingDir,
        projectId: entry.projectId,
        backupId: entry.backupId,
        dumpFile: entry.paths.dump,
        expected: { sha256: m.sha256, sizeBytes: m.sizeBytes },
        recipients: sealing.recipients,
        signal: controller.signal,
      });
      const file = staged.file;
      const stored = await copyAndProve(
        dumpKey,
        () => createReadStream(file, { highWaterMark: STREAM_CHUNK_BYTES }),
        staged.stored,
      );
      dump = { created: stored.created, proof: { sha256: m.sha256, sizeBytes: m.sizeBytes } };
      encryption = {
        format: 'age',
        recipients: staged.recipients,
        storedSha256: stored.proof.sha256,
        storedSizeBytes: stored.proof.sizeBytes,
      };
    } else {
      // The hash is checked while streaming: a local file that is not what the manifest says never lands.
      dump = await copyAndProve(
        dumpKey,
        // 1 MiB chunks for real dumps; a small file gets a buffer its own size (streams allocate a whole chunk).
        () =>
          createReadStream(entry.paths.dump, {
            highWaterMark: Math.max(1024, Math.min(local.size, STREAM_CHUNK_BYTES)),
          }),
        { sha256: m.sha256, sizeBytes: m.sizeBytes },
      );
    }
    const manifestHash = await hashFile(entry.paths.manifest);
    await copyAndProve(manifestKey, () => createReadStream(entry.paths.manifest), manifestHash);
    const provenAt = Date.now();
    const receipt: OffsiteReceipt = {
      backupId: entry.backupId,
      projectId: entry.projectId,
      status: 'replicated',
      store: store.location,
      key: dumpKey,
      contentSha256: dump.proof.sha256,
      sizeBytes: dump.proof.sizeBytes,
      manifestSha256: m.sha256,
      attempts: attempt,
      at: new Date(provenAt).toISOString(),
      lagSeconds: Math.max(0, (provenAt - manifestArrivedMs) / 1000),
      ...(encryption ? { encryption } : {}),
    };
    await catalog.writeOffsiteReceipt(receipt);
    // Only once the receipt holds the stored hash: a retry before it puts the same file again.
    await staged?.discard().catch(() => undefined);
    copySeconds.observe((performance.now() - started) / 1000);
    if (dump.created) bytes.inc(m.sizeBytes);
    return { receipt, created: dump.created };
  }

  /**
   * A manifest whose local dump is missing (a catalog rebuilt from the offsite store after the host was
   * lost, or a dump removed by hand): there is nothing to copy, and that is no replication failure. When
   * the offsite copy exists, is re-hashed to the manifest's size and SHA-256 (the same proof a copy gets)
   * and the offsite manifest is this one, the normal `replicated` receipt is written: the store does hold
   * a proven copy, which is what the receipt says. Otherwise the backup stays pending with the reason
   * logged and no receipt: a failure receipt would raise `replication_failed` for a copy nobody can make,
   * and the next reconcile looks again (a copy that failed its proof is not re-hashed until it changes).
   */
  async function proveOffsiteOnly(
    entry: CompleteEntry,
    attempt: number,
  ): Promise<{ receipt: OffsiteReceipt } | { pending: string }> {
    const m = entry.manifest;
    const dumpKey = dumpKeyOf(entry.projectId, entry.backupId);
    const manifestKey = manifestKeyOf(entry.projectId, entry.backupId);
    const at = `${store.location}/${dumpKey}`;
    try {
      await options.identity?.ensure();
      const head = await store.head(dumpKey);
      if (!head)
        return { pending: `the local dump is missing and ${at} does not exist: nothing to copy or prove` };
      if (!storedSizeFits(head.sizeBytes, m.sizeBytes)) {
        return {
          pending: `the local dump is missing and ${at} is ${head.sizeBytes} B, not the manifest's ${m.sizeBytes} B (nor its age encryption)`,
        };
      }
      const seen = `${head.sizeBytes}:${head.modifiedAt}`;
      const failed = failedOffsiteProofs.get(dumpKey);
      if (failed?.seen === seen) return { pending: failed.why };
      let encryption: OffsiteReceipt['encryption'];
      let proof: ContentHash | undefined;
      if (head.sizeBytes !== m.sizeBytes && isAgeHead(await firstBytesOf(dumpKey))) {
        // Encrypted: the stored bytes and the plaintext they open to, in one read (needs an identity).
        const sealed = await proveSealedObject(
          store,
          dumpKey,
          head.sizeBytes,
          options.identities?.(),
          controller.signal,
        );
        proof = sealed.plain;
        encryption = {
          format: 'age',
          recipients: [],
          storedSha256: sealed.stored.sha256,
          storedSizeBytes: sealed.stored.sizeBytes,
        };
      } else {
        proof = await store.hash(dumpKey, controller.signal);
      }
      if (!proof || proof.sha256 !== m.sha256 || proof.sizeBytes !== m.sizeBytes) {
        const why =
          `the local dump is missing and ${at} ${proof ? `hashes to ${proof.sha256.slice(0, 12)}…` : 'vanished while read'}, ` +
          `not the manifest's ${m.sha256.slice(0, 12)}…`;
        failedOffsiteProofs.set(dumpKey, { seen, why });
        return { pending: why };
      }
      failedOffsiteProofs.delete(dumpKey);
      const offsiteManifest = await readOffsiteManifest(store, entry.projectId, entry.backupId);
      if (!offsiteManifest) {
        // The manifest beside the copy is ours to put there (it is the local file, not the missing dump).
        await copyAndProve(
          manifestKey,
          () => createReadStream(entry.paths.manifest),
          await hashFile(entry.paths.manifest),
        );
      } else if (!isDeepStrictEqual(offsiteManifest, m)) {
        return {
          pending: `the local dump is missing and the offsite manifest ${manifestKey} differs from the local one`,
        };
      }
      const receipt: OffsiteReceipt = {
        backupId: entry.backupId,
        projectId: entry.projectId,
        status: 'replicated',
        store: store.location,
        key: dumpKey,
        contentSha256: proof.sha256,
        sizeBytes: proof.sizeBytes,
        manifestSha256: m.sha256,
        attempts: attempt,
        at: new Date().toISOString(),
        // No lagSeconds: the local manifest arrived from the store, long after the copy was made.
        ...(encryption ? { encryption } : {}),
      };
      await catalog.writeOffsiteReceipt(receipt);
      return { receipt };
    } catch (error) {
      if (controller.signal.aborted) throw error;
      return {
        pending: `the local dump is missing and the offsite copy could not be proven: ${errorText(error)}`,
      };
    }
  }

  return { copy: attemptCopy, proveOffsiteOnly };
}
