// Atomic, durable file writes: temp file in the same directory, fsync, rename, fsync the directory.
// A reader sees the old file or the whole new one, never a part, even after a crash.
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';

/** Chunk size for streaming reads and writes of backups (1 MiB hashes ~1.5x faster than 64 KiB here). */
export const STREAM_CHUNK_BYTES = 1024 * 1024;

/** Prefix of every temp file we write; start-up cleanup removes files that carry it. */
export const TEMP_PREFIX = '.tmp-';

export function tempPathFor(target: string): string {
  return path.join(
    path.dirname(target),
    `${TEMP_PREFIX}${path.basename(target)}.${randomBytes(6).toString('hex')}`,
  );
}

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export async function ensureDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
}

/** Writes `data` to `target` atomically and durably. */
export async function writeFileAtomic(target: string, data: string | Uint8Array): Promise<void> {
  const tmp = tempPathFor(target);
  try {
    const handle = await open(tmp, 'wx', 0o640);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, target);
  } catch (error) {
    await rm(tmp, { force: true });
    throw error;
  }
  await fsyncDir(path.dirname(target));
}

export async function writeJsonAtomic(target: string, value: unknown): Promise<void> {
  await writeFileAtomic(target, `${JSON.stringify(value, null, 2)}\n`);
}

export interface StreamedFile {
  sizeBytes: number;
  sha256: string;
}

export interface PendingFile extends StreamedFile {
  /** Temp path holding the complete, fsynced bytes. */
  tmp: string;
  /** Renames into place and fsyncs the directory. */
  commit(): Promise<void>;
  /** Removes the temp file (idempotent). */
  discard(): Promise<void>;
}

/**
 * Streams `source` into a temp file beside `target`, hashing on the way, and fsyncs it. Nothing appears
 * under `target` until `commit()`: a producer that dies mid-stream (its stdout just ends) is discarded
 * by the caller after checking the producer's exit. Any stream error removes the temp file.
 */
export async function streamToPendingFile(
  target: string,
  source: Readable,
  options: { signal?: AbortSignal; onProgress?: (bytes: number) => void } = {},
): Promise<PendingFile> {
  const tmp = tempPathFor(target);
  const hash = createHash('sha256');
  let sizeBytes = 0;
  const out = createWriteStream(tmp, { flags: 'wx', mode: 0o640, highWaterMark: STREAM_CHUNK_BYTES });
  // The file is opened (and so created) asynchronously: a stream destroyed early still creates it after
  // destroy() returns, so the temp is removed only once the stream has closed.
  const closed = new Promise<void>((resolve) => out.once('close', () => resolve()));
  const discard = () => rm(tmp, { force: true });
  try {
    await new Promise<void>((resolve, reject) => {
      const fail = (error: unknown) => {
        source.destroy();
        out.destroy();
        reject(error);
      };
      const onAbort = () => fail(options.signal?.reason ?? new Error('aborted'));
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      source.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        sizeBytes += chunk.length;
        options.onProgress?.(sizeBytes);
        if (!out.write(chunk)) {
          source.pause();
          out.once('drain', () => source.resume());
        }
      });
      source.once('error', fail);
      out.once('error', fail);
      source.once('end', () => out.end());
      out.once('finish', () => {
        options.signal?.removeEventListener('abort', onAbort);
        resolve();
      });
    });
    const handle = await open(tmp, 'r+');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (error) {
    out.destroy();
    await closed;
    await discard();
    throw error;
  }
  return pendingFile(target, tmp, { sizeBytes, sha256: hash.digest('hex') });
}

function pendingFile(target: string, tmp: string, content: StreamedFile): PendingFile {
  return {
    tmp,
    ...content,
    discard: () => rm(tmp, { force: true }),
    async commit() {
      await rename(tmp, target);
      await fsyncDir(path.dirname(target));
    },
  };
}

/**
 * Adopts a complete temp file another process wrote beside `target` (pg_dump --file): fsyncs it and
 * hashes it in 1 MiB chunks, with the same commit/discard as a streamed file.
 */
export async function adoptPendingFile(
  target: string,
  tmp: string,
  signal?: AbortSignal,
): Promise<PendingFile> {
  const handle = await open(tmp, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  return pendingFile(target, tmp, await hashFile(tmp, signal));
}

/** Creates an empty temp file beside `target` for another process to fill (errors are ours to explain). */
export async function createTempFileFor(target: string): Promise<string> {
  const tmp = tempPathFor(target);
  const handle = await open(tmp, 'wx', 0o640);
  await handle.close();
  return tmp;
}

/** Hashes a file by streaming it in 1 MiB chunks (never read whole). */
export async function hashFile(file: string, signal?: AbortSignal): Promise<StreamedFile> {
  const hash = createHash('sha256');
  let sizeBytes = 0;
  const handle = await open(file, 'r');
  try {
    // One buffer, refilled: hashing a multi-GB dump allocates nothing per chunk (flat RSS, no GC churn),
    // and a tiny manifest does not get a 1 MiB buffer.
    const { size } = await handle.stat();
    const buffer = Buffer.allocUnsafe(Math.max(64 * 1024, Math.min(STREAM_CHUNK_BYTES, size)));
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      sizeBytes += bytesRead;
    }
  } finally {
    await handle.close();
  }
  return { sizeBytes, sha256: hash.digest('hex') };
}
