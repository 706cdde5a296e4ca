// Freshness in the trust contract, end to end on a real Postgres: the dump app served over real HTTP, the
// CLI as a child process, migrate's gate on the same catalog. A restorable backup older than the
// project's maxAge stays `restorable` but is `stale`: migrate answers 412 with its age and the command,
// `backup status --check` exits 2 (and `--nagios` says CRITICAL); a fresh backup makes both pass. After a
// restart, dump's per-project backup metrics are there before any new backup.
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createApp as createMigrateApp } from '../functions/migrate/app.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Cluster, Project } from '../shared/registry.js';
import { HOUR_MS } from '../shared/units.js';
import { seedTenant } from './support/fixtures.js';
import { freePort, type PgCluster, startPostgres } from './support/pg.js';
import {
  ADMIN,
  makeTestEnv,
  makeToken,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

const BIN = path.resolve(import.meta.dirname, '../bin/flux-ops.mjs');
const MIGRATE = makeToken('ci-migrate', ['migrate']);
const MAX_AGE_S = 26 * 3600;
const id = randomUUID();
const project: Project = {
  id,
  hash: id.replaceAll('-', '').slice(0, 7),
  slug: 'bloom-atelier',
  engine: 'v2_shared',
  cluster: 'shared-1',
  maxAge: '26h',
  dedicatedUrl: 'env:TEST_DEDICATED_URL',
};
const clusters: Cluster[] = [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }];

let pg: PgCluster;
let env: TestEnv;
let dumpRt: TestRuntime;
let dump: FunctionApp;
let migrate: FunctionApp;
let server: ServerType;
let base: string;

async function cli(args: string[], apiBase = base) {
  const r = await execa(process.execPath, [BIN, ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      FLUX_API_BASE: apiBase,
      FLUX_API_TOKEN: ADMIN.token,
    },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 120_000,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** A real backup through the CLI, then the receipt a passed verification writes (verify itself is tested elsewhere). */
async function restorableBackup(): Promise<string> {
  const r = await cli(['backup', 'create', '-p', project.slug, '--json']);
  expect(r.exitCode, r.stderr).toBe(0);
  const backupId = (JSON.parse(r.stdout) as { backup: { id: string } }).backup.id;
  const entry = await dumpRt.catalog.get(id, backupId);
  const now = new Date().toISOString();
  await dumpRt.catalog.writeVerifyReceipt({
    backupId,
    projectId: id,
    status: 'restore_verified',
    sha256: entry!.manifest!.sha256,
    source: 'local',
    driver: 'test-fixture',
    versions: {},
    rungs: [],
    stages: {},
    startedAt: now,
    finishedAt: now,
    seconds: 0,
  });
  return backupId;
}

const migratePost = (body: Record<string, unknown>) =>
  migrate.app.request('/api/cli/v1/migrate', {
    method: 'POST',
    headers: { ...MIGRATE.header, 'content-type': 'application/json' },
    body: JSON.stringify({ slug: project.slug, hash: project.hash, dumpOnly: true, ...body }),
  });

async function startDump(): Promise<void> {
  dumpRt = testRuntime('dump', env, { projects: [project], clusters });
  dump = createDumpApp(dumpRt);
  await dump.start();
  server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: dump.app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function stopDump(): Promise<void> {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await dump?.stop();
}

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await pg.createDatabase('dedicated');
  await seedTenant(pg, { db: 'shared', projectId: id, rows: 200 });
  env = await makeTestEnv({
    TEST_SHARED_URL: pg.url('shared'),
    TEST_DEDICATED_URL: pg.url('dedicated'),
    FLUX_API_TOKENS: [ADMIN.entry, MIGRATE.entry].join(','),
  });
  await startDump();
  migrate = createMigrateApp(
    testRuntime('migrate', env, { projects: [project], clusters, peerUrl: () => base }),
  );
  await migrate.start();
});

afterAll(async () => {
  await migrate?.stop();
  await stopDump();
  await pg?.destroy();
  await env?.cleanup();
});

describe('freshness', () => {
  let first: string;

  it('no restorable backup: never_verified, --check critical with the command to run', async () => {
    const r = await cli(['backup', 'status', '--check']);
    expect(r.exitCode).toBe(2);
    const [summary, detail] = r.stdout.split('\n');
    expect(summary).toBe('CRITICAL: 0 of 1 project restorable and fresh, 1 never verified');
    expect(detail).toContain(
      'CRITICAL bloom-atelier: never_verified, tier no_backups (no restorable backup, maxAge 1d 2h)',
    );
    // backup status itself keeps exit 0 whatever the table says.
    expect((await cli(['backup', 'status'])).exitCode).toBe(0);
  });

  it('a fresh restorable backup: --check OK, Nagios OK with perfdata, the gate passes', async () => {
    first = await restorableBackup();
    const r = await cli(['backup', 'status', '--check']);
    expect(r.exitCode, r.stdout).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe('OK: 1 of 1 project restorable and fresh');
    const nagios = await cli(['backup', 'status', '--check', '--nagios', '--max-age', '26h']);
    expect(nagios.exitCode).toBe(0);
    expect(nagios.stdout.trimEnd()).toMatch(
      /^BACKUP OK - 1 of 1 project restorable and fresh \| projects=1 fresh=1 restorable=1 stale=0 never_verified=0 oldest_restorable_age=\d+s;;93600$/,
    );
    const dry = await migratePost({ dryRun: true });
    const plan = (await dry.json()) as { backupGate: { passes: boolean; freshness: string; tier: string } };
    expect(plan.backupGate).toMatchObject({
      passes: true,
      tier: 'restorable',
      freshness: 'fresh',
      cluster: 'shared-1',
    });
  });

  it('older than maxAge: tier restorable, freshness stale; migrate 412 with the age; --check critical', async () => {
    // The backup is made 30 hours old: its manifest says so (no FLUX_MANIFEST_SECRETS here, so no tag to
    // break), as a backup taken the day before yesterday would.
    const entry = await dumpRt.catalog.get(id, first);
    const then = (ms: number) =>
      new Date(
        Date.parse(ms === 0 ? entry!.manifest!.createdAt : entry!.manifest!.completedAt) - 30 * HOUR_MS,
      ).toISOString();
    await dumpRt.catalog.writeManifest({ ...entry!.manifest!, createdAt: then(0), completedAt: then(1) });
    const s = await cli(['backup', 'status', '-p', project.slug, '--json']);
    const status = (
      JSON.parse(s.stdout) as {
        projects: Array<{ tier: string; freshness: { freshness: string; ageSeconds: number } }>;
      }
    ).projects[0]!;
    expect(status.freshness.freshness).toBe('stale');
    expect(status.tier).toBe('restorable');
    expect(status.freshness.ageSeconds).toBeGreaterThanOrEqual(MAX_AGE_S);

    const res = await migratePost({ yes: true });
    const body = (await res.json()) as { error: string; code: string; details?: Record<string, unknown> };
    expect(res.status, JSON.stringify(body)).toBe(412);
    expect(body.code).toBe('precondition_failed');
    expect(body.error).toMatch(
      new RegExp(
        `backup gate for ${project.slug} on cluster shared-1: the backup is restorable but stale: the newest restorable backup \\(${first}\\) is 1d 6h old, older than maxAge 1d 2h`,
      ),
    );
    expect(body.error).toContain(
      'run `flux-ops backup create -p bloom-atelier && flux-ops backup verify -p bloom-atelier --latest`',
    );
    expect(body.error).toContain('or pass skipBackupCheck');

    const r = await cli(['backup', 'status', '--check']);
    expect(r.exitCode).toBe(2);
    expect(r.stdout.split('\n')[0]).toBe('CRITICAL: 0 of 1 project restorable and fresh, 1 stale');
    const nagios = await cli(['backup', 'status', '--check', '--nagios']);
    expect(nagios.exitCode).toBe(2);
    expect(nagios.stdout).toMatch(
      /^BACKUP CRITICAL - 0 of 1 project restorable and fresh, 1 stale \| .*stale=1/,
    );
    expect(nagios.stdout).toMatch(
      /^CRITICAL bloom-atelier: stale, tier restorable \(1d 6h old, maxAge 1d 2h\); next: flux-ops backup create/m,
    );
    // Judged against a longer maxAge, the same backup passes.
    expect((await cli(['backup', 'status', '--check', '--max-age', '2d'])).exitCode).toBe(0);

    // The list shows it too, and gives the upstream CLI its freshness block.
    const list = await cli(['backup', 'list', '-p', project.slug]);
    expect(list.stdout).toMatch(
      /^freshness: stale \(the newest restorable backup .* older than maxAge 1d 2h\); next: flux-ops backup create/m,
    );
    const raw = await fetch(`${base}/api/cli/v1/projects/${project.hash}/backups`, { headers: ADMIN.header });
    const answer = (await raw.json()) as {
      platformMinimumBackupFreshness: { freshness: { tier: string; platformBackupCompliant: boolean } };
    };
    expect(answer.platformMinimumBackupFreshness.freshness).toMatchObject({
      tier: 'stale',
      platformBackupCompliant: false,
    });
  });

  it('a new restorable backup makes it fresh: --check OK and the gate lets the migration through', async () => {
    await restorableBackup();
    expect((await cli(['backup', 'status', '--check'])).exitCode).toBe(0);
    const res = await migratePost({ yes: true });
    const body = (await res.json()) as { ok: boolean };
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body.ok).toBe(true);
    // The dump-only migration took a backup of its own, not verified yet: still fresh (the one before
    // covers it), so the check warns instead of passing.
    const r = await cli(['backup', 'status', '--check']);
    expect(r.stdout.split('\n')[0]).toBe(
      'WARNING: 0 of 1 project restorable and fresh, 1 newest backup not restorable yet',
    );
    expect(r.exitCode).toBe(1);
  });

  it('a server it cannot reach: UNKNOWN, exit 3', async () => {
    const r = await cli(['backup', 'status', '--check', '--nagios'], `http://127.0.0.1:${await freePort()}`);
    expect(r.exitCode).toBe(3);
    expect(r.stdout).toMatch(/^BACKUP UNKNOWN - could not read the backup status: /);
    const usage = await cli(['backup', 'status', '--check', '--max-age', 'soon']);
    expect(usage.exitCode).toBe(64);
    expect(usage.stderr).toContain('--max-age "soon" is not a duration');
  });

  it('after a restart the per-project metrics are there before any new backup', async () => {
    const before = (await dumpRt.catalog.list(id)).filter((e) => e.manifest).length;
    await stopDump();
    await startDump();
    const text = await (await dump.app.request('/metrics')).text();
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? undefined : Number(line.slice(series.length + 1));
    };
    const p = `project="${project.slug}"`;
    expect(value(`flux_backup_trust_tier{${p},tier="not_restore_verified"}`)).toBe(1);
    expect(value(`flux_backup_trust_tier{${p},tier="restorable"}`)).toBe(0);
    expect(value(`flux_backup_freshness{${p},freshness="stale"}`)).toBe(0);
    expect(value(`flux_backup_freshness{${p},freshness="fresh"}`)).toBe(1);
    expect(value(`flux_backup_count{${p}}`)).toBe(before);
    expect(value(`flux_backup_size_bytes{${p}}`)).toBeGreaterThan(0);
    expect(value(`flux_backup_max_age_seconds{${p}}`)).toBe(MAX_AGE_S);
    const restorableAt = value(`flux_backup_newest_restorable_timestamp_seconds{${p}}`)!;
    const newestAt = value(`flux_backup_newest_timestamp_seconds{${p}}`)!;
    expect(restorableAt).toBeGreaterThan(Date.now() / 1000 - 600);
    expect(newestAt).toBeGreaterThan(restorableAt);
    expect(value('flux_backup_fleet_projects')).toBe(1);
    expect(value('flux_backup_fleet_fresh_ratio')).toBe(1);
    expect(value('flux_backup_fleet_restorable_ratio')).toBe(0);
    expect(value(`flux_backup_offsite_replicated{${p}}`)).toBe(0);
    // Nothing was backed up by the restart itself.
    expect((await dumpRt.catalog.list(id)).filter((e) => e.manifest)).toHaveLength(before);
  });
});
