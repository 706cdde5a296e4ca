// verify with the docker sandbox against the real engine and the locally built image, the cases where
// Docker cannot serve (engine stopped, image absent: unverifiable, never restore_failed), auto selection,
// and the reaper. After every test no container of this file is left.
import { randomBytes, randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createApp as createVerifyApp } from '../functions/verify/app.js';
import type { Manifest, VerifyReceipt } from '../shared/catalog/records.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Cluster, Project } from '../shared/registry.js';
import { createDockerDriver } from '../shared/sandbox/docker.js';
import { demuxLogs, LABEL, SPARE_NAME_PREFIX } from '../shared/sandbox/docker-engine.js';
import { seedSlowRestoreTenant, seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';
import { describeDocker, dockerGate } from './support/sandbox-contract.js';

const SOCKET = process.env.FLUX_DOCKER_SOCKET ?? '/var/run/docker.sock';
const IMAGE = process.env.FLUX_TEST_VERIFY_IMAGE ?? 'flux-ops/postgres-verify:15';
const DEAD_SOCKET = path.join(tmpdir(), `no-docker-${randomUUID()}.sock`);
const instance = `test-verify-docker-${randomUUID()}`;
const docker = new Docker({ socketPath: SOCKET });
const gate = await dockerGate(SOCKET, IMAGE);

const tenantProject = (slug: string) =>
  ({
    id: randomUUID(),
    hash: randomBytes(4).toString('hex').slice(0, 7),
    slug,
    engine: 'v2_shared',
    cluster: 'shared-1',
  }) as Project;
const tenant = tenantProject('docker-tenant');
/** Its restore takes minutes (every row's CHECK sleeps): time to act on the sandbox mid-restore. */
const slowTenant = tenantProject('docker-slow-tenant');
const projects = [tenant, slowTenant];

let cluster: PgCluster;
let clusters: Cluster[];
let base: TestEnv;
let dumpFn: FunctionApp;
const started: Array<{ fn: FunctionApp; env: TestEnv }> = [];

/** This file's containers: all of them, or only sandboxes (a verification's), or only spares. */
async function ourContainers(which: 'all' | 'sandboxes' | 'spares' = 'all'): Promise<string[]> {
  if (!gate.ok) return [];
  const list = await docker.listContainers({
    all: true,
    filters: { label: [`${LABEL.verify}=1`, `${LABEL.instance}=${instance}`] },
  });
  const isSpare = (c: Docker.ContainerInfo) => c.Names.some((n) => n.startsWith(`/${SPARE_NAME_PREFIX}`));
  return list.filter((c) => which === 'all' || (which === 'spares') === isSpare(c)).map((c) => c.Id);
}

beforeAll(async () => {
  cluster = await startPostgres();
  await cluster.createDatabase('flux');
  await seedTenant(cluster, { db: 'flux', projectId: tenant.id, rows: 100 });
  await seedSlowRestoreTenant(cluster, { db: 'flux', projectId: slowTenant.id, rows: 3000 });
  clusters = [{ name: 'shared-1', url: cluster.url('flux'), maxConcurrentDumps: 2 }];
  base = await makeTestEnv();
  dumpFn = createDumpApp(testRuntime('dump', base, { projects, clusters }));
});

afterEach(async () => {
  for (const { fn, env } of started.splice(0)) {
    await fn.stop();
    await env.cleanup();
  }
  expect(await ourContainers()).toEqual([]);
});

afterAll(async () => {
  await cluster?.destroy();
  await base?.cleanup();
});

/** A verify function sharing the dump catalog, with `extra` config. */
async function verifyApp(
  extra: Record<string, string>,
  options: { reapIntervalMs?: number } = {},
): Promise<{ fn: FunctionApp; rt: TestRuntime }> {
  const env = await makeTestEnv({
    FLUX_BACKUPS_LOCAL_DIR: base.config.FLUX_BACKUPS_LOCAL_DIR,
    FLUX_BACKUP_VERIFY_POSTGRES_IMAGE: IMAGE,
    FLUX_DOCKER_SOCKET: SOCKET,
    FLUX_VERIFY_MEMORY_MB: '512',
    // On demand only: a start-up reconcile would verify the file's other backups in containers of its own.
    FLUX_VERIFY_ON: 'none',
    ...extra,
  });
  const rt = testRuntime('verify', env, { projects, clusters });
  const fn = createVerifyApp(rt, { instance, ...options });
  started.push({ fn, env });
  return { fn, rt };
}

async function backup(project: Project = tenant): Promise<{ backupId: string; manifest: Manifest }> {
  const res = await dumpFn.app.request(`/api/cli/v1/projects/${project.hash}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(res.status).toBe(200);
  const { backup: b } = (await res.json()) as { backup: { id: string } };
  const entry = await testRuntime('dump', base).catalog.get(project.id, b.id);
  return { backupId: b.id, manifest: entry!.manifest! };
}

/** Runs a command in a container as the postgres user; returns its stdout. */
async function execIn(id: string, cmd: string[]): Promise<string> {
  const exec = await docker.getContainer(id).exec({
    Cmd: cmd,
    User: 'postgres',
    Env: ['PGUSER=postgres', 'PGDATABASE=postgres'],
    AttachStdout: true,
    AttachStderr: true,
  });
  const stream = await exec.start({ hijack: true, stdin: false });
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  await new Promise((resolve) => stream.once('end', resolve));
  return demuxLogs(Buffer.concat(chunks));
}

async function verify(
  fn: FunctionApp,
  backupId: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fn.app.request(`/api/cli/v1/projects/${tenant.hash}/backups/${backupId}/verify`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function receiptOf(rt: TestRuntime, backupId: string): Promise<VerifyReceipt> {
  return (await rt.catalog.get(tenant.id, backupId))!.verify!;
}

describeDocker(gate, 'verify in a docker sandbox', () => {
  it('restore-verifies inside a container of the configured image, then removes it', async () => {
    const { fn, rt } = await verifyApp({ FLUX_VERIFY_DRIVER: 'docker' });
    const b = await backup();
    // Readiness starts the spare; the verification consumes it, and the next one is a new container.
    expect((await fn.app.request('/readyz')).status).toBe(200);
    const [spare] = await eventually(async () => {
      const spares = await ourContainers('spares');
      return spares.length > 0 ? spares : undefined;
    }, 90_000);
    // Operators (and the benchmark) see the warm path in the metrics.
    await eventually(async () => {
      const metrics = await (await fn.app.request('/metrics')).text();
      return metrics.includes('flux_verify_spare_ready{driver="docker"} 1') || undefined;
    }, 90_000);
    const { status, body } = await verify(fn, b.backupId);
    expect(status, JSON.stringify(body)).toBe(200);
    expect(body).toMatchObject({ ok: true, restoreVerificationStatus: 'restore_verified', driver: 'docker' });
    const receipt = await receiptOf(rt, b.backupId);
    expect(receipt).toMatchObject({ status: 'restore_verified', driver: 'docker', image: IMAGE });
    expect(receipt.versions.sandboxServer).toMatch(/^15\./);
    expect(receipt.rungs.every((r) => r.result === 'passed')).toBe(true);
    expect(receipt.rungs.find((r) => r.rung === 'volume')?.details).toMatchObject({ rows: 200 });
    expect(await ourContainers('sandboxes')).toEqual([]);
    const all = await ourContainers();
    expect(all).not.toContain(spare);
    expect(all.length).toBeLessThanOrEqual(1);
  });

  it('a sandbox backend killed mid-restore (as the OOM killer does) is unverifiable, never restore_failed', async () => {
    const { fn, rt } = await verifyApp({ FLUX_VERIFY_DRIVER: 'docker' });
    const b = await backup(slowTenant);
    const accepted = await fn.app.request(
      `/api/cli/v1/projects/${slowTenant.hash}/backups/${b.backupId}/verify`,
      { method: 'POST', headers: { ...ADMIN.header, prefer: 'respond-async' } },
    );
    expect(accepted.status).toBe(202);
    // The backend loading the slow table, inside the verification's container.
    const target = await eventually(async () => {
      const [id] = await ourContainers('sandboxes');
      if (!id) return undefined;
      const found = await execIn(id, [
        'psql',
        '-X',
        '-A',
        '-t',
        '-c',
        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY %' AND pid <> pg_backend_pid()",
      ]);
      const pid = found.trim();
      return /^\d+$/.test(pid) ? { id, pid } : undefined;
    }, 60_000);
    await execIn(target.id, ['sh', '-c', `kill -9 ${target.pid}`]);
    const receipt = await eventually(
      async () => (await rt.catalog.get(slowTenant.id, b.backupId))?.verify,
      60_000,
    );
    expect(receipt).toMatchObject({
      status: 'unverifiable',
      reason: 'sandbox_server_gone',
      driver: 'docker',
    });
    expect(receipt.error).toMatch(/FLUX_VERIFY_MEMORY_MB/);
    expect(receipt.rungs.some((r) => r.result === 'failed')).toBe(false);
  });

  it('the rungs fire inside the container too (row-count drift)', async () => {
    const { fn, rt } = await verifyApp({ FLUX_VERIFY_DRIVER: 'docker' });
    const b = await backup();
    await rt.catalog.writeManifest({
      ...b.manifest,
      tables: b.manifest.tables.map((t) => ({ ...t, rows: t.rows + 1 })),
    });
    const { status, body } = await verify(fn, b.backupId);
    expect(status).toBe(422);
    expect(body).toMatchObject({ code: 'verify_failed', reason: 'row_count_mismatch' });
    expect((await receiptOf(rt, b.backupId)).driver).toBe('docker');
  });

  it('an absent image is unverifiable (nothing is pulled), not a failed restore', async () => {
    const absent = `flux-ops/postgres-verify:absent-${randomUUID().slice(0, 8)}`;
    const { fn, rt } = await verifyApp({
      FLUX_VERIFY_DRIVER: 'docker',
      FLUX_BACKUP_VERIFY_POSTGRES_IMAGE: absent,
    });
    const b = await backup();
    const { status, body } = await verify(fn, b.backupId);
    expect(status).toBe(503);
    expect(body).toMatchObject({ code: 'unverifiable', reason: 'image_missing' });
    expect(String(body.error)).toContain(absent);
    expect(await receiptOf(rt, b.backupId)).toMatchObject({
      status: 'unverifiable',
      reason: 'image_missing',
    });
    expect((await rt.catalog.trust(tenant.id)).tier).toBe('unverifiable');
    const images = await docker.listImages({ filters: { reference: [absent] } });
    expect(images).toEqual([]);
  });

  it('auto picks docker when the engine answers and the image is present', async () => {
    const { fn, rt } = await verifyApp({ FLUX_VERIFY_DRIVER: 'auto' });
    const ready = (await (await fn.app.request('/readyz')).json()) as {
      checks: Array<Record<string, unknown>>;
    };
    expect(ready.checks.find((c) => c.name === 'sandbox')).toMatchObject({ ok: true, driver: 'docker' });
    const b = await backup();
    expect((await verify(fn, b.backupId)).status).toBe(200);
    expect((await receiptOf(rt, b.backupId)).driver).toBe('docker');
  });

  it('the reaper removes expired leftovers at start-up and periodically', async () => {
    // Verifiers that crashed left containers behind: one already expired, one that expires later.
    const crashed = createDockerDriver({
      socketPath: SOCKET,
      image: IMAGE,
      memoryMb: 256,
      cpus: 1,
      pids: 128,
      instance,
      spare: false,
    });
    const later = await crashed.create({ projectId: tenant.id, backupId: randomUUID(), ttlMs: 20_000 });
    const expired = await crashed.create({ projectId: tenant.id, backupId: randomUUID(), ttlMs: 1 });
    expect((await ourContainers()).sort()).toEqual([expired.id, later.id].sort());
    const { fn } = await verifyApp({ FLUX_VERIFY_DRIVER: 'docker' }, { reapIntervalMs: 500 });
    await fn.start();
    expect(await ourContainers('sandboxes')).toEqual([later.id]);
    await eventually(async () => (await ourContainers('sandboxes')).length === 0, 90_000, 250);
    const metrics = await (await fn.app.request('/metrics')).text();
    // At least ours (the reaper sweeps every expired verify container on the engine, not only this file's).
    const removed = Number(/flux_verify_leftovers_removed_total\{driver="docker"\} (\d+)/.exec(metrics)?.[1]);
    expect(removed).toBeGreaterThanOrEqual(2);
    await crashed.close();
  });
});

describe('when Docker cannot serve', () => {
  it('a stopped engine makes the verification unverifiable, never restore_failed', async () => {
    const { fn, rt } = await verifyApp({ FLUX_VERIFY_DRIVER: 'docker', FLUX_DOCKER_SOCKET: DEAD_SOCKET });
    const b = await backup();
    const { status, body } = await verify(fn, b.backupId);
    expect(status).toBe(503);
    expect(body).toMatchObject({
      code: 'unverifiable',
      reason: 'docker_unavailable',
      restoreVerificationStatus: 'pending',
      restoreVerificationOutcome: 'unverifiable',
    });
    expect(String(body.error)).toMatch(/FLUX_DOCKER_SOCKET/);
    const receipt = await receiptOf(rt, b.backupId);
    expect(receipt).toMatchObject({ status: 'unverifiable', reason: 'docker_unavailable', driver: 'none' });
    expect(receipt.rungs.map((r) => r.result)).toEqual(Array(7).fill('could_not_verify'));
    const trust = await rt.catalog.trust(tenant.id);
    expect(trust.tier).toBe('unverifiable');
    expect(trust.trustworthy).toBe(false);
    const ready = await fn.app.request('/readyz');
    expect(ready.status).toBe(503);
  });

  it('auto falls back to the local sandbox when the engine is stopped', async () => {
    const { fn, rt } = await verifyApp({ FLUX_VERIFY_DRIVER: 'auto', FLUX_DOCKER_SOCKET: DEAD_SOCKET });
    const b = await backup();
    const { status } = await verify(fn, b.backupId);
    expect(status).toBe(200);
    expect(await receiptOf(rt, b.backupId)).toMatchObject({ status: 'restore_verified', driver: 'local' });
  });
});
