// The offsite store: where proven copies of backups live. One small interface, one driver per backend
// (a directory today, S3-compatible later under the same FLUX_BACKUPS_OFFSITE_DIR), every driver held to
// the same contract suite (contract.ts). Callers never see a local path, only keys.
import type { Readable } from 'node:stream';

/** An object as the store lists it. Keys are relative and '/'-separated: `<projectId>/<backupId>.dump`. */
export interface OffsiteObject {
  key: string;
  sizeBytes: number;
  /** Last modification time (ISO 8601) as the store reports it. */
  modifiedAt: string;
  /**
   * SHA-256 (hex) the store itself recorded at write time, when it keeps one (S3 `ChecksumSHA256` of a
   * single-part upload; never a multipart ETag). A hint for cheap listings, not a proof: see `hash`.
   */
  recordedSha256?: string;
}

export interface PutOptions {
  /** Hex SHA-256 the content must have. A mismatch stores nothing and throws `artifact_invalid`. */
  sha256: string;
  /** Size the content must have, checked together with the hash. */
  sizeBytes: number;
  signal?: AbortSignal;
  onProgress?: (bytes: number) => void;
}

/**
 * created: the content is stored under the key now.
 * exists: an object with exactly this content already held the key; nothing was written (idempotent).
 * conflict: a different object holds the key; it was left untouched (objects are immutable).
 */
export type PutOutcome = 'created' | 'exists' | 'conflict';

export interface ContentHash {
  sizeBytes: number;
  sha256: string;
}

export interface PutResult extends ContentHash {
  key: string;
  outcome: PutOutcome;
  /** created: `sha256`/`sizeBytes` are the written content's; exists/conflict: the existing object's. */
}

export interface StoreCheck {
  ok: boolean;
  detail: string;
}

export interface OffsiteStore {
  /** `fs`, `s3`, …: which driver this is. */
  readonly driver: string;
  /** Where the store is, for receipts, events and logs (never credentials). */
  readonly location: string;
  /**
   * Streams `source` to `key`, hashing on the way; the object appears whole or not at all, and never
   * replaces an existing one. Consumes or destroys `source`.
   */
  put(key: string, source: Readable, options: PutOptions): Promise<PutResult>;
  /** The object's metadata, or undefined when there is none. Does not read the content. */
  head(key: string): Promise<OffsiteObject | undefined>;
  /** Re-reads the stored bytes and hashes them (the proof of a copy); undefined when there is none. */
  hash(key: string, signal?: AbortSignal): Promise<ContentHash | undefined>;
  /** The stored bytes as a stream (1 MiB chunks); throws `not_found` when there is none. */
  get(key: string, signal?: AbortSignal): Promise<Readable>;
  /** Objects whose key starts with `prefix` (`''` = all, `<projectId>/` = one project), in no set order. */
  list(prefix: string): AsyncIterable<OffsiteObject>;
  /** Readiness: the store is reachable and this process can write to it. */
  check(): Promise<StoreCheck>;
  /** Removes leftovers of interrupted writes older than `olderThanMs`; returns how many. */
  sweepTemp(olderThanMs: number): Promise<number>;
  /**
   * Deletes the object at `key` (offsite retention, the only caller); a key holding nothing is no error.
   * Objects are never replaced, only ever removed whole: after this a put of the key creates it afresh.
   */
  remove(key: string): Promise<void>;
}
