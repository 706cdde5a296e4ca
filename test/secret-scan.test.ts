// The secret scan: realistic flows (create, list, download, replicate, verify, a failing dump, migrate dry
// runs that succeed and fail, deep probes with a minted JWT, bad tokens, signed and mis-signed events, the
// CLI) run with KNOWN secret values, twice — once against the real all-in-one process (its stdout and
// stderr), once against the five functions in this process behind the router with an s3:// offsite store
// (their captured logs). Then every place a secret could escape to is searched for every secret: logs,
// child-process output, events a sink received, every file under the backup roots and the state dir,
// every HTTP response (bodies and headers), and the argv of every PostgreSQL tool that ran (recorded by
// PATH wrappers).
import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDump } from '../functions/dump/app.js';
import { createApp as createMigrate } from '../functions/migrate/app.js';
import { createApp as createProbe } from '../functions/probe/app.js';
import { createApp as createReplicate } from '../functions/replicate/app.js';
import { createApp as createRestore } from '../functions/restore/app.js';
import { createRouter, type Router } from '../functions/router/app.js';
import { createApp as createVerify } from '../functions/verify/app.js';
import { type EventSink, FUNCTION_NAMES, type FunctionName } from '../shared/config.js';
import { createEvent } from '../shared/events/envelope.js';
import type { FunctionApp, Runtime } from '../shared/kit/runtime.js';
import { createLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import type { Cluster, Project } from '../shared/registry.js';
import { S3RVER_KEY_ID, type S3Server, startS3Server } from './s3-server.js';
import { seedTenant } from './support/fixtures.js';
import {
  type ChildFunction,
  filesUnder,
  type RecordingTools,
  ROOT,
  recordingTools,
  secretFinder,
  serveOnLoopback,
  startAllInOneProcess,
} from './support/hardening.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  eventually,
  makeTestEnv,
  makeToken,
  makeWebhookSecret,
  signedEvent,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';
import { type Gateway, startHttpGateway } from './support/tls.js';

const hex = (n: number) => randomBytes(n).toString('hex');
// Passwords with characters a URL must encode, so both spellings are searched for.
const PG_PASSWORD = `pg:${hex(10)}/@#`;
const TARGET_PASSWORD = `tg:${hex(10)}?&=`;
const WRONG_PASSWORD = `wrong:${hex(10)}@`;
const WRONG_TARGET_PASSWORD = `wrongtg:${hex(10)}%`;
const JWT_SECRET = `jwt-${hex(24)}`;
const S3_SECRET = `s3-${hex(20)}`;
const WEBHOOK_NEW = makeWebhookSecret();
const WEBHOOK_OLD = makeWebhookSecret();
const ADMIN = makeToken('scan-admin', ['admin']);
const READER = makeToken('scan-reader', ['backups:read']);
const PROBER = makeToken('scan-prober', ['probe']);
const BOGUS = makeToken('scan-bogus', ['admin']);

const SECRETS: Record<string, string> = {
  'admin token': ADMIN.token,
  'reader token': READER.token,
  'prober token': PROBER.token,
  'unconfigured token': BOGUS.token,
  'database password': PG_PASSWORD,
  'dedicated target password': TARGET_PASSWORD,
  'wrong database password': WRONG_PASSWORD,
  'wrong target password': WRONG_TARGET_PASSWORD,
  'probe JWT secret': JWT_SECRET,
  'S3 secret access key': S3_SECRET,
  'webhook secret (primary)': WEBHOOK_NEW,
  'webhook secret (rotating out)': WEBHOOK_OLD,
};

const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);
function v2(slug: string, extra: Partial<Project> = {}): Project {
  const id = randomUUID();
  return { id, hash: hashOf(id), slug, engine: 'v2_shared', cluster: 'shared-1', ...extra };
}
const TENANT = v2('scan-tenant', {
  apiHost: 'api--scan-tenant--0000000.flux.test',
  jwtSecret: 'env:SCAN_JWT_SECRET',
});
const MOVER = v2('scan-mover', { dedicatedUrl: 'env:SCAN_MOVER_URL' });
const BAD_TARGET = v2('scan-bad-target', { dedicatedUrl: 'env:SCAN_BAD_TARGET_URL' });
const BROKEN_ID = randomUUID();
const BROKEN: Project = {
  id: BROKEN_ID,
  hash: hashOf(BROKEN_ID),
  slug: 'scan-broken',
  engine: 'v1_dedicated',
  databaseUrl: 'env:SCAN_BROKEN_URL',
};
const PROJECTS = [TENANT, MOVER, BAD_TARGET, BROKEN];
const CLUSTERS: Cluster[] = [{ name: 'shared-1', url: 'env:SCAN_SHARED_URL', maxConcurrentDumps: 2 }];

let pg: PgCluster;
let gateway: Gateway;
/** JWTs the gateway received: minted per probe, searched for like the static secrets. */
const jwts = new Set<string>();
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  pg = await startPostgres({ superuserPassword: PG_PASSWORD });
  cleanups.push(() => pg.destroy());
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: TENANT.id, rows: 50 });
  await seedTenant(pg, { db: 'shared', projectId: MOVER.id, rows: 10 });
  await seedTenant(pg, { db: 'shared', projectId: BAD_TARGET.id, empty: true });
  await pg.createDatabase('mover_dedicated');
  await pg.query(
    `CREATE ROLE mover_owner LOGIN SUPERUSER PASSWORD '${TARGET_PASSWORD.replaceAll("'", "''")}'`,
  );
  gateway = await startHttpGateway({
    routes: {
      '*': (req, res) => {
        const auth = req.headers.authorization;
        if (auth?.startsWith('Bearer ')) jwts.add(auth.slice('Bearer '.length));
        res.writeHead(200, { 'content-type': 'application/json' }).end('[]');
      },
    },
  });
  cleanups.push(() => gateway.close());
});

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

function dbUrl(user: string, password: string, db: string): string {
  return `postgres://${user}:${encodeURIComponent(password)}@127.0.0.1:${pg.port}/${db}`;
}

/** The environment both passes share: secrets only in variables, the registry only names them. */
async function scanEnv(sink: EventReceiver, extra: Record<string, string> = {}): Promise<TestEnv> {
  const verifyDir = await mkdtemp(path.join(tmpdir(), 'flux-scan-verify-'));
  await chmod(verifyDir, 0o755);
  cleanups.push(() => rm(verifyDir, { recursive: true, force: true }));
  const env = await makeTestEnv({
    SCAN_SHARED_URL: pg.url('shared'),
    SCAN_MOVER_URL: dbUrl('mover_owner', TARGET_PASSWORD, 'mover_dedicated'),
    SCAN_BAD_TARGET_URL: dbUrl('mover_owner', WRONG_TARGET_PASSWORD, 'mover_dedicated'),
    SCAN_BROKEN_URL: dbUrl('postgres', WRONG_PASSWORD, 'shared'),
    SCAN_JWT_SECRET: JWT_SECRET,
    FLUX_API_TOKENS: [ADMIN, READER, PROBER].map((t) => t.entry).join(','),
    FLUX_WEBHOOK_SECRETS: `${WEBHOOK_NEW},${WEBHOOK_OLD}`,
    FLUX_EVENT_SINKS: JSON.stringify([{ url: sink.url, types: ['*'], name: 'scan-sink' }]),
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: verifyDir,
    FLUX_TENANT_PROBE_GATEWAY_URL: gateway.url,
    FLUX_PROBE_MODE: 'deep',
    FLUX_PROBE_INTERVAL_MS: '0',
    FLUX_PROBE_FAILURE_THRESHOLD: '1',
    FLUX_LOG_LEVEL: 'debug',
    ...extra,
  });
  cleanups.push(() => env.cleanup());
  await writeFile(env.config.FLUX_PROJECTS_FILE, JSON.stringify({ clusters: CLUSTERS, projects: PROJECTS }));
  return env;
}

interface Collected {
  /** Every HTTP answer: status line, headers and body as text. */
  responses: string[];
  /** Output of the CLI runs. */
  cli: string[];
}

/** The flows an operator and automation run, through one front door. */
async function runFlows(base: string, sink: EventReceiver): Promise<Collected> {
  const responses: string[] = [];
  const call = async (
    method: string,
    p: string,
    init: { headers?: Record<string, string>; body?: string } = {},
  ): Promise<{ status: number; json: Record<string, unknown> }> => {
    const res = await fetch(`${base}${p}`, { method, headers: init.headers, body: init.body });
    const raw = Buffer.from(await res.arrayBuffer());
    responses.push(
      `${method} ${p} ${res.status}\n${[...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${raw.toString('latin1')}`,
    );
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
    } catch {
      // downloads are not JSON
    }
    return { status: res.status, json };
  };
  const as = (token: { header: { authorization: string } }, more: Record<string, string> = {}) => ({
    ...token.header,
    ...more,
  });
  const jsonHeaders = (token: { header: { authorization: string } }) =>
    as(token, { 'content-type': 'application/json' });
  const backups = (p: Project) => `/api/cli/v1/projects/${p.hash}/backups`;

  // Create, list, show, download.
  const created = await call('POST', backups(TENANT), { headers: as(ADMIN) });
  expect(created.status).toBe(200);
  const backupId = (created.json.backup as { id: string }).id;
  expect((await call('GET', backups(TENANT), { headers: as(READER) })).status).toBe(200);
  expect((await call('GET', `${backups(TENANT)}/${backupId}`, { headers: as(READER) })).status).toBe(200);
  expect((await call('GET', `${backups(TENANT)}/${backupId}/download`, { headers: as(READER) })).status).toBe(
    200,
  );

  // Replication follows the file arrival; then a reconcile on demand.
  await eventually(
    async () => {
      const list = await call('GET', backups(TENANT), { headers: as(READER) });
      return (list.json.backups as Array<{ offsiteStatus: string }>)[0]?.offsiteStatus === 'complete';
    },
    60_000,
    200,
  );
  expect((await call('POST', '/replicate/replicate/run', { headers: as(ADMIN) })).status).toBe(200);

  // Verify (a real restore into a local throwaway cluster).
  const verified = await call('POST', `${backups(TENANT)}/${backupId}/verify`, { headers: as(ADMIN) });
  expect(verified.json).toMatchObject({ ok: true, restoreVerificationStatus: 'restore_verified' });

  // A restore beside the live tenant: a real pg_restore into a new database, proven against the manifest.
  const restored = await call('POST', `${backups(TENANT)}/${backupId}/restore`, {
    headers: jsonHeaders(ADMIN),
    body: JSON.stringify({ targetName: `scan_${randomUUID().slice(0, 8)}` }),
  });
  expect(restored.json, JSON.stringify(restored.json)).toMatchObject({
    ok: true,
    restore: { status: 'completed' },
  });

  // A dump that fails: the project's URL carries a wrong password.
  const failed = await call('POST', backups(BROKEN), { headers: as(ADMIN) });
  expect(failed.status).toBeGreaterThanOrEqual(400);

  // Migrate dry runs: one against a reachable target, one whose target password is wrong.
  const plan = await call('POST', '/api/cli/v1/migrate', {
    headers: jsonHeaders(ADMIN),
    body: JSON.stringify({ slug: MOVER.slug, hash: MOVER.hash, dryRun: true, skipBackupCheck: true }),
  });
  expect(plan.status).toBe(200);
  const badPlan = await call('POST', '/api/cli/v1/migrate', {
    headers: jsonHeaders(ADMIN),
    body: JSON.stringify({
      slug: BAD_TARGET.slug,
      hash: BAD_TARGET.hash,
      dryRun: true,
      skipBackupCheck: true,
    }),
  });
  expect(badPlan.status).toBeGreaterThanOrEqual(200);

  // Deep probes: a JWT minted from the project's secret goes to the gateway.
  const probed = await call('POST', '/probes/run', { headers: jsonHeaders(PROBER), body: '{}' });
  expect(probed.status).toBe(200);
  expect((await call('GET', '/probes', { headers: as(PROBER) })).status).toBe(200);

  // Bad tokens, in every shape a confused client sends them.
  expect((await call('GET', backups(TENANT), { headers: as(BOGUS) })).status).toBe(401);
  expect(
    (await call('GET', backups(TENANT), { headers: { authorization: `Bearer ${ADMIN.token} extra` } }))
      .status,
  ).toBe(401);
  expect(
    (
      await call('GET', backups(TENANT), {
        headers: { authorization: `Basic ${Buffer.from(`ops:${ADMIN.token}`).toString('base64')}` },
      })
    ).status,
  ).toBe(401);
  expect((await call('GET', backups(TENANT), { headers: { authorization: ADMIN.token } })).status).toBe(401);
  expect((await call('POST', backups(TENANT), { headers: as(PROBER) })).status).toBe(403);

  // Events: the kit routes, a delivery signed only with the secret being retired, and a mis-signed one.
  expect((await call('GET', '/dump/events/recent', { headers: as(ADMIN) })).status).toBe(200);
  expect((await call('GET', '/verify/events/dead', { headers: as(ADMIN) })).status).toBe(200);
  const event = createEvent({
    type: 'flux.backup.failed',
    source: '/flux-ops/scan',
    data: { projectId: TENANT.id, backupId, reason: 'scan', error: 'scan' },
  });
  const oldSigned = signedEvent(event, [WEBHOOK_OLD]);
  expect(
    (
      await call('POST', '/replicate/events', {
        headers: oldSigned.headers as Record<string, string>,
        body: oldSigned.body as string,
      })
    ).status,
  ).toBe(202);
  const misSigned = signedEvent({ ...event, id: `evt_${randomUUID()}` }, [makeWebhookSecret()]);
  expect(
    (
      await call('POST', '/replicate/events', {
        headers: misSigned.headers as Record<string, string>,
        body: misSigned.body as string,
      })
    ).status,
  ).toBe(401);

  // The CLI, with a good and a bad token, and a token file.
  const tokenFile = path.join(await mkdtemp(path.join(tmpdir(), 'flux-scan-cli-')), 'token');
  await writeFile(tokenFile, `${READER.token}\n`, { mode: 0o600 });
  cleanups.push(() => rm(path.dirname(tokenFile), { recursive: true, force: true }));
  const cli: string[] = [];
  for (const [args, token] of [
    [['backup', 'list', '-p', TENANT.slug], READER.token],
    [['backup', 'list', '-p', TENANT.slug], BOGUS.token],
    [['backup', 'list', '-p', TENANT.slug, '--token-file', tokenFile], undefined],
  ] as const) {
    const r = await execa(process.execPath, [path.join(ROOT, 'bin/flux-ops.mjs'), ...args], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/tmp',
        FLUX_API_BASE: base,
        ...(token ? { FLUX_API_TOKEN: token } : {}),
      },
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
      timeout: 60_000,
    });
    cli.push(`${args.join(' ')} exit ${r.exitCode}\n${r.stdout}\n${r.stderr}`);
  }
  expect(cli[0]).toMatch(/exit 0/);
  expect(cli[1]).toMatch(/exit 77/);
  expect(cli[2]).toMatch(/exit 0/);

  // Everything the flows set off has reached the sink before anything is scanned.
  await eventually(() =>
    ['flux.backup.created', 'flux.backup.failed', 'flux.backup.replicated', 'flux.backup.verified'].every(
      (type) => sink.events(type).length > 0,
    ),
  );
  return { responses, cli };
}

interface Leak {
  where: string;
  secrets: string[];
}

function scan(sources: Array<{ where: string; text: string | Buffer }>): Leak[] {
  const find = secretFinder({
    ...SECRETS,
    ...Object.fromEntries([...jwts].map((j, i) => [`probe JWT #${i + 1}`, j])),
  });
  return sources.flatMap(({ where, text }) => {
    const secrets = find(text);
    return secrets.length > 0 ? [{ where, secrets }] : [];
  });
}

/** Every tool whose argv is scanned (unshare: the local sandbox's server starts through it). */
const SCANNED_TOOLS = ['pg_dump', 'pg_restore', 'psql', 'initdb', 'postgres', 'pg_ctl', 'unshare'];

async function commonSources(
  env: TestEnv,
  sink: EventReceiver,
  tools: RecordingTools,
  collected: Collected,
): Promise<Array<{ where: string; text: string | Buffer }>> {
  const argv = await tools.read();
  // The wrappers saw the real work: dumps, restores, migrate's client, and the sandbox's server, which
  // starts inside its boundary (recorded as unshare's argv: inside, the record is out of its reach).
  for (const tool of ['pg_dump', 'pg_restore', 'initdb', 'psql', 'unshare'])
    expect(argv).toMatch(new RegExp(`^${tool} `, 'm'));
  expect(argv).toMatch(/\/postgres -D \S+\/data -k /);
  const files = await filesUnder([
    env.config.FLUX_BACKUPS_LOCAL_DIR,
    ...(env.config.FLUX_BACKUPS_OFFSITE_DIR.startsWith('s3://') ? [] : [env.config.FLUX_BACKUPS_OFFSITE_DIR]),
    env.config.FLUX_STATE_DIR,
    env.config.FLUX_PROJECTS_FILE,
  ]);
  expect(files.some((f) => f.file.endsWith('.verify.json'))).toBe(true);
  expect(
    files.some((f) => f.file.includes(`${path.sep}migrate${path.sep}`) || f.file.includes('.state.json')),
  ).toBe(true);
  return [
    { where: 'argv of PostgreSQL tools', text: argv },
    ...files.map((f) => ({ where: `file ${path.relative(env.root, f.file)}`, text: f.content })),
    ...sink.deliveries.map((d) => ({ where: `event ${d.event.type} at the sink`, text: JSON.stringify(d) })),
    ...collected.responses.map((r) => ({ where: `HTTP ${r.split('\n')[0]}`, text: r })),
    ...collected.cli.map((c) => ({ where: `CLI ${c.split('\n')[0]}`, text: c })),
  ];
}

describe('secret scan', () => {
  it('the finder finds each secret as written and URL-encoded (the scan itself can fail)', () => {
    const found = secretFinder(SECRETS);
    expect(found(`postgres://u:${encodeURIComponent(PG_PASSWORD)}@h/db`)).toEqual(['database password']);
    expect(found(`x ${TARGET_PASSWORD} y`)).toEqual(['dedicated target password']);
    expect(found(Buffer.from(`...${WEBHOOK_OLD.slice('whsec_'.length)}...`))).toEqual([
      'webhook secret (rotating out)',
    ]);
    expect(found(`Bearer ${BOGUS.token}`)).toEqual(['unconfigured token']);
    expect(found('nothing here')).toEqual([]);
  });

  it('the real all-in-one process: no secret in its output, events, files, answers or tool argv', async () => {
    const sink = await startEventReceiver([WEBHOOK_NEW]);
    cleanups.push(() => sink.close());
    const env = await scanEnv(sink);
    const tools = await recordingTools(env.root, SCANNED_TOOLS);
    let child: ChildFunction | undefined;
    try {
      child = await startAllInOneProcess({ ...env.env, PATH: `${tools.bin}:${env.env.PATH}` });
      const collected = await runFlows(child.url, sink);
      await child.stop();
      expect(jwts.size).toBeGreaterThan(0);
      // The process did log (this is not an empty scan): requests, events, the failing dump.
      expect(child.stdout()).toMatch(/"msg":"access"/);
      expect(child.stdout()).toMatch(/authentication failed \(check the credentials of the URL\)/);
      const leaks = scan([
        { where: 'all-in-one stdout', text: child.stdout() },
        { where: 'all-in-one stderr', text: child.stderr() },
        ...(await commonSources(env, sink, tools, collected)),
      ]);
      expect(leaks).toEqual([]);
    } finally {
      await child?.stop();
    }
  });

  it('the functions in process behind the router, offsite on s3://: no secret in their logs or anywhere else', async () => {
    const s3: S3Server = await startS3Server();
    cleanups.push(() => s3.close());
    const sink = await startEventReceiver([WEBHOOK_NEW]);
    cleanups.push(() => sink.close());
    const env = await scanEnv(sink, {
      FLUX_BACKUPS_OFFSITE_DIR: `s3://${s3.bucket}/scan`,
      FLUX_S3_ENDPOINT: s3.endpoint,
      FLUX_S3_FORCE_PATH_STYLE: 'true',
      FLUX_S3_REGION: 'us-east-1',
      FLUX_S3_ACCESS_KEY_ID: S3RVER_KEY_ID,
      FLUX_S3_SECRET_ACCESS_KEY: S3_SECRET,
    });
    const tools = await recordingTools(env.root, SCANNED_TOOLS);
    const runEnv = { ...env, env: { ...env.env, PATH: `${tools.bin}:${env.env.PATH}` } };
    const urls = {} as Record<FunctionName, string>;
    // Wired like compose.yml: dump and migrate deliver to the functions that act on their events.
    const wiring: Partial<Record<FunctionName, Array<[FunctionName, string[]]>>> = {
      dump: [
        ['replicate', ['flux.backup.created']],
        ['verify', ['flux.backup.created']],
      ],
      migrate: [['probe', ['flux.migrate.completed']]],
    };
    const factories: Record<FunctionName, (rt: Runtime) => FunctionApp> = {
      dump: createDump,
      replicate: createReplicate,
      verify: createVerify,
      probe: createProbe,
      migrate: createMigrate,
      restore: createRestore,
    };
    const runtimes: TestRuntime[] = [];
    const apps: FunctionApp[] = [];
    let router: Router | undefined;
    const routerLines: string[] = [];
    try {
      for (const fn of FUNCTION_NAMES) {
        const rt = testRuntime(fn, runEnv, {
          projects: PROJECTS,
          clusters: CLUSTERS,
          extraSinks: (): EventSink[] =>
            (wiring[fn] ?? []).map(([to, types]) => ({ url: `${urls[to]}/events`, types, name: to })),
        });
        const app = factories[fn](rt);
        await app.start();
        const served = await serveOnLoopback(app.app.fetch);
        urls[fn] = served.url;
        runtimes.push(rt);
        apps.push(app);
        cleanups.push(async () => {
          await served.close();
          await app.stop();
        });
      }
      router = createRouter({
        upstreams: urls,
        log: createLogger('router', {
          level: 'debug',
          destination: new Writable({
            write(chunk, _e, cb) {
              routerLines.push(chunk.toString());
              cb();
            },
          }),
        }),
        metrics: createRegistry({ defaultMetrics: false }),
      });
      const front = await serveOnLoopback(router.app.fetch);
      cleanups.push(() => front.close());
      const collected = await runFlows(front.url, sink);
      for (const app of apps) await app.stop();
      const logs = runtimes.map((rt) => ({ where: `${rt.name} logs`, text: rt.logs.text() }));
      for (const { where, text } of logs) expect(text.length, where).toBeGreaterThan(0);
      expect(logs.find((l) => l.where === 'dump logs')?.text).toMatch(/authentication failed/);
      // The offsite copy went to the S3 server, signed with the secret key the scan looks for.
      expect(JSON.stringify(sink.events('flux.backup.replicated')[0]?.data)).toMatch(/s3/);
      const leaks = scan([
        ...logs,
        { where: 'router logs', text: routerLines.join('') },
        ...(await commonSources(env, sink, tools, collected)),
      ]);
      expect(leaks).toEqual([]);
    } finally {
      await router?.close(0);
    }
  });
});
