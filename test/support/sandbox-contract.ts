// The one contract every SandboxDriver meets, run by the tests against each driver (unstorage's habit):
// ready server with versions, the same exec result shape for success, failure and cancellation, files
// streamed in and restored, destroy that leaves nothing, and a reaper that removes only expired leftovers.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createDockerDriver } from '../../shared/sandbox/docker.js';
import { queryJson, textArray } from '../../shared/sandbox/query.js';
import { throwawaySettings } from '../../shared/sandbox/settings.js';
import type { ExecResult, Sandbox, SandboxDriver } from '../../shared/sandbox/types.js';

export interface ContractFixture {
  /** A small custom-format dump of one table `public.items` with `rows` rows. */
  dumpFile: string;
  rows: number;
}

export interface ContractTarget {
  name: string;
  /** A fresh driver instance (called more than once: a second instance plays another process). */
  makeDriver(): SandboxDriver;
  fixture(): ContractFixture;
  /** Sandboxes of this target that still exist (container ids, directories), spares excluded. */
  leftovers(): Promise<string[]>;
  /** Everything of this target that still exists, spares (and a template) included. */
  all(): Promise<string[]>;
}

const EXEC_RESULT_KEYS = ['command', 'exitCode', 'failed', 'isCanceled', 'seconds', 'stderr', 'stdout'];

function shapeOf(result: ExecResult): string[] {
  return Object.keys(result).sort();
}

export function sandboxContract(target: ContractTarget): void {
  describe(`SandboxDriver contract: ${target.name}`, () => {
    let driver: SandboxDriver;
    const opened: Sandbox[] = [];
    const extraDrivers: SandboxDriver[] = [];
    const create = async (ttlMs = 10 * 60_000, d: SandboxDriver = driver) => {
      const sandbox = await d.create({
        projectId: '00000000-0000-4000-8000-000000000000',
        backupId: '01J00000000000000000000000',
        ttlMs,
      });
      opened.push(sandbox);
      return sandbox;
    };

    beforeAll(() => {
      driver = target.makeDriver();
    });

    afterEach(async () => {
      for (const s of opened.splice(0)) await s.destroy();
      expect(await target.leftovers()).toEqual([]);
    });

    afterAll(async () => {
      for (const d of extraDrivers) await d.close();
      await driver.close();
      // close() also removes what it kept ready.
      expect(await target.all()).toEqual([]);
    });

    it('reports itself ready with the versions it will restore with', async () => {
      const status = await driver.status();
      expect(status).toMatchObject({ driver: target.name, ok: true });
      expect(status.detail.length).toBeGreaterThan(0);
    });

    it('starts a ready server whose tools answer, and reports their versions', async () => {
      const sandbox = await create();
      expect(sandbox.driver).toBe(target.name);
      expect(sandbox.versions.serverMajor).toBeGreaterThanOrEqual(12);
      expect(sandbox.versions.pgRestoreMajor).toBe(sandbox.versions.serverMajor);
      expect(sandbox.versions.server).toMatch(/^\d+(\.\d+)?$/);
      const rows = await queryJson<{ user: string; ssl: boolean }>(
        sandbox,
        'SELECT current_user AS user, false AS ssl',
        'who am i',
      );
      expect(rows).toEqual([{ user: 'postgres', ssl: false }]);
    });

    it('runs with every throwaway setting applied', async () => {
      const sandbox = await create();
      const wanted = throwawaySettings(64);
      const names = Object.keys(wanted);
      const rows = await queryJson<{ name: string; value: string; kb: string | null }>(
        sandbox,
        `SELECT s.name, current_setting(s.name) AS value,
                CASE WHEN s.unit = 'kB' THEN s.setting END AS kb
           FROM pg_settings s WHERE s.name = ANY(${textArray(names)})`,
        'settings',
      );
      const actual = Object.fromEntries(rows.map((r) => [r.name, r.value]));
      const { maintenance_work_mem: _sized, ...fixed } = wanted;
      expect(actual).toMatchObject(fixed);
      // Sized per driver (memory limit or host memory), never below the 64 MB floor.
      const mwm = rows.find((r) => r.name === 'maintenance_work_mem');
      expect(Number(mwm?.kb)).toBeGreaterThanOrEqual(64 * 1024);
    });

    it('hands every verification its own fresh server, never a used one', async () => {
      const first = await create();
      await first.exec(['psql', '-X', '-v', 'ON_ERROR_STOP=1', '-c', 'CREATE TABLE used_once (x int)']);
      const second = await create();
      expect(second.id).not.toBe(first.id);
      await first.destroy();
      const third = await create();
      expect([first.id, second.id]).not.toContain(third.id);
      for (const s of [second, third]) {
        const [row] = await queryJson<{ t: string | null }>(
          s,
          `SELECT to_regclass('public.used_once')::text AS t`,
          'fresh',
        );
        expect(row).toEqual({ t: null });
      }
    });

    it('gives success and failure the same result shape, branching on fields', async () => {
      const sandbox = await create();
      const ok = await sandbox.exec(['psql', '-X', '-A', '-t', '-c', 'SELECT 40 + 2']);
      const bad = await sandbox.exec(['psql', '-X', '-v', 'ON_ERROR_STOP=1', '-c', 'SELECT no_such_column']);
      expect(shapeOf(ok)).toEqual(EXEC_RESULT_KEYS);
      expect(shapeOf(bad)).toEqual(EXEC_RESULT_KEYS);
      expect(ok).toMatchObject({ exitCode: 0, failed: false, isCanceled: false });
      expect(ok.stdout.trim()).toBe('42');
      expect(bad.exitCode).not.toBe(0);
      expect(bad).toMatchObject({ failed: true, isCanceled: false });
      expect(bad.stderr).toMatch(/no_such_column/);
    });

    it('streams a dump in (no shared path) and restores it inside', async () => {
      const { dumpFile, rows } = target.fixture();
      const sandbox = await create();
      const size = (await stat(dumpFile)).size;
      const inside = await sandbox.putFile('fixture.dump', createReadStream(dumpFile), size);
      const list = await sandbox.exec(['pg_restore', '--list', inside]);
      expect(list).toMatchObject({ exitCode: 0, failed: false });
      expect(list.stdout).toMatch(/TABLE DATA public items/);
      const restore = await sandbox.exec(['pg_restore', '--dbname=postgres', '--single-transaction', inside]);
      expect(restore).toMatchObject({ exitCode: 0, failed: false });
      const [count] = await queryJson<{ n: number }>(
        sandbox,
        'SELECT count(*)::int AS n FROM public.items',
        'count',
      );
      expect(count?.n).toBe(rows);
    });

    it('refuses a stream that does not deliver the announced size', async () => {
      const sandbox = await create();
      const bytes = Buffer.from('PGDMP-not-really');
      await expect(
        sandbox.putFile('short.bin', Readable.from([bytes]), bytes.length + 10),
      ).rejects.toMatchObject({ code: expect.stringMatching(/artifact_invalid|unverifiable/) });
    });

    it('cancels a running command through its signal', async () => {
      const sandbox = await create();
      const controller = new AbortController();
      const running = sandbox.exec(['psql', '-X', '-c', 'SELECT pg_sleep(60)'], {
        signal: controller.signal,
      });
      setTimeout(() => controller.abort(new Error('test cancel')), 300);
      const result = await running;
      expect(result).toMatchObject({ isCanceled: true, failed: true, exitCode: null });
      expect(shapeOf(result)).toEqual(EXEC_RESULT_KEYS);
    });

    it('destroy removes everything, is idempotent, and later commands fail without throwing', async () => {
      const sandbox = await create();
      expect(await target.leftovers()).toHaveLength(1);
      await sandbox.destroy();
      await sandbox.destroy();
      expect(await target.leftovers()).toEqual([]);
      const after = await sandbox.exec(['psql', '-X', '-c', 'SELECT 1']);
      expect(after.failed).toBe(true);
    });

    it('the reaper removes sandboxes past their expiry and keeps the live ones', async () => {
      const other = target.makeDriver();
      extraDrivers.push(other);
      // The sweeps are judged at given moments, not at the clock's: making two sandboxes on a loaded
      // machine can take longer than the orphan's minute, which would expire it before the first sweep.
      const createdFrom = new Date();
      const live = await create(60 * 60_000);
      const orphan = await create(60_000, other);
      expect(await target.leftovers()).toHaveLength(2);
      // At the moment they were made nothing is expired: the sweep removes nothing.
      expect(await driver.reap(createdFrom)).toBe(0);
      // Two minutes after they were all made the orphan (another "process"'s sandbox) has expired, the
      // live one has not.
      const removed = await driver.reap(new Date(Date.now() + 2 * 60_000));
      expect(removed).toBe(1);
      expect(await target.leftovers()).toEqual([live.id]);
      const [alive] = await queryJson<{ n: number }>(live, 'SELECT 1 AS n', 'alive');
      expect(alive?.n).toBe(1);
      await orphan.destroy();
    });
  });
}

export interface DockerGate {
  ok: boolean;
  reason: string;
}

/** Whether docker tests can run here: the engine answers and the (locally built) image is present. */
export async function dockerGate(socketPath: string, image: string): Promise<DockerGate> {
  const driver = createDockerDriver({ socketPath, image, memoryMb: 256, cpus: 1, pids: 64, spare: false });
  try {
    const status = await driver.status();
    return { ok: status.ok, reason: status.ok ? '' : status.detail };
  } finally {
    await driver.close();
  }
}

/**
 * describe() for docker tests: without an engine they fail loudly in CI (CI=true) and are skipped with the
 * reason elsewhere.
 */
export function describeDocker(gate: DockerGate, name: string, fn: () => void): void {
  if (gate.ok) {
    describe(name, fn);
    return;
  }
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('needs a Docker engine and the verify image in CI (run scripts/prepare-test-env.sh)', () => {
        throw new Error(`docker tests cannot run: ${gate.reason}`);
      });
    });
    return;
  }
  console.warn(`skipping "${name}": ${gate.reason} (run scripts/prepare-test-env.sh to enable)`);
  describe.skip(name, fn);
}
