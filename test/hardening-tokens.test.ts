// Hardening of who gets in and how much: Bearer scopes enforced on every authenticated route of every
// function (the table is read from the apps, so a new route without an entry fails here), several tokens
// at once and their rotation, one access-log line per authenticated request (never the token), also
// through the real all-in-one process; webhook secret rotation with the non-primary metric; the per-token
// rate limit, probe concurrency and body limits on every POST route. The per-cluster dump and global verify
// queues (503 + Retry-After when full) are proven with real pg_dump and restore work in test/dump.test.ts
// and test/verify.test.ts.
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import type http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FACTORIES } from '../functions/all/app.js';
import { createApp as createDump } from '../functions/dump/app.js';
import { createApp as createProbe } from '../functions/probe/app.js';
import { createApp as createReplicate } from '../functions/replicate/app.js';
import { FUNCTION_NAMES, type FunctionName, SCOPES, type Scope } from '../shared/config.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Cluster, Project } from '../shared/registry.js';
import {
  type ChildFunction,
  rawRequest,
  routesOf,
  serveOnLoopback,
  startAllInOneProcess,
} from './support/hardening.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  backupCreatedData,
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

/** Routes anyone may call: liveness, readiness, metrics, and signed events (the signature is the auth). */
const PUBLIC_ROUTES = ['GET /healthz', 'GET /readyz', 'GET /metrics', 'POST /events'];

/** The kit's event routes every function serves. */
const KIT_ROUTES: Record<string, Scope> = {
  'GET /events/dead': 'events',
  'GET /events/recent': 'events',
  'POST /events/replay': 'events',
};

/** The least-privilege contract: the one scope each authenticated route needs (admin implies all). */
const REQUIRED_SCOPE: Record<FunctionName, Record<string, Scope>> = {
  dump: {
    ...KIT_ROUTES,
    'POST /api/cli/v1/projects/:hash/backups': 'backups:write',
    'GET /api/cli/v1/projects/:hash/backups': 'backups:read',
    'GET /api/cli/v1/projects/:hash/backups/:backupId': 'backups:read',
    'GET /api/cli/v1/projects/:hash/backups/:backupId/download': 'backups:read',
    'GET /api/ops/v1/projects': 'backups:read',
    'GET /api/ops/v1/status': 'backups:read',
    'POST /api/ops/v1/catalog/rebuild': 'backups:write',
    'GET /api/ops/v1/clusters': 'backups:read',
    'GET /api/ops/v1/clusters/:name': 'backups:read',
    // Judging reads; with backupNow it also needs backups:write (checked in the handler).
    'POST /api/ops/v1/clusters/:name/preflight': 'backups:read',
  },
  replicate: {
    ...KIT_ROUTES,
    'POST /replicate/run': 'backups:write',
    'POST /replicate/upkeep': 'backups:write',
    'GET /replicate/status': 'backups:read',
  },
  verify: {
    ...KIT_ROUTES,
    'POST /api/cli/v1/projects/:hash/backups/:backupId/verify': 'verify',
    'GET /api/cli/v1/projects/:hash/backups/:backupId/verify': 'backups:read',
  },
  probe: {
    ...KIT_ROUTES,
    'POST /probes/run': 'probe',
    'GET /probes': 'probe',
  },
  migrate: {
    ...KIT_ROUTES,
    'POST /api/cli/v1/migrate': 'migrate',
    'GET /api/cli/v1/migrate/:hash': 'migrate',
    'GET /api/cli/v1/projects/:hash': 'migrate',
  },
  restore: {
    ...KIT_ROUTES,
    'POST /api/cli/v1/projects/:hash/backups/:backupId/restore': 'restore',
    'GET /api/cli/v1/projects/:hash/restores/:restoreId': 'restore',
    'POST /api/cli/v1/projects/:hash/restores/:restoreId/drop-previous': 'restore',
  },
};

const NARROW_SCOPES = SCOPES.filter((s): s is Exclude<Scope, 'admin'> => s !== 'admin');
const tokenId = (scope: string) => scope.replace(':', '-');
/** One token per scope, and one per scope holding every other (non-admin) scope. */
const ONLY = Object.fromEntries(NARROW_SCOPES.map((s) => [s, makeToken(`only-${tokenId(s)}`, [s])]));
const ALL_BUT = Object.fromEntries(
  NARROW_SCOPES.map((s) => [
    s,
    makeToken(
      `all-but-${tokenId(s)}`,
      NARROW_SCOPES.filter((o) => o !== s),
    ),
  ]),
);

/** A hash and backup id no project or backup has: an authorised request ends in a cheap 404 or 400. */
const NO_HASH = 'fffffff';
const NO_BACKUP = '01JDZZZZZZZZZZZZZZZZZZZZZZ';
const fill = (p: string) => p.replace(':hash', NO_HASH).replace(':backupId', NO_BACKUP);

function appsFor(env: TestEnv, options: { projects?: Project[]; clusters?: Cluster[] } = {}) {
  const runtimes = {} as Record<FunctionName, TestRuntime>;
  const apps = {} as Record<FunctionName, FunctionApp>;
  for (const fn of FUNCTION_NAMES) {
    runtimes[fn] = testRuntime(fn, env, options);
    apps[fn] = FACTORIES[fn](runtimes[fn]);
  }
  return { runtimes, apps };
}

const accessLines = (rt: TestRuntime, requestId: string) =>
  rt.logs.lines.filter((l) => l.msg === 'access' && l.requestId === requestId);

describe('scopes on every authenticated route of every function', () => {
  let env: TestEnv;
  let apps: Record<FunctionName, FunctionApp>;
  let runtimes: Record<FunctionName, TestRuntime>;

  beforeAll(async () => {
    env = await makeTestEnv({
      FLUX_API_TOKENS: [ADMIN, ...Object.values(ONLY), ...Object.values(ALL_BUT)]
        .map((t) => t.entry)
        .join(','),
      FLUX_VERIFY_DRIVER: 'local',
      FLUX_PROBE_INTERVAL_MS: '0',
      FLUX_RATE_LIMIT_PER_MINUTE: '100000',
    });
    ({ apps, runtimes } = appsFor(env));
  });
  afterAll(async () => {
    for (const fn of FUNCTION_NAMES) await apps[fn]?.stop();
    await env?.cleanup();
  });

  it('the route table covers exactly the routes each app serves', () => {
    for (const fn of FUNCTION_NAMES) {
      const served = routesOf(apps[fn].app).map((r) => `${r.method} ${r.path}`);
      expect(new Set(served), fn).toEqual(new Set([...PUBLIC_ROUTES, ...Object.keys(REQUIRED_SCOPE[fn])]));
    }
  });

  it('public routes answer without a token', async () => {
    for (const fn of FUNCTION_NAMES) {
      for (const route of PUBLIC_ROUTES) {
        const [method, p] = route.split(' ') as [string, string];
        const res = await apps[fn].app.request(p, {
          method,
          ...(method === 'POST'
            ? { headers: { 'content-type': 'application/cloudevents+json' }, body: '{}' }
            : {}),
        });
        const body = res.headers.get('content-type')?.includes('json') ? await res.json() : {};
        // POST /events without a signature is refused for the signature, not for a missing Bearer token.
        expect((body as { code?: string }).code, `${fn} ${route}`).not.toBe('unauthorized');
        if (method === 'GET') expect([200, 503], `${fn} ${route}`).toContain(res.status);
      }
    }
  });

  it('each authenticated route: 401 without a token, 403 naming the missing scope, through with it', async () => {
    let checked = 0;
    for (const fn of FUNCTION_NAMES) {
      for (const [route, required] of Object.entries(REQUIRED_SCOPE[fn])) {
        const [method, template] = route.split(' ') as [string, string];
        const call = (headers: Record<string, string> = {}) =>
          apps[fn].app.request(fill(template), { method, headers });
        const label = `${fn} ${route}`;

        const anonymous = await call();
        expect(anonymous.status, label).toBe(401);
        expect(await anonymous.json(), label).toMatchObject({
          code: 'unauthorized',
          error: expect.stringMatching(/missing Authorization: Bearer <token>/),
        });

        const denied = [
          ...NARROW_SCOPES.filter((s) => s !== required).map((s) => ONLY[s]!),
          ...(required === 'admin' ? [] : [ALL_BUT[required]!]),
        ];
        for (const token of denied) {
          const res = await call(token.header);
          expect(res.status, `${label} with ${token.id}`).toBe(403);
          const body = (await res.json()) as Record<string, unknown>;
          expect(body, `${label} with ${token.id}`).toMatchObject({
            code: 'forbidden',
            missingScope: required,
          });
          expect(body.error).toBe(`token "${token.id}" lacks the "${required}" scope this route needs`);
        }

        for (const token of [ONLY[required as Exclude<Scope, 'admin'>]!, ADMIN]) {
          const res = await call(token.header);
          expect([401, 403], `${label} with ${token.id} (${res.status})`).not.toContain(res.status);
        }
        checked += 1;
      }
    }
    expect(checked).toBe(FUNCTION_NAMES.reduce((n, fn) => n + Object.keys(REQUIRED_SCOPE[fn]).length, 0));
    // Every 401 and 403 above is a refusal that did no work: nothing was emitted anywhere.
    for (const fn of FUNCTION_NAMES) expect(await runtimes[fn].outbox.recent(), fn).toEqual([]);
  });
});

describe('several tokens, rotation and the access log (in process)', () => {
  const OLD = makeToken('ci-2024', ['backups:read']);
  const NEW = makeToken('ci-2025', ['backups:read']);
  const PROBE = makeToken('prober', ['probe']);
  const envs: TestEnv[] = [];
  afterAll(async () => {
    for (const e of envs) await e.cleanup();
  });

  async function dumpWith(tokens: string[]) {
    const env = await makeTestEnv({ FLUX_API_TOKENS: tokens.join(',') });
    envs.push(env);
    const rt = testRuntime('dump', env);
    return { rt, fn: createDump(rt) };
  }

  it('old and new are both valid during the overlap; once the old entry is removed it gets 401 naming rotation', async () => {
    const overlap = await dumpWith([OLD.entry, NEW.entry, PROBE.entry]);
    for (const token of [OLD, NEW]) {
      const requestId = `overlap-${token.id}`;
      const res = await overlap.fn.app.request('/api/ops/v1/status', {
        headers: { ...token.header, 'x-request-id': requestId },
      });
      expect(res.status).toBe(200);
      // The access log says which of the two was used, so the operator sees when the old one goes quiet.
      expect(accessLines(overlap.rt, requestId).map((l) => l.tokenId)).toEqual([token.id]);
    }

    const rotated = await dumpWith([NEW.entry, PROBE.entry]);
    const old = await rotated.fn.app.request('/api/ops/v1/status', { headers: OLD.header });
    expect(old.status).toBe(401);
    expect(await old.json()).toMatchObject({
      code: 'unauthorized',
      error: expect.stringMatching(/not valid \(unknown, or removed by rotation\)/),
    });
    expect((await rotated.fn.app.request('/api/ops/v1/status', { headers: NEW.header })).status).toBe(200);
  });

  it('exactly one access line per authenticated request: token id, route, status, duration; never the token', async () => {
    const { rt, fn } = await dumpWith([ADMIN.entry, NEW.entry, PROBE.entry]);
    const cases = [
      { id: 'ok', token: NEW, method: 'GET', path: '/api/ops/v1/status', status: 200 },
      {
        id: 'missing-project',
        token: NEW,
        method: 'GET',
        path: `/api/cli/v1/projects/${NO_HASH}/backups`,
        status: 404,
      },
      {
        id: 'bad-id',
        token: ADMIN,
        method: 'GET',
        path: '/api/cli/v1/projects/..%2F..%2Fetc/backups',
        status: 400,
      },
      {
        id: 'wrong-scope',
        token: PROBE,
        method: 'POST',
        path: `/api/cli/v1/projects/${NO_HASH}/backups`,
        status: 403,
      },
      { id: 'kit-route', token: ADMIN, method: 'GET', path: '/events/dead', status: 200 },
    ];
    for (const c of cases) {
      const res = await fn.app.request(c.path, {
        method: c.method,
        headers: { ...c.token.header, 'x-request-id': `access-${c.id}` },
      });
      expect(res.status, c.id).toBe(c.status);
    }
    const anonymous = await fn.app.request('/api/ops/v1/status', {
      headers: { authorization: `Bearer ${NEW.token}x`, 'x-request-id': 'access-anonymous' },
    });
    expect(anonymous.status).toBe(401);

    for (const c of cases) {
      const lines = accessLines(rt, `access-${c.id}`);
      expect(lines, c.id).toHaveLength(1);
      const line = lines[0]!;
      expect(line, c.id).toMatchObject({ tokenId: c.token.id, method: c.method, status: c.status });
      expect(typeof line.route).toBe('string');
      expect(line.route, c.id).not.toBe('unmatched');
      expect(typeof line.ms).toBe('number');
      expect(line.ms as number).toBeGreaterThanOrEqual(0);
    }
    expect(accessLines(rt, 'access-ok')[0]!.route).toBe('/api/ops/v1/status');
    expect(accessLines(rt, 'access-missing-project')[0]!.route).toBe('/api/cli/v1/projects/:hash/backups');
    // A refusal is logged too: no token id ("none") and why, never what was offered.
    expect(accessLines(rt, 'access-anonymous')).toEqual([
      expect.objectContaining({ tokenId: 'none', status: 401, reason: 'unknown_token' }),
    ]);
    expect(accessLines(rt, 'access-wrong-scope')[0]).toMatchObject({
      reason: 'scope_missing',
      missingScope: 'backups:write',
    });
    expect(accessLines(rt, 'access-ok')[0]).not.toHaveProperty('reason');
    const text = rt.logs.text();
    for (const t of [ADMIN, NEW, PROBE]) expect(text).not.toContain(t.token);
    expect(text).not.toContain(`${NEW.token}x`);
  });
});

describe('401 and 403 answers in the access log (in process)', () => {
  const READER = makeToken('reader', ['backups:read']);
  let env: TestEnv;
  afterAll(async () => {
    await env?.cleanup();
  });

  it('token id or "none" and the reason of each refusal; never the token text', async () => {
    env = await makeTestEnv({ FLUX_API_TOKENS: [ADMIN.entry, READER.entry].join(',') });
    const rt = testRuntime('dump', env);
    const fn = createDump(rt);
    const offered = makeToken('offered', ['admin']);
    const cases: Array<{
      id: string;
      headers: Record<string, string>;
      method?: string;
      status: number;
      tokenId: string;
      reason: string;
      missingScope?: string;
    }> = [
      { id: 'missing', headers: {}, status: 401, tokenId: 'none', reason: 'missing' },
      {
        id: 'malformed',
        headers: { authorization: `Token ${offered.token}` },
        status: 401,
        tokenId: 'none',
        reason: 'malformed',
      },
      { id: 'unknown', headers: offered.header, status: 401, tokenId: 'none', reason: 'unknown_token' },
      {
        id: 'scope',
        headers: READER.header,
        method: 'POST',
        status: 403,
        tokenId: 'reader',
        reason: 'scope_missing',
        missingScope: 'backups:write',
      },
    ];
    for (const c of cases) {
      const res = await fn.app.request(`/api/cli/v1/projects/${NO_HASH}/backups`, {
        method: c.method ?? 'GET',
        headers: { ...c.headers, 'x-request-id': `denied-${c.id}` },
      });
      expect(res.status, c.id).toBe(c.status);
      const lines = accessLines(rt, `denied-${c.id}`);
      expect(lines, c.id).toHaveLength(1);
      expect(lines[0], c.id).toMatchObject({
        tokenId: c.tokenId,
        reason: c.reason,
        status: c.status,
        route: '/api/cli/v1/projects/:hash/backups',
        ...(c.missingScope ? { missingScope: c.missingScope } : {}),
      });
    }
    const text = rt.logs.text();
    for (const t of [ADMIN, READER, offered]) {
      expect(text).not.toContain(t.token);
      expect(text).not.toContain(t.entry.split(':')[1]);
    }
    await fn.stop();
  });
});

describe('tokens through the real all-in-one process', () => {
  const OLD = makeToken('ci-2024', ['backups:read']);
  const NEW = makeToken('ci-2025', ['backups:read']);
  const PROBE = makeToken('prober', ['probe']);
  const BOGUS = makeToken('never-configured', ['admin']);
  let env: TestEnv;
  let child: ChildFunction | undefined;

  beforeAll(async () => {
    env = await makeTestEnv({
      FLUX_VERIFY_DRIVER: 'local',
      FLUX_PROBE_INTERVAL_MS: '0',
      FLUX_LOG_LEVEL: 'info',
    });
    await writeFile(env.config.FLUX_PROJECTS_FILE, JSON.stringify({ clusters: [], projects: [] }));
  });
  afterAll(async () => {
    await child?.stop();
    await env?.cleanup();
  });

  const start = (tokens: string[]) => startAllInOneProcess({ ...env.env, FLUX_API_TOKENS: tokens.join(',') });

  it('scopes, rotation and one access line per request over HTTP; no token in its output', async () => {
    child = await start([ADMIN.entry, OLD.entry, NEW.entry, PROBE.entry]);
    const requests = [
      { id: 'old', token: OLD, method: 'GET', path: '/api/ops/v1/status', status: 200 },
      { id: 'new', token: NEW, method: 'GET', path: '/api/ops/v1/status', status: 200 },
      {
        id: 'probe-creates',
        token: PROBE,
        method: 'POST',
        path: `/api/cli/v1/projects/${NO_HASH}/backups`,
        status: 403,
      },
      { id: 'probe-lists', token: PROBE, method: 'GET', path: '/probes', status: 200 },
      { id: 'reader-dead', token: NEW, method: 'GET', path: '/verify/events/dead', status: 403 },
      { id: 'admin-dead', token: ADMIN, method: 'GET', path: '/verify/events/dead', status: 200 },
      { id: 'bogus', token: BOGUS, method: 'GET', path: '/api/ops/v1/status', status: 401 },
    ];
    const bodies: Record<string, Record<string, unknown>> = {};
    for (const r of requests) {
      const res = await fetch(`${child.url}${r.path}`, {
        method: r.method,
        headers: { ...r.token.header, 'x-request-id': `aio-${r.id}` },
      });
      bodies[r.id] = (await res.json()) as Record<string, unknown>;
      expect(res.status, r.id).toBe(r.status);
    }
    expect(bodies['probe-creates']).toMatchObject({ code: 'forbidden', missingScope: 'backups:write' });
    expect(bodies['reader-dead']).toMatchObject({ code: 'forbidden', missingScope: 'events' });
    expect(bodies.bogus).toMatchObject({ code: 'unauthorized' });

    const running = child;
    const authenticated = requests.filter((r) => r.status !== 401);
    await eventually(() => running.lines().some((l) => l.requestId === 'aio-bogus' && l.msg === 'access'));
    await eventually(() =>
      authenticated.every((r) =>
        running.lines().some((l) => l.requestId === `aio-${r.id}` && l.msg === 'access'),
      ),
    );
    for (const r of authenticated) {
      const lines = running.lines().filter((l) => l.msg === 'access' && l.requestId === `aio-${r.id}`);
      expect(lines, r.id).toHaveLength(1);
      expect(lines[0], r.id).toMatchObject({ tokenId: r.token.id, status: r.status, method: r.method });
      expect(typeof lines[0]!.ms, r.id).toBe('number');
      expect(typeof lines[0]!.route, r.id).toBe('string');
    }
    expect(running.lines().filter((l) => l.requestId === 'aio-bogus' && l.msg === 'access')).toEqual([
      expect.objectContaining({ tokenId: 'none', status: 401, reason: 'unknown_token' }),
    ]);
    // The start-up line lists the token ids (rotation is visible), never a token or its hash.
    const startup = running.lines().find((l) => l.msg === 'starting');
    expect((startup?.config as Record<string, unknown> | undefined)?.FLUX_API_TOKENS).toEqual([
      'test-admin:[redacted]:admin',
      'ci-2024:[redacted]:backups:read',
      'ci-2025:[redacted]:backups:read',
      'prober:[redacted]:probe',
    ]);
    await running.stop();
    const output = running.stdout() + running.stderr();
    for (const t of [ADMIN, OLD, NEW, PROBE, BOGUS]) {
      expect(output).not.toContain(t.token);
      expect(output).not.toContain(t.entry.split(':')[1]);
    }

    // Rotation finished: the old entry is removed and the process restarted with the new list.
    child = await start([ADMIN.entry, NEW.entry, PROBE.entry]);
    const old = await fetch(`${child.url}/api/ops/v1/status`, { headers: OLD.header });
    expect(old.status).toBe(401);
    expect(((await old.json()) as { error: string }).error).toMatch(/removed by rotation/);
    expect((await fetch(`${child.url}/api/ops/v1/status`, { headers: NEW.header })).status).toBe(200);
  });
});

describe('webhook secret rotation', () => {
  const OLD = makeWebhookSecret();
  const NEW = makeWebhookSecret();
  const projectId = randomUUID();
  const project: Project = {
    id: projectId,
    hash: projectId.replaceAll('-', '').slice(0, 7),
    slug: 'rotating',
    engine: 'v1_dedicated',
    databaseUrl: 'env:UNUSED_URL',
  };
  let env: TestEnv;
  const closers: Array<() => Promise<void>> = [];

  beforeAll(async () => {
    env = await makeTestEnv({ FLUX_OUTBOX_RETRY_SCHEDULE_MS: '0,50' });
  });
  afterAll(async () => {
    for (const close of closers.reverse()) await close();
    await env?.cleanup();
  });

  /** replicate as the receiving function, served over HTTP, knowing `secrets`. */
  async function receiver(name: string, secrets: string[]) {
    const renv = await makeTestEnv({ FLUX_BACKUPS_LOCAL_DIR: env.config.FLUX_BACKUPS_LOCAL_DIR });
    const rt = testRuntime('replicate', renv, { projects: [project], webhookSecrets: secrets });
    const fn = createReplicate(rt);
    await rt.inbox.start();
    const served = await serveOnLoopback(fn.app.fetch);
    closers.push(async () => {
      await served.close();
      await fn.stop();
      await renv.cleanup();
    });
    return { name, rt, url: served.url, fn };
  }

  /** A sending function (dump's outbox) signing with `secrets`, delivering to `sinks`. */
  async function send(secrets: string[], sinks: string[]) {
    const rt = testRuntime('dump', env, {
      webhookSecrets: secrets,
      extraSinks: () => sinks.map((url) => ({ url, types: ['*'] })),
    });
    await rt.outbox.start();
    const event = await rt.emit('flux.backup.created', {
      subject: `${projectId}/${NO_BACKUP}`,
      data: backupCreatedData(projectId, NO_BACKUP),
    });
    expect(await rt.outbox.idle(20_000)).toBe(true);
    await rt.outbox.stop();
    // The senders share one outbox directory: each send looks only at its own event.
    const deadLetters = async () => (await rt.outbox.deadLetters()).filter((d) => d.event.id === event.id);
    return { rt, event, deadLetters };
  }

  const verifications = async (url: string) => {
    const text = await (await fetch(`${url}/metrics`)).text();
    const value = (result: string, secret: string) =>
      Number(
        new RegExp(
          `flux_webhook_verifications_total\\{fn="[a-z]+",result="${result}",secret="${secret}"\\} (\\d+)`,
        ).exec(text)?.[1] ?? 0,
      );
    return {
      primary: value('ok', 'primary'),
      nonPrimary: value('ok', 'non_primary'),
      mismatch: value('mismatch', 'none'),
    };
  };

  it('overlap: every secret signs and any verifies; the non-primary metric says when retiring is safe; after removal old-only signatures are refused', async () => {
    const oldOnlySink: EventReceiver = await startEventReceiver([OLD]);
    const newOnlySink: EventReceiver = await startEventReceiver([NEW]);
    closers.push(oldOnlySink.close, newOnlySink.close);
    // Step 1: receivers learn the new secret first (new primary, old still accepted).
    const overlap = await receiver('overlap', [NEW, OLD]);

    // A sender not yet rotated signs with the old secret only: accepted, counted as non-primary.
    const stale = await send([OLD], [`${overlap.url}/events`]);
    expect(await stale.deadLetters()).toEqual([]);
    expect(await verifications(overlap.url)).toEqual({ primary: 0, nonPrimary: 1, mismatch: 0 });

    // Step 2: the sender rotates and signs with both (space-separated): every receiver accepts it.
    const both = await send([NEW, OLD], [`${overlap.url}/events`, oldOnlySink.url, newOnlySink.url]);
    expect(await both.deadLetters()).toEqual([]);
    for (const sink of [oldOnlySink, newOnlySink]) {
      const delivery = sink.deliveries.find((d) => d.event.id === both.event.id);
      expect(delivery?.verified).toBe(true);
      expect(delivery?.headers['webhook-signature']).toMatch(/^v1,\S+ v1,\S+$/);
    }
    // Matched the primary secret: the non-primary count stands still, which is the signal to retire.
    expect(await verifications(overlap.url)).toEqual({ primary: 1, nonPrimary: 1, mismatch: 0 });

    // Step 3: the old secret is removed from the receiver.
    const retired = await receiver('retired', [NEW]);
    const late = await send([OLD], [`${retired.url}/events`]);
    const [dead] = await late.deadLetters();
    expect(dead).toMatchObject({ lastStatus: 401, event: { id: late.event.id } });
    expect(dead?.lastError).toMatch(/no webhook-signature matches a configured secret/);
    const direct = await fetch(`${retired.url}/events`, signedEvent(late.event, [OLD]));
    expect(direct.status).toBe(401);
    expect(await direct.json()).toMatchObject({ code: 'signature_invalid', reason: 'mismatch' });
    const fresh = await send([NEW, OLD], [`${retired.url}/events`]);
    expect(await fresh.deadLetters()).toEqual([]);
    expect(await verifications(retired.url)).toEqual({ primary: 1, nonPrimary: 0, mismatch: 2 });
  });
});

describe('limits', () => {
  const envs: TestEnv[] = [];
  afterAll(async () => {
    for (const e of envs) await e.cleanup();
  });

  it('per-token rate limit: 429 with Retry-After and RateLimit-* headers; other tokens are not affected', async () => {
    const A = makeToken('busy-client', ['backups:read']);
    const B = makeToken('quiet-client', ['backups:read']);
    const env = await makeTestEnv({
      FLUX_API_TOKENS: [A.entry, B.entry].join(','),
      FLUX_RATE_LIMIT_PER_MINUTE: '3',
    });
    envs.push(env);
    const rt = testRuntime('dump', env);
    const { app } = createDump(rt);
    const get = (token: typeof A, requestId?: string) =>
      app.request('/api/ops/v1/status', {
        headers: { ...token.header, ...(requestId ? { 'x-request-id': requestId } : {}) },
      });
    for (const remaining of [2, 1, 0]) {
      const res = await get(A);
      expect(res.status).toBe(200);
      expect(res.headers.get('ratelimit-limit')).toBe('3');
      expect(res.headers.get('ratelimit-remaining')).toBe(String(remaining));
      expect(Number(res.headers.get('ratelimit-reset'))).toBeGreaterThan(0);
    }
    const limited = await get(A, 'rate-limited');
    expect(limited.status).toBe(429);
    const retryAfter = Number(limited.headers.get('retry-after'));
    // 3 per minute refill one every 20 s.
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(20);
    expect(limited.headers.get('ratelimit-remaining')).toBe('0');
    expect(limited.headers.get('ratelimit-limit')).toBe('3');
    expect(limited.headers.get('ratelimit-reset')).toBe(String(retryAfter));
    expect(await limited.json()).toMatchObject({
      code: 'rate_limited',
      error: 'token "busy-client" exceeded FLUX_RATE_LIMIT_PER_MINUTE (3/min)',
    });
    expect(accessLines(rt, 'rate-limited')).toMatchObject([{ tokenId: 'busy-client', status: 429 }]);
    expect((await get(B)).status).toBe(200);
  });

  it('probes: at most FLUX_PROBE_CONCURRENCY in flight; concurrent asks join, so the queue never outgrows the tenants', async () => {
    // A probe is never queued twice for one tenant (asks join the one in flight), so the wait list is
    // bounded by the registry and needs no 503: this proves both halves of that claim.
    const held: http.ServerResponse[] = [];
    let active = 0;
    let maxActive = 0;
    const gateway: Gateway = await startHttpGateway({
      routes: {
        '*': (_req, res) => {
          active += 1;
          maxActive = Math.max(maxActive, active);
          res.on('finish', () => {
            active -= 1;
          });
          held.push(res);
        },
      },
    });
    const tenants: Project[] = Array.from({ length: 5 }, (_, i) => {
      const id = randomUUID();
      return {
        id,
        hash: id.replaceAll('-', '').slice(0, 7),
        slug: `tenant-${i}`,
        engine: 'v2_shared',
        cluster: 'shared-1',
        apiHost: `api--tenant-${i}--${id.slice(0, 7)}.flux.test`,
      };
    });
    const env = await makeTestEnv({
      FLUX_TENANT_PROBE_GATEWAY_URL: gateway.url,
      FLUX_PROBE_CONCURRENCY: '2',
      FLUX_PROBE_INTERVAL_MS: '0',
      FLUX_PROBE_TIMEOUT_MS: '60000',
    });
    envs.push(env);
    const rt = testRuntime('probe', env, {
      projects: tenants,
      clusters: [{ name: 'shared-1', url: 'env:UNUSED', maxConcurrentDumps: 1 }],
    });
    const fn = createProbe(rt);
    await fn.start();
    try {
      const run = (body?: Record<string, string>) =>
        fn.app.request('/probes/run', {
          method: 'POST',
          headers: { ...ADMIN.header, 'content-type': 'application/json' },
          body: JSON.stringify(body ?? {}),
        });
      const runs = [run(), run(), run(), run({ slug: 'tenant-3' })];
      let released = 0;
      while (released < tenants.length) {
        const want = Math.min(2, tenants.length - released);
        await eventually(() => held.length - released >= want, 30_000, 10);
        held[released]!.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        released += 1;
      }
      const answers = await Promise.all(runs);
      const results = await Promise.all(
        answers.map(async (a) => ((await a.json()) as { results: unknown[] }).results),
      );
      expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200]);
      expect(results.map((r) => r.length)).toEqual([5, 5, 5, 1]);
      expect(maxActive).toBe(2);
      // Four asks, five tenants: one request per tenant reached the gateway.
      expect(gateway.received).toHaveLength(5);
      expect(new Set(gateway.received.map((r) => r.host)).size).toBe(5);
    } finally {
      for (const res of held) if (!res.writableEnded) res.end();
      await fn.stop();
      await gateway.close();
    }
  });

  it('body limits: every POST route of every function answers 413 beyond FLUX_BODY_LIMIT_BYTES, with or without Content-Length', async () => {
    const LIMIT = 2048;
    const env = await makeTestEnv({
      FLUX_BODY_LIMIT_BYTES: String(LIMIT),
      FLUX_VERIFY_DRIVER: 'local',
      FLUX_PROBE_INTERVAL_MS: '0',
      FLUX_RATE_LIMIT_PER_MINUTE: '100000',
    });
    envs.push(env);
    const { apps } = appsFor(env);
    const served: Array<{ close(): Promise<void> }> = [];
    try {
      let posts = 0;
      for (const fn of FUNCTION_NAMES) {
        const server = await serveOnLoopback(apps[fn].app.fetch);
        served.push(server);
        for (const route of routesOf(apps[fn].app).filter((r) => r.method === 'POST')) {
          const target = fill(route.path);
          const label = `${fn} POST ${route.path}`;
          const headers = {
            ...ADMIN.header,
            'content-type': route.path === '/events' ? 'application/cloudevents+json' : 'application/json',
          };
          const padded = (size: number) => {
            const shell = '{"pad":""}';
            return `{"pad":"${'x'.repeat(size - shell.length)}"}`;
          };
          for (const chunked of [false, true]) {
            const res = await rawRequest(server.url, {
              method: 'POST',
              target,
              headers,
              body: padded(LIMIT + 1),
              chunked,
            });
            expect(res.status, `${label} chunked=${chunked}`).toBe(413);
            expect(res.json, label).toMatchObject({
              code: 'payload_too_large',
              error: `the body exceeds FLUX_BODY_LIMIT_BYTES (${LIMIT} bytes)`,
            });
          }
          // At the limit the body passes (the route then answers whatever it answers to it).
          const atLimit = await rawRequest(server.url, {
            method: 'POST',
            target,
            headers,
            body: padded(LIMIT),
            chunked: true,
          });
          expect(atLimit.status, `${label} at the limit`).not.toBe(413);
          posts += 1;
        }
      }
      // Three POST routes each (/events, /events/replay, its own); dump also rebuilds the catalog and
      // runs a cluster's preflight, replicate also runs an upkeep sweep, and restore also drops a previous copy.
      expect(posts).toBe(FUNCTION_NAMES.length * 3 + 4);
    } finally {
      for (const s of served) await s.close();
      for (const fn of FUNCTION_NAMES) await apps[fn].stop();
    }
  });
});
