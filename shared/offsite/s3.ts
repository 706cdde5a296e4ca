// The S3-compatible offsite driver: FLUX_BACKUPS_OFFSITE_DIR=s3://bucket/prefix (AWS S3, MinIO, Ceph,
// Backblaze B2, R2…). Objects are immutable: HEAD first, `If-None-Match: *` on the write, and an existing
// object is only ever compared (by re-reading it), never replaced. The SDK is imported inside the driver,
// so a filesystem store never loads it.
import { createHash, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { addAbortSignal, Readable } from 'node:stream';
import type { ListObjectsV2CommandOutput, PutObjectCommandInput, S3Client } from '@aws-sdk/client-s3';
import { redactUrl } from '../config.js';
import { AppError, isAppError } from '../errors.js';
import { MIB } from '../units.js';
import { assertKey, assertPrefix, assertSha256 } from './keys.js';
import type { ContentHash, OffsiteObject, OffsiteStore, PutOptions, PutResult } from './types.js';

export const DRIVER_NAME = 's3';

const VARIABLE = 'FLUX_BACKUPS_OFFSITE_DIR';
/**
 * Objects up to one part are buffered, hashed, then sent in one PUT (with ChecksumSHA256). 5 MiB is
 * S3's smallest part: it keeps memory per upload low; larger objects get larger parts (MAX_PARTS).
 */
const DEFAULT_PART_BYTES = 5 * MIB;
/** Parts in flight per multipart upload: memory per upload ≈ (queue + 2) × part size. */
const DEFAULT_QUEUE_SIZE = 2;
/** S3 allows at most 10,000 parts; keep a margin so a slightly larger file still fits. */
const MAX_PARTS = 9_000;
const LIST_PAGE_SIZE = 1000;
/** Readiness writes (and removes) a probe object at most this often; HEAD bucket runs every time. */
const WRITE_PROBE_TTL_MS = 5 * 60 * 1000;
/** Probe objects live under a segment starting with '.', which no offsite key can name or list. */
const PROBE_DIR = '.flux-check';
const BUCKET_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$/;
const PREFIX_SEGMENT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/;
const NETWORK_ERRNOS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
]);
const AUTH_CODES = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'InvalidToken',
  'ExpiredToken',
  'AllAccessDisabled',
]);

export interface S3Target {
  bucket: string;
  /** Key prefix without leading or trailing '/'; '' = the bucket root. */
  prefix: string;
}

/** Parses `s3://bucket/prefix`; never echoes the value (an operator may have pasted credentials into it). */
export function parseS3Url(url: string): S3Target {
  const invalid = (why: string) =>
    new AppError('config_invalid', `${VARIABLE}: ${why}; use s3://bucket or s3://bucket/some/prefix`, {
      details: { variable: VARIABLE },
    });
  const match = /^s3:\/\/([^/]*)(?:\/(.*))?$/i.exec(url);
  if (!match) throw invalid('is not an s3:// URL');
  const authority = match[1] ?? '';
  if (authority.includes('@') || authority.includes(':')) {
    throw invalid(
      'must not carry credentials or a port; put the keys in FLUX_S3_ACCESS_KEY_ID / FLUX_S3_SECRET_ACCESS_KEY and the server in FLUX_S3_ENDPOINT',
    );
  }
  if (!BUCKET_RE.test(authority) || authority.includes('..'))
    throw invalid('names no valid bucket (3-255 letters, digits, dots, dashes, underscores)');
  const prefix = (match[2] ?? '').replace(/\/+$/, '');
  if (prefix !== '' && !prefix.split('/').every((s) => PREFIX_SEGMENT_RE.test(s)))
    throw invalid('has a prefix with empty, hidden or unusual segments');
  return { bucket: authority, prefix };
}

export interface S3OffsiteOptions extends S3Target {
  /** Endpoint URL of an S3-compatible server; unset = AWS S3 of `region`. */
  endpoint?: string | undefined;
  /** Default us-east-1 (what most self-hosted servers expect). */
  region?: string | undefined;
  /** Path-style addressing (`endpoint/bucket/key`), which most self-hosted servers need. */
  forcePathStyle?: boolean | undefined;
  accessKeyId: string;
  secretAccessKey: string;
  /** Smallest multipart part (default 5 MiB); also the largest object sent in a single PUT. */
  partSizeBytes?: number;
  /** Parts uploaded concurrently (default 2). */
  queueSize?: number;
  /** Objects per list page (default 1000, the S3 maximum). */
  listPageSize?: number;
}

/** The parts of an SDK error we keep: never the raw error, whose fields may echo the access key id. */
interface S3Fault {
  name: string;
  status?: number | undefined;
  errno?: string | undefined;
  requestId?: string | undefined;
  message: string;
}

function faultOf(error: unknown, scrub: (s: string) => string): S3Fault {
  const e = (error ?? {}) as {
    name?: unknown;
    Code?: unknown;
    code?: unknown;
    message?: unknown;
    $metadata?: { httpStatusCode?: number; requestId?: string };
  };
  const code = typeof e.Code === 'string' ? e.Code : undefined;
  const errno = typeof e.code === 'string' ? e.code : undefined;
  return {
    name: code ?? (typeof e.name === 'string' ? e.name : 'Error'),
    status: e.$metadata?.httpStatusCode,
    errno,
    requestId: e.$metadata?.requestId,
    message: scrub(String(e.message ?? error)).slice(0, 300),
  };
}

const isMissing = (f: S3Fault) => f.status === 404 || f.name === 'NoSuchKey' || f.name === 'NotFound';
/** The write's precondition (`If-None-Match: *`) failed: an object holds the key already. */
const isTaken = (f: S3Fault) =>
  f.status === 412 ||
  f.name === 'PreconditionFailed' ||
  (f.status === 409 && f.name === 'ConditionalRequestConflict');
/** The server refuses a header it does not implement (conditional writes or checksums on older servers). */
const isUnsupported = (f: S3Fault) => f.status === 501 || f.name === 'NotImplemented';

export function createS3OffsiteStore(options: S3OffsiteOptions): OffsiteStore {
  const { bucket, accessKeyId, secretAccessKey } = options;
  const prefix = options.prefix;
  const base = prefix ? `${prefix}/` : '';
  const location = `s3://${bucket}${prefix ? `/${prefix}` : ''}`;
  const region = options.region ?? 'us-east-1';
  const endpointLabel = options.endpoint ? redactUrl(options.endpoint) : `AWS S3 (${region})`;
  const partFloor = Math.max(5 * MIB, options.partSizeBytes ?? DEFAULT_PART_BYTES);
  const queueSize = Math.max(1, options.queueSize ?? DEFAULT_QUEUE_SIZE);
  const pageSize = Math.min(LIST_PAGE_SIZE, Math.max(1, options.listPageSize ?? LIST_PAGE_SIZE));
  /** Puts of one key in this process run one at a time (see `put`). */
  const keyLocks = new Map<string, Promise<unknown>>();
  /** Set when the server answered 501 to `If-None-Match`/`x-amz-checksum-sha256`: send plain PUTs. */
  let plainWrites = false;
  let lastWriteProbe = 0;

  type Sdk = typeof import('@aws-sdk/client-s3');
  let connecting: Promise<{ sdk: Sdk; client: S3Client }> | undefined;
  function connect(): Promise<{ sdk: Sdk; client: S3Client }> {
    connecting ??= import('@aws-sdk/client-s3').then((sdk) => ({
      sdk,
      client: new sdk.S3Client({
        region,
        ...(options.endpoint ? { endpoint: options.endpoint } : {}),
        forcePathStyle: options.forcePathStyle ?? false,
        credentials: { accessKeyId, secretAccessKey },
        // Checksums only when we give one: the SDK's default CRC32 trailers (aws-chunked bodies) are not
        // understood by many S3-compatible servers. Integrity is the SHA-256 we send and re-read.
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
        requestHandler: { connectionTimeout: 10_000, requestTimeout: 120_000 },
      }),
    }));
    return connecting;
  }

  function scrub(text: string): string {
    let out = text;
    for (const secret of [secretAccessKey, accessKeyId]) {
      if (secret) out = out.split(secret).join('[redacted]');
    }
    return out;
  }

  const objectKey = (key: string) => base + assertKey(key);

  /** An operator-grade AppError for an SDK failure; the raw SDK error is never kept (see S3Fault). */
  function s3Error(error: unknown, what: string, key?: string): AppError {
    if (isAppError(error)) return error;
    const f = faultOf(error, scrub);
    const where = `${location}${key ? `/${key}` : ''}`;
    const details = {
      store: location,
      ...(key ? { key } : {}),
      s3Code: f.name,
      ...(f.status ? { httpStatus: f.status } : {}),
      ...(f.requestId ? { requestId: f.requestId } : {}),
    };
    const cause = { name: f.name, status: f.status, errno: f.errno, requestId: f.requestId };
    if (f.errno && NETWORK_ERRNOS.has(f.errno)) {
      return new AppError(
        'dependency_unavailable',
        `${what}: the S3 endpoint ${endpointLabel} is unreachable (${f.errno}); check FLUX_S3_ENDPOINT and the network`,
        { cause, details: { ...details, reason: 'store_unavailable' }, retryAfterSeconds: 30 },
      );
    }
    if (f.name === 'TimeoutError' || f.name === 'RequestTimeout') {
      return new AppError(
        'dependency_unavailable',
        `${what}: ${where} timed out at ${endpointLabel} (${f.name})`,
        { cause, details: { ...details, reason: 'timeout' }, retryAfterSeconds: 30 },
      );
    }
    if (f.name === 'NoSuchBucket') {
      return new AppError(
        'dependency_unavailable',
        `${what}: the bucket "${bucket}" does not exist at ${endpointLabel}: create it, or fix ${VARIABLE} / FLUX_S3_ENDPOINT`,
        { cause, details: { ...details, reason: 'store_unavailable' } },
      );
    }
    if (f.status === 301 || f.name === 'PermanentRedirect' || f.name === 'AuthorizationHeaderMalformed') {
      return new AppError(
        'dependency_unavailable',
        `${what}: the bucket "${bucket}" is in another region than ${region} (${f.name}): set FLUX_S3_REGION to the bucket's region`,
        { cause, details: { ...details, reason: 'store_unavailable' } },
      );
    }
    if (f.status === 401 || f.status === 403 || AUTH_CODES.has(f.name)) {
      return new AppError(
        'dir_not_writable',
        `${what}: ${where} refused the request (${f.name}, HTTP ${f.status ?? '?'}). Check FLUX_S3_ACCESS_KEY_ID / ` +
          `FLUX_S3_SECRET_ACCESS_KEY, FLUX_S3_REGION, and that the key may s3:ListBucket on "${bucket}" and ` +
          `s3:GetObject, s3:PutObject, s3:AbortMultipartUpload (and s3:DeleteObject for offsite retention) under "${base || '(bucket root)'}"`,
        { cause, details: { ...details, reason: 'dir_not_writable' } },
      );
    }
    return new AppError(
      'dependency_unavailable',
      `${what}: ${where} at ${endpointLabel} failed: ${f.name}${f.status ? ` (HTTP ${f.status})` : ''}: ${f.message}`,
      { cause, details: { ...details, reason: 'store_unavailable' } },
    );
  }

  /** Runs `fn` after every earlier put of `key` in this process has settled. */
  async function withKeyLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prior = keyLocks.get(key) ?? Promise.resolve();
    const run = prior.then(fn, fn);
    const tail = run.catch(() => undefined);
    keyLocks.set(key, tail);
    try {
      return await run;
    } finally {
      if (keyLocks.get(key) === tail) keyLocks.delete(key);
    }
  }

  async function headObject(key: string): Promise<OffsiteObject | undefined> {
    const { sdk, client } = await connect();
    try {
      const r = await client.send(
        new sdk.HeadObjectCommand({ Bucket: bucket, Key: objectKey(key), ChecksumMode: 'ENABLED' }),
      );
      // A server-validated whole-object checksum (never a multipart composite "…-N"), else our metadata.
      const checksum =
        r.ChecksumSHA256 && r.ChecksumType !== 'COMPOSITE' && !r.ChecksumSHA256.includes('-')
          ? Buffer.from(r.ChecksumSHA256, 'base64').toString('hex')
          : undefined;
      const recorded = checksum ?? r.Metadata?.sha256;
      return {
        key,
        sizeBytes: r.ContentLength ?? 0,
        modifiedAt: (r.LastModified ?? new Date(0)).toISOString(),
        ...(recorded && /^[0-9a-f]{64}$/.test(recorded) ? { recordedSha256: recorded } : {}),
      };
    } catch (error) {
      if (isAppError(error)) throw error;
      if (isMissing(faultOf(error, scrub))) return undefined;
      throw s3Error(error, 'reading offsite object metadata', key);
    }
  }

  async function openObject(key: string, signal?: AbortSignal): Promise<Readable | undefined> {
    const { sdk, client } = await connect();
    try {
      const r = await client.send(
        new sdk.GetObjectCommand({ Bucket: bucket, Key: objectKey(key) }),
        signal ? { abortSignal: signal } : {},
      );
      const body = r.Body as Readable | undefined;
      if (!body) throw new AppError('dependency_unavailable', `GET ${location}/${key} returned no body`);
      return signal ? addAbortSignal(signal, body) : body;
    } catch (error) {
      if (signal?.aborted) throw signal.reason ?? error;
      if (isAppError(error)) throw error;
      if (isMissing(faultOf(error, scrub))) return undefined;
      throw s3Error(error, 'reading an offsite object', key);
    }
  }

  async function hashObject(key: string, signal?: AbortSignal): Promise<ContentHash | undefined> {
    const body = await openObject(key, signal);
    if (!body) return undefined;
    const hash = createHash('sha256');
    let sizeBytes = 0;
    try {
      for await (const chunk of body) {
        hash.update(chunk as Buffer);
        sizeBytes += (chunk as Buffer).length;
      }
    } catch (error) {
      if (signal?.aborted) throw signal.reason ?? error;
      throw s3Error(error, 'reading an offsite object back', key);
    }
    return { sizeBytes, sha256: hash.digest('hex') };
  }

  /** An object holds `key`: `exists` when it re-hashes to `expected`, else `conflict` (left untouched). */
  async function existing(key: string, expected: ContentHash): Promise<PutResult> {
    const found = await hashObject(key);
    if (!found) throw new AppError('conflict', `offsite object ${key} vanished while being compared; retry`);
    const same = found.sha256 === expected.sha256 && found.sizeBytes === expected.sizeBytes;
    return { key, outcome: same ? 'exists' : 'conflict', ...found };
  }

  function notDeclared(key: string, got: { sizeBytes: number; sha256?: string }, expected: ContentHash) {
    const gotText = got.sha256
      ? `${got.sizeBytes} B, sha256 ${got.sha256.slice(0, 12)}…`
      : `over ${got.sizeBytes - 1} B`;
    return new AppError(
      'artifact_invalid',
      `the content streamed to offsite key ${key} (${gotText}) ` +
        `is not what the caller declared (${expected.sizeBytes} B, ${expected.sha256.slice(0, 12)}…); nothing was stored`,
      { details: { key, sizeBytes: got.sizeBytes, ...(got.sha256 ? { sha256: got.sha256 } : {}) } },
    );
  }

  /**
   * The source's chunks, hashed on the way; throws before the last chunk is handed on when the content
   * is not what was declared, so an upload never completes with the wrong bytes.
   */
  async function* declaredChunks(
    key: string,
    source: Readable,
    options: PutOptions,
    onDone: (error: unknown) => void,
  ): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let sizeBytes = 0;
    let held: Buffer | undefined;
    try {
      for await (const chunk of source) {
        const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
        hash.update(buffer);
        sizeBytes += buffer.length;
        options.onProgress?.(sizeBytes);
        if (sizeBytes > options.sizeBytes) {
          throw notDeclared(key, { sizeBytes }, options);
        }
        // Hold one chunk back: the last one leaves only once the whole content is proven.
        if (held) yield held;
        held = buffer;
      }
      const got = { sizeBytes, sha256: hash.digest('hex') };
      if (got.sha256 !== options.sha256 || got.sizeBytes !== options.sizeBytes)
        throw notDeclared(key, got, options);
    } catch (error) {
      source.destroy();
      onDone(error);
      throw error;
    }
    if (held) yield held;
  }

  /** Single PUT of a buffered, already-verified body; false when the key was taken meanwhile. */
  async function putSmall(key: string, body: Buffer, options: PutOptions): Promise<boolean> {
    const { sdk, client } = await connect();
    const input: PutObjectCommandInput = {
      Bucket: bucket,
      Key: objectKey(key),
      Body: body,
      ContentLength: body.length,
      ContentType: 'application/octet-stream',
      Metadata: { sha256: options.sha256 },
    };
    const guarded = (): PutObjectCommandInput =>
      plainWrites
        ? input
        : {
            ...input,
            IfNoneMatch: '*',
            ChecksumSHA256: Buffer.from(options.sha256, 'hex').toString('base64'),
          };
    const send = (params: PutObjectCommandInput) =>
      client.send(new sdk.PutObjectCommand(params), options.signal ? { abortSignal: options.signal } : {});
    try {
      await send(guarded());
      return true;
    } catch (error) {
      if (options.signal?.aborted) throw options.signal.reason ?? error;
      const f = faultOf(error, scrub);
      if (isTaken(f)) return false;
      if (!plainWrites && isUnsupported(f)) {
        // An older server: the HEAD above and the per-key lock are the only guard left.
        plainWrites = true;
        try {
          await send(input);
          return true;
        } catch (retryError) {
          throw s3Error(retryError, 'writing an offsite copy', key);
        }
      }
      throw s3Error(error, 'writing an offsite copy', key);
    }
  }

  /** Multipart upload through lib-storage, `partSize` at a time; false when the key was taken meanwhile. */
  async function putLarge(key: string, source: Readable, options: PutOptions): Promise<boolean> {
    const { client } = await connect();
    const { Upload } = await import('@aws-sdk/lib-storage');
    let bodyError: unknown;
    const body = Readable.from(
      declaredChunks(key, source, options, (e) => {
        bodyError = e;
      }),
      { objectMode: false, highWaterMark: 1 },
    );
    const partSize = Math.max(partFloor, Math.ceil(options.sizeBytes / MAX_PARTS / MIB) * MIB);
    const upload = new Upload({
      client,
      queueSize,
      partSize,
      leavePartsOnError: false,
      params: {
        Bucket: bucket,
        Key: objectKey(key),
        Body: body,
        ContentLength: options.sizeBytes,
        ContentType: 'application/octet-stream',
        Metadata: { sha256: options.sha256 },
        // Sent on CompleteMultipartUpload: the object appears only if the key is still free. No
        // ChecksumSHA256 here: lib-storage would send the whole-object hash with every part.
        ...(plainWrites ? {} : { IfNoneMatch: '*' }),
      },
    });
    const onAbort = () => body.destroy(options.signal?.reason);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await upload.done();
      return true;
    } catch (error) {
      if (options.signal?.aborted) throw options.signal.reason ?? error;
      // The body's own failure explains an upload that failed (or failed to abort) because of it.
      if (bodyError) throw bodyError;
      const f = faultOf(error, scrub);
      if (isTaken(f)) return false;
      if (!plainWrites && isUnsupported(f)) plainWrites = true;
      throw s3Error(error, 'writing an offsite copy (multipart)', key);
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Reads a small source whole (at most `sizeBytes` + one chunk) and checks it against the declaration. */
  async function readDeclared(key: string, source: Readable, options: PutOptions): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of declaredChunks(key, source, options, () => undefined)) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  async function put(key: string, source: Readable, options: PutOptions): Promise<PutResult> {
    const expected = { sha256: options.sha256, sizeBytes: options.sizeBytes };
    if (options.signal) addAbortSignal(options.signal, source);
    // S3 has no atomic "create unless exists" everywhere (If-None-Match is recent), so puts of one key
    // in this process are serialized; across processes If-None-Match settles it where the server has it.
    return withKeyLock(key, async () => {
      try {
        options.signal?.throwIfAborted();
        // An object already there needs no bytes from the source: compare and stop.
        if (await headObject(key)) {
          source.destroy();
          return existing(key, expected);
        }
        const stored =
          options.sizeBytes <= partFloor
            ? await putSmall(key, await readDeclared(key, source, options), options)
            : await putLarge(key, source, options);
        if (!stored) return existing(key, expected);
        // A server without conditional writes lets a racing writer replace ours: look before saying so.
        const after = await headObject(key);
        if (after?.sizeBytes === expected.sizeBytes && after.recordedSha256 === expected.sha256) {
          return { key, outcome: 'created', ...expected };
        }
        // No usable record (a server that drops metadata) or another writer: only the bytes can tell.
        const found = await existing(key, expected);
        return found.outcome === 'exists' ? { ...found, outcome: 'created' } : found;
      } catch (error) {
        source.destroy();
        if (options.signal?.aborted) throw options.signal.reason ?? error;
        throw s3Error(error, 'writing an offsite copy', key);
      }
    });
  }

  async function removeQuietly(objectKeyName: string): Promise<boolean> {
    const { sdk, client } = await connect();
    try {
      await client.send(new sdk.DeleteObjectCommand({ Bucket: bucket, Key: objectKeyName }));
      return true;
    } catch {
      return false;
    }
  }

  return {
    driver: DRIVER_NAME,
    location,

    async put(key, source, options) {
      try {
        assertKey(key);
        assertSha256(options.sha256);
      } catch (error) {
        source.destroy();
        throw error;
      }
      return put(key, source, options);
    },

    async head(key) {
      assertKey(key);
      return headObject(key);
    },

    async hash(key, signal) {
      assertKey(key);
      return hashObject(key, signal);
    },

    async get(key, signal) {
      assertKey(key);
      const body = await openObject(key, signal);
      if (!body) throw new AppError('not_found', `no offsite object ${key}`);
      return body;
    },

    async *list(listPrefix) {
      assertPrefix(listPrefix);
      const { sdk, client } = await connect();
      let token: string | undefined;
      do {
        let page: ListObjectsV2CommandOutput;
        try {
          page = await client.send(
            new sdk.ListObjectsV2Command({
              Bucket: bucket,
              Prefix: base + listPrefix,
              MaxKeys: pageSize,
              ...(token ? { ContinuationToken: token } : {}),
            }),
          );
        } catch (error) {
          throw s3Error(error, 'listing the offsite store');
        }
        for (const object of page.Contents ?? []) {
          if (!object.Key?.startsWith(base)) continue;
          const key = object.Key.slice(base.length);
          try {
            assertKey(key);
          } catch {
            continue; // probes, folder markers, anything not written by a driver
          }
          yield {
            key,
            sizeBytes: object.Size ?? 0,
            modifiedAt: (object.LastModified ?? new Date(0)).toISOString(),
          } satisfies OffsiteObject;
        }
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
    },

    async remove(key) {
      assertKey(key);
      const { sdk, client } = await connect();
      try {
        // DeleteObject of a missing key succeeds on S3: removing twice is no error, as on fs.
        await client.send(new sdk.DeleteObjectCommand({ Bucket: bucket, Key: objectKey(key) }));
      } catch (error) {
        if (isMissing(faultOf(error, scrub))) return;
        throw s3Error(error, 'removing an expired offsite object', key);
      }
    },

    async check() {
      try {
        const { sdk, client } = await connect();
        try {
          await client.send(new sdk.HeadBucketCommand({ Bucket: bucket }));
        } catch (error) {
          // HEAD has no body: a missing bucket is a bare 404.
          throw faultOf(error, scrub).status === 404
            ? Object.assign(error as Error, { Code: 'NoSuchBucket' })
            : error;
        }
        let note = 'writable';
        if (Date.now() - lastWriteProbe > WRITE_PROBE_TTL_MS) {
          const probe = `${base}${PROBE_DIR}/${hostname()}-${process.pid}-${randomUUID()}`;
          await client.send(
            new sdk.PutObjectCommand({ Bucket: bucket, Key: probe, Body: 'flux-ops readiness probe\n' }),
          );
          // Without delete permission the probe stays; sweepTemp removes old ones when it can.
          if (!(await removeQuietly(probe))) note = 'writable (probe object left: no s3:DeleteObject)';
          lastWriteProbe = Date.now();
        }
        return { ok: true, detail: `${location} at ${endpointLabel}: bucket reachable, ${note}` };
      } catch (error) {
        return { ok: false, detail: s3Error(error, `checking ${VARIABLE}=${location}`).message };
      }
    },

    async sweepTemp(olderThanMs) {
      const { sdk, client } = await connect();
      const cutoff = Date.now() - olderThanMs;
      let removed = 0;
      // Interrupted multipart uploads hold storage (and cost) until aborted.
      try {
        let keyMarker: string | undefined;
        let uploadIdMarker: string | undefined;
        do {
          const page = await client.send(
            new sdk.ListMultipartUploadsCommand({
              Bucket: bucket,
              Prefix: base,
              ...(keyMarker ? { KeyMarker: keyMarker } : {}),
              ...(uploadIdMarker ? { UploadIdMarker: uploadIdMarker } : {}),
            }),
          );
          for (const upload of page.Uploads ?? []) {
            if (!upload.Key || !upload.UploadId || (upload.Initiated?.getTime() ?? 0) >= cutoff) continue;
            await client.send(
              new sdk.AbortMultipartUploadCommand({
                Bucket: bucket,
                Key: upload.Key,
                UploadId: upload.UploadId,
              }),
            );
            removed += 1;
          }
          keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
          uploadIdMarker = page.IsTruncated ? page.NextUploadIdMarker : undefined;
        } while (keyMarker);
      } catch (error) {
        // Servers without ListMultipartUploads (501) have nothing we could list; anything else is real.
        if (!isUnsupported(faultOf(error, scrub))) throw s3Error(error, 'sweeping interrupted uploads');
      }
      try {
        const probes = await client.send(
          new sdk.ListObjectsV2Command({ Bucket: bucket, Prefix: `${base}${PROBE_DIR}/` }),
        );
        for (const object of probes.Contents ?? []) {
          if (
            object.Key &&
            (object.LastModified?.getTime() ?? 0) < cutoff &&
            (await removeQuietly(object.Key))
          )
            removed += 1;
        }
      } catch (error) {
        throw s3Error(error, 'sweeping readiness probes');
      }
      return removed;
    },
  };
}
