// Clusters as an operator planning maintenance sees them, against real servers: two shared clusters and a
// dedicated server (plus a v1 project that is its own derived cluster), tenants on each, one tenant whose
// schema is on two clusters, an orphan schema, a stale tenant and one never backed up. The CLI lists them,
// the preflight of the affected cluster fails naming each problem, and passes after --backup-now and the
// drift fixed; an unknown cluster is 404 and an unreachable one "could not tell" (exit 2), never a pass.
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AllInOne, createAllInOne } from '../functions/all/app.js';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { silentLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { type Cluster, createStaticRegistry, type Project } from '../shared/registry.js';
import { seedProjectDb, seedTenant, tenantSchemaOf } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { ADMIN, eventually, makeTestEnv, makeToken, type TestEnv, testRuntime } from './support/runtime.js';

const BIN = path.resolve(import.meta.dirname, '../bin/flux-ops.mjs');
const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);
const v2 = (slug: string, cluster: string): Project => {
  const id = randomUUID();
  return { id, slug, hash: hashOf(id), engine: 'v2_shared', cluster };
};

const alpha = v2('alpha-shop', 'shared-1');
const stale = v2('stale-shop', 'shared-1');
const never = v2('never-shop', 'shared-2');
const movedId = randomUUID();
/** Migrated to the dedicated server: its pooled schema was left on shared-1. */
const moved: Project = {
  id: movedId,
  slug: 'moved-shop',
  hash: hashOf(movedId),
  engine: 'v1_dedicated',
  cluster: 'dedicated-1',
  databaseUrl: 'env:TEST_MOVED_URL',
};
const soloId = randomUUID();
/** A v1 project naming no cluster: its own derived cluster. */
const solo: Project = {
  id: soloId,
  slug: 'solo-shop',
  hash: hashOf(soloId),
  engine: 'v1_dedicated',
  databaseUrl: 'env:TEST_SOLO_URL',
};
/** A viewer: may judge a cluster, not take its backups. */
const READER = makeToken('cluster-reader', ['backups:read']);
const orphanSchema = `t_${randomUUID().replaceAll('-', '').slice(0, 12)}_api`;

let a: PgCluster;
let b: PgCluster;
let env: TestEnv;
let all: AllInOne;
let base: string;
let localBase: string;
const servers: ServerType[] = [];

async function listen(fetch: (req: Request) => Response | Promise<Response>): Promise<string> {
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  servers.push(server);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

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
    timeout: 300_000,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

const api = (method: string, url: string, body?: unknown) =>
  all.app.request(url, {
    method,
    headers: { ...ADMIN.header, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });

/** A backup through the front door, once replicate and verify have both answered. */
async function backedUpAndJudged(p: Project): Promise<string> {
  const res = await api('POST', `/api/cli/v1/projects/${p.hash}/backups`);
  expect(res.status, await res.clone().text()).toBe(200);
  const { backup } = (await res.json()) as { backup: { id: string } };
  await eventually(async () => {
    const dir = path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, p.id);
    const has = async (suffix: string) =>
      readFile(path.join(dir, `${backup.id}.${suffix}`), 'utf8').then(
        () => true,
        () => false,
      );
    return (await has('verify.json')) && (await has('offsite.json'));
  }, 120_000);
  return backup.id;
}

/** Moves a backup's creation time into the past, in the local and the offsite manifest alike. */
async function age(p: Project, backupId: string, hours: number): Promise<void> {
  for (const root of [env.config.FLUX_BACKUPS_LOCAL_DIR, env.config.FLUX_BACKUPS_OFFSITE_DIR]) {
    const file = path.join(root, p.id, `${backupId}.manifest.json`);
    const m = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    m.createdAt = new Date(Date.now() - hours * 3_600_000).toISOString();
    await writeFile(file, JSON.stringify(m, null, 2));
  }
}

beforeAll(async () => {
  [a, b] = await Promise.all([startPostgres(), startPostgres()]);
  await Promise.all([a.createDatabase('flux'), b.createDatabase('flux')]);
  await seedTenant(a, { db: 'flux', projectId: alpha.id, rows: 20 });
  await seedTenant(a, { db: 'flux', projectId: stale.id, rows: 20 });
  await seedTenant(b, { db: 'flux', projectId: never.id, rows: 5 });
  // The migrated tenant's pooled schema is still on shared-1; its live copy is the dedicated database.
  await seedTenant(a, { db: 'flux', projectId: moved.id, rows: 5 });
  await seedProjectDb(b, { db: 'moved', rows: 5 });
  await seedProjectDb(a, { db: 'solo', rows: 5 });
  await a.query(`CREATE SCHEMA ${orphanSchema}`, [], 'flux');

  localBase = await mkdtemp(path.join(tmpdir(), 'flux-clusters-'));
  await chmod(localBase, 0o755);
  env = await makeTestEnv({
    TEST_SHARED_1_URL: a.url('flux'),
    TEST_SHARED_2_URL: b.url('flux'),
    TEST_DEDICATED_1_URL: b.url('postgres'),
    TEST_MOVED_URL: b.url('moved'),
    TEST_SOLO_URL: a.url('solo'),
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: localBase,
    FLUX_API_TOKENS: `${ADMIN.entry},${READER.entry}`,
  });
  const clusters: Cluster[] = [
    {
      name: 'shared-1',
      url: 'env:TEST_SHARED_1_URL',
      maxConcurrentDumps: 1,
      region: 'eu-west',
      labels: { provider: 'metal', window: 'sun-02' },
    },
    { name: 'shared-2', url: 'env:TEST_SHARED_2_URL', maxConcurrentDumps: 2, region: 'us-east' },
    { name: 'dedicated-1', url: 'env:TEST_DEDICATED_1_URL', maxConcurrentDumps: 1, kind: 'dedicated' },
  ];
  all = createAllInOne(env.config, env.env, {
    log: silentLogger(),
    metrics: createRegistry({ defaultMetrics: false }),
    registry: createStaticRegistry({ projects: [alpha, stale, never, moved, solo], clusters }),
  });
  base = await listen(all.app.fetch);
  all.setBaseUrl(base);
  await all.start();
});

afterAll(async () => {
  await all?.stop().catch(() => undefined);
  for (const s of servers) await new Promise<void>((resolve) => s.close(() => resolve()));
  await Promise.all([a?.destroy(), b?.destroy()]);
  await env?.cleanup();
  if (localBase) await rm(localBase, { recursive: true, force: true });
});

interface Report {
  verdict: string;
  tenants: Array<{ slug: string; schema?: string; newestRestorableBackupId: string | null; verdict: string }>;
  problems: string[];
}

describe('clusters', () => {
  it('lists every cluster with its server, tenants, trust and placement findings', async () => {
    await backedUpAndJudged(alpha);
    const staleId = await backedUpAndJudged(stale);
    await age(stale, staleId, 72);

    const r = await cli(['cluster', 'list', '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const { clusters } = JSON.parse(r.stdout) as {
      clusters: Array<{
        name: string;
        kind: string;
        derived: boolean;
        region: string | null;
        reachable: boolean;
        serverVersion: string | null;
        tenants: Array<{
          slug: string;
          tier: string;
          newestRestorableBackupId: string | null;
          offsiteKey: string | null;
        }>;
        findings: Array<{ code: string; project?: string; schema?: string }>;
        maxConcurrentDumps: number;
      }>;
    };
    expect(clusters.map((c) => c.name)).toEqual([
      'shared-1',
      'shared-2',
      'dedicated-1',
      'dedicated:solo-shop',
    ]);
    const byName = Object.fromEntries(clusters.map((c) => [c.name, c]));
    expect(byName['shared-1']).toMatchObject({
      kind: 'shared',
      region: 'eu-west',
      reachable: true,
      maxConcurrentDumps: 1,
    });
    expect(byName['shared-1']!.serverVersion).toMatch(/^\d+\.\d+/);
    expect(byName['dedicated:solo-shop']).toMatchObject({
      kind: 'dedicated',
      derived: true,
      reachable: true,
    });
    const alphaRow = byName['shared-1']!.tenants.find((t) => t.slug === alpha.slug)!;
    expect(alphaRow.tier).toBe('restorable');
    expect(alphaRow.newestRestorableBackupId).toBeTruthy();
    expect(alphaRow.offsiteKey).toContain(alpha.id);
    expect(byName['shared-2']!.tenants).toMatchObject([
      { slug: never.slug, tier: 'no_backups', newestRestorableBackupId: null },
    ]);
    expect(byName['dedicated-1']!.tenants.map((t) => t.slug)).toEqual([moved.slug]);
    const codes = byName['shared-1']!.findings.map((f) => `${f.code}:${f.project ?? f.schema}`).sort();
    expect(codes).toEqual([`orphan_schema:${orphanSchema}`, `tenant_on_other_cluster:${moved.slug}`]);
    // Nothing is out of place on the other clusters.
    expect(byName['shared-2']!.findings).toEqual([]);
    expect(byName['dedicated:solo-shop']!.findings).toEqual([]);

    const table = await cli(['cluster', 'list']);
    expect(table.stdout).toMatch(/^CLUSTER\s+KIND\s+REGION\s+SERVER/m);
    expect(table.stdout).toMatch(/^shared-1\s+shared\s+eu-west\s+\d+\.\d+\s+2\s+2\/2\s+1\/2\s/m);
    expect(table.stdout).toContain(`orphan_schema: cluster shared-1: schema ${orphanSchema}`);

    const show = await cli(['cluster', 'show', 'dedicated-1']);
    expect(show.exitCode).toBe(0);
    expect(show.stdout).toMatch(/^cluster dedicated-1 \(dedicated\): up \(PostgreSQL \d+/m);
    expect(show.stdout).toMatch(
      new RegExp(`^${moved.slug}\\s+${moved.hash}\\s+database moved\\s+no_backups`, 'm'),
    );

    // Metrics and one event per finding as it appears (a second look sends none).
    const metrics = await (await all.app.request('/metrics')).text();
    expect(metrics).toMatch(/flux_cluster_placement_findings\{cluster="shared-1",code="orphan_schema"\} 1/);
    expect(metrics).toMatch(/flux_cluster_reachable\{cluster="shared-2"\} 1/);
    const recent = async () =>
      (
        (await (await api('GET', '/dump/events/recent?limit=1000')).json()) as {
          events: Array<{ type: string; data: { code?: string; state?: string; schema?: string } }>;
        }
      ).events.filter((e) => e.type === 'flux.cluster.placement_finding');
    expect((await recent()).filter((e) => e.data.state === 'open')).toHaveLength(2);
  });

  it('the preflight of the affected cluster fails naming each problem, and writes the report', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'flux-preflight-'));
    try {
      const report = path.join(dir, 'report.md');
      const r = await cli(['cluster', 'preflight', 'shared-1', '-o', report]);
      expect(r.exitCode, r.stderr).toBe(1);
      expect(r.stdout).toMatch(/^preflight of cluster shared-1: FAILED \(2 tenant\(s\)\)/m);
      expect(r.stdout).toMatch(
        /stale-shop: its newest restorable backup is 3d( \d+[ms])? old \(maxAge 1d 2h\)/,
      );
      expect(r.stdout).toContain(`orphan_schema: cluster shared-1: schema ${orphanSchema}`);
      expect(r.stdout).toMatch(/tenant_on_other_cluster: project moved-shop is v1 dedicated on dedicated-1/);
      const md = await readFile(report, 'utf8');
      expect(md).toMatch(/^# Maintenance preflight: cluster shared-1: FAIL$/m);
      expect(md).toMatch(
        new RegExp(
          `^\\| ${alpha.slug} \\| ${alpha.hash} \\| schema ${tenantSchemaOf(alpha.id)} \\| restorable \\| fresh \\| [0-9A-Za-z-]+ \\| .+ \\| pass \\|$`,
          'm',
        ),
      );
      expect(md).toMatch(new RegExp(`^\\| ${stale.slug} .* \\| fail \\|$`, 'm'));

      const second = await cli(['cluster', 'preflight', 'shared-2', '--json']);
      expect(second.exitCode).toBe(1);
      const rep = (JSON.parse(second.stdout) as { report: Report }).report;
      expect(rep.problems.join('\n')).toMatch(/never-shop: not restorable \(no_backups\)/);
      expect(rep.tenants).toMatchObject([{ slug: never.slug, freshness: 'never_verified' }]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('passes after --backup-now and the drift fixed; the report lists every tenant with its newest restorable backup', async () => {
    await a.query(`DROP SCHEMA ${orphanSchema}`, [], 'flux');
    await a.query(`DROP SCHEMA ${tenantSchemaOf(moved.id)} CASCADE`, [], 'flux');
    const dir = await mkdtemp(path.join(tmpdir(), 'flux-preflight-'));
    try {
      const file = path.join(dir, 'report.json');
      const r = await cli(['cluster', 'preflight', 'shared-1', '--backup-now', '-o', file]);
      expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^preflight of cluster shared-1: passed \(2 tenant\(s\)\)/m);
      const rep = JSON.parse(await readFile(file, 'utf8')) as Report & {
        tenants: Array<{ backupTaken?: string; offsiteReplicated: boolean }>;
      };
      expect(rep.verdict).toBe('pass');
      expect(rep.tenants.map((t) => t.slug).sort()).toEqual([alpha.slug, stale.slug].sort());
      for (const t of rep.tenants) {
        expect(t.verdict).toBe('pass');
        // The backup it took is the newest restorable one.
        expect(t.newestRestorableBackupId).toBe(t.backupTaken);
        expect(t.offsiteReplicated).toBe(true);
      }
      // The findings cleared, each with its event.
      const events = (
        (await (await api('GET', '/dump/events/recent?limit=1000')).json()) as {
          events: Array<{ type: string; data: { state?: string; verdict?: string } }>;
        }
      ).events;
      expect(
        events.filter((e) => e.type === 'flux.cluster.placement_finding' && e.data.state === 'cleared'),
      ).toHaveLength(2);
      expect(events.some((e) => e.type === 'flux.cluster.preflight_passed')).toBe(true);
      expect(
        events.some((e) => e.type === 'flux.cluster.preflight_failed' && e.data.verdict === 'fail'),
      ).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('an unknown cluster is 404; an unreachable one "could not tell" (exit 2), never a pass', async () => {
    expect((await api('GET', '/api/ops/v1/clusters/..%2Fstate')).status).toBe(400);
    const unknown = await api('GET', '/api/ops/v1/clusters/nope');
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({
      code: 'not_found',
      error: expect.stringMatching(/known: shared-1/),
    });
    expect((await cli(['cluster', 'preflight', 'nope'])).exitCode).toBe(66);
    const bad = await api('POST', '/api/ops/v1/clusters/shared-1/preflight', { maxAge: 'soon' });
    expect(bad.status).toBe(400);
    // Judging needs backups:read; taking backups first needs backups:write.
    const asReader = (body: unknown) =>
      all.app.request('/api/ops/v1/clusters/shared-2/preflight', {
        method: 'POST',
        headers: { ...READER.header, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    expect((await asReader({})).status).toBe(200);
    expect((await asReader({ backupNow: true })).status).toBe(403);

    // A separate dump function whose registry has a cluster nobody listens for.
    const other = await makeTestEnv({
      TEST_DOWN_URL: 'postgres://flux:secret-pw@127.0.0.1:1/flux?connect_timeout=2',
      TEST_GONE_URL: a.url('gone_db'),
    });
    try {
      const lonely = v2('lonely-shop', 'down-1');
      // A v1 project whose database is not on its server: the server answers, the database is missing.
      const goneId = randomUUID();
      const gone: Project = {
        id: goneId,
        slug: 'gone-shop',
        hash: hashOf(goneId),
        engine: 'v1_dedicated',
        databaseUrl: 'env:TEST_GONE_URL',
      };
      const dump = createDumpApp(
        testRuntime('dump', other, {
          projects: [lonely, gone],
          clusters: [{ name: 'down-1', url: 'env:TEST_DOWN_URL', maxConcurrentDumps: 1 }],
        }),
      );
      const url = await listen(dump.app.fetch);
      const r = await cli(['cluster', 'preflight', 'down-1', '--json'], url);
      expect(r.exitCode).toBe(2);
      const rep = (JSON.parse(r.stdout) as { report: Report }).report;
      expect(rep.verdict).toBe('unknown');
      expect(rep.problems.join('\n')).toMatch(/cluster down-1 could not be asked/);
      expect(r.stdout + r.stderr).not.toContain('secret-pw');
      const list = await cli(['cluster', 'list'], url);
      expect(list.stdout).toMatch(/^down-1\s+shared\s+-\s+unreachable\s/m);
      const own = await cli(['cluster', 'show', 'dedicated:gone-shop', '--json'], url);
      expect(JSON.parse(own.stdout).cluster).toMatchObject({
        reachable: true,
        findings: [{ code: 'tenant_missing', project: 'gone-shop', database: 'gone_db' }],
      });
    } finally {
      await other.cleanup();
    }
  });
});
