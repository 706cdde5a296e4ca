// The filesystem offsite driver: FLUX_BACKUPS_OFFSITE_DIR is a directory (usually another disk or a
// network mount). Objects are written temp → fsync → hard link (never replaces) → fsync dir, so a key
// holds a whole object or nothing, and an existing object is never overwritten.
import { createHash } from 'node:crypto';
import type { Dirent, Stats } from 'node:fs';
import { chmod, type FileHandle, link, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { addAbortSignal, type Readable } from 'node:stream';
import { fsyncDir, STREAM_CHUNK_BYTES, streamToPendingFile, TEMP_PREFIX } from '../atomic.js';
import { AppError, errnoOf, fsWriteError, isAppError } from '../errors.js';
import { dirWritableCheck } from '../readiness.js';
import { assertKey, assertPrefix, assertSha256 } from './keys.js';
import type { ContentHash, OffsiteObject, OffsiteStore, PutResult } from './types.js';

export const DRIVER_NAME = 'fs';

const VARIABLE = 'FLUX_BACKUPS_OFFSITE_DIR';
/** Stored objects are read-only: immutability is the contract, the mode says so to people too. */
const OBJECT_MODE = 0o440;
/** link(2) errnos meaning "this filesystem has no hard links" (some FUSE/SMB mounts). */
const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/**
 * Hashes a stored file in 1 MiB chunks; a small file gets a buffer of its own size, since a stream
 * allocates its whole chunk up front and thousands of small objects would otherwise churn GiBs.
 */
async function hashStoredFile(file: string, signal?: AbortSignal): Promise<ContentHash> {
  const handle = await open(file, 'r');
  const { size } = await handle.stat().catch(async (error) => {
    await handle.close();
    throw error;
  });
  const stream = handle.createReadStream({
    highWaterMark: Math.max(1024, Math.min(size, STREAM_CHUNK_BYTES)),
  });
  if (signal) addAbortSignal(signal, stream);
  const hash = createHash('sha256');
  let sizeBytes = 0;
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    sizeBytes += (chunk as Buffer).length;
  }
  return { sizeBytes, sha256: hash.digest('hex') };
}

export interface FsOffsiteOptions {
  /** Absolute directory of the store. */
  root: string;
}

export function createFsOffsiteStore(options: FsOffsiteOptions): OffsiteStore {
  const root = path.resolve(options.root);

  function pathOf(key: string): string {
    const resolved = path.resolve(root, ...assertKey(key).split('/'));
    if (!resolved.startsWith(root + path.sep))
      throw new AppError('invalid_id', 'offsite key escapes the store');
    return resolved;
  }

  function keyOf(file: string): string {
    return path.relative(root, file).split(path.sep).join('/');
  }

  /** Errors met writing under the root, translated for the operator (ENOTDIR: a path part is a file). */
  function writeError(error: unknown, file: string, what: string): AppError {
    if (isAppError(error)) return error;
    // ENOTDIR (and EEXIST from mkdir): a part of the path is a file. Root can write anywhere else, so
    // this is also what an "unwritable" store looks like to a process running as root.
    if (errnoOf(error) === 'ENOTDIR' || (errnoOf(error) === 'EEXIST' && what.startsWith('creating'))) {
      return new AppError(
        'dir_not_writable',
        `${what}: cannot create ${path.dirname(file)} (${errnoOf(error)}: a part of the path is a file, not a ` +
          `directory). Point ${VARIABLE}=${root} at a directory this process can write.`,
        { cause: error, details: { path: file, errno: errnoOf(error) } },
      );
    }
    return fsWriteError(error, file, what);
  }

  function readError(error: unknown, file: string, what: string): AppError {
    if (isAppError(error)) return error;
    const errno = errnoOf(error);
    if (errno === 'EACCES' || errno === 'EPERM') return fsWriteError(error, file, what);
    return new AppError('dependency_unavailable', `${what}: ${file}: ${(error as Error).message}`, {
      cause: error,
      details: { path: file, errno },
    });
  }

  async function statObject(file: string): Promise<Stats | undefined> {
    try {
      const s = await stat(file);
      return s.isFile() ? s : undefined;
    } catch (error) {
      const errno = errnoOf(error);
      if (errno === 'ENOENT' || errno === 'ENOTDIR') return undefined;
      throw readError(error, file, 'reading offsite object metadata');
    }
  }

  async function hashOf(file: string, signal?: AbortSignal): Promise<ContentHash | undefined> {
    try {
      return await hashStoredFile(file, signal);
    } catch (error) {
      const errno = errnoOf(error);
      if (errno === 'ENOENT' || errno === 'ENOTDIR' || errno === 'EISDIR') return undefined;
      if (signal?.aborted) throw signal.reason ?? error;
      throw readError(error, file, 'reading an offsite object back');
    }
  }

  /** An existing object at `key`: `exists` when its content is `expected`, else `conflict`. */
  async function existing(key: string, file: string, expected: ContentHash): Promise<PutResult> {
    const found = await hashOf(file);
    if (!found) throw new AppError('conflict', `offsite object ${key} vanished while being compared; retry`);
    const same = found.sha256 === expected.sha256 && found.sizeBytes === expected.sizeBytes;
    return { key, outcome: same ? 'exists' : 'conflict', ...found };
  }

  /**
   * Puts `tmp` in place at `target` unless something is there already. link(2) fails with EEXIST instead
   * of replacing, atomically; rename(2) would silently overwrite. Returns false when the target existed.
   */
  async function commitNoReplace(tmp: string, target: string): Promise<boolean> {
    try {
      await link(tmp, target);
    } catch (error) {
      const errno = errnoOf(error);
      if (errno === 'EEXIST') return false;
      if (!errno || !NO_HARD_LINKS.has(errno)) throw error;
      // No hard links here: check then rename. Only another writer racing on the same key in this
      // instant could slip between the two, and a single replicate process per store is the design.
      if (await statObject(target)) return false;
      await rename(tmp, target);
      await fsyncDir(path.dirname(target));
      return true;
    }
    await rm(tmp, { force: true });
    await fsyncDir(path.dirname(target));
    return true;
  }

  async function* walk(dir: string): AsyncGenerator<string> {
    let entries: Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (error) {
      const errno = errnoOf(error);
      if (errno === 'ENOENT' || errno === 'ENOTDIR') return;
      throw readError(error, dir, 'listing the offsite store');
    }
    for (const entry of entries) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) yield* walk(full);
      else if (entry.isFile()) yield full;
    }
  }

  return {
    driver: DRIVER_NAME,
    location: root,

    async put(key, source, options) {
      let target: string;
      try {
        target = pathOf(key);
        assertSha256(options.sha256);
      } catch (error) {
        source.destroy();
        throw error;
      }
      const expected = { sha256: options.sha256, sizeBytes: options.sizeBytes };
      try {
        await mkdir(path.dirname(target), { recursive: true });
      } catch (error) {
        source.destroy();
        throw writeError(error, target, 'creating the offsite project directory');
      }
      // An object already there needs no bytes from the source: compare and stop.
      if (await statObject(target)) {
        source.destroy();
        return existing(key, target, expected);
      }
      const pending = await streamToPendingFile(target, source, {
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      }).catch((error) => {
        if (options.signal?.aborted) throw options.signal.reason ?? error;
        throw writeError(error, target, 'writing an offsite copy');
      });
      try {
        if (pending.sha256 !== expected.sha256 || pending.sizeBytes !== expected.sizeBytes) {
          throw new AppError(
            'artifact_invalid',
            `the content streamed to offsite key ${key} (${pending.sizeBytes} B, sha256 ${pending.sha256.slice(0, 12)}…) ` +
              `is not what the caller declared (${expected.sizeBytes} B, ${expected.sha256.slice(0, 12)}…); nothing was stored`,
            { details: { key, sizeBytes: pending.sizeBytes, sha256: pending.sha256 } },
          );
        }
        options.signal?.throwIfAborted();
        await chmod(pending.tmp, OBJECT_MODE);
        const created = await commitNoReplace(pending.tmp, target);
        if (!created) {
          await pending.discard();
          return existing(key, target, expected);
        }
        return { key, outcome: 'created', ...expected };
      } catch (error) {
        await pending.discard();
        throw writeError(error, target, 'committing an offsite copy');
      }
    },

    async head(key) {
      const s = await statObject(pathOf(key));
      return s ? { key, sizeBytes: s.size, modifiedAt: s.mtime.toISOString() } : undefined;
    },

    hash(key, signal) {
      return hashOf(pathOf(key), signal);
    },

    async get(key, signal) {
      const file = pathOf(key);
      let handle: FileHandle;
      try {
        handle = await open(file, 'r');
      } catch (error) {
        const errno = errnoOf(error);
        if (errno === 'ENOENT' || errno === 'ENOTDIR' || errno === 'EISDIR')
          throw new AppError('not_found', `no offsite object ${key}`);
        throw readError(error, file, 'opening an offsite object');
      }
      // Read from the handle we opened: the existence check and the read are the same file.
      const { size } = await handle.stat();
      const stream: Readable = handle.createReadStream({
        highWaterMark: Math.max(1024, Math.min(size, STREAM_CHUNK_BYTES)),
      });
      return signal ? addAbortSignal(signal, stream) : stream;
    },

    async *list(prefix) {
      assertPrefix(prefix);
      // Walk only the deepest directory the prefix names, then filter by the whole prefix.
      const dirPart = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
      const start = dirPart ? path.join(root, ...dirPart.split('/')) : root;
      for await (const file of walk(start)) {
        if (path.basename(file).startsWith(TEMP_PREFIX) || path.basename(file).startsWith('.')) continue;
        const key = keyOf(file);
        if (!key.startsWith(prefix)) continue;
        const s = await statObject(file);
        if (s) yield { key, sizeBytes: s.size, modifiedAt: s.mtime.toISOString() } satisfies OffsiteObject;
      }
    },

    async check() {
      const result = await dirWritableCheck(root, VARIABLE).run();
      return { ok: result.ok, detail: result.detail };
    },

    async remove(key) {
      const file = pathOf(key);
      try {
        // unlink needs write permission on the directory, not on the read-only object.
        await rm(file);
      } catch (error) {
        const errno = errnoOf(error);
        if (errno === 'ENOENT' || errno === 'ENOTDIR') return;
        throw writeError(error, file, 'removing an expired offsite object');
      }
      await fsyncDir(path.dirname(file));
    },

    async sweepTemp(olderThanMs) {
      const cutoff = Date.now() - olderThanMs;
      let removed = 0;
      for await (const file of walk(root)) {
        if (!path.basename(file).startsWith(TEMP_PREFIX)) continue;
        const s = await stat(file).catch(() => undefined);
        if (s && s.mtimeMs < cutoff) {
          await rm(file, { force: true });
          removed += 1;
        }
      }
      return removed;
    },
  };
}
