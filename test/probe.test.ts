// The probe function in process against a real TLS gateway made at test time: a CA generated here, certs
// per SNI (trusted, expired, from an untrusted CA), routes by Host, and the SNI of every handshake recorded.
import { createHmac, randomUUID } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import type http from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../functions/probe/app.js';
import type { TenantProbe } from '../functions/probe/monitor.js';
import { FAILURE_REASONS } from '../functions/probe/rules.js';
import { createEvent } from '../shared/events/envelope.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Cluster, Project } from '../shared/registry.js';
import { freePort } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  makeToken,
  signedEvent,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';
import {
  createCa,
  destroyCa,
  type Gateway,
  type IssuedCert,
  issueCert,
  startTlsGateway,
  type TestCa,
} from './support/tls.js';

const CLUSTERS: Cluster[] = [{ name: 'shared-1', url: 'env:FLUX_TEST_UNUSED_URL', maxConcurrentDumps: 2 }];
const JWT_SECRET = 'tenant-jwt-secret-0123456789abcdef0123456789';

function tenant(slug: string, hash: string, apiHost: string, extra: Partial<Project> = {}): Project {
  const engine = extra.engine ?? 'v1_dedicated';
  return {
    id: randomUUID(),
    hash,
    slug,
    engine,
    ...(engine === 'v2_shared'
      ? { cluster: 'shared-1' }
      : { databaseUrl: `postgres://unused@127.0.0.1:1/${slug}` }),
    apiHost,
    ...extra,
  };
}

const HEALTHY = tenant('healthy', 'aaaaaaa', 'api--healthy--aaaaaaa.flux.test');
const GHOST = tenant('ghost', 'fffffff', 'api--ghost--fffffff.flux.test');
const ROGUE = tenant('rogue', '1111111', 'api--rogue--1111111.rogue.test');
const EXPIRED = tenant('expired', '2222222', 'api--expired--2222222.expired.test');
const SLOW = tenant('slow', 'ccccccc', 'api--slow--ccccccc.flux.test');
const BROKEN = tenant('broken', 'ddddddd', 'api--broken--ddddddd.flux.test');
const MISNAMED = tenant('misnamed', '3333333', 'api--misnamed--3333333.other.test');
const V2 = tenant('v2open', 'bbbbbbb', 'api--v2open--bbbbbbb.flux.test', {
  engine: 'v2_shared',
  jwtSecret: 'env:PROBE_TEST_JWT',
});
const V2_WRONG = tenant('v2wrong', '4444444', 'api--v2wrong--4444444.flux.test', {
  engine: 'v2_shared',
  jwtSecret: 'another-secret-that-the-tenant-does-not-use',
});
const FLAKY = tenant('flaky', 'eeeeeee', 'api--flaky--eeeeeee.flux.test');
const ALL = [HEALTHY, GHOST, ROGUE, EXPIRED, SLOW, BROKEN, MISNAMED, V2];

/** Verifies an HS256 bearer JWT the way a tenant API would (signature, role, expiry). */
function hasValidJwt(req: http.IncomingMessage, secret: string): boolean {
  const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
  const [header, payload, signature] = (m?.[1] ?? '').split('.');
  if (!header || !payload || !signature) return false;
  const expected = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  if (signature !== expected) return false;
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  return claims.role === 'authenticated' && claims.exp > Date.now() / 1000;
}

interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** Samples of one metric from Prometheus text exposition. */
function samples(text: string, name: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ labels, value: Number(m[3]) });
  }
  return out;
}

function sampleOf(text: string, name: string, labels: Record<string, string>): number | undefined {
  return samples(text, name).find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

let ca: TestCa;
let rogueCa: TestCa;
let good: IssuedCert;
let gw: Gateway;
let flakyStatus = 200;
const cleanups: Array<() => Promise<unknown>> = [];

interface ProbeApp {
  fn: FunctionApp;
  rt: TestRuntime;
  env: TestEnv;
  run(query?: string, body?: unknown): Promise<{ status: number; json: { results: TenantProbe[] } }>;
}

async function probeApp(extra: Record<string, string | undefined>, projects: Project[]): Promise<ProbeApp> {
  const env = await makeTestEnv({
    FLUX_TENANT_PROBE_GATEWAY_URL: gw.url,
    FLUX_PROBE_CA_FILE: ca.certPath,
    FLUX_PROBE_TIMEOUT_MS: '500',
    FLUX_PROBE_INTERVAL_MS: '0',
    FLUX_PROBE_CONCURRENCY: '4',
    NODE_EXTRA_CA_CERTS: undefined,
    PROBE_TEST_JWT: JWT_SECRET,
    ...extra,
  });
  const rt = testRuntime('probe', env, { projects, clusters: CLUSTERS });
  const fn = createApp(rt);
  await fn.start();
  cleanups.push(async () => {
    await fn.stop();
    await env.cleanup();
  });
  return {
    fn,
    rt,
    env,
    async run(query = '', body?: unknown) {
      const res = await fn.app.request(`/probes/run${query}`, {
        method: 'POST',
        headers: { ...ADMIN.header, ...(body ? { 'content-type': 'application/json' } : {}) },
        ...(body ? { body: JSON.stringify(body) } : {}),
      });
      return { status: res.status, json: (await res.json()) as { results: TenantProbe[] } };
    },
  };
}

beforeAll(async () => {
  [ca, rogueCa] = await Promise.all([createCa('Flux Probe Test CA'), createCa('Untrusted CA')]);
  const [expired, rogue] = await Promise.all([
    issueCert(ca, { hosts: ['*.expired.test'], expired: true }),
    issueCert(rogueCa, { hosts: ['*.rogue.test'] }),
  ]);
  good = await issueCert(ca, { hosts: ['*.flux.test'] });
  const ok: (req: http.IncomingMessage, res: http.ServerResponse) => void = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
  };
  gw = await startTlsGateway({
    // Unknown SNI (e.g. *.other.test) gets the *.flux.test certificate, which does not name it.
    cert: { '*.flux.test': good, '*.expired.test': expired, '*.rogue.test': rogue },
    routes: {
      [HEALTHY.apiHost!]: ok,
      [ROGUE.apiHost!]: ok,
      [EXPIRED.apiHost!]: ok,
      [MISNAMED.apiHost!]: ok,
      [SLOW.apiHost!]: (_req, res) => {
        setTimeout(() => res.end('late'), 10_000).unref();
      },
      [BROKEN.apiHost!]: (_req, res) => {
        res.writeHead(200, { 'content-length': '1000' });
        res.write('partial');
        setTimeout(() => res.socket?.destroy(), 20);
      },
      [V2.apiHost!]: (req, res) => {
        res.writeHead(hasValidJwt(req, JWT_SECRET) ? 200 : 401).end();
      },
      [V2_WRONG.apiHost!]: (req, res) => {
        res.writeHead(hasValidJwt(req, JWT_SECRET) ? 200 : 401).end();
      },
      [FLAKY.apiHost!]: (_req, res) => {
        res.writeHead(flakyStatus).end();
      },
    },
  });
});

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  await gw?.close();
  await Promise.all([ca && destroyCa(ca), rogueCa && destroyCa(rogueCa)]);
});

describe('probe through a TLS gateway', () => {
  let p: ProbeApp;
  let results: Map<string, TenantProbe>;

  beforeAll(async () => {
    p = await probeApp({}, ALL);
    const { status, json } = await p.run();
    expect(status).toBe(200);
    results = new Map(json.results.map((r) => [r.slug, r]));
  });

  it('probes a healthy tenant with Host and SNI set to its apiHost, trusting the CA from FLUX_PROBE_CA_FILE', () => {
    const r = results.get('healthy')!;
    expect(r).toMatchObject({
      success: true,
      status: 200,
      reason: null,
      sni: HEALTHY.apiHost,
      mode: 'shallow',
    });
    expect(r.certExpiresAt).toBe(good.notAfter.toISOString());
    expect(r.phases.tls).toBeGreaterThan(0);
    expect(r.phases.processing).toBeGreaterThan(0);
    const seen = gw.received.filter((q) => q.host === HEALTHY.apiHost);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ sni: HEALTHY.apiHost, host: HEALTHY.apiHost, method: 'GET', path: '/' });
  });

  it('sends the tenant host as SNI for every tenant, never the gateway address', () => {
    for (const project of ALL) expect(gw.snis).toContain(project.apiHost);
    expect(gw.snis).not.toContain('127.0.0.1');
  });

  it('reports an unknown tenant (gateway 404) as reason status', () => {
    expect(results.get('ghost')).toMatchObject({ success: false, reason: 'status', status: 404 });
    expect(results.get('ghost')!.hint).toMatch(/unknown to the gateway/);
  });

  it('reports a certificate from an untrusted CA as tls_verify with a hint naming NODE_EXTRA_CA_CERTS', () => {
    const r = results.get('rogue')!;
    expect(r).toMatchObject({ success: false, reason: 'tls_verify', status: null });
    expect(r.hint).toContain('NODE_EXTRA_CA_CERTS');
    expect(gw.received.some((q) => q.host === ROGUE.apiHost)).toBe(false);
  });

  it('checks the certificate against the tenant host, not the gateway address', () => {
    const r = results.get('misnamed')!;
    expect(r).toMatchObject({ success: false, reason: 'tls_verify' });
    expect(r.error?.code).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
    expect(gw.received.some((q) => q.host === MISNAMED.apiHost)).toBe(false);
  });

  it('reports an expired certificate as tls_expired', () => {
    const r = results.get('expired')!;
    expect(r).toMatchObject({ success: false, reason: 'tls_expired' });
    expect(r.hint).toContain('NODE_EXTRA_CA_CERTS');
  });

  it('reports a slow upstream as timeout, stuck in processing', () => {
    const r = results.get('slow')!;
    expect(r).toMatchObject({ success: false, reason: 'timeout', status: null, failedPhase: 'processing' });
    expect(r.hint).toMatch(/FLUX_PROBE_TIMEOUT_MS \(500 ms\), stuck in processing/);
  });

  it('reports a response that breaks off mid-body as reason body', () => {
    expect(results.get('broken')).toMatchObject({ success: false, reason: 'body', status: 200 });
  });

  it('counts 401 healthy for a v2 tenant in shallow mode', () => {
    expect(results.get('v2open')).toMatchObject({ success: true, status: 401, mode: 'shallow' });
  });

  it('exposes blackbox_exporter metrics with sensible values', async () => {
    const text = await (await p.fn.app.request('/metrics')).text();
    const h = { tenant: 'healthy', host: HEALTHY.apiHost! };
    expect(sampleOf(text, 'probe_success', h)).toBe(1);
    expect(sampleOf(text, 'probe_http_status_code', h)).toBe(200);
    expect(sampleOf(text, 'probe_ssl_earliest_cert_expiry', h)).toBe(good.notAfter.getTime() / 1000);
    const total = sampleOf(text, 'probe_duration_seconds', h)!;
    expect(total).toBeGreaterThan(0);
    const phases = ['resolve', 'connect', 'tls', 'processing', 'transfer'].map(
      (phase) => sampleOf(text, 'probe_http_duration_seconds', { ...h, phase })!,
    );
    expect(phases.every((s) => s >= 0)).toBe(true);
    expect(phases[0]).toBe(0); // the gateway is an IP literal: nothing to resolve
    expect(phases[2]).toBeGreaterThan(0);
    expect(phases.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(total + 1e-9);

    expect(sampleOf(text, 'probe_success', { tenant: 'rogue' })).toBe(0);
    expect(sampleOf(text, 'probe_http_status_code', { tenant: 'rogue' })).toBe(0);
    expect(sampleOf(text, 'probe_ssl_earliest_cert_expiry', { tenant: 'rogue' })).toBeUndefined();
    expect(sampleOf(text, 'probe_http_status_code', { tenant: 'ghost' })).toBe(404);
    const failures = samples(text, 'flux_probe_failures_total');
    expect(new Set(failures.map((s) => s.labels.reason))).toEqual(
      new Set(['status', 'tls_verify', 'tls_expired', 'timeout', 'body']),
    );
    for (const s of failures) expect(FAILURE_REASONS).toContain(s.labels.reason);
    expect(sampleOf(text, 'flux_probe_failures_total', { tenant: 'rogue', reason: 'tls_verify' })).toBe(1);
    expect(sampleOf(text, 'flux_probe_failures_total', { tenant: 'healthy' })).toBeUndefined();
  });

  it('runs one tenant by ?project= or body slug, and serves the latest results on GET /probes', async () => {
    const byQuery = await p.run('?project=healthy');
    expect(byQuery.json.results.map((r) => r.slug)).toEqual(['healthy']);
    const byBody = await p.run('', { slug: 'ghost' });
    expect(byBody.json.results).toMatchObject([{ slug: 'ghost', reason: 'status', consecutiveFailures: 2 }]);
    expect((await p.run('?project=nope')).status).toBe(404);

    const res = await p.fn.app.request('/probes', { headers: ADMIN.header });
    const latest = (await res.json()) as { results: TenantProbe[]; notYetProbed: string[] };
    expect(latest.notYetProbed).toEqual([]);
    expect(latest.results.map((r) => r.slug)).toEqual(ALL.map((t) => t.slug));
    expect(latest.results.find((r) => r.slug === 'healthy')).toMatchObject({ state: 'up', success: true });
  });

  it('needs a token with the probe scope', async () => {
    // (not backups:read: see the report, FLUX_API_TOKENS cannot carry a scope with ':' today)
    const reader = makeToken('reader', ['verify']);
    const prober = makeToken('prober', ['probe']);
    const env = await makeTestEnv({
      FLUX_API_TOKENS: `${reader.entry},${prober.entry}`,
      FLUX_TENANT_PROBE_GATEWAY_URL: gw.url,
      FLUX_PROBE_CA_FILE: ca.certPath,
    });
    cleanups.push(env.cleanup);
    const { app } = createApp(testRuntime('probe', env, { projects: [HEALTHY] }));
    expect((await app.request('/probes')).status).toBe(401);
    expect((await app.request('/probes', { headers: reader.header })).status).toBe(403);
    expect((await app.request('/probes/run', { method: 'POST', headers: reader.header })).status).toBe(403);
    const ok = await app.request('/probes/run', { method: 'POST', headers: prober.header });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { results: TenantProbe[] }).results[0]?.success).toBe(true);
  });
});

describe('probe failures before TLS', () => {
  it('reports a refused port as connect', async () => {
    const p = await probeApp({ FLUX_TENANT_PROBE_GATEWAY_URL: `https://127.0.0.1:${await freePort()}` }, [
      HEALTHY,
    ]);
    const { json } = await p.run();
    expect(json.results[0]).toMatchObject({ success: false, reason: 'connect', status: null });
    expect(json.results[0]).toMatchObject({ error: { code: 'ECONNREFUSED' }, failedPhase: 'connect' });
  });

  it('reports a gateway host that does not resolve as dns', async () => {
    const p = await probeApp({ FLUX_TENANT_PROBE_GATEWAY_URL: 'https://nonexistent.invalid:8443' }, [
      HEALTHY,
    ]);
    const { json } = await p.run();
    expect(json.results[0]).toMatchObject({ success: false, reason: 'dns', status: null });
    expect(json.results[0]!.hint).toContain('FLUX_TENANT_PROBE_GATEWAY_URL');
    expect(json.results[0]).toMatchObject({ failedPhase: 'resolve', phases: { connect: 0 } });
  });

  it('refuses to probe without a gateway unless the public fallback is on', async () => {
    const p = await probeApp({ FLUX_TENANT_PROBE_GATEWAY_URL: undefined }, [HEALTHY]);
    const res = await p.run();
    expect(res.status).toBe(503);
    expect(JSON.stringify(res.json)).toContain('FLUX_PROBE_FALLBACK_PUBLIC');
    const ready = await p.fn.app.request('/readyz');
    expect(ready.status).toBe(503);
    const body = (await ready.json()) as { checks: Array<Record<string, unknown>> };
    expect(body.checks.find((c) => c.name === 'target')).toMatchObject({ ok: false, tenants: 1 });
    expect(body.checks.find((c) => c.name === 'target')?.optional).toBeUndefined();
  });

  it('without a gateway and with no tenant to probe: ready, with a warning saying what to set first', async () => {
    // A project without an apiHost is nothing probe can reach: probing is simply not in use.
    const p = await probeApp({ FLUX_TENANT_PROBE_GATEWAY_URL: undefined }, [
      { ...HEALTHY, apiHost: undefined },
    ]);
    const ready = await p.fn.app.request('/readyz');
    expect(ready.status).toBe(200);
    const body = (await ready.json()) as { ok: boolean; checks: Array<Record<string, unknown>> };
    expect(body.ok).toBe(true);
    expect(body.checks.find((c) => c.name === 'target')).toMatchObject({
      ok: false,
      optional: true,
      warning: 'probe_target_missing',
      tenants: 0,
      detail: expect.stringMatching(/no tenant has an apiHost.*set FLUX_TENANT_PROBE_GATEWAY_URL/),
    });
  });
});

describe('webhook trigger', () => {
  it('probes a tenant at once when it reports flux.migrate.completed', async () => {
    const p = await probeApp({}, [HEALTHY, GHOST]);
    const event = createEvent({
      type: 'flux.migrate.completed',
      source: '/flux-ops/migrate',
      subject: HEALTHY.id,
      data: { projectId: HEALTHY.id, slug: HEALTHY.slug, tables: 1, rows: 1, sequences: 0 },
    });
    const res = await p.fn.app.request('/events', signedEvent(event));
    expect(res.status).toBe(202);
    expect(await res.json()).toMatchObject({ probing: 'healthy' });
    const latest = await eventually(async () => {
      const body = (await (await p.fn.app.request('/probes', { headers: ADMIN.header })).json()) as {
        results: TenantProbe[];
        notYetProbed: string[];
      };
      return body.results.length > 0 && body;
    });
    expect(latest.results).toMatchObject([{ slug: 'healthy', success: true }]);
    expect(latest.notYetProbed).toEqual(['ghost']);
  });
});

describe('deep mode', () => {
  it('sends an HS256 JWT minted from the project jwtSecret; a wrong secret is a failure', async () => {
    const p = await probeApp({ FLUX_PROBE_MODE: 'deep' }, [V2, V2_WRONG, HEALTHY]);
    const { json } = await p.run();
    const bySlug = new Map(json.results.map((r) => [r.slug, r]));
    expect(bySlug.get('v2open')).toMatchObject({ success: true, status: 200, mode: 'deep' });
    expect(bySlug.get('v2wrong')).toMatchObject({
      success: false,
      status: 401,
      mode: 'deep',
      reason: 'status',
    });
    expect(bySlug.get('v2wrong')!.hint).toMatch(/jwtSecret/);
    // No secret in the registry: probed shallow, and says so.
    expect(bySlug.get('healthy')).toMatchObject({ success: true, mode: 'shallow' });
    expect(p.rt.logs.text()).not.toContain(JWT_SECRET);
    expect(p.rt.logs.text()).not.toMatch(/Bearer ey/);
  });
});

describe('transition events', () => {
  let receiver: EventReceiver;

  beforeAll(async () => {
    receiver = await startEventReceiver();
    cleanups.push(() => receiver.close());
  });

  it('emits probe_failed and probe_recovered once each, with flap suppression, to a real receiver', async () => {
    const p = await probeApp(
      {
        FLUX_PROBE_FAILURE_THRESHOLD: '2',
        FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.tenant.*'] }]),
      },
      [FLAKY],
    );
    const sequence = [200, 500, 200, 500, 500, 500, 200, 500, 200, 200, 200];
    const states: string[] = [];
    for (const status of sequence) {
      flakyStatus = status;
      const { json } = await p.run('?project=flaky');
      states.push(json.results[0]!.state);
    }
    expect(states).toEqual(['up', 'up', 'up', 'up', 'down', 'down', 'down', 'down', 'down', 'up', 'up']);
    expect(await p.rt.outbox.idle(10_000)).toBe(true);

    const events = receiver.events();
    expect(events.map((e) => e.type)).toEqual(['flux.tenant.probe_failed', 'flux.tenant.probe_recovered']);
    expect(receiver.deliveries.every((d) => d.verified)).toBe(true);
    const [failed, recovered] = events;
    expect(failed).toMatchObject({
      source: '/flux-ops/probe',
      subject: FLAKY.id,
      data: { projectId: FLAKY.id, apiHost: FLAKY.apiHost, reason: 'status', status: 500, consecutive: 2 },
    });
    expect(recovered).toMatchObject({
      subject: FLAKY.id,
      data: { projectId: FLAKY.id, apiHost: FLAKY.apiHost, consecutive: 2 },
    });
    expect((recovered!.data as { downSeconds: number }).downSeconds).toBeGreaterThan(0);
  });

  it('emits nothing when a fresh process finds a tenant healthy', async () => {
    const before = receiver.deliveries.length;
    flakyStatus = 200;
    const p = await probeApp(
      {
        FLUX_PROBE_FAILURE_THRESHOLD: '1',
        FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['*'] }]),
      },
      [FLAKY],
    );
    await p.run();
    await p.run();
    expect(await p.rt.outbox.idle(10_000)).toBe(true);
    expect(receiver.deliveries.length).toBe(before);
    expect(p.rt.outbox.depth()).toBe(0);
  });
});

describe('trust is never switched off', () => {
  const disabling = [/rejectUnauthorized\s*:\s*false/, /NODE_TLS_REJECT_UNAUTHORIZED['"\]]*\s*=(?!=)/];

  it('the patterns catch what they are meant to catch', () => {
    expect(disabling[0]!.test('{ rejectUnauthorized : false }')).toBe(true);
    expect(disabling[1]!.test("process.env['NODE_TLS_REJECT_UNAUTHORIZED'] = '0'")).toBe(true);
    expect(disabling[1]!.test("env.NODE_TLS_REJECT_UNAUTHORIZED === '0'")).toBe(false);
  });

  it('no production source disables certificate verification', async () => {
    const root = path.resolve(import.meta.dirname, '..');
    const files: string[] = [];
    for (const dir of ['functions', 'shared']) {
      for (const entry of await readdir(path.join(root, dir), { recursive: true })) {
        if (entry.endsWith('.ts') && !entry.endsWith('.test.ts')) files.push(path.join(root, dir, entry));
      }
    }
    expect(files.some((f) => f.endsWith(path.join('probe', 'prober.ts')))).toBe(true);
    for (const file of files) {
      const text = await readFile(file, 'utf8');
      for (const pattern of disabling)
        expect({ file, hit: pattern.test(text) }).toEqual({ file, hit: false });
    }
  });
});
