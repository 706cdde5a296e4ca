// One retained copy re-read in full and compared with its manifest. A local dump that no longer matches
// gets a `.rehash.json` finding beside it (replicate its one writer), which every process's catalog takes
// as the dump's hash; an offsite copy that no longer matches gets a failed receipt (reason
// offsite_invalid) and is never overwritten. Each finding is one event, not one per sweep.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { STREAM_CHUNK_BYTES } from '../../shared/atomic.js';
import { isProjectHash } from '../../shared/catalog/ids.js';
import { errnoOf, isAppError } from '../../shared/errors.js';
import { isAgeHead } from '../../shared/offsite/age.js';
import { dumpKeyOf } from '../../shared/offsite/keys.js';
import { rehashMetrics } from './metrics.js';
import { trustedOffsiteManifest } from './offsite-inventory.js';
import { type Pacer, pacedHash } from './paced-hash.js';
import { proveSealedObject } from './sealed-copy.js';
import { keyOf, OFFSITE_INVALID, type SweepSummary, type UpkeepContext, type Work } from './upkeep-types.js';

/** true = matches, false = does not, undefined = not read this time. */
export type RehashOutcome = boolean | undefined;

export interface CopyRehash {
  local(w: Work, pacer: Pacer, summary: SweepSummary): Promise<RehashOutcome>;
  offsite(w: Work, pacer: Pacer, summary: SweepSummary): Promise<RehashOutcome>;
}

export function createCopyRehash(ctx: UpkeepContext): CopyRehash {
  const { rehashBytes } = rehashMetrics(ctx.metrics);
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
      ctx.signal,
    );
    rehashBytes.inc({ place: 'local' }, found.sizeBytes);
    const after = await stat(file).catch(() => undefined);
    if (!after || after.mtimeMs !== before.mtimeMs || after.size !== before.size) return undefined;
    const ok = found.sha256 === m.sha256 && found.sizeBytes === m.sizeBytes;
    if (ok) {
      if (entry.rehash) {
        await ctx.catalog.writeRehashRecord(w.projectId, w.backupId, undefined);
        ctx.log.info(
          { projectId: w.projectId, backupId: w.backupId },
          'the local dump matches its manifest again',
        );
      }
      return true;
    }
    const repeated =
      entry.rehash?.foundSha256 === found.sha256 &&
      entry.rehash.mtimeMs === after.mtimeMs &&
      entry.rehash.sizeBytes === after.size;
    await ctx.catalog.writeRehashRecord(w.projectId, w.backupId, {
      backupId: w.backupId,
      projectId: w.projectId,
      manifestSha256: m.sha256,
      foundSha256: found.sha256,
      sizeBytes: after.size,
      mtimeMs: after.mtimeMs,
      at: new Date().toISOString(),
    });
    const reason = found.sizeBytes === m.sizeBytes ? 'sha256_mismatch' : 'size_mismatch';
    summary.invalid.push({ place: 'local', projectId: w.projectId, backupId: w.backupId, reason });
    ctx.log.error(
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
      await ctx.emit('flux.backup.artifact_invalid', {
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
    if (ctx.isCopying(w.projectId, w.backupId)) return undefined;
    const key = dumpKeyOf(w.projectId, w.backupId);
    const known = ctx.state().backups[keyOf(w.projectId, w.backupId)];
    let expected: { sha256: string; sizeBytes: number; projectHash?: string } | undefined;
    let refused: string | undefined;
    if (w.entry) expected = w.entry.manifest;
    else if (known) expected = known;
    else {
      const manifest = await trustedOffsiteManifest(ctx, w.projectId, w.backupId);
      if (typeof manifest === 'string') refused = manifest;
      else expected = manifest;
    }
    const receipt = w.entry?.offsite;
    let found: { sha256: string; sizeBytes: number } | undefined;
    let sealed = false;
    if (expected) {
      try {
        const stream = await ctx.store.get(key, ctx.signal);
        let first: Buffer | undefined;
        const peek = new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            first ??= chunk;
            callback(null, chunk);
          },
        });
        stream.once('error', (error) => peek.destroy(error));
        found = await pacedHash(stream.pipe(peek), pacer, ctx.signal);
        sealed = !!first && isAgeHead(first);
        rehashBytes.inc({ place: 'offsite' }, found.sizeBytes);
      } catch (error) {
        if (!(isAppError(error) && error.code === 'not_found')) throw error;
      }
    }
    const receiptSealed = w.entry && receipt?.encryption ? receipt.encryption : undefined;
    if (found && sealed && !receiptSealed) {
      // Encrypted, and no receipt names its stored hash: only decrypting proves it (an identity is needed).
      const identities = ctx.identities?.();
      if (!identities) return undefined;
      try {
        const proof = await proveSealedObject(ctx.store, key, found.sizeBytes, identities, ctx.signal);
        rehashBytes.inc({ place: 'offsite' }, proof.stored.sizeBytes);
        found = proof.plain;
      } catch (error) {
        // No identity here opens it: not judged this time (the start-up check names the fix).
        if (isAppError(error) && error.code === 'encryption_key_missing') return undefined;
        // A damaged age file: `found` stays the stored bytes' hash, which no plaintext matches.
        if (!(isAppError(error) && error.code === 'artifact_invalid')) throw error;
      }
    }
    // An encrypted copy with a receipt is held to the stored bytes the receipt proved: replicate proves
    // what is stored, verify and restore the plaintext.
    const want = receiptSealed
      ? { sha256: receiptSealed.storedSha256, sizeBytes: receiptSealed.storedSizeBytes }
      : expected;
    const ok = !!want && !!found && found.sha256 === want.sha256 && found.sizeBytes === want.sizeBytes;
    const wasOk = ctx.state().copies[w.copy.id]?.ok !== false;
    if (ok) {
      if (w.entry && receipt?.reason === OFFSITE_INVALID) {
        await ctx.catalog.writeOffsiteReceipt({
          ...receipt,
          status: 'replicated',
          ...(receiptSealed
            ? { contentSha256: w.entry.manifest.sha256, sizeBytes: w.entry.manifest.sizeBytes }
            : { contentSha256: found!.sha256, sizeBytes: found!.sizeBytes }),
          at: new Date().toISOString(),
          reason: undefined,
          error: undefined,
        });
        ctx.log.info(
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
        ? `the offsite copy ${ctx.store.location}/${key} is gone`
        : `re-hash of ${ctx.store.location}/${key} read ${found.sizeBytes} B sha256 ${found.sha256.slice(0, 12)}…, not the ${receiptSealed ? "receipt's stored" : "manifest's"} ${want!.sizeBytes} B ${want!.sha256.slice(0, 12)}…; ` +
          'move the object aside (the next reconcile copies the local backup again, when there is one)';
    summary.invalid.push({ place: 'offsite', projectId: w.projectId, backupId: w.backupId, reason });
    ctx.log.error(
      { projectId: w.projectId, backupId: w.backupId, key, reason, repeated: !wasOk },
      `ALARM: ${error}`,
    );
    if (w.entry && expected && receipt) {
      await ctx.catalog.writeOffsiteReceipt({
        ...receipt,
        status: 'failed',
        // What was read; an encrypted copy's receipt keeps the stored hash it proved, to match again.
        ...(found ? { contentSha256: found.sha256 } : {}),
        ...(found && !receiptSealed ? { sizeBytes: found.sizeBytes } : {}),
        manifestSha256: w.entry.manifest.sha256,
        at: new Date().toISOString(),
        reason: OFFSITE_INVALID,
        error,
      });
    }
    if (wasOk) {
      const hash = w.entry?.manifest.projectHash ?? expected?.projectHash;
      await ctx.emit('flux.backup.offsite_invalid', {
        subject: keyOf(w.projectId, w.backupId),
        data: {
          projectId: w.projectId,
          ...(hash && isProjectHash(hash) ? { projectHash: hash } : {}),
          backupId: w.backupId,
          store: ctx.store.location,
          key,
          ...(expected ? { expectedSha256: expected.sha256 } : {}),
          ...(found ? { foundSha256: found.sha256 } : {}),
          reason,
        },
      });
    }
    return false;
  }

  return { local: rehashLocal, offsite: rehashOffsite };
}
