// The flux-ops CLI against the all-in-one process served on a random port: verify (exit 0 verified, 1
// failed, 2 could not verify), migrate (plan, refusal, a real move), probes through a gateway, events
// tail (and --follow) and replay of dead letters, doctor --remote. Real child processes, real Postgres.
import { createHash, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AllInOne, createAllInOne } from '../functions/all/app.js';
import { silentLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { createStaticRegistry, type Project } from '../shared/registry.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

const BIN = path.resolve(import.meta.dirname, '../bin/flux-ops.mjs');
const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);

const tenant = { id: randomUUID(), slug: 'bloom-atelier' };
const mover = { id: randomUUID(), slug: 'moving-tenant' };
const down = { id: randomUUID(), slug: 'down-tenant' };
const apiHost = (slug: string, id: string) => `api--${slug}--${hashOf(id)}.flux.test`;

let source: PgCluster;
let target: PgCluster;
let env: TestEnv;
let all: AllInOne;
let servers: ServerType[] = [];
let base: string;
let localBase: string;

async function listen(
  fetch: (req: Request) => Response | Promise<Response>,
): Promise<{ server: ServerType; url: string }> {
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  servers.push(server);
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

async function cli(args: string[], extraEnv: Record<string, string> = {}): Promise<CliResult> {
  const r = await execa(process.execPath, [BIN, ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      FLUX_API_BASE: base,
      FLUX_API_TOKEN: ADMIN.token,
      ...extraEnv,
    },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 180_000,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

const manifestPath = (projectId: string, backupId: string) =>
  path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, projectId, `${backupId}.manifest.json`);
const dumpPath = (projectId: string, backupId: string) =>
  path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, projectId, `${backupId}.dump`);

async function rewriteManifest(
  projectId: string,
  backupId: string,
  edit: (m: Record<string, unknown>) => Record<string, unknown>,
) {
  const file = manifestPath(projectId, backupId);
  await writeFile(
    file,
    JSON.stringify(edit(JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>), null, 2),
  );
}

/** A backup made through the CLI (--json), its id. */
async function createBackup(slug: string): Promise<string> {
  const r = await cli(['backup', 'create', '-p', slug, '--json']);
  expect(r.exitCode).toBe(0);
  return (JSON.parse(r.stdout) as { backup: { id: string } }).backup.id;
}

beforeAll(async () => {
  [source, target] = await Promise.all([startPostgres(), startPostgres()]);
  await source.createDatabase('shared');
  await target.createDatabase('moving_dedicated');
  await seedTenant(source, { db: 'shared', projectId: tenant.id, rows: 200 });
  await seedTenant(source, { db: 'shared', projectId: mover.id, rows: 150 });
  await seedTenant(source, { db: 'shared', projectId: down.id, empty: true });

  // The gateway the probes go through: one tenant healthy, one answering 503.
  const gateway = await listen((req) =>
    (req.headers.get('host') ?? '').startsWith(`api--${down.slug}--`)
      ? new Response('upstream down', { status: 503 })
      : new Response('{}', { status: 200, headers: { 'content-type': 'application/json' } }),
  );
  // An operator sink that refuses every event: deliveries to it become dead letters.
  const refusing = await listen(() => new Response('no', { status: 400 }));

  localBase = await mkdtemp(path.join(tmpdir(), 'flux-cli-verify-'));
  await chmod(localBase, 0o755);
  env = await makeTestEnv({
    TEST_SHARED_URL: source.url('shared'),
    TEST_MOVING_DEDICATED_URL: target.url('moving_dedicated'),
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: localBase,
    // Verification on demand only (no event verify acts on), so each test decides what is verified.
    FLUX_VERIFY_ON: 'flux.cli.test.manual',
    FLUX_TENANT_PROBE_GATEWAY_URL: gateway.url,
    FLUX_PROBE_INTERVAL_MS: '0',
    FLUX_PROBE_FAILURE_THRESHOLD: '1',
    FLUX_OUTBOX_RETRY_SCHEDULE_MS: '0',
    FLUX_EVENT_SINKS: JSON.stringify([
      { url: refusing.url, types: ['flux.backup.created'], name: 'refusing' },
    ]),
  });
  const projects: Project[] = [
    {
      ...tenant,
      hash: hashOf(tenant.id),
      engine: 'v2_shared',
      cluster: 'shared-1',
      apiHost: apiHost(tenant.slug, tenant.id),
    },
    {
      ...mover,
      hash: hashOf(mover.id),
      engine: 'v2_shared',
      cluster: 'shared-1',
      dedicatedUrl: 'env:TEST_MOVING_DEDICATED_URL',
    },
    {
      ...down,
      hash: hashOf(down.id),
      engine: 'v2_shared',
      cluster: 'shared-1',
      apiHost: apiHost(down.slug, down.id),
    },
  ];
  all = createAllInOne(env.config, env.env, {
    log: silentLogger(),
    metrics: createRegistry({ defaultMetrics: false }),
    registry: createStaticRegistry({
      projects,
      clusters: [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }],
    }),
  });
  const front = await listen(all.app.fetch);
  base = front.url;
  all.setBaseUrl(base);
  await all.start();
});

afterAll(async () => {
  await all?.stop().catch(() => undefined);
  for (const s of servers) await new Promise<void>((resolve) => s.close(() => resolve()));
  servers = [];
  await Promise.all([source?.destroy(), target?.destroy()]);
  await env?.cleanup();
  if (localBase) await rm(localBase, { recursive: true, force: true });
});

describe('backup verify', () => {
  it('exit 0: restore-verified, the rungs, progress on stderr; the trust table then says restorable', async () => {
    const id = await createBackup(tenant.slug);
    const r = await cli(['backup', 'verify', '-p', tenant.slug, '--latest']);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toContain(`verifying backup ${id} of ${tenant.slug}`);
    expect(r.stderr).toMatch(new RegExp(`^verify ${id}: starting  \\d+s$`, 'm'));
    expect(r.stdout).toMatch(
      new RegExp(`^backup ${id} of ${tenant.slug}: restore-verified in [\\d.]+s \\(local sandbox\\)$`, 'm'),
    );
    expect(r.stdout).toMatch(/^RUNG\s+RESULT\s+CODE\s+MESSAGE$/m);
    expect(r.stdout).toMatch(/^volume\s+passed\s/m);
    const status = await cli(['backup', 'status', '-p', tenant.slug]);
    expect(status.stdout).toMatch(
      /^bloom-atelier\s+restorable\s+fresh\s+\d+\w( \d+\w)? \/ 1d 2h\s+yes\s+yes\s+(yes|no)\s/m,
    );
  });

  it('exit 1: a backup whose rows drifted from its manifest fails verification, with the failing rung shown', async () => {
    const id = await createBackup(tenant.slug);
    await rewriteManifest(tenant.id, id, (m) => ({
      ...m,
      tables: (m.tables as Array<{ name: string; rows: number }>).map((t) =>
        t.name === 'orders' ? { ...t, rows: t.rows + 5 } : t,
      ),
    }));
    const r = await cli(['backup', 'verify', '-p', tenant.slug, '--id', id]);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toMatch(/^volume\s+failed\s+\S+\s+.*orders 200 \(manifest 205\)/m);
    expect(r.stderr).toMatch(/^flux-ops: restore verification failed: /m);
    const json = await cli(['backup', 'verify', '-p', tenant.slug, '--id', id, '--json']);
    expect(json.exitCode).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({
      code: 'verify_failed',
      restoreVerificationStatus: 'restore_failed',
    });
  });

  it('exit 2: an archive the sandbox cannot read is "could not verify", never a pass or a failure', async () => {
    const id = await createBackup(tenant.slug);
    const file = dumpPath(tenant.id, id);
    const bytes = await readFile(file);
    bytes[6] = 15; // archive format 1.15 = pg_dump 16, newer than this sandbox's pg_restore
    await writeFile(file, bytes);
    await rewriteManifest(tenant.id, id, (m) => ({
      ...m,
      sha256: createHash('sha256').update(bytes).digest('hex'),
      sizeBytes: bytes.length,
    }));
    const r = await cli(['backup', 'verify', '--hash', hashOf(tenant.id), '--id', id]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/^flux-ops: restore verification could not run \(this is not a pass\)/m);
    const status = await cli(['backup', 'status', '-p', tenant.slug, '--json']);
    expect(JSON.parse(status.stdout)).toMatchObject({
      projects: [{ slug: tenant.slug, tier: 'unverifiable' }],
    });
  });
});

describe('migrate', () => {
  it('--dry-run prints the plan; not ready (no restorable backup) exits 1, ready with --skip-backup-check exits 0', async () => {
    const gated = await cli(['migrate', '-p', mover.slug, '--dry-run']);
    expect(gated.exitCode).toBe(1);
    expect(gated.stdout).toMatch(/^migrate plan for moving-tenant \(dry run\): NOT READY$/m);
    expect(gated.stdout).toMatch(/^ {4}- backup_gate: /m);
    expect(gated.stderr).toMatch(/moving-tenant is not ready to migrate/);
    const ready = await cli(['migrate', '-p', mover.slug, '--dry-run', '--skip-backup-check']);
    expect(ready.exitCode).toBe(0);
    expect(ready.stdout).toMatch(/^migrate plan for moving-tenant \(dry run\): READY$/m);
    expect(ready.stdout).toMatch(/^ {2}data {7}2 tables, 300 rows, \d+ sequences$/m);
    expect(ready.stdout).toMatch(/^ {4}1\. check the backup gate/m);
  });

  it('refuses a real run without --yes off a terminal; with --yes moves the data and reports it', async () => {
    const refused = await cli(['migrate', '-p', mover.slug, '--skip-backup-check']);
    expect(refused.exitCode).toBe(1);
    // In the CLI's words (its flags), decided before anything is sent, with no progress line.
    expect(refused.stderr).toBe(
      'flux-ops: a real migration of moving-tenant needs --yes (or a terminal, to type the slug); ' +
        'flux-ops migrate -p moving-tenant --dry-run shows the plan first. Nothing was done',
    );
    // The server's backup gate refuses: nothing started, so no progress line says it did.
    const gated = await cli(['migrate', '-p', mover.slug, '--yes']);
    expect(gated.exitCode).toBe(1);
    expect(gated.stderr).not.toMatch(/^migrate moving-tenant:/m);
    const r = await cli(['migrate', '-p', mover.slug, '--yes', '--skip-backup-check']);
    expect(r.stderr).not.toMatch(/^migrate moving-tenant: starting/m);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^migrated moving-tenant: 2 tables, 300 rows in [\d.]+s \(run \S+\)$/m);
    expect(r.stdout).toMatch(/^PHASE\s+TIME$/m);
    const rows = await target.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM t_${mover.id.replaceAll('-', '').slice(0, 12)}_api.orders`,
      [],
      'moving_dedicated',
    );
    expect(rows[0]!.n).toBe('150');
  });
});

describe('probe', () => {
  it('run: a table of results; exit 1 when a tenant fails, 0 for a healthy one alone', async () => {
    const r = await cli(['probe', 'run']);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toMatch(/^PROJECT\s+RESULT\s+STATE\s+HTTP\s+TIME\s+WHEN\s+REASON$/m);
    expect(r.stdout).toMatch(/^bloom-atelier\s+ok\s+up\s+200\s/m);
    expect(r.stdout).toMatch(/^down-tenant\s+FAIL\s+down\s+503\s/m);
    expect(r.stderr).toMatch(/^flux-ops: 1 of 2 probe\(s\) failed: down-tenant$/m);
    const one = await cli(['probe', 'run', '-p', tenant.slug, '--json']);
    expect(one.exitCode).toBe(0);
    expect(JSON.parse(one.stdout)).toMatchObject({ results: [{ slug: tenant.slug, success: true }] });
  });

  it('status: the latest result of each tenant', async () => {
    const r = await cli(['probe', 'status']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^down-tenant\s+FAIL\s+down\s+503\s/m);
  });
});

describe('events', () => {
  it('tail: the events the functions emitted, filtered by type glob; --json is one CloudEvent per line', async () => {
    const r = await cli(['events', 'tail', '--type', 'flux.backup.created']);
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines.length).toBeGreaterThanOrEqual(3);
    for (const line of lines)
      expect(line).toMatch(/^\S+Z {2}flux\.backup\.created {2}[0-9a-f-]{36}\/[0-9A-Z]{26} {2}\S+ {2}\d/);
    const json = await cli(['events', 'tail', '--type', 'flux.migrate.*', '--json', '-n', '5']);
    const events = json.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; source: string });
    expect(events.map((e) => e.type)).toEqual(
      expect.arrayContaining(['flux.migrate.started', 'flux.migrate.completed']),
    );
    expect(events.every((e) => e.source === '/flux-ops/migrate')).toBe(true);
  });

  it('tail --follow prints events as they happen and stops cleanly on Ctrl-C', async () => {
    const child = execa(
      process.execPath,
      [BIN, 'events', 'tail', '--follow', '-n', '0', '--type', 'flux.backup.created'],
      {
        env: { PATH: process.env.PATH ?? '', FLUX_API_BASE: base, FLUX_API_TOKEN: ADMIN.token },
        extendEnv: false,
        reject: false,
        stdin: 'ignore',
      },
    );
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    try {
      // Let the first poll pass (it prints nothing with -n 0), then make an event.
      await new Promise((resolve) => setTimeout(resolve, 2_500));
      expect(out).toBe('');
      const id = await createBackup(tenant.slug);
      await eventually(() => out.includes(`/${id}`), 30_000);
      child.kill('SIGINT');
      const result = await child;
      expect(result.exitCode).toBe(0);
      expect(
        out
          .trimEnd()
          .split('\n')
          .filter((l) => l.includes(id)),
      ).toHaveLength(1);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('replay: lists dead letters, replays them, and says when an id has none', async () => {
    await eventually(async () => {
      const res = await all.app.request('/dump/events/dead', { headers: ADMIN.header });
      return ((await res.json()) as { deadLetters: unknown[] }).deadLetters.length > 0;
    });
    const listed = await cli(['events', 'replay', '--fn', 'dump', '--dry-run']);
    expect(listed.exitCode).toBe(0);
    expect(listed.stdout).toMatch(/^FN\s+EVENT\s+TYPE\s+SUBJECT\s+SINK\s+TRIES\s+LAST ERROR$/m);
    expect(listed.stdout).toMatch(/^dump\s+\S+\s+flux\.backup\.created\s+\S+\s+refusing\s+1\s+HTTP 400/m);
    expect(listed.stdout).not.toMatch(/^replayed/m);
    const dead = JSON.parse(
      (await cli(['events', 'replay', '--fn', 'dump', '--dry-run', '--json'])).stdout,
    ) as {
      deadLetters: Array<{ id: string }>;
    };
    const one = dead.deadLetters[0]!.id;
    const r = await cli(['events', 'replay', '--fn', 'dump', '--id', one]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^replayed 1 dead letter of dump$/m);
    const missing = await cli(['events', 'replay', '--id', 'no-such-event']);
    expect(missing.exitCode).toBe(66);
    expect(missing.stderr).toMatch(/^flux-ops: no dead letter of event no-such-event$/m);
  });
});

describe('doctor --remote', () => {
  it("reports each function's readiness as the running deployment sees it", async () => {
    const r = await cli(['doctor', '--remote', '--json']);
    const report = JSON.parse(r.stdout) as {
      ok: boolean;
      findings: Array<{ area: string; name: string; status: string }>;
    };
    expect(new Set(report.findings.map((f) => f.area))).toEqual(
      new Set(['dump', 'replicate', 'verify', 'probe', 'migrate', 'restore']),
    );
    expect(report.findings).toContainEqual(
      expect.objectContaining({ area: 'dump', name: 'tool:pg_dump', status: 'ok' }),
    );
    expect(r.exitCode).toBe(report.ok ? 0 : 69);
    const human = await cli(['doctor', '--remote']);
    expect(human.stdout).toMatch(/^verify/m);
    expect(human.stdout).toMatch(/^ {2}ok {4}sandbox: /m);
  });
});
