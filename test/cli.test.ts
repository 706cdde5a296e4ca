// The flux-ops CLI as an operator runs it: a real child process (bin/flux-ops.mjs) against the dump app
// served over real HTTP on a real Postgres. Backup create with progress off a terminal, list, the trust
// table, download with its checksum (and a tampered file), the error paths, --json, and doctor.
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../functions/dump/app.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Project } from '../shared/registry.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { ADMIN, makeTestEnv, type TestEnv, testRuntime, WEBHOOK_SECRET } from './support/runtime.js';

const BIN = path.resolve(import.meta.dirname, '../bin/flux-ops.mjs');
const tenantId = randomUUID();
const otherId = randomUUID();
const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);
const SLUG = 'bloom-atelier';

let pg: PgCluster;
let env: TestEnv;
let fn: FunctionApp;
let server: ServerType;
let base: string;
/** Every request the server received, as "METHOD /path". */
const requested: string[] = [];
let withoutProjectLookup = false;

interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a child process with only the variables an operator's shell would carry. */
async function cli(args: string[], extraEnv: Record<string, string | undefined> = {}): Promise<CliResult> {
  const childEnv: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/tmp',
    FLUX_API_BASE: base,
    FLUX_API_TOKEN: ADMIN.token,
  };
  for (const [k, v] of Object.entries(extraEnv)) {
    if (v === undefined) delete childEnv[k];
    else childEnv[k] = v;
  }
  const r = await execa(process.execPath, [BIN, ...args], {
    env: childEnv,
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 120_000,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

function project(id: string, slug: string): Project {
  return { id, hash: hashOf(id), slug, engine: 'v2_shared', cluster: 'shared-1' };
}

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: tenantId, rows: 2000 });
  await seedTenant(pg, { db: 'shared', projectId: otherId, rows: 10 });
  env = await makeTestEnv({ TEST_SHARED_URL: pg.url('shared') });
  const rt = testRuntime('dump', env, {
    projects: [project(tenantId, SLUG), project(otherId, 'other-tenant')],
    clusters: [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }],
  });
  fn = createApp(rt);
  await fn.start();
  server = await new Promise<ServerType>((resolve) => {
    const fetch = (request: Request) => {
      const pathname = new URL(request.url).pathname;
      requested.push(`${request.method} ${pathname}`);
      // A server from before the project lookup answers 404 there.
      if (withoutProjectLookup && pathname === '/api/ops/v1/projects')
        return Response.json({ error: 'not found', code: 'not_found' }, { status: 404 });
      return fn.app.fetch(request);
    };
    const s = serve({ fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await fn?.stop();
  await pg?.destroy();
  await env?.cleanup();
});

describe('backup create, list, status', () => {
  let created: { id: string; checksumSha256: string; sizeBytes: number };

  it('create: follows the backup with plain progress lines on a non-TTY stderr, then prints it', async () => {
    const r = await cli(['backup', 'create', '-p', SLUG]);
    expect(r.stderr).toMatch(/^backup [0-9A-Z]{26} of bloom-atelier started$/m);
    // At least one progress line: label, stage, elapsed; never a carriage return off a terminal.
    expect(r.stderr).toMatch(/^backup of bloom-atelier: (queued|dumping|finishing|running)\b.*\d+s$/m);
    expect(r.stderr).not.toContain('\r');
    expect(r.exitCode).toBe(0);
    const id = /^backup ([0-9A-Z]{26}) of bloom-atelier: complete$/m.exec(r.stdout)?.[1];
    expect(id).toBeDefined();
    const manifest = JSON.parse(
      await readFile(path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, tenantId, `${id}.manifest.json`), 'utf8'),
    ) as { sha256: string; sizeBytes: number };
    expect(r.stdout).toContain(`sha256     ${manifest.sha256}`);
    expect(r.stdout).toMatch(/took\s+[\d.]+s \(.* (B|KiB|MiB)\/s\)/);
    created = { id: id!, checksumSha256: manifest.sha256, sizeBytes: manifest.sizeBytes };
  });

  it('create --json: one parseable document on stdout and nothing extra on stderr', async () => {
    const r = await cli(['backup', 'create', '--hash', hashOf(otherId), '--json']);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toBe('');
    const { backup } = JSON.parse(r.stdout) as { backup: { id: string; status: string; kind: string } };
    expect(backup).toMatchObject({ status: 'complete', kind: 'tenant_export' });
  });

  it('list: a table newest first, and the same backups as JSON', async () => {
    const r = await cli(['backup', 'list', '-p', SLUG]);
    expect(r.exitCode).toBe(0);
    const [header, first] = r.stdout.trimEnd().split('\n');
    expect(header).toMatch(/^ID\s+CREATED\s+STATUS\s+SIZE\s+ARTIFACT\s+RESTORE\s+OFFSITE$/);
    expect(first).toMatch(
      new RegExp(`^${created.id}\\s+\\d+\\w+( \\d+\\w+)? ago\\s+complete\\s+.*valid\\s+pending\\s+pending$`),
    );
    const json = await cli(['backup', 'list', '-p', SLUG, '--json']);
    const { backups } = JSON.parse(json.stdout) as { backups: Array<{ id: string; checksumSha256: string }> };
    expect(backups[0]).toMatchObject({ id: created.id, checksumSha256: created.checksumSha256 });
  });

  it('status: the trust table with tier, the three labels, age and the next command', async () => {
    const r = await cli(['backup', 'status']);
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(
      /^PROJECT\s+TIER\s+FRESHNESS\s+AGE\/MAX\s+VALIDATED\s+RESTORE-VERIFIED\s+REPLICATED\s+NEWEST\s+MESSAGE \/ NEXT$/,
    );
    const row = lines.find((l) => l.startsWith(SLUG));
    expect(row).toMatch(
      /^bloom-atelier\s+not_restore_verified\s+never_verified\s+- \/ 1d 2h\s+yes\s+no\s+no\s+(\d+m )?\d+s ago\s+.*next: flux-ops backup verify -p bloom-atelier --id /,
    );
    const one = await cli(['backup', 'status', '-p', 'other-tenant', '--json']);
    const { projects } = JSON.parse(one.stdout) as {
      projects: Array<{ slug: string; tier: string; labels: object }>;
    };
    expect(projects).toHaveLength(1);
    expect(projects[0]).toMatchObject({
      slug: 'other-tenant',
      tier: 'not_restore_verified',
      labels: { artifactValidated: true, restoreVerified: false, offsiteReplicated: false },
    });
  });

  it('download --latest: streams beside -o, checks the SHA-256, renames into place', async () => {
    const dir = path.join(env.root, 'downloads');
    await mkdir(dir, { recursive: true });
    const target = path.join(dir, 'latest.dump');
    const r = await cli(['backup', 'download', '-p', SLUG, '--latest', '-o', target]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain(`sha256 ${created.checksumSha256} verified`);
    expect(r.stderr).toMatch(/^download [0-9A-Z]{26}: downloading {2}0 B \/ .* \(0%\)/m);
    const bytes = await readFile(target);
    expect(bytes.length).toBe(created.sizeBytes);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(created.checksumSha256);
    expect(await readdir(dir)).toEqual(['latest.dump']);
    // An existing file is not replaced without --force.
    const again = await cli(['backup', 'download', '-p', SLUG, '--id', created.id, '-o', target]);
    expect(again.exitCode).toBe(64);
    expect(again.stderr).toMatch(/exists; pass --force/);
    const forced = await cli(['backup', 'download', '-p', SLUG, '--id', created.id, '-o', dir, '--json']);
    expect(forced.exitCode).toBe(0);
    const out = JSON.parse(forced.stdout) as { path: string; sha256: string };
    expect(out).toMatchObject({
      path: path.join(dir, `${SLUG}-${created.id}.dump`),
      sha256: created.checksumSha256,
    });
  });

  it('download of a tampered file: cut short while the server hashes it, then refused up front; nothing at -o, exit 1', async () => {
    const r0 = await cli(['backup', 'create', '-p', SLUG, '--json']);
    const { backup } = JSON.parse(r0.stdout) as { backup: { id: string } };
    const file = path.join(env.config.FLUX_BACKUPS_LOCAL_DIR, tenantId, `${backup.id}.dump`);
    // A whole-second mtime (utimes puts it back exactly), validated by a list before the change.
    const second = Math.floor(Date.now() / 1000) - 60;
    await utimes(file, second, second);
    expect((await cli(['backup', 'list', '-p', SLUG])).exitCode).toBe(0);
    const bytes = await readFile(file);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff; // same size, different content
    await writeFile(file, bytes);
    // The mtime put back: nothing but the bytes tells the change.
    await utimes(file, second, second);
    expect((await stat(file)).mtimeMs).toBe(second * 1000);
    const dir = path.join(env.root, 'tampered');
    await mkdir(dir, { recursive: true });
    const args = ['backup', 'download', '-p', SLUG, '--id', backup.id, '-o', path.join(dir, 'x.dump')];
    const cut = await cli(args);
    // A transfer that breaks off (69, retry): the retry then gets the server's reason.
    expect(cut.exitCode, cut.stderr).toBe(69);
    expect(cut.stderr).toMatch(
      /^flux-ops: (the download of backup [0-9A-Z]{26} broke off after .*; the partial file was removed|checksum mismatch for backup [0-9A-Z]{26}: .*the temporary file was removed)/m,
    );
    expect(await readdir(dir)).toEqual([]);
    // The server hashes the file again after the cut: then it refuses before sending a byte.
    let refused = await cli(args);
    for (let i = 0; i < 20 && !/not served/.test(refused.stderr); i++) {
      await new Promise((r) => setTimeout(r, 250));
      refused = await cli(args);
    }
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toMatch(/does not match its manifest.*not served/);
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('errors an operator meets', () => {
  it('401 with a wrong token says to set FLUX_API_TOKEN and never prints it', async () => {
    const wrong = `fxo_${randomUUID()}`;
    const r = await cli(['backup', 'list', '--hash', hashOf(tenantId)], { FLUX_API_TOKEN: wrong });
    expect(r.exitCode).toBe(77);
    expect(r.stderr).toMatch(
      /^flux-ops: the Bearer token is not valid.*FLUX_API_TOKEN is set but the server does not accept it/m,
    );
    expect(r.stderr + r.stdout).not.toContain(wrong);
    const none = await cli(['backup', 'status'], { FLUX_API_TOKEN: undefined });
    expect(none.exitCode).toBe(77);
    expect(none.stderr).toMatch(/Set FLUX_API_TOKEN/);
  });

  it('--token-file reads the token from a file instead of argv', async () => {
    const file = path.join(env.root, 'token');
    await writeFile(file, `${ADMIN.token}\n`, { mode: 0o600 });
    const r = await cli(['backup', 'status', '--json', '--token-file', file], { FLUX_API_TOKEN: undefined });
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout)).toHaveProperty('projects');
  });

  it('-p <slug> is looked up in the registry list (GET /api/ops/v1/projects), not the whole trust status', async () => {
    requested.length = 0;
    const r = await cli(['backup', 'list', '-p', 'other-tenant', '--json']);
    expect(r.exitCode).toBe(0);
    expect(requested).toEqual([
      'GET /api/ops/v1/projects',
      `GET /api/cli/v1/projects/${hashOf(otherId)}/backups`,
    ]);
    const answer = await fn.app.request('/api/ops/v1/projects', { headers: ADMIN.header });
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({
      projects: [
        { id: tenantId, slug: SLUG, hash: hashOf(tenantId), engine: 'v2_shared' },
        { id: otherId, slug: 'other-tenant', hash: hashOf(otherId), engine: 'v2_shared' },
      ],
    });
  });

  it('against a server without the project lookup (404), -p <slug> is read from the status list', async () => {
    requested.length = 0;
    withoutProjectLookup = true;
    try {
      const r = await cli(['backup', 'list', '-p', 'other-tenant', '--json']);
      expect(r.exitCode).toBe(0);
    } finally {
      withoutProjectLookup = false;
    }
    expect(requested).toEqual([
      'GET /api/ops/v1/projects',
      'GET /api/ops/v1/status',
      `GET /api/cli/v1/projects/${hashOf(otherId)}/backups`,
    ]);
  });

  it('an unknown slug names the known ones; --json prints the error as JSON too', async () => {
    const r = await cli(['backup', 'list', '-p', 'no-such-project']);
    expect(r.exitCode).toBe(66);
    expect(r.stderr).toMatch(
      /^flux-ops: no project with slug no-such-project at .* \(known: bloom-atelier, other-tenant\)/m,
    );
    const j = await cli(['backup', 'verify', '-p', 'no-such-project', '--latest', '--json']);
    expect(j.exitCode).toBe(66);
    expect(JSON.parse(j.stdout)).toMatchObject({ code: 'not_found' });
  });

  it('a server that is down: says which FLUX_API_BASE was tried and how to set it', async () => {
    const closed = serve({ fetch: () => new Response(), port: 0, hostname: '127.0.0.1' });
    await new Promise((resolve) => closed.once('listening', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const r = await cli(['backup', 'status'], { FLUX_API_BASE: `http://127.0.0.1:${port}` });
    expect(r.exitCode).toBe(69);
    expect(r.stderr).toMatch(
      new RegExp(
        `^flux-ops: cannot reach flux-ops at http://127.0.0.1:${port} \\(from FLUX_API_BASE\\): ECONNREFUSED\\. .*FLUX_API_BASE`,
        'm',
      ),
    );
    const flag = await cli(['backup', 'status', '--api-base', `http://127.0.0.1:${port}`]);
    expect(flag.stderr).toContain('(from --api-base)');
  });

  it('usage errors exit 64 and point at --help; --help and --version answer', async () => {
    const bad = await cli(['backup', 'download', '-p', SLUG]);
    expect(bad.exitCode).toBe(64);
    expect(bad.stderr).toMatch(/--id <backupId> or --latest/);
    const unknown = await cli(['backup', 'frobnicate']);
    expect(unknown.exitCode).toBe(64);
    expect(unknown.stderr).toMatch(/unknown command "backup frobnicate"/);
    const help = await cli(['backup', 'verify', '--help']);
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toMatch(/Exit codes: 0 restore-verified; 1 verification failed; 2 could not verify/);
    const pkg = JSON.parse(await readFile(path.resolve(import.meta.dirname, '../package.json'), 'utf8')) as {
      version: string;
    };
    const version = await cli(['--version']);
    expect(version.stdout.trim()).toBe(pkg.version);
  });
});

describe('doctor', () => {
  it('with pg_dump missing from PATH: says to install postgresql-client and rebuild, exit 69, no secret shown', async () => {
    const emptyBin = path.join(env.root, 'empty-bin');
    await mkdir(emptyBin, { recursive: true });
    const vars = Object.fromEntries(
      Object.entries(env.env).filter(([k]) => k.startsWith('FLUX_') || k.startsWith('TEST_')),
    ) as Record<string, string>;
    const r = await cli(['doctor'], { ...vars, FLUX_VERIFY_DRIVER: 'local', PATH: emptyBin });
    expect(r.exitCode).toBe(69);
    expect(r.stdout).toMatch(
      /FAIL {2}tool:pg_dump: pg_dump not found on PATH of this process: install postgresql-client .*rebuild/,
    );
    expect(r.stdout).toMatch(/^to fix \(\d+\):$/m);
    expect(r.stdout).toMatch(/^ {2}\d+\. dump tool:pg_dump: /m);
    expect(r.stdout).toMatch(/ok {4}FLUX_API_TOKENS: 1 token configured/);
    expect(r.stdout).toMatch(/ok {4}FLUX_WEBHOOK_SECRETS: 1 secret/);
    expect(r.stdout).toMatch(/ok {4}FLUX_API_TOKEN: set, and one of FLUX_API_TOKENS accepts it/);
    expect(r.stdout).toMatch(
      /warn {2}FLUX_BACKUPS_LOCAL_DIR: .* owned by uid \d+ \(this user\)|ok {4}FLUX_BACKUPS_LOCAL_DIR/,
    );
    for (const secret of [ADMIN.token, ADMIN.entry.split(':')[1]!, WEBHOOK_SECRET]) {
      expect(r.stdout + r.stderr).not.toContain(secret);
    }
    const json = await cli(['doctor', '--json'], { ...vars, FLUX_VERIFY_DRIVER: 'local', PATH: emptyBin });
    const report = JSON.parse(json.stdout) as {
      ok: boolean;
      findings: Array<{ area: string; name: string; status: string }>;
    };
    expect(report.ok).toBe(false);
    expect(report.findings).toContainEqual(
      expect.objectContaining({ area: 'dump', name: 'tool:pg_dump', status: 'fail' }),
    );
  });

  it('reports every bad variable of the config, and an unreadable CA file', async () => {
    const r = await cli(['doctor'], {
      FLUX_DUMP_PORT: 'eighty',
      FLUX_API_TOKENS: 'not-a-token-entry',
      NODE_EXTRA_CA_CERTS: path.join(env.root, 'no-such-ca.pem'),
    });
    expect(r.exitCode).toBe(69);
    expect(r.stdout).toMatch(/FAIL {2}FLUX_DUMP_PORT: must be a number/);
    expect(r.stdout).toMatch(/FAIL {2}FLUX_API_TOKENS: entry #1 must be id:<sha256 hex of the token>/);
    expect(r.stdout).toMatch(/FAIL {2}NODE_EXTRA_CA_CERTS: .*no-such-ca\.pem is not readable \(ENOENT\)/);
  });
});
