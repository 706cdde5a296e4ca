import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fakeManifest } from '../../test/replicate-fixtures.js';
import { newBackupId } from '../catalog/ids.js';
import { isAppError } from '../errors.js';
import { checkedStream, openArtifact, parseArtifactSource, readOffsiteManifest } from './artifact.js';
import { createFsOffsiteStore } from './fs.js';
import { dumpKeyOf, manifestKeyOf } from './keys.js';
import type { OffsiteStore } from './types.js';

const sha256Of = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return isAppError(error) ? error.code : `not an AppError: ${(error as Error).message}`;
  }
  return 'resolved';
}

let root: string;
let store: OffsiteStore;
const projectId = randomUUID();
const backupId = newBackupId();
const bytes = Buffer.concat([Buffer.from('PGDMP'), randomBytes(3 * 1024 * 1024 + 17)]);
const manifest = fakeManifest(projectId, backupId, { sizeBytes: bytes.length, sha256: sha256Of(bytes) });
const put = (key: string, content: Buffer) =>
  store.put(key, Readable.from([content]), { sha256: sha256Of(content), sizeBytes: content.length });

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'flux-artifact-'));
  store = createFsOffsiteStore({ root: path.join(root, 'offsite') });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('openArtifact', () => {
  it('opens the local file: size before reading, the manifest expectation, fresh reads, the header', async () => {
    const file = path.join(root, 'local.dump');
    await writeFile(file, bytes);
    let storeBuilt = 0;
    const artifact = await openArtifact({ projectId, backupId, manifest, paths: { dump: file } }, 'local', {
      store: () => {
        storeBuilt += 1;
        return store;
      },
    });
    expect(artifact).toMatchObject({
      source: 'local',
      location: file,
      sizeBytes: bytes.length,
      expected: { sha256: manifest.sha256, sizeBytes: bytes.length },
    });
    expect(sha256Of(await readAll(await artifact!.open()))).toBe(manifest.sha256);
    expect(sha256Of(await readAll(await artifact!.open()))).toBe(manifest.sha256);
    expect((await artifact!.readHead(5)).toString()).toBe('PGDMP');
    expect(storeBuilt).toBe(0);
    const missing = path.join(root, 'gone.dump');
    expect(
      await openArtifact({ projectId, backupId, manifest, paths: { dump: missing } }, 'local'),
    ).toBeUndefined();
  });

  it('opens the offsite copy by key, building the store only when asked', async () => {
    const ref = { projectId, backupId, manifest };
    expect(await openArtifact(ref, 'offsite', { store })).toBeUndefined();
    await put(dumpKeyOf(projectId, backupId), bytes);
    let storeBuilt = 0;
    const artifact = await openArtifact(ref, 'offsite', {
      store: () => {
        storeBuilt += 1;
        return store;
      },
    });
    expect(storeBuilt).toBe(1);
    expect(artifact).toMatchObject({
      source: 'offsite',
      location: `${store.location}/${projectId}/${backupId}.dump`,
      sizeBytes: bytes.length,
    });
    expect(sha256Of(await readAll(await artifact!.open()))).toBe(manifest.sha256);
    expect((await artifact!.readHead(5)).toString()).toBe('PGDMP');
    expect(await codeOf(openArtifact(ref, 'offsite'))).toBe('internal');
  });

  it('parses the source option', () => {
    expect(parseArtifactSource(undefined)).toBe('local');
    expect(parseArtifactSource('offsite')).toBe('offsite');
    expect(() => parseArtifactSource('s3')).toThrow(/source must be one of local, offsite/);
  });
});

describe('checkedStream', () => {
  const expected = { sha256: sha256Of(bytes), sizeBytes: bytes.length };
  const chunks = (content: Buffer) =>
    Readable.from(
      (function* () {
        for (let at = 0; at < content.length; at += 256 * 1024) yield content.subarray(at, at + 256 * 1024);
      })(),
    );

  it('passes the expected bytes through unchanged', async () => {
    expect((await readAll(checkedStream(chunks(bytes), expected, 'copy'))).equals(bytes)).toBe(true);
  });

  it('fails at the end, withholding the last chunk, when the bytes differ or run long', async () => {
    const altered = Buffer.from(bytes);
    altered[altered.length - 1] = (altered[altered.length - 1]! + 1) % 256;
    const received: Buffer[] = [];
    const stream = checkedStream(chunks(altered), expected, 'offsite copy x');
    const error = await (async () => {
      try {
        for await (const chunk of stream) received.push(chunk as Buffer);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(isAppError(error) && error.code).toBe('artifact_invalid');
    expect((error as Error).message).toContain('offsite copy x');
    expect(Buffer.concat(received).length).toBeLessThan(altered.length);
    const longer = Buffer.concat([bytes, Buffer.from('x')]);
    expect(await codeOf(readAll(checkedStream(chunks(longer), expected, 'copy')))).toBe('artifact_invalid');
  });
});

describe('readOffsiteManifest', () => {
  it('reads the manifest stored beside the offsite dump, refusing another backup’s or garbage', async () => {
    const id = newBackupId();
    expect(await readOffsiteManifest(store, projectId, id)).toBeUndefined();
    const own = fakeManifest(projectId, id, { sizeBytes: 1, sha256: sha256Of(Buffer.from('x')) });
    await put(manifestKeyOf(projectId, id), Buffer.from(JSON.stringify(own)));
    expect(await readOffsiteManifest(store, projectId, id)).toMatchObject({
      backupId: id,
      sha256: own.sha256,
    });

    const other = newBackupId();
    await put(manifestKeyOf(projectId, other), Buffer.from(JSON.stringify(own)));
    expect(await codeOf(readOffsiteManifest(store, projectId, other))).toBe('artifact_invalid');
    const broken = newBackupId();
    await put(manifestKeyOf(projectId, broken), Buffer.from('{"manifestVersion":'));
    expect(await codeOf(readOffsiteManifest(store, projectId, broken))).toBe('artifact_invalid');
  });
});
