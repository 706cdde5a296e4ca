// The encrypted form of a local dump, staged under FLUX_STATE_DIR before it is put offsite. age output is
// random (a fresh file key each time), so the store's "same bytes again = nothing to do" only holds if a
// retry puts the very file the failed attempt put: the staged file is kept until the receipt is written,
// and a retry after a crash between the put and the receipt finds the object already stored (`exists`)
// instead of raising a conflict. The staged file holds ciphertext only.
import { createReadStream } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ensureDir, STREAM_CHUNK_BYTES, streamToPendingFile, writeJsonAtomic } from '../../shared/atomic.js';
import { AppError, errnoOf, fsWriteError } from '../../shared/errors.js';
import { type AgeIdentities, hashingPassThrough, seal, unseal } from '../../shared/offsite/age.js';
import type { ContentHash, OffsiteStore } from '../../shared/offsite/types.js';

const StagedSchema = z.object({
  plainSha256: z.string(),
  plainSizeBytes: z.number().int().nonnegative(),
  storedSha256: z.string(),
  storedSizeBytes: z.number().int().nonnegative(),
  recipients: z.array(z.string()),
});

export interface StagedCopy {
  file: string;
  stored: ContentHash;
  recipients: string[];
  /** Removes the staged file (after the receipt was written). */
  discard(): Promise<void>;
}

const sameSet = (a: readonly string[], b: readonly string[]) =>
  a.length === b.length && [...a].sort().every((v, i) => v === [...b].sort()[i]);

/**
 * The staged age file of `dumpFile` for these recipients: reused when a previous attempt left a complete
 * one of the same plaintext and recipients, made afresh otherwise. The plaintext is hashed while it is
 * encrypted and must be `expected` (the manifest's), or nothing is staged.
 */
export async function stageSealed(input: {
  stagingDir: string;
  projectId: string;
  backupId: string;
  dumpFile: string;
  expected: ContentHash;
  recipients: readonly string[];
  signal?: AbortSignal;
}): Promise<StagedCopy> {
  const dir = path.join(input.stagingDir, input.projectId);
  const file = path.join(dir, `${input.backupId}.dump.age`);
  const record = `${file}.json`;
  const discard = async () => {
    await rm(record, { force: true });
    await rm(file, { force: true });
  };
  const staged = await readFile(record, 'utf8')
    .then((text) => StagedSchema.parse(JSON.parse(text)))
    .catch(() => undefined);
  if (
    staged &&
    staged.plainSha256 === input.expected.sha256 &&
    staged.plainSizeBytes === input.expected.sizeBytes &&
    sameSet(staged.recipients, input.recipients) &&
    (await stat(file)
      .then((s) => s.size === staged.storedSizeBytes)
      .catch(() => false))
  ) {
    return {
      file,
      stored: { sha256: staged.storedSha256, sizeBytes: staged.storedSizeBytes },
      recipients: staged.recipients,
      discard,
    };
  }
  await discard();
  try {
    await ensureDir(dir);
  } catch (error) {
    throw fsWriteError(
      error,
      input.stagingDir,
      'creating the staging directory of encrypted copies under FLUX_STATE_DIR',
    );
  }
  const source = createReadStream(input.dumpFile, {
    highWaterMark: Math.max(1024, Math.min(input.expected.sizeBytes, STREAM_CHUNK_BYTES)),
  });
  const sealed = await seal(source, input.expected.sizeBytes, input.recipients);
  let pending: Awaited<ReturnType<typeof streamToPendingFile>>;
  try {
    pending = await streamToPendingFile(file, sealed.stream, input.signal ? { signal: input.signal } : {});
  } catch (error) {
    const code = errnoOf(error);
    if (code === 'ENOSPC' || code === 'EACCES' || code === 'EPERM' || code === 'EROFS')
      throw fsWriteError(error, input.stagingDir, 'staging the encrypted copy under FLUX_STATE_DIR');
    throw error;
  }
  const plain = sealed.plain();
  if (plain.sha256 !== input.expected.sha256 || plain.sizeBytes !== input.expected.sizeBytes) {
    await pending.discard();
    throw new AppError(
      'artifact_invalid',
      `the local dump ${input.dumpFile} read as ${plain.sizeBytes} B sha256 ${plain.sha256.slice(0, 12)}…, not its manifest's ` +
        `${input.expected.sizeBytes} B ${input.expected.sha256.slice(0, 12)}…; nothing was copied`,
    );
  }
  if (pending.sizeBytes !== sealed.storedSizeBytes) {
    await pending.discard();
    throw new AppError(
      'internal',
      `the encrypted copy is ${pending.sizeBytes} B, not the ${sealed.storedSizeBytes} B age predicts`,
    );
  }
  await pending.commit();
  const recipients = [...input.recipients];
  await writeJsonAtomic(record, {
    plainSha256: plain.sha256,
    plainSizeBytes: plain.sizeBytes,
    storedSha256: pending.sha256,
    storedSizeBytes: pending.sizeBytes,
    recipients,
  } satisfies z.infer<typeof StagedSchema>);
  return { file, stored: { sha256: pending.sha256, sizeBytes: pending.sizeBytes }, recipients, discard };
}

/**
 * Reads an encrypted stored object once, hashing the stored bytes and the plaintext they decrypt to:
 * the proof of a copy found encrypted (no local dump to compare with, or a conflicting object).
 */
export async function proveSealedObject(
  store: OffsiteStore,
  key: string,
  storedSize: number,
  identities: AgeIdentities | undefined,
  signal?: AbortSignal,
): Promise<{ stored: ContentHash; plain: ContentHash }> {
  const storedHash = hashingPassThrough();
  const source = await store.get(key, signal);
  source.once('error', (error) => storedHash.stream.destroy(error));
  const opened = await unseal(
    source.pipe(storedHash.stream),
    storedSize,
    identities,
    `offsite copy ${store.location}/${key}`,
  );
  const plainHash = hashingPassThrough();
  opened.stream.once('error', (error) => plainHash.stream.destroy(error));
  for await (const _ of opened.stream.pipe(plainHash.stream)) {
    // drained for the hashes
  }
  return { stored: storedHash.result(), plain: plainHash.result() };
}
