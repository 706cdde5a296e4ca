// The s3 driver against a real S3-protocol server (s3rver in a child process): the shared contract, a
// >100 MB multipart copy with flat memory, tampering, conditional writes as S3 answers them, servers
// without checksum/conditional support, paging, and credentials that never reach a log or an error.
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import v8 from 'node:v8';
import vm from 'node:vm';
import {
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type S3Proxy,
  S3RVER_KEY_ID,
  S3RVER_SECRET,
  type S3Server,
  startS3Proxy,
  startS3Server,
  upstreamStatus,
} from '../../test/s3-server.js';
import { offsiteStoreContract } from '../../test/support/offsite-contract.js';
import { loadConfig, redactConfig } from '../config.js';
import { isAppError } from '../errors.js';
import { createLogger } from '../log.js';
import { MIB } from '../units.js';
import { createOffsiteStore } from './index.js';
import { createS3OffsiteStore, parseS3Url, type S3OffsiteOptions } from './s3.js';
import type { OffsiteStore } from './types.js';

const PREFIX = 'flux/offsite';
const sha256Of = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

function sdkClient(endpoint: string): S3Client {
  return new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: S3RVER_KEY_ID, secretAccessKey: S3RVER_SECRET },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

function storeAt(endpoint: string, bucket: string, extra: Partial<S3OffsiteOptions> = {}): OffsiteStore {
  return createS3OffsiteStore({
    bucket,
    prefix: PREFIX,
    endpoint,
    forcePathStyle: true,
    accessKeyId: S3RVER_KEY_ID,
    secretAccessKey: S3RVER_SECRET,
    ...extra,
  });
}

/** Replaces an object behind the store's back, keeping (forging) its recorded sha256 metadata. */
async function tamper(client: S3Client, bucket: string, key: string, bytes: Buffer): Promise<void> {
  const Key = `${PREFIX}/${key}`;
  const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key }));
  await client.send(new PutObjectCommand({ Bucket: bucket, Key, Body: bytes, Metadata: head.Metadata }));
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function errorOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

/** `sizeBytes` of numbered 1 MiB chunks, generated as they are read (never held whole). */
function generated(sizeBytes: number): { source: () => Readable; sha256: string } {
  const base = randomBytes(MIB);
  const chunkAt = (i: number) => {
    const out = Buffer.from(base.subarray(0, Math.min(MIB, sizeBytes - i * MIB)));
    out.writeUInt32BE(i, 0);
    return out;
  };
  const count = Math.ceil(sizeBytes / MIB);
  const hash = createHash('sha256');
  for (let i = 0; i < count; i++) hash.update(chunkAt(i));
  return {
    sha256: hash.digest('hex'),
    source: () =>
      Readable.from(
        (function* () {
          for (let i = 0; i < count; i++) yield chunkAt(i);
        })(),
        { objectMode: false, highWaterMark: 1 },
      ),
  };
}

// Live memory is what "flat" is about; garbage waits for the collector, so the sampler collects first.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Peak growth over the start: arrayBuffers as found (every 2 ms) and live after a collection (every 50 ms). */
function memorySampler() {
  gc();
  const before = process.memoryUsage();
  const peak = { raw: 0, live: 0, rss: 0 };
  const raw = setInterval(() => {
    const now = process.memoryUsage();
    peak.raw = Math.max(peak.raw, now.arrayBuffers - before.arrayBuffers);
    peak.rss = Math.max(peak.rss, now.rss - before.rss);
  }, 2);
  const live = setInterval(() => {
    // The second collection first finishes sweeping the first's freed buffers (done concurrently).
    gc();
    gc();
    peak.live = Math.max(peak.live, process.memoryUsage().arrayBuffers - before.arrayBuffers);
  }, 50);
  return {
    stop() {
      clearInterval(raw);
      clearInterval(live);
      return { rawMiB: peak.raw / MIB, liveMiB: peak.live / MIB, rssMiB: peak.rss / MIB };
    },
  };
}

const queryOf = (url: string) => new URLSearchParams(url.split('?')[1] ?? '');

offsiteStoreContract('s3 (s3rver)', async () => {
  const server = await startS3Server();
  const client = sdkClient(server.endpoint);
  return {
    store: storeAt(server.endpoint, server.bucket),
    tamper: (key, bytes) => tamper(client, server.bucket, key, bytes),
    async cleanup() {
      client.destroy();
      await server.close();
    },
  };
});

describe('s3 offsite driver', () => {
  let server: S3Server;
  let client: S3Client;
  const proxies: S3Proxy[] = [];

  beforeAll(async () => {
    server = await startS3Server();
    client = sdkClient(server.endpoint);
  });
  afterAll(async () => {
    for (const proxy of proxies) await proxy.close();
    client?.destroy();
    await server?.close();
  });

  async function proxy(...args: Parameters<typeof startS3Proxy> extends [number, ...infer R] ? R : never) {
    const p = await startS3Proxy(server.port, ...args);
    proxies.push(p);
    return p;
  }

  it('copies a 110 MiB object by multipart upload with flat memory, and re-reads it', async () => {
    const SIZE = 110 * MIB + 12_345;
    const recorder = await proxy();
    const store = storeAt(recorder.endpoint, server.bucket);
    const content = generated(SIZE);
    const key = `large-${randomBytes(4).toString('hex')}/a.dump`;
    const sampler = memorySampler();
    let put: Awaited<ReturnType<OffsiteStore['put']>>;
    let proof: Awaited<ReturnType<OffsiteStore['hash']>>;
    let memory: ReturnType<ReturnType<typeof memorySampler>['stop']>;
    try {
      put = await store.put(key, content.source(), { sha256: content.sha256, sizeBytes: SIZE });
      proof = await store.hash(key);
    } finally {
      memory = sampler.stop();
    }
    expect(put).toEqual({ key, outcome: 'created', sha256: content.sha256, sizeBytes: SIZE });
    expect(proof).toEqual({ sha256: content.sha256, sizeBytes: SIZE });
    // It went as a multipart upload: initiate (with the sha256 metadata), parts, complete (If-None-Match).
    const mine = recorder.requests.filter((r) => r.url.includes(`/${PREFIX}/${key}`));
    const initiate = mine.filter((r) => r.method === 'POST' && queryOf(r.url).has('uploads'));
    const parts = mine.filter((r) => r.method === 'PUT' && queryOf(r.url).has('partNumber'));
    const complete = mine.filter((r) => r.method === 'POST' && queryOf(r.url).has('uploadId'));
    expect(initiate).toHaveLength(1);
    expect(initiate[0]!.headers['x-amz-meta-sha256']).toBe(content.sha256);
    expect(parts.length).toBe(Math.ceil(SIZE / (5 * MIB)));
    expect(parts.every((p) => p.headers['x-amz-checksum-sha256'] === undefined)).toBe(true);
    expect(complete).toHaveLength(1);
    expect(complete[0]!.headers['if-none-match']).toBe('*');
    expect(await store.head(key)).toMatchObject({ sizeBytes: SIZE, recordedSha256: content.sha256 });
    console.log(`110 MiB through the s3 driver: peak growth ${JSON.stringify(memory)}`);
    // Holding the object would take 110 MiB. Two 5 MiB parts in flight plus one being filled stay live
    // (~25 MiB); garbage between collections adds to the raw figure and RSS.
    expect(memory.liveMiB).toBeLessThan(48);
    expect(memory.rawMiB).toBeLessThan(80);
    expect(memory.rssMiB).toBeLessThan(100);
  });

  it('never overwrites an object tampered with behind its back: a conflict, and the bytes stay as found', async () => {
    const store = storeAt(server.endpoint, server.bucket);
    const key = `t-${randomBytes(4).toString('hex')}/b.dump`;
    const original = randomBytes(70_000);
    await store.put(key, Readable.from([original]), {
      sha256: sha256Of(original),
      sizeBytes: original.length,
    });
    // Same size, same (now forged) sha256 metadata, different bytes: only a re-read can tell.
    const evil = randomBytes(original.length);
    await tamper(client, server.bucket, key, evil);
    expect(await store.head(key)).toMatchObject({ recordedSha256: sha256Of(original) });
    expect(await store.hash(key)).toEqual({ sha256: sha256Of(evil), sizeBytes: evil.length });
    const again = await store.put(key, Readable.from([original]), {
      sha256: sha256Of(original),
      sizeBytes: original.length,
    });
    expect(again).toEqual({ key, outcome: 'conflict', sha256: sha256Of(evil), sizeBytes: evil.length });
    const stored = await client.send(
      new GetObjectCommand({ Bucket: server.bucket, Key: `${PREFIX}/${key}` }),
    );
    expect(Buffer.from(await stored.Body!.transformToByteArray()).equals(evil)).toBe(true);
  });

  it('sends the sha256 as checksum and metadata with If-None-Match on a single PUT', async () => {
    const recorder = await proxy();
    const store = storeAt(recorder.endpoint, server.bucket);
    const key = `h-${randomBytes(4).toString('hex')}/c.dump`;
    const bytes = randomBytes(1000);
    await store.put(key, Readable.from([bytes]), { sha256: sha256Of(bytes), sizeBytes: bytes.length });
    const puts = recorder.requests.filter((r) => r.method === 'PUT' && r.url.includes(key));
    expect(puts).toHaveLength(1);
    expect(puts[0]!.headers).toMatchObject({
      'x-amz-meta-sha256': sha256Of(bytes),
      'x-amz-checksum-sha256': createHash('sha256').update(bytes).digest('base64'),
      'if-none-match': '*',
    });
  });

  describe('another host wrote the key between our HEAD and our write (S3 answers 412)', () => {
    // A proxy that hides objects from HEAD (the race window) and applies If-None-Match: * the way S3
    // does: the write is refused with 412 when the key is taken.
    async function racingProxy(): Promise<S3Proxy> {
      const isWrite = (method?: string, url = '') => {
        const q = queryOf(url);
        return (method === 'PUT' && !q.has('partNumber')) || (method === 'POST' && q.has('uploadId'));
      };
      return proxy(
        async (req) => {
          if (req.method === 'HEAD') return { status: 404, code: 'NotFound', message: '' };
          if (isWrite(req.method, req.url) && req.headers['if-none-match'] === '*') {
            if ((await upstreamStatus(server.port, req)) === 200)
              return { status: 412, code: 'PreconditionFailed', message: 'At least one precondition failed' };
          }
          return undefined;
        },
        (req) => (isWrite(req.method, req.url) ? (req.url ?? '').split('?')[0] : undefined),
      );
    }

    it('single PUT: other content is a conflict, the same content exists; nothing is replaced', async () => {
      const racing = await racingProxy();
      const first = storeAt(server.endpoint, server.bucket);
      const second = storeAt(racing.endpoint, server.bucket);
      const key = `r-${randomBytes(4).toString('hex')}/d.dump`;
      const a = randomBytes(3000);
      const b = randomBytes(3000);
      await first.put(key, Readable.from([a]), { sha256: sha256Of(a), sizeBytes: a.length });
      const other = await second.put(key, Readable.from([b]), { sha256: sha256Of(b), sizeBytes: b.length });
      const same = await second.put(key, Readable.from([a]), { sha256: sha256Of(a), sizeBytes: a.length });
      expect(other).toEqual({ key, outcome: 'conflict', sha256: sha256Of(a), sizeBytes: a.length });
      expect(same).toEqual({ key, outcome: 'exists', sha256: sha256Of(a), sizeBytes: a.length });
      expect(racing.requests.filter((r) => r.method === 'PUT').length).toBe(2);
      expect((await readAll(await first.get(key))).equals(a)).toBe(true);
    });

    it('multipart: the complete is refused, the upload aborted, the first object kept', async () => {
      const racing = await racingProxy();
      const first = storeAt(server.endpoint, server.bucket, { partSizeBytes: 5 * MIB });
      const second = storeAt(racing.endpoint, server.bucket, { partSizeBytes: 5 * MIB });
      const key = `m-${randomBytes(4).toString('hex')}/e.dump`;
      const a = generated(11 * MIB);
      const b = generated(11 * MIB);
      await first.put(key, a.source(), { sha256: a.sha256, sizeBytes: 11 * MIB });
      const other = await second.put(key, b.source(), { sha256: b.sha256, sizeBytes: 11 * MIB });
      expect(other).toEqual({ key, outcome: 'conflict', sha256: a.sha256, sizeBytes: 11 * MIB });
      expect(
        racing.requests.some((r) => r.method === 'POST' && queryOf(r.url).has('uploadId')),
        'the complete was sent (and refused)',
      ).toBe(true);
      expect(await first.hash(key)).toEqual({ sha256: a.sha256, sizeBytes: 11 * MIB });
    });
  });

  it('falls back to plain PUTs on a server that answers 501 to conditional/checksum headers', async () => {
    const old = await proxy((req) =>
      req.method === 'PUT' && (req.headers['if-none-match'] || req.headers['x-amz-checksum-sha256'])
        ? {
            status: 501,
            code: 'NotImplemented',
            message: 'A header you provided implies functionality that is not implemented',
          }
        : undefined,
    );
    const store = storeAt(old.endpoint, server.bucket);
    const p = `o-${randomBytes(4).toString('hex')}`;
    const bytes = randomBytes(500);
    const declared = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
    expect((await store.put(`${p}/1.dump`, Readable.from([bytes]), declared)).outcome).toBe('created');
    expect((await store.put(`${p}/2.dump`, Readable.from([bytes]), declared)).outcome).toBe('created');
    const puts = old.requests.filter((r) => r.method === 'PUT');
    // One refused guarded PUT, then plain ones only; the metadata is always there.
    expect(puts.map((r) => r.headers['if-none-match'] ?? '-')).toEqual(['*', '-', '-']);
    expect(puts.every((r) => r.headers['x-amz-meta-sha256'] === declared.sha256)).toBe(true);
    expect(await store.hash(`${p}/2.dump`)).toEqual(declared);
  });

  it('lists every page, skipping what no driver writes (probes, foreign keys)', async () => {
    const recorder = await proxy();
    const store = storeAt(recorder.endpoint, server.bucket, { listPageSize: 2 });
    const p = `l-${randomBytes(4).toString('hex')}`;
    const bytes = randomBytes(10);
    const declared = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
    const keys = [1, 2, 3, 4, 5].map((i) => `${p}/${i}.dump`);
    for (const key of keys) await store.put(key, Readable.from([bytes]), declared);
    await client.send(
      new PutObjectCommand({ Bucket: server.bucket, Key: `${PREFIX}/${p}/.flux-check/x`, Body: 'probe' }),
    );
    const listed: string[] = [];
    for await (const o of store.list(`${p}/`)) listed.push(o.key);
    expect(listed.sort()).toEqual(keys);
    const pages = recorder.requests.filter(
      (r) => r.method === 'GET' && queryOf(r.url).get('list-type') === '2',
    );
    expect(pages.length).toBe(3);
  });

  it('sweeps old readiness probes and tolerates a server without ListMultipartUploads', async () => {
    const store = storeAt(server.endpoint, server.bucket);
    await client.send(
      new PutObjectCommand({ Bucket: server.bucket, Key: `${PREFIX}/.flux-check/old-probe`, Body: 'probe' }),
    );
    expect(await store.sweepTemp(60 * 60 * 1000)).toBe(0);
    expect(await store.sweepTemp(0)).toBe(1);
    const left = await client.send(
      new ListObjectsV2Command({ Bucket: server.bucket, Prefix: `${PREFIX}/.flux-check/` }),
    );
    expect(left.Contents ?? []).toEqual([]);
    expect(await store.check()).toMatchObject({ ok: true });
  });

  it('reports an unreachable endpoint and a missing bucket for the operator', async () => {
    const gone = storeAt('http://127.0.0.1:9', server.bucket);
    const bytes = randomBytes(10);
    const error = await errorOf(
      gone.put('p/a.dump', Readable.from([bytes]), { sha256: sha256Of(bytes), sizeBytes: bytes.length }),
    );
    expect(isAppError(error) && error.code).toBe('dependency_unavailable');
    expect((error as Error).message).toContain('FLUX_S3_ENDPOINT');
    expect(await gone.check()).toMatchObject({ ok: false });
    const noBucket = storeAt(server.endpoint, 'no-such-bucket');
    const check = await noBucket.check();
    expect(check.ok).toBe(false);
    expect(check.detail).toContain('"no-such-bucket" does not exist');
  });

  it('never puts the credentials in an error, a log line or the config dump', async () => {
    const keyId = `AKIAFLUX${randomBytes(6).toString('hex').toUpperCase()}`;
    const secret = `flux-s3-secret-${randomBytes(12).toString('hex')}`;
    // s3rver (like S3) echoes an unknown access key id in its error document; the raw SDK error keeps it.
    const raw = new S3Client({
      endpoint: server.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: keyId, secretAccessKey: secret },
    });
    const rawError = await errorOf(raw.send(new ListObjectsV2Command({ Bucket: server.bucket })));
    raw.destroy();
    expect(JSON.stringify(rawError)).toContain(keyId);

    const captured: string[] = [];
    const log = createLogger('replicate', {
      level: 'debug',
      destination: new Writable({
        write(chunk, _encoding, callback) {
          captured.push(chunk.toString());
          callback();
        },
      }),
    });
    const store = storeAt(server.endpoint, server.bucket, { accessKeyId: keyId, secretAccessKey: secret });
    const bytes = randomBytes(100);
    const declared = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
    const errors: unknown[] = [
      await errorOf(store.put('p/a.dump', Readable.from([bytes]), declared)),
      await errorOf(store.head('p/a.dump')),
      await errorOf(store.get('p/a.dump')),
      await errorOf(store.hash('p/a.dump')),
      await errorOf(
        (async () => {
          for await (const _ of store.list('')) void _;
        })(),
      ),
    ];
    const check = await store.check();
    expect(check.ok).toBe(false);
    for (const error of errors) {
      expect(isAppError(error) && error.code).toBe('dir_not_writable');
      expect((error as Error).message).toContain('FLUX_S3_ACCESS_KEY_ID');
      log.error({ err: error }, 'offsite copy failed');
      log.error({ err: (error as Error).message, detail: check.detail }, 'offsite copy failed');
    }
    const config = loadConfig({
      FLUX_BACKUPS_OFFSITE_DIR: `s3://${server.bucket}/${PREFIX}`,
      FLUX_S3_ENDPOINT: server.endpoint,
      FLUX_S3_ACCESS_KEY_ID: keyId,
      FLUX_S3_SECRET_ACCESS_KEY: secret,
    });
    log.info({ config: redactConfig(config) }, 'starting');
    const everything = [
      ...captured,
      check.detail,
      store.location,
      ...errors.map(
        (e) => `${(e as Error).message} ${JSON.stringify(e)} ${JSON.stringify((e as Error).cause)}`,
      ),
    ].join('\n');
    expect(captured.length).toBeGreaterThan(errors.length);
    expect(everything).toContain('InvalidAccessKeyId');
    expect(everything).not.toContain(keyId);
    expect(everything).not.toContain(secret);
  });
});

describe('choosing the s3 driver from FLUX_BACKUPS_OFFSITE_DIR', () => {
  const creds = { FLUX_S3_ACCESS_KEY_ID: 'AKIAEXAMPLE', FLUX_S3_SECRET_ACCESS_KEY: 'not-a-real-secret' };
  const codeOf = (fn: () => unknown) => {
    try {
      fn();
    } catch (error) {
      return { code: isAppError(error) ? error.code : 'not an AppError', message: (error as Error).message };
    }
    return { code: 'returned', message: '' };
  };

  it('selects s3 for s3://bucket/prefix with credentials', () => {
    const store = createOffsiteStore({ FLUX_BACKUPS_OFFSITE_DIR: 's3://flux-backups/prod/', ...creds });
    expect({ driver: store.driver, location: store.location }).toEqual({
      driver: 's3',
      location: 's3://flux-backups/prod',
    });
    expect(parseS3Url('s3://flux-backups')).toEqual({ bucket: 'flux-backups', prefix: '' });
    expect(parseS3Url('s3://flux-backups/a/b')).toEqual({ bucket: 'flux-backups', prefix: 'a/b' });
  });

  it('refuses a half-configured s3 store at start-up, never falling back to a directory', () => {
    for (const missing of ['FLUX_S3_ACCESS_KEY_ID', 'FLUX_S3_SECRET_ACCESS_KEY'] as const) {
      const partial = { ...creds, [missing]: undefined };
      const direct = codeOf(() =>
        createOffsiteStore({ FLUX_BACKUPS_OFFSITE_DIR: 's3://flux-backups/prod', ...partial }),
      );
      expect(direct.code).toBe('config_invalid');
      expect(direct.message).toContain(missing);
      const env = { FLUX_BACKUPS_OFFSITE_DIR: 's3://flux-backups/prod', ...partial };
      const loaded = codeOf(() => loadConfig(env as NodeJS.ProcessEnv));
      expect(loaded.code).toBe('config_invalid');
      expect(loaded.message).toContain(missing);
    }
  });

  it('refuses credentials in the URL, bad buckets and prefixes, and bad endpoints without echoing them', () => {
    for (const target of [
      's3://AKIAEXAMPLE:hunter2@flux-backups/prod',
      's3://flux-backups:9000/prod',
      's3://x/prod',
      's3://flux-backups/../etc',
      's3://flux-backups/a//b',
      's3:///prod',
    ]) {
      const r = codeOf(() => createOffsiteStore({ FLUX_BACKUPS_OFFSITE_DIR: target, ...creds }));
      expect(r.code, target).toBe('config_invalid');
      expect(r.message).toContain('FLUX_BACKUPS_OFFSITE_DIR');
      expect(r.message).not.toContain('hunter2');
    }
    const endpoint = codeOf(() =>
      createOffsiteStore({
        FLUX_BACKUPS_OFFSITE_DIR: 's3://flux-backups',
        FLUX_S3_ENDPOINT: 'https://key:hunter2@minio.internal',
        ...creds,
      }),
    );
    expect(endpoint.code).toBe('config_invalid');
    expect(endpoint.message).toContain('FLUX_S3_ENDPOINT');
    expect(endpoint.message).not.toContain('hunter2');
  });
});
