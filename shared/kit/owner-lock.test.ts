import { readdir, readFile, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTestEnv, type TestEnv } from '../../test/support/runtime.js';
import { createCatalog } from '../catalog/catalog.js';
import { parseCatalogName } from '../catalog/layout.js';
import { FUNCTION_NAMES } from '../config.js';
import { isAppError } from '../errors.js';
import {
  acquireOwnerLocks,
  judgeHolder,
  OWNER_STALE_MS,
  type OwnerRecord,
  ownerLockTargets,
} from './owner-lock.js';
import type { PidLookup, ProcessIdentity } from './process-identity.js';

const SELF: ProcessIdentity = { pid: 100, host: 'node-a', bootId: 'boot-1', pidNamespace: 'pid:[1]' };
const HOLDER: OwnerRecord = {
  fn: 'dump',
  pid: 42,
  host: 'node-a',
  bootId: 'boot-1',
  pidNamespace: 'pid:[1]',
  startTicks: '5000',
  startedAt: '2026-12-01T00:00:00.000Z',
  nonce: 'n1',
};
const running =
  (startTicks: string | null): PidLookup =>
  () => ({ startTicks });
const gone: PidLookup = () => undefined;

describe('judgeHolder', () => {
  it('same boot and pid namespace: the pid itself decides', () => {
    expect(judgeHolder(HOLDER, SELF, running('5000'), 0).live).toBe(true);
    expect(judgeHolder(HOLDER, SELF, gone, 0)).toEqual({ live: false, why: 'pid 42 is not running' });
    // The pid was reused by another process since (another start time).
    expect(judgeHolder(HOLDER, SELF, running('9999'), 0)).toEqual({
      live: false,
      why: 'pid 42 is another process now',
    });
    // A fresh heartbeat does not keep a dead holder's lock.
    expect(judgeHolder(HOLDER, SELF, gone, 1).live).toBe(false);
  });

  it('the same host after a reboot: stale at once', () => {
    expect(judgeHolder({ ...HOLDER, bootId: 'boot-0' }, SELF, running('5000'), 0)).toEqual({
      live: false,
      why: 'the host rebooted since',
    });
  });

  it('a holder this process cannot see (another host or pid namespace): its heartbeat decides', () => {
    for (const holder of [
      { ...HOLDER, host: 'node-b', bootId: 'boot-9' },
      { ...HOLDER, pidNamespace: 'pid:[2]' },
    ]) {
      // The pid lookup is never trusted across namespaces: the same pid there is another process here.
      expect(judgeHolder(holder, SELF, gone, 1_000).live).toBe(true);
      expect(judgeHolder(holder, SELF, running('5000'), OWNER_STALE_MS + 1).live).toBe(false);
    }
  });

  it('an unreadable lock is live while it is being refreshed, stale after', () => {
    expect(judgeHolder(undefined, SELF, gone, 0).live).toBe(true);
    expect(judgeHolder(undefined, SELF, gone, OWNER_STALE_MS + 1).live).toBe(false);
  });
});

describe('acquireOwnerLocks', () => {
  let env: TestEnv;
  beforeAll(async () => {
    env = await makeTestEnv();
  });
  afterAll(async () => env.cleanup());
  const options = (identity: ProcessIdentity, lookup: PidLookup) => ({
    identity,
    lookup,
    heartbeat: false,
    releaseOnExit: false,
  });
  const other = { ...SELF, pid: 200 };

  it('refuses a second owner of the same function in one line naming the directory, pid and host', async () => {
    const first = await acquireOwnerLocks(env.config, ['dump'], options(SELF, running(null)));
    expect(first.files).toEqual([
      path.join(env.config.FLUX_STATE_DIR, 'owners', 'dump.lock'),
      path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, '.flux-owner-dump.lock'),
    ]);
    const error = await acquireOwnerLocks(env.config, ['dump'], options(other, running(null))).catch(
      (e: unknown) => e,
    );
    expect(isAppError(error) && error.code).toBe('conflict');
    const message = (error as Error).message;
    expect(message).not.toContain('\n');
    expect(message).toContain(
      `FLUX_STATE_DIR=${env.config.FLUX_STATE_DIR} is in use by dump process pid 100`,
    );
    expect(message).toContain('on host node-a');
    expect(message).toMatch(/stop that process, or give this one its own FLUX_STATE_DIR/);
    // Another function shares the directories.
    const replicate = await acquireOwnerLocks(env.config, ['replicate'], options(other, running(null)));
    replicate.release();
    first.release();
    // Released: the next owner takes it.
    const next = await acquireOwnerLocks(env.config, ['dump'], options(other, running(null)));
    next.release();
    expect(await readdir(path.join(env.config.FLUX_STATE_DIR, 'owners'))).toEqual([]);
  });

  it('takes over the lock of a holder that is gone, and refuses all or nothing', async () => {
    const crashed = await acquireOwnerLocks(env.config, ['verify'], options(SELF, running(null)));
    // No release: the holder was killed. Its pid is gone now.
    const next = await acquireOwnerLocks(env.config, ['verify'], options(other, gone));
    const record = JSON.parse(await readFile(next.files[0]!, 'utf8')) as OwnerRecord;
    expect(record.pid).toBe(200);
    // The crashed holder's late release removes nothing of the new owner's.
    crashed.release();
    expect(JSON.parse(await readFile(next.files[0]!, 'utf8'))).toMatchObject({ pid: 200 });

    // An all-in-one refused on verify takes none of the other locks either.
    const error = await acquireOwnerLocks(env.config, FUNCTION_NAMES, options(SELF, running(null))).catch(
      (e: unknown) => e,
    );
    expect(isAppError(error) && error.code).toBe('conflict');
    expect(await readdir(path.join(env.config.FLUX_STATE_DIR, 'owners'))).toEqual(['verify.lock']);
    next.release();
  });

  it('two newcomers racing for one stale lock: exactly one wins', async () => {
    const crashed = await acquireOwnerLocks(env.config, ['migrate'], options(SELF, running(null)));
    void crashed;
    // Each sees the crashed holder (pid 100) as gone and the other newcomer as running.
    const lookup: PidLookup = (pid) => (pid === 100 ? undefined : { startTicks: null });
    const results = await Promise.allSettled(
      [201, 202, 203].map((pid) =>
        acquireOwnerLocks(env.config, ['migrate'], options({ ...SELF, pid }, lookup)),
      ),
    );
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    expect(results.filter((r) => r.status === 'rejected')).toHaveLength(2);
    (won[0] as PromiseFulfilledResult<{ release(): void }>).value.release();
  });

  it('a foreign holder whose heartbeat stopped is taken over; a fresh one is not', async () => {
    const lock = path.join(env.config.FLUX_STATE_DIR, 'owners', 'probe.lock');
    const foreign = { ...HOLDER, fn: 'probe', host: 'node-b', bootId: 'boot-9' };
    await writeFile(lock, JSON.stringify(foreign));
    await expect(acquireOwnerLocks(env.config, ['probe'], options(SELF, gone))).rejects.toThrow(
      /in use by probe process pid 42 on host node-b.*taken over once it is 60 s old, or remove/,
    );
    const old = new Date(Date.now() - OWNER_STALE_MS - 5_000);
    await utimes(lock, old, old);
    const taken = await acquireOwnerLocks(env.config, ['probe'], options(SELF, gone));
    // probe writes no backup root: only its state dir lock.
    expect(taken.files).toEqual([lock]);
    taken.release();
  });

  it('the root lock is no catalog entry: no project id, no catalog file name', async () => {
    const targets = ownerLockTargets(env.config, FUNCTION_NAMES);
    const inRoot = targets.filter((t) => t.variable === 'FLUX_BACKUPS_LOCAL_DIR');
    expect(inRoot.map((t) => t.fn)).toEqual(FUNCTION_NAMES.filter((fn) => fn !== 'probe'));
    const held = await acquireOwnerLocks(env.config, FUNCTION_NAMES, options(SELF, running(null)));
    for (const t of inRoot) expect(parseCatalogName(path.basename(t.file))).toBeUndefined();
    const catalog = createCatalog({ root: env.config.FLUX_BACKUPS_LOCAL_DIR });
    expect(await catalog.listProjects()).toEqual([]);
    held.release();
  });
});
