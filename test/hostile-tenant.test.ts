// A hostile tenant's backup through the whole pipeline: backed up normally, verified in the local and
// the docker sandbox (by flux-ops as root, and as an unprivileged user with access to the Docker socket,
// as in compose), and migrated to a dedicated database. Every object of the corpus tries to run a shell,
// read and write host files and reach another server; none may get through, and each backup is still
// judged by its rungs. The local sandbox's own boundary is shown with an escape we plant ourselves.
import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, chown, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createApp as createMigrateApp } from '../functions/migrate/app.js';
import { createVerifier } from '../functions/verify/verifier.js';
import type { VerifyReceipt } from '../shared/catalog/records.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Cluster, Project } from '../shared/registry.js';
import { createDockerDriver } from '../shared/sandbox/docker.js';
import { createDriverSelection } from '../shared/sandbox/select.js';
import { startFunction } from './support/faults.js';
import {
  HOSTILE_PLACES,
  type HostileTenant,
  makeTraps,
  seedHostileProjectDb,
  seedHostileTenant,
  type Traps,
  trapsSprung,
} from './support/hostile.js';
import { type PgCluster, quoteIdent, startPostgres } from './support/pg.js';
import { ADMIN, makeTestEnv, type TestEnv, testRuntime } from './support/runtime.js';
import { dockerGate } from './support/sandbox-contract.js';

const SOCKET = process.env.FLUX_DOCKER_SOCKET ?? '/var/run/docker.sock';
const IMAGE = process.env.FLUX_TEST_VERIFY_IMAGE ?? 'flux-ops/postgres-verify:15';
const isRoot = process.getuid?.() === 0;
/** The unprivileged OS user flux-ops runs as in the second half (uid 1001 in the image). */
const OPS_USER = 'flux-ops-test';

const hash7 = () => randomBytes(4).toString('hex').slice(0, 7);
const v2: Project = {
  id: randomUUID(),
  hash: hash7(),
  slug: 'hostile-tenant',
  engine: 'v2_shared',
  cluster: 'shared-1',
  dedicatedUrl: 'env:TEST_DEDICATED_URL',
} as Project;
const v1: Project = {
  id: randomUUID(),
  hash: hash7(),
  slug: 'hostile-dedicated',
  engine: 'v1_dedicated',
  databaseUrl: 'env:TEST_V1_URL',
} as Project;
const projects = [v2, v1];

let source: PgCluster;
let other: PgCluster;
let target: PgCluster;
let traps: Traps;
let tenant: HostileTenant;
let clusters: Cluster[];
let env: TestEnv;
let localBase: string;
let dumpFn: FunctionApp;
const backups = new Map<string, string>();

async function resetTraps(): Promise<void> {
  for (const name of await readdir(traps.marks)) await rm(path.join(traps.marks, name), { force: true });
  await other.query(`TRUNCATE public.canary; INSERT INTO public.canary VALUES ('intact')`);
}

const untouched = { markers: [], canary: ['intact'] };

beforeAll(async () => {
  [source, other, target] = await Promise.all([startPostgres(), startPostgres(), startPostgres()]);
  await source.createDatabase('shared');
  await target.createDatabase('dedicated');
  traps = await makeTraps(other);
  tenant = await seedHostileTenant(source, { db: 'shared', projectId: v2.id, traps });
  await seedHostileProjectDb(source, { db: 'hostile_v1', role: 'hostile_owner', traps });
  localBase = await mkdtemp(path.join(tmpdir(), 'flux-hostile-sandboxes-'));
  await chmod(localBase, 0o755);
  env = await makeTestEnv({
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: localBase,
    FLUX_BACKUP_VERIFY_POSTGRES_IMAGE: IMAGE,
    FLUX_DOCKER_SOCKET: SOCKET,
    FLUX_VERIFY_MEMORY_MB: '512',
    TEST_SHARED_URL: source.url('shared'),
    TEST_V1_URL: source.url('hostile_v1'),
    TEST_DEDICATED_URL: target.url('dedicated'),
  });
  clusters = [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }];
  dumpFn = createDumpApp(testRuntime('dump', env, { projects, clusters }));
  for (const project of projects) {
    const res = await dumpFn.app.request(`/api/cli/v1/projects/${project.hash}/backups`, {
      method: 'POST',
      headers: ADMIN.header,
    });
    expect(res.status, await res.clone().text()).toBe(200);
    backups.set(project.id, ((await res.json()) as { backup: { id: string } }).backup.id);
  }
});

afterAll(async () => {
  await Promise.all([source?.destroy(), other?.destroy(), target?.destroy()]);
  await env?.cleanup();
  if (traps) await rm(traps.marks, { recursive: true, force: true });
  if (localBase) await rm(localBase, { recursive: true, force: true });
});

it('the corpus is harmless as the tenant and caught the moment it runs as anything more', async () => {
  // As the tenant: every attempt is refused and swallowed.
  const asTenant = new pg.Client({
    ...source.connectionConfig('shared'),
    user: tenant.role,
    password: tenant.password,
  });
  await asTenant.connect();
  try {
    expect((await asTenant.query(`SELECT ${quoteIdent(tenant.schema)}.evil('probe') AS r`)).rows).toEqual([
      { r: 1 },
    ]);
  } finally {
    await asTenant.end();
  }
  // As a superuser (what a restore did before): the shell runs on this host and reaches the other server.
  await expect(
    source.query(`SELECT ${quoteIdent(tenant.schema)}.evil('probe')`, [], 'shared'),
  ).rejects.toThrow(/ESCAPED\(probe\): program read_file write_file as postgres/);
  const sprung = await trapsSprung(traps);
  expect(sprung.markers).toEqual(expect.arrayContaining(['probe-program', 'probe-canary', 'probe-write']));
  expect(sprung.canary).toEqual(['pwned-probe']);
  await resetTraps();
});

/** Verifies both backups with `driver`, in this process (root here). */
async function verifyInProcess(driver: 'local' | 'docker'): Promise<VerifyReceipt[]> {
  const verifyEnv = await makeTestEnv({
    ...env.env,
    FLUX_VERIFY_DRIVER: driver,
    FLUX_STATE_DIR: path.join(env.root, `state-${driver}`),
  });
  const rt = testRuntime('verify', verifyEnv, { projects, clusters });
  const selection = createDriverSelection(verifyEnv.config, verifyEnv.env, { spare: false });
  const verifier = createVerifier(rt, { selection, spare: false });
  try {
    const receipts: VerifyReceipt[] = [];
    for (const project of projects) {
      const started = await verifier.start({ projectId: project.id, backupId: backups.get(project.id)! });
      receipts.push(await started.done);
    }
    return receipts;
  } finally {
    await verifier.stop();
    await selection.close();
  }
}

function expectRestorable(receipt: VerifyReceipt): void {
  // Judged by its rungs: the restore as the tenant would run it succeeds and matches the manifest.
  expect(receipt.error ?? '').not.toMatch(/ESCAPED/);
  expect({ status: receipt.status, failed: receipt.rungs.filter((r) => r.result === 'failed') }).toEqual({
    status: 'restore_verified',
    failed: [],
  });
  for (const name of ['artifact', 'archive', 'restore', 'structure', 'volume', 'sequences'])
    expect(receipt.rungs.find((r) => r.rung === name)?.result, name).toBe('passed');
}

describe('verify as root', () => {
  it('local sandbox: restored as the tenant inside the boundary; nothing ran, nothing was reached', async () => {
    const receipts = await verifyInProcess('local');
    for (const receipt of receipts) expectRestorable(receipt);
    // The volume rung counted every corpus table the tenant filled.
    const v2Volume = receipts[0]!.rungs.find((r) => r.rung === 'volume')!;
    expect(v2Volume.details).toMatchObject({ tables: 7, rows: 24 });
    // The v1 database's extension was created by us before the restore, in its own schema.
    const v1Receipt = receipts[1]!;
    expect(v1Receipt.stages.extensions).toBeGreaterThanOrEqual(0);
    expect(v1Receipt.rungs.find((r) => r.rung === 'volume')?.details).toMatchObject({ tables: 8, rows: 26 });
    expect(await trapsSprung(traps)).toEqual(untouched);
  });

  it('docker sandbox: the same, inside a container without network', async () => {
    const gate = await dockerGate(SOCKET, IMAGE);
    if (!gate.ok && process.env.CI !== 'true') return;
    expect(gate.reason).toBe('');
    for (const receipt of await verifyInProcess('docker')) expectRestorable(receipt);
    expect(await trapsSprung(traps)).toEqual(untouched);
  });
});

/**
 * The unprivileged OS user, with the Docker socket's group as its group (as the compose service is given
 * the socket): a process started with a uid keeps only its primary group.
 */
async function opsUser(): Promise<{ uid: number; gid: number }> {
  const exists = await execa('id', ['-u', OPS_USER], { reject: false });
  if (exists.exitCode !== 0) {
    await execa(
      'useradd',
      ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', OPS_USER],
      { reject: false },
    );
  }
  const uid = Number((await execa('id', ['-u', OPS_USER])).stdout.trim());
  const socketGroup = (await stat(SOCKET).catch(() => undefined))?.gid;
  const gid = socketGroup ?? Number((await execa('id', ['-g', OPS_USER])).stdout.trim());
  return { uid, gid };
}

async function chownTree(dir: string, uid: number, gid: number): Promise<void> {
  await execa('chown', ['-R', `${uid}:${gid}`, dir]);
}

describe.skipIf(!isRoot)('verify as an unprivileged user with access to the Docker socket', () => {
  for (const driver of ['local', 'docker'] as const) {
    it(`${driver} sandbox`, async () => {
      if (driver === 'docker') {
        const gate = await dockerGate(SOCKET, IMAGE);
        if (!gate.ok && process.env.CI !== 'true') return;
      }
      const user = await opsUser();
      // Its own copies of the roots, owned by it as the image's volumes are owned by uid 1001.
      const root = await mkdtemp(path.join(tmpdir(), 'flux-hostile-ops-'));
      await chmod(root, 0o755);
      const local = path.join(root, 'backups');
      await execa('cp', ['-a', env.config.FLUX_BACKUPS_LOCAL_DIR, local]);
      const sandboxes = path.join(root, 'sandboxes');
      await mkdir(sandboxes);
      const projectsFile = path.join(root, 'projects.json');
      await writeFile(projectsFile, JSON.stringify({ clusters, projects }));
      await chownTree(root, user.uid, user.gid);
      await chown(root, user.uid, user.gid);
      const fn = await startFunction(
        'verify',
        {
          ...env.env,
          HOME: root,
          FLUX_BACKUPS_LOCAL_DIR: local,
          FLUX_BACKUPS_OFFSITE_DIR: path.join(root, 'offsite'),
          FLUX_STATE_DIR: path.join(root, 'state'),
          FLUX_PROJECTS_FILE: projectsFile,
          FLUX_VERIFY_DRIVER: driver,
          FLUX_VERIFY_LOCAL_DIR: sandboxes,
          FLUX_VERIFY_ON: 'none',
          // Time to remove its spare sandbox on SIGTERM, as a deployment gives it.
          FLUX_SHUTDOWN_GRACE_MS: '60000',
        },
        { as: user },
      );
      try {
        const ready = (await (await fn.fetch('/readyz')).json()) as {
          checks: Array<{ name: string; detail: string }>;
        };
        const sandboxCheck = JSON.stringify(ready.checks);
        if (driver === 'local') expect(sandboxCheck).toMatch(/isolation: namespaces .* in a user namespace/);
        for (const project of projects) {
          const res = await fn.fetch(
            `/api/cli/v1/projects/${project.hash}/backups/${backups.get(project.id)}/verify`,
            { method: 'POST' },
          );
          const body = (await res.json()) as { restoreVerificationStatus?: string; error?: string };
          expect({ status: res.status, body }).toMatchObject({
            status: 200,
            body: { restoreVerificationStatus: 'restore_verified' },
          });
        }
      } finally {
        await fn.stop();
        await rm(root, { recursive: true, force: true });
        // Whatever its process left (it has exited): no other file's reaper may find it.
        const reaper = createDockerDriver({
          socketPath: SOCKET,
          image: IMAGE,
          memoryMb: 256,
          cpus: 1,
          pids: 64,
          spare: false,
        });
        await reaper.reap().catch(() => 0);
        await reaper.close();
      }
      expect(await trapsSprung(traps)).toEqual(untouched);
    });
  }
});

describe('migrate', () => {
  it('restores as the tenant: its objects owned by its role with its grants, its code never run above it', async () => {
    const rt = testRuntime('migrate', env, { projects, clusters });
    const fn = createMigrateApp(rt);
    await fn.start();
    try {
      const res = await fn.app.request('/api/cli/v1/migrate', {
        method: 'POST',
        headers: { ...ADMIN.header, 'content-type': 'application/json' },
        body: JSON.stringify({ slug: v2.slug, hash: v2.hash, yes: true, skipBackupCheck: true }),
      });
      const body = (await res.json()) as Record<string, unknown>;
      expect({ status: res.status, ok: body.ok, error: body.error }).toEqual({
        status: 200,
        ok: true,
        error: undefined,
      });
    } finally {
      await fn.stop();
    }
    expect(await trapsSprung(traps)).toEqual(untouched);
    const s = quoteIdent(tenant.schema);
    // Owned by the tenant's role, as on the source; no object left to the run's restore login.
    const owners = await target.query<{ owner: string }>(
      `SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1`,
      [tenant.schema],
      'dedicated',
    );
    expect(owners).toEqual([{ owner: tenant.role }]);
    const schemaOwner = await target.query<{ o: string }>(
      `SELECT pg_get_userbyid(nspowner) AS o FROM pg_namespace WHERE nspname = $1`,
      [tenant.schema],
      'dedicated',
    );
    expect(schemaOwner).toEqual([{ o: tenant.role }]);
    expect(
      await target.query(
        `SELECT rolname FROM pg_roles WHERE rolname LIKE 'flux\\_restore\\_%'`,
        [],
        'dedicated',
      ),
    ).toEqual([]);
    // Its grants and policies came along.
    expect(
      await target.query<{ g: boolean; u: boolean }>(
        `SELECT has_table_privilege('authenticated', $1, 'SELECT') AS g,
                has_schema_privilege('authenticated', $2, 'USAGE') AS u`,
        [`${tenant.schema}.gen`, tenant.schema],
        'dedicated',
      ),
    ).toEqual([{ g: true, u: true }]);
    expect(
      await target.query(
        `SELECT policyname FROM pg_policies WHERE schemaname = $1`,
        [tenant.schema],
        'dedicated',
      ),
    ).toEqual([{ policyname: 'def_read' }]);
    // Its data and its functions work there as before, as the tenant.
    await target.query(`ALTER ROLE ${quoteIdent(tenant.role)} LOGIN PASSWORD '${tenant.password}'`);
    const asTenant = new pg.Client({
      ...target.connectionConfig('dedicated'),
      user: tenant.role,
      password: tenant.password,
    });
    await asTenant.connect();
    try {
      const rows = await asTenant.query(
        `SELECT (SELECT count(*)::int FROM ${s}.gen) AS gen, (SELECT sum(g)::int FROM ${s}.gen) AS g,
                (SELECT count(*)::int FROM ${s}.mv) AS mv, ${s}.evil('after') AS evil`,
      );
      expect(rows.rows).toEqual([{ gen: 5, g: 20, mv: 5, evil: 1 }]);
      await asTenant.query(`INSERT INTO ${s}.chk VALUES (100)`);
    } finally {
      await asTenant.end();
    }
    expect(await trapsSprung(traps)).toEqual(untouched);
  });
});

/**
 * Our own superuser statement inside a local sandbox runs a shell that reports what it can reach: the
 * boundary that would hold if tenant code ever ran with the server's privileges.
 */
const PROBE_SCRIPT = (t: { otherSocket: string; otherPort: number; watched: number; roots: string[] }) =>
  [
    `id -u`,
    `psql -X -h ${t.otherSocket} -p ${t.otherPort} -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1 && echo other-server-reached`,
    `cat /proc/${t.watched}/environ >/dev/null 2>&1 && echo environ-read`,
    `ls /proc | grep -c '^[0-9]' | sed 's/^/processes=/'`,
    `test -e /var/run/docker.sock -o -e /run/docker.sock && echo docker-socket-visible`,
    ...t.roots.map((r) => `test -e ${r} && echo root-visible:${r}`),
    `cat /proc/net/dev | tail -n +3 | grep -v ' lo:' | grep -c . | sed 's/^/interfaces=/'`,
  ].join('; ');

describe('the local sandbox boundary, with an escape planted on purpose', () => {
  async function probeFromSandbox(asUser?: { uid: number; gid: number }): Promise<string> {
    const watched = process.pid;
    const script = PROBE_SCRIPT({
      otherSocket: other.socketDir,
      otherPort: other.port,
      watched,
      roots: [env.config.FLUX_BACKUPS_LOCAL_DIR, env.config.FLUX_STATE_DIR, traps.marks, other.socketDir],
    });
    const program = `
      import { createLocalDriver } from ${JSON.stringify(path.resolve('shared/sandbox/local.ts'))};
      import { runSql } from ${JSON.stringify(path.resolve('shared/sandbox/query.ts'))};
      const d = createLocalDriver({ pathEnv: process.env.PATH, baseDir: ${JSON.stringify(localBase)}, spare: false });
      const box = await d.create({ projectId: '${v2.id}', backupId: '01J00000000000000000000077', ttlMs: 60000 });
      const r = await runSql(box, "COPY (SELECT 1) TO PROGRAM " + ${JSON.stringify(`'(${script.replaceAll("'", "''")}) > report 2>&1'`)} + "; SELECT pg_read_file('report')");
      console.log(JSON.stringify({ exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr }));
      await box.destroy(); await d.close();`;
    const result = await execa(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '--eval', program],
      {
        env: { ...process.env, HOME: localBase },
        reject: false,
        ...(asUser ? { uid: asUser.uid, gid: asUser.gid } : {}),
      },
    );
    const line = result.stdout.trim().split('\n').at(-1) ?? '';
    const parsed = JSON.parse(line || '{}') as { exitCode?: number; stdout?: string; stderr?: string };
    expect(parsed.exitCode, `${result.stderr}\n${line}`).toBe(0);
    return parsed.stdout ?? '';
  }

  function expectContained(report: string, uid: number): void {
    expect(report).toMatch(new RegExp(`^${uid}$`, 'm'));
    expect(report).not.toMatch(/other-server-reached|environ-read|docker-socket-visible|root-visible/);
    // Its own namespace: its server's processes only, and no interface but loopback.
    expect(Number(/processes=(\d+)/.exec(report)?.[1])).toBeLessThan(20);
    expect(report).toMatch(/interfaces=0/);
  }

  it.skipIf(!isRoot)('as root: the server runs as the sandbox-only user and reaches nothing', async () => {
    const uid = Number((await execa('id', ['-u', 'flux-sandbox'], { reject: false })).stdout.trim() || -1);
    const report = await probeFromSandbox();
    expect(uid).toBeGreaterThan(0);
    expectContained(report, uid);
  });

  it.skipIf(!isRoot)('as an unprivileged user: a user namespace, and it reaches nothing either', async () => {
    const user = await opsUser();
    await chown(localBase, user.uid, user.gid);
    try {
      expectContained(await probeFromSandbox(user), user.uid);
    } finally {
      await chown(localBase, 0, 0);
    }
  });

  it('every place of the corpus was planted', async () => {
    const tags = await source.query<{ src: string }>(
      `SELECT string_agg(pg_get_functiondef(p.oid), ' ') AS src FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname IN ($1, 'public')`,
      [tenant.schema],
      'shared',
    );
    const defs = `${tags[0]?.src ?? ''} ${JSON.stringify(
      await source.query(
        `SELECT pg_get_expr(adbin, adrelid) AS e FROM pg_attrdef UNION ALL SELECT pg_get_constraintdef(oid) FROM pg_constraint
          UNION ALL SELECT pg_get_indexdef(indexrelid) FROM pg_index UNION ALL SELECT definition FROM pg_matviews
          UNION ALL SELECT definition FROM pg_rules UNION ALL SELECT qual FROM pg_policies`,
        [],
        'shared',
      ),
    )}`;
    for (const place of HOSTILE_PLACES) expect(defs, place).toContain(`'${place}'`);
  });
});
