// verify end to end with the local sandbox: real clusters, real dumps made by the dump function, the
// broken-fixture corpus in both directions, the CLI-compatible API, event triggers and outgoing events,
// the concurrency limit and the timeout that kills a restore.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createApp as createVerifyApp } from '../functions/verify/app.js';
import { createReverifySchedule } from '../functions/verify/schedule.js';
import { createVerifier, type Verifier } from '../functions/verify/verifier.js';
import type { BackupPaths } from '../shared/catalog/layout.js';
import type { Manifest, VerifyReceipt } from '../shared/catalog/records.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import { type Cluster, createStaticRegistry, type Project } from '../shared/registry.js';
import { LOCAL_MARKER, LOCAL_SANDBOX_PREFIX, type LocalMarker } from '../shared/sandbox/local-marker.js';
import { descendantsOf, listProcesses } from './support/faults.js';
import { seedProjectDb, seedSlowRestoreTenant, seedTenant, tenantSchemaOf } from './support/fixtures.js';
import { type PgCluster, quoteIdent, startPostgres } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  backupCreatedEvent,
  eventually,
  makeTestEnv,
  makeToken,
  signedEvent,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

const PROBE_ONLY = makeToken('probe-only', ['probe']);
const hash7 = () => randomBytes(4).toString('hex').slice(0, 7);

function tenantProject(slug: string): Project {
  return { id: randomUUID(), hash: hash7(), slug, engine: 'v2_shared', cluster: 'shared-1' } as Project;
}

const tenant = tenantProject('healthy-tenant');
const empty = tenantProject('empty-tenant');
const slow = tenantProject('slow-tenant');
const dedicated = {
  id: randomUUID(),
  hash: hash7(),
  slug: 'dedicated-app',
  engine: 'v1_dedicated',
  databaseUrl: 'env:TEST_DEDICATED_URL',
} as Project;
const projects = [tenant, empty, slow, dedicated];

let cluster: PgCluster;
let clusters: Cluster[];
let testEnv: TestEnv;
let receiver: EventReceiver;
let localBase: string;
let dumpFn: FunctionApp;
let verifyRt: TestRuntime;
let verifyFn: FunctionApp;

async function activeSandboxes(base = localBase): Promise<string[]> {
  const out: string[] = [];
  for (const name of await readdir(base).catch(() => [] as string[])) {
    if (!name.startsWith(LOCAL_SANDBOX_PREFIX)) continue;
    const marker = await readFile(path.join(base, name, LOCAL_MARKER), 'utf8').catch(() => '{}');
    // The spare and the template are kept on purpose; a sandbox a verification held is not.
    const state = (JSON.parse(marker) as Partial<LocalMarker>).state;
    if (state === undefined || state === 'active') out.push(name);
  }
  return out;
}

/** Another verify function's environment on this suite's backups (local sandbox); `extra` adds or overrides. */
function siblingEnv(extra: Record<string, string>): Promise<TestEnv> {
  return makeTestEnv({
    FLUX_BACKUPS_LOCAL_DIR: testEnv.config.FLUX_BACKUPS_LOCAL_DIR,
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: localBase,
    ...extra,
  });
}

beforeAll(async () => {
  cluster = await startPostgres();
  await cluster.createDatabase('flux');
  await seedTenant(cluster, { db: 'flux', projectId: tenant.id, rows: 200 });
  // A policy for a role outside the platform set: the manifest records it, verify must stub it.
  await cluster.query('CREATE ROLE reporting_role NOLOGIN');
  await cluster.query(
    `CREATE POLICY reporting_read ON ${quoteIdent(tenantSchemaOf(tenant.id))}.customers FOR SELECT TO reporting_role USING (true)`,
    [],
    'flux',
  );
  await seedTenant(cluster, { db: 'flux', projectId: empty.id, empty: true });
  // A restore that takes minutes: every restored row passes a CHECK that sleeps (not while seeding).
  await seedSlowRestoreTenant(cluster, { db: 'flux', projectId: slow.id, rows: 3000 });
  await seedProjectDb(cluster, { db: 'dedicated', rows: 50 });

  receiver = await startEventReceiver();
  localBase = await mkdtemp(path.join(tmpdir(), 'flux-verify-e2e-'));
  await chmod(localBase, 0o755);
  testEnv = await makeTestEnv({
    FLUX_API_TOKENS: `${ADMIN.entry},${PROBE_ONLY.entry}`,
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: localBase,
    FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.backup.*'] }]),
    TEST_DEDICATED_URL: cluster.url('dedicated'),
  });
  clusters = [{ name: 'shared-1', url: cluster.url('flux'), maxConcurrentDumps: 2 }];
  dumpFn = createDumpApp(testRuntime('dump', testEnv, { projects, clusters }));
  verifyRt = testRuntime('verify', testEnv, { projects, clusters });
  verifyFn = createVerifyApp(verifyRt);
  await verifyFn.start();
});

afterAll(async () => {
  await verifyFn?.stop();
  await receiver?.close();
  await cluster?.destroy();
  await testEnv?.cleanup();
  if (localBase) {
    expect(await activeSandboxes()).toEqual([]);
    await rm(localBase, { recursive: true, force: true });
  }
});

afterEach(async () => {
  // No sandbox outlives its verification.
  await eventually(async () => (await activeSandboxes()).length === 0, 20_000);
});

interface MadeBackup {
  project: Project;
  backupId: string;
  paths: BackupPaths;
  manifest: Manifest;
}

async function backup(project: Project): Promise<MadeBackup> {
  const res = await dumpFn.app.request(`/api/cli/v1/projects/${project.hash}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(res.status, await res.clone().text()).toBe(200);
  const { backup: created } = (await res.json()) as { backup: { id: string } };
  const entry = (await verifyRt.catalog.get(project.id, created.id))!;
  return { project, backupId: created.id, paths: entry.paths, manifest: entry.manifest! };
}

function verifyRequest(b: MadeBackup, init: RequestInit = {}): Promise<Response> {
  return Promise.resolve(
    verifyFn.app.request(`/api/cli/v1/projects/${b.project.hash}/backups/${b.backupId}/verify`, {
      method: 'POST',
      ...init,
      headers: { ...ADMIN.header, ...(init.headers as Record<string, string> | undefined) },
    }),
  );
}

async function receiptOf(b: MadeBackup): Promise<VerifyReceipt> {
  const entry = await verifyRt.catalog.get(b.project.id, b.backupId);
  expect(entry?.verify).toBeDefined();
  return entry!.verify!;
}

async function verifyReceipt(b: MadeBackup): Promise<VerifyReceipt> {
  await verifyRequest(b);
  return receiptOf(b);
}

const rungOf = (r: VerifyReceipt, name: string) => r.rungs.find((x) => x.rung === name)!;

async function rewriteManifest(b: MadeBackup, change: (m: Manifest) => Manifest): Promise<void> {
  await verifyRt.catalog.writeManifest(change(structuredClone(b.manifest)));
}

/** The manifest re-recorded for the bytes now on disk: the artifact rung passes, deeper rungs must fire. */
async function rehash(b: MadeBackup): Promise<void> {
  const bytes = await readFile(b.paths.dump); // test-sized dump
  await rewriteManifest(b, (m) => ({
    ...m,
    sizeBytes: bytes.length,
    sha256: createHash('sha256').update(bytes).digest('hex'),
  }));
}

describe('a healthy backup', () => {
  it('restore-verifies a tenant export, rung by rung, with receipt, event, metrics and trust tier', async () => {
    const b = await backup(tenant);
    expect(b.manifest.roles).toContain('reporting_role');
    const res = await verifyRequest(b);
    const body = (await res.json()) as Record<string, unknown>;
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body).toMatchObject({
      ok: true,
      backupId: b.backupId,
      restoreVerificationStatus: 'restore_verified',
    });

    const receipt = await receiptOf(b);
    expect(receipt).toMatchObject({
      status: 'restore_verified',
      reason: 'ok',
      sha256: b.manifest.sha256,
      source: 'local',
      driver: 'local',
      versions: { archive: '1.14-0', pgDump: b.manifest.pgDump.version },
    });
    expect(receipt.versions.pgRestore).toMatch(/^\d+\.\d+$/);
    expect(Object.fromEntries(receipt.rungs.map((r) => [r.rung, [r.result, r.code]]))).toEqual({
      artifact: ['passed', 'ok'],
      archive: ['passed', 'ok'],
      restore: ['passed', 'ok'],
      structure: ['passed', 'ok'],
      volume: ['passed', 'ok'],
      sequences: ['passed', 'ok'],
      integrity: ['passed', 'ok'],
    });
    expect(rungOf(receipt, 'volume').details).toMatchObject({ tables: 2, rows: 400 });
    expect(rungOf(receipt, 'integrity').details?.indexes).toBeGreaterThanOrEqual(4);
    expect(Object.keys(receipt.stages)).toEqual(
      expect.arrayContaining(['sandbox', 'prepare', 'transfer', 'archive', 'restore', 'checks', 'teardown']),
    );

    const event = await eventually(() =>
      receiver.events('flux.backup.verified').find((e) => e.data.backupId === b.backupId),
    );
    expect(event.data).toMatchObject({ projectId: tenant.id, driver: 'local', sha256: b.manifest.sha256 });
    expect(event.source).toBe('/flux-ops/verify');

    const trust = await verifyRt.catalog.trust(tenant.id, tenant.slug);
    expect(trust).toMatchObject({ tier: 'restorable', trustworthy: true, backupId: b.backupId });

    const metrics = await (await verifyFn.app.request('/metrics')).text();
    expect(metrics).toMatch(
      /flux_verify_verifications_total\{outcome="restore_verified",reason="ok",driver="local"\} [1-9]/,
    );
    expect(metrics).toMatch(
      /flux_verify_stage_duration_seconds_count\{stage="restore",driver="local"\} [1-9]/,
    );
    expect(metrics).toMatch(/flux_verify_rungs_total\{rung="volume",result="passed",code="ok"\} [1-9]/);
  });

  it('an empty tenant passes: it matches its manifest exactly', async () => {
    const b = await backup(empty);
    expect(b.manifest.tables).toEqual([]);
    const receipt = await verifyReceipt(b);
    expect(receipt.status).toBe('restore_verified');
    expect(rungOf(receipt, 'volume')).toMatchObject({ result: 'not_applicable', code: 'no_tables' });
    expect(rungOf(receipt, 'structure').result).toBe('passed');
  });

  it('a v1 dedicated project database (with its own auth schema) passes', async () => {
    const b = await backup(dedicated);
    expect(b.manifest.kind).toBe('project_db');
    const receipt = await verifyReceipt(b);
    expect(receipt.error).toBeUndefined();
    expect(receipt.status).toBe('restore_verified');
    expect(rungOf(receipt, 'sequences').result).toBe('passed');
  });

  it('a local verification runs no psql: its SQL goes over the in-process session', async () => {
    // A psql first on PATH that records every run and fails: a verification that needed it would fail.
    const tools = await mkdtemp(path.join(tmpdir(), 'flux-verify-psql-'));
    const record = path.join(tools, 'psql-ran');
    await writeFile(path.join(tools, 'psql'), `#!/bin/sh\necho "$@" >> ${record}\nexit 1\n`, { mode: 0o755 });
    const env = await siblingEnv({ PATH: `${tools}:${process.env.PATH}` });
    const rt = testRuntime('verify', env, { projects, clusters });
    const fn = createVerifyApp(rt);
    try {
      const b = await backup(tenant);
      const res = await fn.app.request(`/api/cli/v1/projects/${tenant.hash}/backups/${b.backupId}/verify`, {
        method: 'POST',
        headers: ADMIN.header,
      });
      expect(res.status, await res.clone().text()).toBe(200);
      const receipt = (await rt.catalog.get(tenant.id, b.backupId))!.verify!;
      expect(receipt.status).toBe('restore_verified');
      expect(receipt.rungs.map((r) => r.result)).not.toContain('failed');
      await expect(readFile(record, 'utf8')).rejects.toThrow(/ENOENT/);
    } finally {
      await fn.stop();
      await env.cleanup();
      await rm(tools, { recursive: true, force: true });
    }
  });

  it('can be verified again (re-verification replaces the receipt)', async () => {
    const b = await backup(empty);
    const first = await verifyReceipt(b);
    const second = await verifyReceipt(b);
    expect(second.status).toBe('restore_verified');
    expect(Date.parse(second.finishedAt)).toBeGreaterThanOrEqual(Date.parse(first.finishedAt));
    expect(second.startedAt).not.toBe(first.startedAt);
  });
});

describe('the broken-fixture corpus (each fires on the broken backup only)', () => {
  it('truncated dump: the artifact rung fires without starting a sandbox; re-recorded, the archive fires', async () => {
    const b = await backup(tenant);
    await truncate(b.paths.dump, Math.floor(b.manifest.sizeBytes / 2));
    const res = await verifyRequest(b);
    expect(res.status).toBe(422);
    expect(await res.json()).toMatchObject({
      code: 'verify_failed',
      restoreVerificationStatus: 'restore_failed',
    });
    const receipt = await receiptOf(b);
    expect(receipt).toMatchObject({ status: 'restore_failed', reason: 'size_mismatch', driver: 'none' });
    expect(rungOf(receipt, 'artifact')).toMatchObject({ result: 'failed', code: 'size_mismatch' });
    expect(receipt.stages.sandbox).toBeUndefined();
    expect((await verifyRt.catalog.trust(tenant.id)).tier).not.toBe('restorable');

    await rehash(b);
    const deeper = await verifyReceipt(b);
    expect(deeper.status).toBe('restore_failed');
    expect(rungOf(deeper, 'artifact').result).toBe('passed');
    const fired = deeper.rungs.find((r) => r.result === 'failed')!;
    expect(['archive', 'restore']).toContain(fired.rung);
  });

  it('one flipped byte: the sha256 fires; re-recorded, a deeper rung fires', async () => {
    const b = await backup(tenant);
    const bytes = await readFile(b.paths.dump);
    const at = Math.floor(bytes.length * 0.8);
    bytes[at] = bytes[at]! ^ 0xff;
    await writeFile(b.paths.dump, bytes);
    const receipt = await verifyReceipt(b);
    expect(receipt).toMatchObject({ status: 'restore_failed', reason: 'sha256_mismatch' });
    expect(rungOf(receipt, 'restore')).toMatchObject({ result: 'could_not_verify', code: 'blocked' });

    await rehash(b);
    const deeper = await verifyReceipt(b);
    expect(deeper.status).toBe('restore_failed');
    expect(rungOf(deeper, 'artifact').result).toBe('passed');
    expect(deeper.rungs.find((r) => r.result === 'failed')?.rung).toMatch(/archive|restore/);
  });

  it('a dump needing a role that is not stubbed: the restore fires with the role named', async () => {
    const b = await backup(tenant);
    await rewriteManifest(b, (m) => ({ ...m, roles: m.roles.filter((r) => r !== 'reporting_role') }));
    const receipt = await verifyReceipt(b);
    expect(receipt).toMatchObject({ status: 'restore_failed', reason: 'restore_errors' });
    expect(rungOf(receipt, 'restore').message).toMatch(/role "reporting_role" does not exist/);
  });

  it('row-count drift (the manifest says more rows): the volume rung fires', async () => {
    const b = await backup(tenant);
    await rewriteManifest(b, (m) => ({
      ...m,
      tables: m.tables.map((t) => (t.name === 'orders' ? { ...t, rows: t.rows + 5 } : t)),
    }));
    const receipt = await verifyReceipt(b);
    expect(receipt).toMatchObject({ status: 'restore_failed', reason: 'row_count_mismatch' });
    expect(rungOf(receipt, 'volume').message).toMatch(/orders 200 \(manifest 205\)/);
    expect(rungOf(receipt, 'structure').result).toBe('passed');
  });

  it('a sequence restored behind the manifest: the sequences rung fires', async () => {
    const b = await backup(tenant);
    const invoice = b.manifest.sequences.find((q) => q.name === 'invoice_seq')!;
    expect(invoice.lastValue).toBe('1006');
    await rewriteManifest(b, (m) => ({
      ...m,
      sequences: m.sequences.map((q) => (q.name === 'invoice_seq' ? { ...q, lastValue: '1016' } : q)),
    }));
    const receipt = await verifyReceipt(b);
    expect(receipt).toMatchObject({ status: 'restore_failed', reason: 'sequence_behind' });
    expect(rungOf(receipt, 'sequences').message).toMatch(/invoice_seq at 1006, manifest 1016/);
  });

  it('an archive newer than the sandbox pg_restore: unverifiable, naming the image to set', async () => {
    const b = await backup(tenant);
    const bytes = await readFile(b.paths.dump);
    expect(bytes.toString('latin1', 0, 5)).toBe('PGDMP');
    bytes[6] = 15; // archive format 1.15 = pg_dump 16
    await writeFile(b.paths.dump, bytes);
    await rehash(b);
    const res = await verifyRequest(b);
    expect(res.status).toBe(503);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ code: 'unverifiable', reason: 'archive_version_unsupported' });
    expect(body.error).toMatch(/postgres:16/);
    const receipt = await receiptOf(b);
    expect(receipt).toMatchObject({ status: 'unverifiable', reason: 'archive_version_unsupported' });
    expect(receipt.rungs.every((r) => r.result !== 'passed' && r.result !== 'failed')).toBe(true);
    expect((await verifyRt.catalog.trust(tenant.id)).tier).toBe('unverifiable');
    const event = await eventually(() =>
      receiver.events('flux.backup.unverifiable').find((e) => e.data.backupId === b.backupId),
    );
    expect(event.data).toMatchObject({ reason: 'archive_version_unsupported' });
  });

  it('a sandbox that cannot be had (no server tools) is unverifiable, never a pass or a failure', async () => {
    const env = await siblingEnv({ PATH: '/nonexistent' });
    const rt = testRuntime('verify', env, { projects, clusters });
    const fn = createVerifyApp(rt);
    try {
      const b = await backup(empty);
      const res = await fn.app.request(`/api/cli/v1/projects/${empty.hash}/backups/${b.backupId}/verify`, {
        method: 'POST',
        headers: ADMIN.header,
      });
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({
        code: 'unverifiable',
        reason: 'tools_missing',
        restoreVerificationStatus: 'pending',
        restoreVerificationOutcome: 'unverifiable',
      });
      expect((await receiptOf(b)).status).toBe('unverifiable');
      const ready = await fn.app.request('/readyz');
      expect(ready.status).toBe(503);
      expect(JSON.stringify(await ready.json())).toMatch(/initdb not found on PATH/);
    } finally {
      await fn.stop();
      await env.cleanup();
    }
  });
});

describe('a sandbox that fails under the restore', () => {
  it('a killed sandbox backend leaves the backup unverifiable (say so, verify again), never failed', async () => {
    const b = await backup(slow);
    const accepted = await verifyRequest(b, { headers: { prefer: 'respond-async' } });
    expect(accepted.status).toBe(202);
    // The backend loading the slow table (every row's CHECK sleeps) of this file's active sandbox.
    const backend = await eventually(() => {
      const procs = listProcesses();
      for (const postmaster of procs.filter((p) => p.argv.some((a) => a.startsWith(localBase)))) {
        const copying = descendantsOf(postmaster.pid, procs).find((c) => c.argv.join(' ').includes('COPY'));
        if (copying) return copying;
      }
      return undefined;
    }, 30_000);
    // What the out-of-memory killer does to the biggest process in a sandbox.
    process.kill(backend.pid, 'SIGKILL');
    const receipt = await eventually(
      async () => (await verifyRt.catalog.get(slow.id, b.backupId))?.verify,
      60_000,
    );
    expect(receipt).toMatchObject({ status: 'unverifiable', reason: 'sandbox_server_gone' });
    expect(receipt.error).toMatch(/went away during the restore.*says nothing about the backup/);
    expect(rungOf(receipt, 'artifact').result).toBe('passed');
    expect(rungOf(receipt, 'archive').result).toBe('passed');
    expect(rungOf(receipt, 'restore')).toMatchObject({
      result: 'could_not_verify',
      code: 'sandbox_server_gone',
    });
    expect(receipt.rungs.some((r) => r.result === 'failed')).toBe(false);
    const event = await eventually(
      () => receiver.events('flux.backup.unverifiable').find((e) => e.data.backupId === b.backupId),
      20_000,
    );
    expect(event.data).toMatchObject({ reason: 'sandbox_server_gone' });
    expect(
      receiver.events('flux.backup.verify_failed').filter((e) => e.data.backupId === b.backupId),
    ).toEqual([]);
  });
});

describe('the API and triggers', () => {
  it('answers async requests with 202 and a Location that reports the result', async () => {
    const b = await backup(empty);
    const res = await verifyRequest(b, { headers: { prefer: 'respond-async' } });
    expect(res.status).toBe(202);
    const location = res.headers.get('location')!;
    expect(location).toBe(`/api/cli/v1/projects/${empty.hash}/backups/${b.backupId}/verify`);
    const result = await eventually(async () => {
      const r = await verifyFn.app.request(location, { headers: ADMIN.header });
      const json = (await r.json()) as { running: boolean; restoreVerificationOutcome: string };
      return !json.running && json.restoreVerificationOutcome !== 'pending' ? json : undefined;
    }, 60_000);
    expect(result).toMatchObject({ restoreVerificationStatus: 'restore_verified' });
  });

  it('needs the verify scope, a known project and a complete backup', async () => {
    const b = await backup(empty);
    const path1 = `/api/cli/v1/projects/${empty.hash}/backups/${b.backupId}/verify`;
    expect((await verifyFn.app.request(path1, { method: 'POST' })).status).toBe(401);
    expect((await verifyFn.app.request(path1, { method: 'POST', headers: PROBE_ONLY.header })).status).toBe(
      403,
    );
    const missing = await verifyFn.app.request(
      `/api/cli/v1/projects/${empty.hash}/backups/${randomUUID()}/verify`,
      {
        method: 'POST',
        headers: ADMIN.header,
      },
    );
    expect(missing.status).toBe(404);
    const badId = await verifyFn.app.request(`/api/cli/v1/projects/${empty.hash}/backups/..%2Fetc/verify`, {
      method: 'POST',
      headers: ADMIN.header,
    });
    expect(badId.status).toBe(400);
  });

  it('is triggered by flux.backup.created (FLUX_VERIFY_ON) and ignores what it does not accept', async () => {
    expect(verifyFn.accepts).toEqual(['flux.backup.created']);
    const b = await backup(empty);
    const created = backupCreatedEvent(empty.id, b.backupId, {
      projectHash: empty.hash,
      kind: 'tenant_export',
      sizeBytes: b.manifest.sizeBytes,
      sha256: b.manifest.sha256,
      createdAt: b.manifest.createdAt,
      completedAt: b.manifest.completedAt,
      serverVersion: b.manifest.source.serverVersion,
    });
    const res = await verifyFn.app.request('/events', signedEvent(created));
    expect(res.status).toBe(202);
    expect(await res.json()).toMatchObject({ verifying: b.backupId });
    const verified = await eventually(() =>
      receiver.events('flux.backup.verified').find((e) => e.data.backupId === b.backupId),
    );
    expect(verified.causationid).toBe(created.id);
    expect((await receiptOf(b)).status).toBe('restore_verified');
  });

  it('accepts exactly the supported event types named in FLUX_VERIFY_ON', async () => {
    const env = await makeTestEnv({
      FLUX_VERIFY_DRIVER: 'local',
      FLUX_VERIFY_ON: 'flux.backup.created, flux.backup.replicated,flux.backup.failed',
    });
    const rt = testRuntime('verify', env, { projects, clusters });
    const fn = createVerifyApp(rt, { spare: false });
    try {
      expect(fn.accepts).toEqual(['flux.backup.created', 'flux.backup.replicated']);
      expect(rt.logs.text()).toMatch(/FLUX_VERIFY_ON names event types verify cannot act on/);
      const onDemand = await makeTestEnv({ FLUX_VERIFY_DRIVER: 'local', FLUX_VERIFY_ON: 'none' });
      const fn2 = createVerifyApp(testRuntime('verify', onDemand, { projects, clusters }), {
        spare: false,
      });
      expect(fn2.accepts).toEqual([]);
      await fn2.stop();
      await onDemand.cleanup();
    } finally {
      await fn.stop();
      await env.cleanup();
    }
  });

  it('reports the selected driver and its tool versions on /readyz', async () => {
    const res = await verifyFn.app.request('/readyz');
    const body = (await res.json()) as { ok: boolean; checks: Array<Record<string, unknown>> };
    expect(res.status).toBe(200);
    const sandbox = body.checks.find((c) => c.name === 'sandbox')!;
    expect(sandbox).toMatchObject({ ok: true, driver: 'local' });
    expect(String(sandbox.detail)).toMatch(
      /FLUX_VERIFY_DRIVER=local → local: local sandbox: postgres \d+\.\d+/,
    );
  });
});

describe('limits', () => {
  it('a full queue answers 503 at once; a timeout kills the restore and removes the sandbox', async () => {
    const slowBackup = await backup(slow);
    const other = await backup(empty);
    const limitedBase = await mkdtemp(path.join(tmpdir(), 'flux-verify-limits-'));
    await chmod(limitedBase, 0o755);
    const env = await siblingEnv({
      FLUX_VERIFY_LOCAL_DIR: limitedBase,
      FLUX_VERIFY_CONCURRENCY: '1',
      FLUX_VERIFY_QUEUE_MAX: '0',
      FLUX_VERIFY_TIMEOUT_MS: '8000',
    });
    const rt = testRuntime('verify', env, { projects, clusters });
    const fn = createVerifyApp(rt);
    let stopped = false;
    const url = (b: MadeBackup) => `/api/cli/v1/projects/${b.project.hash}/backups/${b.backupId}/verify`;
    try {
      // The sandbox is started and waiting, as between nightly backups: the timeout then falls inside
      // the restore however slow the machine is at starting servers.
      await fn.app.request('/readyz');
      await eventually(
        async () =>
          /flux_verify_spare_ready\{driver="local"\} 1/.test(await (await fn.app.request('/metrics')).text()),
        60_000,
      );
      const accepted = await fn.app.request(url(slowBackup), {
        method: 'POST',
        headers: { ...ADMIN.header, prefer: 'respond-async' },
      });
      expect(accepted.status).toBe(202);
      // The slow restore is under way inside its sandbox.
      await eventually(async () => (await activeSandboxes(limitedBase)).length === 1, 30_000);
      const refused = await fn.app.request(url(other), { method: 'POST', headers: ADMIN.header });
      expect(refused.status).toBe(503);
      expect(refused.headers.get('retry-after')).toBe('60');
      expect(await refused.json()).toMatchObject({ code: 'queue_full' });
      // Asking again for the running one joins it instead of queueing a second restore.
      const joined = await fn.app.request(url(slowBackup), {
        method: 'POST',
        headers: { ...ADMIN.header, prefer: 'respond-async' },
      });
      expect(await joined.json()).toMatchObject({ joined: true });

      const receipt = await eventually(async () => {
        const entry = await rt.catalog.get(slow.id, slowBackup.backupId);
        return entry?.verify;
      }, 90_000);
      expect(receipt).toMatchObject({ status: 'unverifiable', reason: 'timeout' });
      expect(receipt.error).toMatch(/FLUX_VERIFY_TIMEOUT_MS/);
      expect(rungOf(receipt, 'artifact').result).toBe('passed');
      expect(rungOf(receipt, 'restore')).toMatchObject({ result: 'could_not_verify', code: 'timeout' });
      expect(receipt.stages.teardown).toBeGreaterThanOrEqual(0);
      expect(await activeSandboxes(limitedBase)).toEqual([]);
      // The template sandboxes are copied from stays until the process stops; then nothing is left.
      stopped = true;
      await fn.stop();
      expect((await readdir(limitedBase)).filter((n) => n.startsWith(LOCAL_SANDBOX_PREFIX))).toEqual([]);
    } finally {
      if (!stopped) await fn.stop();
      await env.cleanup();
      await rm(limitedBase, { recursive: true, force: true });
    }
  });
});

describe('held events', () => {
  it('an event verify cannot queue yet is held (202) and verified when the slot frees; a full hold refuses', async () => {
    const base = await mkdtemp(path.join(tmpdir(), 'flux-verify-held-'));
    await chmod(base, 0o755);
    // Its own catalog: the start-up reconcile finds nothing, so only these events start verifications.
    const env = await makeTestEnv({
      FLUX_VERIFY_DRIVER: 'local',
      FLUX_VERIFY_LOCAL_DIR: base,
      FLUX_VERIFY_CONCURRENCY: '1',
      FLUX_VERIFY_QUEUE_MAX: '0',
      FLUX_VERIFY_HOLD_MAX: '1',
      FLUX_VERIFY_TIMEOUT_MS: '8000',
    });
    const dump = createDumpApp(testRuntime('dump', env, { projects, clusters }));
    const rt = testRuntime('verify', env, { projects, clusters });
    const fn = createVerifyApp(rt);
    const backupHere = async (project: Project) => {
      const res = await dump.app.request(`/api/cli/v1/projects/${project.hash}/backups`, {
        method: 'POST',
        headers: ADMIN.header,
      });
      expect(res.status, await res.clone().text()).toBe(200);
      const { backup: made } = (await res.json()) as { backup: { id: string } };
      return { project, manifest: (await rt.catalog.get(project.id, made.id))!.manifest! };
    };
    const created = (b: { project: Project; manifest: Manifest }) =>
      backupCreatedEvent(b.project.id, b.manifest.backupId, {
        projectHash: b.project.hash,
        kind: 'tenant_export',
        sizeBytes: b.manifest.sizeBytes,
        sha256: b.manifest.sha256,
        createdAt: b.manifest.createdAt,
        completedAt: b.manifest.completedAt,
      });
    const metric = async (result: string) => {
      const text = await (await fn.app.request('/metrics')).text();
      const m = text.match(new RegExp(`flux_verify_held_total\\{result="${result}"\\} (\\d+)`));
      return Number(m?.[1] ?? 0);
    };
    try {
      await fn.start();
      const slowBackup = await backupHere(slow);
      const waiting = await backupHere(empty);
      const third = await backupHere(empty);
      const busy = await fn.app.request('/events', signedEvent(created(slowBackup)));
      expect(await busy.json()).toMatchObject({ verifying: slowBackup.manifest.backupId });
      // Every slot busy and no queue: the next event is held, not refused with a Retry-After.
      const held = await fn.app.request('/events', signedEvent(created(waiting)));
      expect(held.status).toBe(202);
      expect(await held.json()).toMatchObject({ held: waiting.manifest.backupId, place: 1 });
      const status = await fn.app.request(
        `/api/cli/v1/projects/${empty.hash}/backups/${waiting.manifest.backupId}/verify`,
        { headers: ADMIN.header },
      );
      expect(await status.json()).toMatchObject({ running: true });
      // The running backup's event again, while another waits: it joins the running verification.
      const again = await fn.app.request('/events', signedEvent(created(slowBackup)));
      expect(await again.json()).toMatchObject({ verifying: slowBackup.manifest.backupId, joined: true });
      // The hold is full (FLUX_VERIFY_HOLD_MAX=1): refused as before, for the sender to retry.
      const refused = await fn.app.request('/events', signedEvent(created(third)));
      expect(refused.status).toBe(503);
      expect(await refused.json()).toMatchObject({ code: 'queue_full' });
      // The slow restore times out; its slot goes to the held backup, which is verified for real.
      const receipt = await eventually(
        async () => (await rt.catalog.get(empty.id, waiting.manifest.backupId))?.verify,
        120_000,
      );
      expect(receipt).toMatchObject({ status: 'restore_verified', source: 'local' });
      const slowReceipt = (await rt.catalog.get(slow.id, slowBackup.manifest.backupId))?.verify;
      expect(slowReceipt).toMatchObject({ status: 'unverifiable', reason: 'timeout' });
      expect(await metric('held')).toBe(1);
      expect(await metric('started')).toBe(1);
      expect(await metric('refused')).toBe(1);
      expect((await rt.catalog.get(empty.id, third.manifest.backupId))?.verify).toBeUndefined();
    } finally {
      await fn.stop();
      await env.cleanup();
      await rm(base, { recursive: true, force: true });
    }
  });
});

describe('scheduled re-verification', () => {
  /** A schedule over the empty tenant only (the other projects' backups are not these tests' to verify). */
  const emptyTenantSchedule = (rt: TestRuntime, verifier: Verifier, queueMax: number) =>
    createReverifySchedule({
      registry: createStaticRegistry({ projects: [empty], clusters }),
      catalog: rt.catalog,
      verifier,
      log: rt.log,
      metrics: rt.metrics,
      afterMs: 60_000,
      source: 'local',
      queueMax,
    });

  it("verifies a project's newest backup again once its last verification is FLUX_VERIFY_REVERIFY_AFTER_MS old", async () => {
    const rt = testRuntime('verify', testEnv, { projects: [empty], clusters });
    const verifier = createVerifier(rt, { spare: false });
    const schedule = emptyTenantSchedule(rt, verifier, 16);
    try {
      const older = await backup(empty);
      const b = await backup(empty);
      const first = await verifyReceipt(b);
      // Just verified: not due. A minute later it is, and only the newest backup is.
      expect(await schedule.sweep(Date.now())).toMatchObject({ projects: 1, due: 0, started: 0 });
      expect(await schedule.sweep(Date.now() + 61_000)).toMatchObject({ due: 1, started: 1 });
      const again = await eventually(async () => {
        const r = (await rt.catalog.get(empty.id, b.backupId))?.verify;
        return r && r.finishedAt > first.finishedAt ? r : undefined;
      }, 30_000);
      expect(again).toMatchObject({ status: 'restore_verified', source: 'local' });
      expect((await rt.catalog.get(empty.id, older.backupId))?.verify).toBeUndefined();
      // A newest backup never verified is due once it is that old itself.
      const fresh = await backup(empty);
      expect(await schedule.sweep(Date.now())).toMatchObject({ due: 0 });
      expect(await schedule.sweep(Date.now() + 61_000)).toMatchObject({ due: 1, started: 1 });
      await eventually(async () => (await rt.catalog.get(empty.id, fresh.backupId))?.verify, 30_000);
      expect(await rt.metrics.metrics()).toMatch(/flux_verify_scheduled_total\{result="started"\} 2/);
    } finally {
      schedule.stop();
      await verifier.stop();
    }
  });

  it('leaves half of the queue to new backups: due work beyond that waits for the next sweep', async () => {
    // This test once outlived its timeout on a loaded machine (never alone): should it again, the
    // failure says which step the time went to, and what the verifier logged.
    const t0 = Date.now();
    const steps: string[] = [];
    const step = (what: string) => steps.push(`+${Date.now() - t0} ms ${what}`);
    let rt: TestRuntime | undefined;
    onTestFailed(() => {
      console.error(
        `steps:\n${steps.join('\n')}\nverifier log (tail):\n${rt?.logs.text().slice(-4000) ?? ''}`,
      );
    });
    const slowBackup = await backup(slow);
    const older = await backup(empty);
    await backup(empty);
    step('backups made');
    const env = await siblingEnv({
      FLUX_VERIFY_CONCURRENCY: '1',
      FLUX_VERIFY_QUEUE_MAX: '2',
      FLUX_SHUTDOWN_GRACE_MS: '100',
    });
    rt = testRuntime('verify', env, { projects: [empty, slow], clusters });
    const verifier = createVerifier(rt, { spare: false });
    const schedule = emptyTenantSchedule(rt, verifier, 2);
    try {
      // The slot is taken by a long restore and one verification waits: half the queue is in use.
      await verifier.start({ projectId: slow.id, backupId: slowBackup.backupId });
      await verifier.start({ projectId: empty.id, backupId: older.backupId });
      step('two verifications started');
      expect(verifier.queued).toBe(1);
      expect(await schedule.sweep(Date.now() + 61_000)).toMatchObject({ due: 1, started: 0, busy: 1 });
      step('swept');
      expect(verifier.queued).toBe(1);
      expect(await rt.metrics.metrics()).toMatch(/flux_verify_scheduled_total\{result="busy"\} 1/);
    } finally {
      step('stopping');
      await verifier.stop();
      step('stopped');
      await env.cleanup();
      step('cleaned up');
    }
  });

  it('runs on its own in a started verify function (and not at all when off)', async () => {
    const b = await backup(empty);
    await verifyReceipt(b);
    const env = await siblingEnv({
      FLUX_VERIFY_ON: 'none',
      FLUX_VERIFY_REVERIFY_AFTER_MS: '1000',
    });
    const rt = testRuntime('verify', env, { projects: [empty], clusters });
    const fn = createVerifyApp(rt, { spare: false });
    const before = (await rt.catalog.get(empty.id, b.backupId))!.verify!;
    try {
      await fn.start();
      const again = await eventually(async () => {
        const r = (await rt.catalog.get(empty.id, b.backupId))?.verify;
        return r && r.finishedAt > before.finishedAt ? r : undefined;
      }, 30_000);
      expect(again.status).toBe('restore_verified');
    } finally {
      await fn.stop();
      await env.cleanup();
    }
    // The suite's own verify function has no schedule: it never re-verified anything by itself.
    expect(await (await verifyFn.app.request('/metrics')).text()).not.toMatch(
      /flux_verify_scheduled_total\{/,
    );
  });
});

describe('offsite source', () => {
  it('verifies the offsite copy when asked, and says so in the receipt', async () => {
    const b = await backup(empty);
    const offsite = path.join(testEnv.config.FLUX_BACKUPS_OFFSITE_DIR, empty.id);
    await rm(offsite, { recursive: true, force: true });
    const { mkdir, copyFile } = await import('node:fs/promises');
    await mkdir(offsite, { recursive: true });
    await copyFile(b.paths.dump, path.join(offsite, `${b.backupId}.dump`));
    const res = await verifyRequest(b, {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ source: 'offsite' }),
    });
    expect(res.status).toBe(200);
    // The offsite copy's receipt is its own: the local copy has none from this verification.
    const entry = await verifyRt.catalog.get(b.project.id, b.backupId);
    expect(entry?.verifyOffsite).toMatchObject({ status: 'restore_verified', source: 'offsite' });
    expect(entry?.verify).toBeUndefined();
    expect((await stat(b.paths.dump)).size).toBe(b.manifest.sizeBytes);
  });
});
