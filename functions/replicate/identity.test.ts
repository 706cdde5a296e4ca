import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isAppError } from '../../shared/errors.js';
import { createFsOffsiteStore } from '../../shared/offsite/fs.js';
import { createStoreIdentity, IDENTITY_STATE_FILE, STORE_MARKER_KEY } from './identity.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function setup() {
  const base = await mkdtemp(path.join(tmpdir(), 'flux-identity-'));
  dirs.push(base);
  const root = path.join(base, 'offsite');
  const stateDir = path.join(base, 'state');
  const identity = () => createStoreIdentity({ store: createFsOffsiteStore({ root }), stateDir });
  return { root, stateDir, identity };
}

async function refusal(
  promise: Promise<unknown>,
): Promise<{ message: string; details: Record<string, unknown> }> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isAppError(error)) throw new Error(`expected an AppError, got ${String(error)}`);
  return { message: error.message, details: error.details ?? {} };
}

describe('offsite store identity', () => {
  it('readiness writes nothing before the first copy; the first copy marks and records the store', async () => {
    const { root, stateDir, identity } = await setup();
    const id = identity();
    expect(await id.status()).toMatchObject({ ok: true, detail: expect.stringMatching(/not marked yet/) });
    await expect(readFile(path.join(root, STORE_MARKER_KEY))).rejects.toThrow(/ENOENT/);
    const storeId = await id.ensure();
    expect(JSON.parse(await readFile(path.join(root, STORE_MARKER_KEY), 'utf8'))).toMatchObject({ storeId });
    const state = JSON.parse(await readFile(path.join(stateDir, IDENTITY_STATE_FILE), 'utf8'));
    expect(Object.values(state.stores)).toEqual([expect.objectContaining({ storeId })]);
    // Concurrent copies share one check and agree.
    expect(new Set(await Promise.all(Array.from({ length: 20 }, () => id.ensure())))).toEqual(
      new Set([storeId]),
    );
    expect(await id.status()).toMatchObject({ ok: true, storeId });
  });

  it('refuses a store whose marker names another store, or names none, and says how to adopt it', async () => {
    const { root, identity } = await setup();
    const id = identity();
    const storeId = await id.ensure();
    await writeFile(path.join(root, STORE_MARKER_KEY), JSON.stringify({ storeId: 'someone-else' }));
    const other = await refusal(id.ensure());
    expect(other.details).toMatchObject({
      reason: 'store_identity',
      expectedStoreId: storeId,
      foundStoreId: 'someone-else',
    });
    expect(other.message).toMatch(/names store someone-else/);
    expect(other.message).toContain(IDENTITY_STATE_FILE);
    expect(await id.status()).toMatchObject({ ok: false });
    await writeFile(path.join(root, STORE_MARKER_KEY), 'not json');
    expect((await refusal(id.ensure())).message).toMatch(/names no store id/);
    // The marker is never rewritten by a refused check.
    expect(await readFile(path.join(root, STORE_MARKER_KEY), 'utf8')).toBe('not json');
  });

  it('a replicator without a record adopts the marker it finds instead of replacing it', async () => {
    const { root, identity } = await setup();
    const storeId = await identity().ensure();
    const marker = await readFile(path.join(root, STORE_MARKER_KEY), 'utf8');
    const elsewhere = await mkdtemp(path.join(tmpdir(), 'flux-identity-state-'));
    dirs.push(elsewhere);
    const second = createStoreIdentity({ store: createFsOffsiteStore({ root }), stateDir: elsewhere });
    expect(await second.status()).toMatchObject({
      ok: true,
      detail: expect.stringMatching(/recorded at the next copy/),
    });
    await expect(readFile(path.join(elsewhere, IDENTITY_STATE_FILE))).rejects.toThrow(/ENOENT/);
    expect(await second.ensure()).toBe(storeId);
    expect(await readFile(path.join(root, STORE_MARKER_KEY), 'utf8')).toBe(marker);
  });
});
