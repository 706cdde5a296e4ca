// Where a backup's bytes are read from for download, verify and restore: the local catalog file or the
// offsite copy, behind one shape (size before reading, the manifest's expectation, fresh streams), so a
// backup whose local file is gone is still provable from the offsite store, and the proof says which.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { type Readable, Transform } from 'node:stream';
import { STREAM_CHUNK_BYTES } from '../atomic.js';
import { type Manifest, ManifestSchema } from '../catalog/records.js';
import { AppError, errnoOf } from '../errors.js';
import { MIB } from '../units.js';
import { type AgeIdentities, isAgeHead, unseal } from './age.js';
import { dumpKeyOf, manifestKeyOf } from './keys.js';
import type { ContentHash, OffsiteStore } from './types.js';

export const ARTIFACT_SOURCES = ['local', 'offsite'] as const;
export type ArtifactSource = (typeof ARTIFACT_SOURCES)[number];

/** A manifest lists every table and sequence; far above any real one, far below a memory problem. */
const MANIFEST_MAX_BYTES = 64 * MIB;

export interface Artifact {
  source: ArtifactSource;
  /** The local path, or `<store location>/<key>`: for receipts and logs (never credentials). */
  location: string;
  /** Size of the content as found now (stat / HEAD; for an encrypted copy, of the plaintext), known before it is read. */
  sizeBytes: number;
  /** Set for an age-encrypted offsite copy: `open` and `readHead` give the plaintext. */
  encrypted?: { format: 'age'; storedSizeBytes: number };
  /** What the manifest recorded: the bytes must be exactly this. */
  expected: ContentHash;
  /** The whole content, read afresh on each call. */
  open(signal?: AbortSignal): Promise<Readable>;
  /** The first `bytes` bytes (the archive header) without reading the rest. */
  readHead(bytes: number, signal?: AbortSignal): Promise<Buffer>;
}

/** What openArtifact needs of a catalog entry (a CatalogEntry with a manifest has all of it). */
export interface ArtifactRef {
  projectId: string;
  backupId: string;
  manifest: Pick<Manifest, 'sha256' | 'sizeBytes'>;
  /** The local dump path (`entry.paths.dump`); needed for `local`. */
  paths?: { dump: string };
}

export interface ArtifactDeps {
  /** The offsite store (or a getter, so it is only built when an offsite copy is asked for). */
  store?: OffsiteStore | (() => OffsiteStore);
  /** The identities that open age-encrypted copies (FLUX_BACKUP_AGE_IDENTITY_FILE), when this host has them. */
  identities?: AgeIdentities | undefined;
}

export function parseArtifactSource(value: unknown, fallback: ArtifactSource = 'local'): ArtifactSource {
  if (value === undefined || value === null || value === '') return fallback;
  if (typeof value === 'string' && (ARTIFACT_SOURCES as readonly string[]).includes(value))
    return value as ArtifactSource;
  throw new AppError('bad_request', `source must be one of ${ARTIFACT_SOURCES.join(', ')}`);
}

function storeOf(deps: ArtifactDeps): OffsiteStore {
  const store = typeof deps.store === 'function' ? deps.store() : deps.store;
  if (!store) throw new AppError('internal', 'no offsite store was given for an offsite artifact');
  return store;
}

/** Reads up to `bytes` from the start of a stream, then lets the rest go unread. */
async function firstBytes(stream: Readable, bytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let have = 0;
  try {
    for await (const chunk of stream) {
      chunks.push(chunk as Buffer);
      have += (chunk as Buffer).length;
      if (have >= bytes) break;
    }
  } finally {
    stream.destroy();
  }
  return Buffer.concat(chunks).subarray(0, bytes);
}

/**
 * The artifact of a backup from `source`, or undefined when that copy does not exist (the caller's
 * "artifact missing"). Only metadata is read here; the bytes are read by `open`/`readHead`.
 */
export async function openArtifact(
  ref: ArtifactRef,
  source: ArtifactSource,
  deps: ArtifactDeps = {},
): Promise<Artifact | undefined> {
  const expected = { sha256: ref.manifest.sha256, sizeBytes: ref.manifest.sizeBytes };
  if (source === 'local') {
    const file = ref.paths?.dump;
    if (!file) throw new AppError('internal', 'a local artifact needs the entry paths');
    let sizeBytes: number;
    try {
      sizeBytes = (await stat(file)).size;
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return undefined;
      throw error;
    }
    return {
      source,
      location: file,
      sizeBytes,
      expected,
      async open(signal) {
        const stream = createReadStream(file, {
          highWaterMark: Math.max(1024, Math.min(sizeBytes, STREAM_CHUNK_BYTES)),
          ...(signal ? { signal } : {}),
        });
        // Open now, so a file removed since the stat fails here and not mid-stream.
        await new Promise<void>((resolve, reject) => {
          stream.once('open', () => resolve());
          stream.once('error', reject);
        });
        return stream;
      },
      async readHead(bytes) {
        const handle = await open(file, 'r');
        try {
          const { buffer, bytesRead } = await handle.read(Buffer.alloc(bytes), 0, bytes, 0);
          return buffer.subarray(0, bytesRead);
        } finally {
          await handle.close();
        }
      },
    };
  }
  const store = storeOf(deps);
  const key = dumpKeyOf(ref.projectId, ref.backupId);
  const head = await store.head(key);
  if (!head) return undefined;
  const location = `${store.location}/${key}`;
  const stored = {
    source,
    location,
    sizeBytes: head.sizeBytes,
    expected,
    open: (signal?: AbortSignal) => store.get(key, signal),
    async readHead(bytes: number, signal?: AbortSignal) {
      return firstBytes(await store.get(key, signal), bytes);
    },
  } satisfies Artifact;
  if (!isAgeHead(await stored.readHead(AGE_MAGIC_BYTES))) return stored;
  // An encrypted copy: readers see the plaintext, proven against the manifest as a plain copy is.
  const opened = async (signal?: AbortSignal) =>
    unseal(await store.get(key, signal), head.sizeBytes, deps.identities, `offsite copy ${location}`);
  const first = await opened();
  first.stream.destroy();
  return {
    source,
    location,
    sizeBytes: first.plainSizeBytes,
    expected,
    encrypted: { format: 'age', storedSizeBytes: head.sizeBytes },
    open: async (signal) => (await opened(signal)).stream,
    async readHead(bytes, signal) {
      return firstBytes((await opened(signal)).stream, bytes);
    },
  };
}

/** Enough of an object's start to tell an age file from a dump. */
const AGE_MAGIC_BYTES = 32;

/**
 * Passes `stream` through unchanged, hashing it; fails the stream at its end (an `artifact_invalid`
 * error instead of the last chunk) when the bytes are not `expected`, so a reader such as an HTTP
 * response is cut short rather than completed with the wrong content.
 */
export function checkedStream(stream: Readable, expected: ContentHash, label: string): Readable {
  const hash = createHash('sha256');
  let sizeBytes = 0;
  let held: Buffer | undefined;
  const check = new Transform({
    highWaterMark: STREAM_CHUNK_BYTES,
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      sizeBytes += chunk.length;
      // One chunk is held back: the last one leaves only once the whole content is proven.
      const out = held;
      held = chunk;
      if (sizeBytes > expected.sizeBytes) return callback(mismatch());
      callback(null, out);
    },
    flush(callback) {
      const sha256 = hash.digest('hex');
      if (sha256 !== expected.sha256 || sizeBytes !== expected.sizeBytes) return callback(mismatch(sha256));
      callback(null, held);
    },
  });
  function mismatch(sha256?: string): AppError {
    return new AppError(
      'artifact_invalid',
      `${label}: ${sha256 ? `${sizeBytes} B with sha256 ${sha256.slice(0, 12)}…` : `more than ${expected.sizeBytes} B`}, ` +
        `not the manifest's ${expected.sizeBytes} B ${expected.sha256.slice(0, 12)}…`,
      { details: { reason: 'artifact_invalid' } },
    );
  }
  stream.once('error', (error) => check.destroy(error));
  check.once('close', () => stream.destroy());
  return stream.pipe(check);
}

/**
 * The manifest stored beside the offsite dump (replicate copies it there), for a backup whose local
 * catalog files are gone; undefined when there is none. It must name the same project and backup.
 */
export async function readOffsiteManifest(
  store: OffsiteStore,
  projectId: string,
  backupId: string,
  signal?: AbortSignal,
): Promise<Manifest | undefined> {
  const key = manifestKeyOf(projectId, backupId);
  const head = await store.head(key);
  if (!head) return undefined;
  if (head.sizeBytes > MANIFEST_MAX_BYTES) {
    throw new AppError('artifact_invalid', `offsite manifest ${key} is ${head.sizeBytes} B: not a manifest`);
  }
  const chunks: Buffer[] = [];
  for await (const chunk of await store.get(key, signal)) chunks.push(chunk as Buffer);
  let manifest: Manifest;
  try {
    manifest = ManifestSchema.parse(JSON.parse(Buffer.concat(chunks).toString('utf8')));
  } catch {
    throw new AppError('artifact_invalid', `offsite manifest ${key} is not a valid manifest`);
  }
  if (manifest.projectId !== projectId || manifest.backupId !== backupId) {
    throw new AppError('artifact_invalid', `offsite manifest ${key} describes another backup`);
  }
  return manifest;
}
