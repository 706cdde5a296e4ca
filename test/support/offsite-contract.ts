// The one contract every OffsiteStore driver must pass (fs today, s3 later): whole-or-nothing puts,
// caller-supplied SHA-256 enforced, immutability (same content = no-op, different = conflict, never an
// overwrite), proofs by re-reading, listing by prefix, safe keys, cancellation.
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAppError } from '../../shared/errors.js';
import type { OffsiteStore, PutResult } from '../../shared/offsite/types.js';

export interface ContractSubject {
  store: OffsiteStore;
  /** Replaces the stored bytes of `key` behind the store's back (bit rot, a hand edit, an attacker). */
  tamper(key: string, bytes: Buffer): Promise<void>;
  cleanup(): Promise<void>;
}

export interface ContractOptions {
  /** Size of the streamed-object case (default 6 MiB + 123 B: several chunks and an odd tail). */
  largeBytes?: number;
}

const sha256Of = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

function chunked(bytes: Buffer, chunkBytes = 64 * 1024): Readable {
  return Readable.from(
    (function* () {
      for (let at = 0; at < bytes.length; at += chunkBytes) yield bytes.subarray(at, at + chunkBytes);
    })(),
  );
}

/** Random-looking bytes streamed in 1 MiB chunks (each chunk numbered), never held whole. */
function generated(sizeBytes: number): { source: () => Readable; sha256: string } {
  const CHUNK = 1024 * 1024;
  const base = randomBytes(CHUNK);
  const chunkAt = (index: number, length: number) => {
    const out = Buffer.from(base.subarray(0, length));
    out.writeUInt32BE(index, 0);
    return out;
  };
  const count = Math.ceil(sizeBytes / CHUNK);
  const hash = createHash('sha256');
  for (let i = 0; i < count; i++) hash.update(chunkAt(i, Math.min(CHUNK, sizeBytes - i * CHUNK)));
  return {
    sha256: hash.digest('hex'),
    source: () =>
      Readable.from(
        (function* () {
          for (let i = 0; i < count; i++) yield chunkAt(i, Math.min(CHUNK, sizeBytes - i * CHUNK));
        })(),
      ),
  };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function keysOf(store: OffsiteStore, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const object of store.list(prefix)) keys.push(object.key);
  return keys.sort();
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return isAppError(error) ? error.code : `not an AppError: ${(error as Error).name}`;
  }
  return 'resolved';
}

export function offsiteStoreContract(
  name: string,
  makeStore: () => Promise<ContractSubject>,
  options: ContractOptions = {},
): void {
  describe(`OffsiteStore contract: ${name}`, () => {
    let subject: ContractSubject;
    let store: OffsiteStore;
    // Every case works under its own prefix so cases never see each other's objects.
    const ns = () => `c${randomBytes(6).toString('hex')}`;

    beforeAll(async () => {
      subject = await makeStore();
      store = subject.store;
    });
    afterAll(async () => {
      await subject?.cleanup();
    });

    it('puts a whole object that head, hash (re-read), get and list all see', async () => {
      const key = `${ns()}/a.dump`;
      const bytes = randomBytes(300_001);
      const result = await store.put(key, chunked(bytes), {
        sha256: sha256Of(bytes),
        sizeBytes: bytes.length,
      });
      expect(result).toEqual({ key, outcome: 'created', sha256: sha256Of(bytes), sizeBytes: bytes.length });
      expect(await store.head(key)).toMatchObject({ key, sizeBytes: bytes.length });
      expect(await store.hash(key)).toEqual({ sha256: sha256Of(bytes), sizeBytes: bytes.length });
      expect((await readAll(await store.get(key))).equals(bytes)).toBe(true);
      expect(await keysOf(store, key.split('/')[0]!)).toEqual([key]);
    });

    it('is idempotent: the same content again is `exists` and writes nothing', async () => {
      const key = `${ns()}/same.dump`;
      const bytes = randomBytes(4096);
      const declared = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
      expect((await store.put(key, chunked(bytes), declared)).outcome).toBe('created');
      const before = await store.head(key);
      const again = await store.put(key, chunked(bytes), declared);
      expect(again).toEqual({ key, outcome: 'exists', ...declared });
      expect(await store.head(key)).toEqual(before);
    });

    it('never overwrites: different content is a `conflict` and the original stays', async () => {
      const key = `${ns()}/immutable.dump`;
      const original = randomBytes(5000);
      const other = randomBytes(5000);
      await store.put(key, chunked(original), { sha256: sha256Of(original), sizeBytes: original.length });
      const result = await store.put(key, chunked(other), {
        sha256: sha256Of(other),
        sizeBytes: other.length,
      });
      expect(result).toEqual({
        key,
        outcome: 'conflict',
        sha256: sha256Of(original),
        sizeBytes: original.length,
      });
      expect((await readAll(await store.get(key))).equals(original)).toBe(true);
    });

    it('refuses content that is not what the caller declared, storing nothing', async () => {
      const prefix = ns();
      const bytes = randomBytes(10_000);
      const wrongHash = await codeOf(
        store.put(`${prefix}/hash.dump`, chunked(bytes), {
          sha256: sha256Of(randomBytes(8)),
          sizeBytes: bytes.length,
        }),
      );
      const wrongSize = await codeOf(
        store.put(`${prefix}/size.dump`, chunked(bytes), {
          sha256: sha256Of(bytes),
          sizeBytes: bytes.length + 1,
        }),
      );
      // A truncated source (a partial file) is the same failure as a wrong hash.
      const truncated = await codeOf(
        store.put(`${prefix}/part.dump`, chunked(bytes.subarray(0, 4000)), {
          sha256: sha256Of(bytes),
          sizeBytes: bytes.length,
        }),
      );
      expect([wrongHash, wrongSize, truncated]).toEqual([
        'artifact_invalid',
        'artifact_invalid',
        'artifact_invalid',
      ]);
      expect(await store.head(`${prefix}/hash.dump`)).toBeUndefined();
      expect(await keysOf(store, `${prefix}/`)).toEqual([]);
    });

    it('proves by re-reading: hash sees bytes changed behind its back, and a put then conflicts', async () => {
      const key = `${ns()}/tamper.dump`;
      const bytes = randomBytes(2048);
      const declared = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
      await store.put(key, chunked(bytes), declared);
      const evil = Buffer.from(bytes);
      evil[100] = (evil[100]! + 1) % 256;
      await subject.tamper(key, evil);
      expect(await store.hash(key)).toEqual({ sha256: sha256Of(evil), sizeBytes: evil.length });
      const again = await store.put(key, chunked(bytes), declared);
      expect(again.outcome).toBe('conflict');
      expect((await readAll(await store.get(key))).equals(evil)).toBe(true);
    });

    it('answers undefined / not_found for a missing object', async () => {
      const key = `${ns()}/missing.dump`;
      expect(await store.head(key)).toBeUndefined();
      expect(await store.hash(key)).toBeUndefined();
      expect(await codeOf(store.get(key))).toBe('not_found');
    });

    it('lists by prefix, without temp files or other prefixes', async () => {
      const a = ns();
      const b = ns();
      const bytes = randomBytes(10);
      const declared = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
      for (const key of [`${a}/1.dump`, `${a}/1.manifest.json`, `${a}/2.dump`, `${b}/1.dump`]) {
        await store.put(key, chunked(bytes), declared);
      }
      expect(await keysOf(store, `${a}/`)).toEqual([`${a}/1.dump`, `${a}/1.manifest.json`, `${a}/2.dump`]);
      expect(await keysOf(store, `${a}/1`)).toEqual([`${a}/1.dump`, `${a}/1.manifest.json`]);
      expect(await keysOf(store, `${b}/`)).toEqual([`${b}/1.dump`]);
      const all = await keysOf(store, '');
      expect(all).toEqual(expect.arrayContaining([`${a}/2.dump`, `${b}/1.dump`]));
      expect(all.every((k) => !k.split('/').some((s) => s.startsWith('.')))).toBe(true);
      for await (const object of store.list(`${a}/`)) expect(object.sizeBytes).toBe(bytes.length);
    });

    it('rejects keys that are not plain relative keys', async () => {
      const bytes = randomBytes(10);
      const declared = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
      for (const key of [
        '',
        '../escape.dump',
        'a/../../escape.dump',
        '/abs.dump',
        'a//b.dump',
        'a/.tmp-x',
        'a\\b',
      ]) {
        expect(await codeOf(store.put(key, chunked(bytes), declared)), key).toBe('invalid_id');
        expect(await codeOf(store.head(key)), key).toBe('invalid_id');
        expect(await codeOf(store.get(key)), key).toBe('invalid_id');
      }
    });

    it('streams a multi-chunk object and reads it back the same', async () => {
      const key = `${ns()}/large.dump`;
      const size = options.largeBytes ?? 6 * 1024 * 1024 + 123;
      const content = generated(size);
      const result = await store.put(key, content.source(), { sha256: content.sha256, sizeBytes: size });
      expect(result.outcome).toBe('created');
      expect(await store.hash(key)).toEqual({ sha256: content.sha256, sizeBytes: size });
      const hash = createHash('sha256');
      let read = 0;
      for await (const chunk of await store.get(key)) {
        hash.update(chunk as Buffer);
        read += (chunk as Buffer).length;
      }
      expect({ read, sha256: hash.digest('hex') }).toEqual({ read: size, sha256: content.sha256 });
    });

    it('leaves nothing behind when cancelled or when the source fails mid-stream', async () => {
      const prefix = ns();
      const controller = new AbortController();
      // Each source fails the moment the store asks for more than its first chunk: while the put is
      // reading it, never after the put has settled (a timer could fire after the test).
      let slowReads = 0;
      const slow = new Readable({
        read() {
          slowReads += 1;
          if (slowReads === 1) this.push(randomBytes(1000));
          else if (slowReads === 2) controller.abort(new Error('test cancel'));
        },
      });
      const aborted = store.put(`${prefix}/aborted.dump`, slow, {
        sha256: sha256Of(Buffer.alloc(1)),
        sizeBytes: 10_000,
        signal: controller.signal,
      });
      await expect(aborted).rejects.toThrow();
      let brokenReads = 0;
      const broken = new Readable({
        read() {
          brokenReads += 1;
          if (brokenReads === 1) this.push(randomBytes(1000));
          else this.destroy(new Error('disk read error'));
        },
      });
      const failed = store.put(`${prefix}/broken.dump`, broken, {
        sha256: sha256Of(Buffer.alloc(1)),
        sizeBytes: 2000,
      });
      await expect(failed).rejects.toThrow();
      expect(await keysOf(store, `${prefix}/`)).toEqual([]);
      // The key is still free for a good put.
      const bytes = randomBytes(64);
      const ok = await store.put(`${prefix}/aborted.dump`, chunked(bytes), {
        sha256: sha256Of(bytes),
        sizeBytes: bytes.length,
      });
      expect(ok.outcome).toBe('created');
    });

    it('settles racing puts of one key: one created, the same content exists, other content conflicts', async () => {
      const key = `${ns()}/race.dump`;
      const a = randomBytes(200_000);
      const b = randomBytes(200_000);
      const put = (bytes: Buffer) =>
        store.put(key, chunked(bytes, 7_000), { sha256: sha256Of(bytes), sizeBytes: bytes.length });
      const results: PutResult[] = await Promise.all([put(a), put(a), put(b), put(a), put(b)]);
      const created = results.filter((r) => r.outcome === 'created');
      expect(created).toHaveLength(1);
      const winner = created[0]!.sha256 === sha256Of(a) ? a : b;
      const loser = winner === a ? b : a;
      // exists/conflict report the object that holds the key: always the winner's content.
      for (const r of results) expect(r.sha256, r.outcome).toBe(sha256Of(winner));
      const conflicts = results.filter((r) => r.outcome === 'conflict').length;
      expect(conflicts).toBe(loser === a ? 3 : 2);
      expect((await readAll(await store.get(key))).equals(winner)).toBe(true);
    });

    it('removes an object whole: gone from head, hash, get and list; removing again is no error; the key is free', async () => {
      const prefix = ns();
      const bytes = randomBytes(3000);
      const declared = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
      await store.put(`${prefix}/gone.dump`, chunked(bytes), declared);
      await store.put(`${prefix}/kept.dump`, chunked(bytes), declared);
      await store.remove(`${prefix}/gone.dump`);
      expect(await store.head(`${prefix}/gone.dump`)).toBeUndefined();
      expect(await store.hash(`${prefix}/gone.dump`)).toBeUndefined();
      expect(await codeOf(store.get(`${prefix}/gone.dump`))).toBe('not_found');
      expect(await keysOf(store, `${prefix}/`)).toEqual([`${prefix}/kept.dump`]);
      await store.remove(`${prefix}/gone.dump`);
      await store.remove(`${prefix}/never.dump`);
      expect((await store.put(`${prefix}/gone.dump`, chunked(bytes), declared)).outcome).toBe('created');
      for (const key of ['', '../escape.dump', 'a/.tmp-x', '/abs.dump']) {
        expect(await codeOf(store.remove(key)), key).toBe('invalid_id');
      }
      expect(await keysOf(store, `${prefix}/`)).toEqual([`${prefix}/gone.dump`, `${prefix}/kept.dump`]);
    });

    it('reports itself ready', async () => {
      expect(await store.check()).toMatchObject({ ok: true });
      expect(typeof store.driver).toBe('string');
      expect(store.location).not.toMatch(/:[^/@]*@/);
    });
  });
}
