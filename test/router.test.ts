// The router in front of the five real function apps, each on its own real HTTP server: requests reach the
// function routeOf() names with Authorization and x-request-id, bodies stream both ways without buffering,
// a function that is down answers 502 naming it, /readyz aggregates, /status is served, and the process
// edge (functions/router/main.ts) drains in-flight work on SIGTERM.

import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FACTORIES } from '../functions/all/app.js';
import { createRouter, type Router, type Upstreams } from '../functions/router/app.js';
import { FUNCTION_NAMES, type FunctionName } from '../shared/config.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import { createLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import type { Project } from '../shared/registry.js';
import {
  ADMIN,
  eventually,
  makeTestEnv,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

const ROOT = path.resolve(import.meta.dirname, '..');

const projectId = randomUUID();
const PROJECT: Project = {
  id: projectId,
  hash: projectId.replaceAll('-', '').slice(0, 7),
  slug: 'router-tenant',
  engine: 'v2_shared',
  apiHost: 'api--router-tenant--0000000.flux.test',
  cluster: 'shared-1',
};

interface Served {
  server: ServerType;
  url: string;
}

async function serveFetch(fetch: (request: Request) => Response | Promise<Response>): Promise<Served> {
  const server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://127.0.0.1:${port}` };
}

async function closeServer(server: http.Server | ServerType): Promise<void> {
  (server as http.Server).closeAllConnections?.();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

/** An upstream that echoes each request chunk as soon as it arrives (proves streaming both ways). */
async function startEchoUpstream(): Promise<{
  server: http.Server;
  url: string;
  seen: http.IncomingHttpHeaders[];
}> {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((req, res) => {
    seen.push(req.headers);
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    res.flushHeaders();
    req.on('data', (chunk: Buffer) => res.write(chunk));
    req.on('end', () => res.end('|end'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

type Chunks = AsyncIterator<Buffer>;

/** The response's chunks in order (an iterator buffers what arrives between reads). */
function chunksOf(res: http.IncomingMessage): Chunks {
  return res[Symbol.asyncIterator]() as Chunks;
}

/** Fails (instead of hanging) when `promise` does not settle: a buffering proxy deadlocks these tests. */
async function within<T>(promise: Promise<T>, what: string, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadlock = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not arrive: a body was buffered`)), ms);
  });
  try {
    return await Promise.race([promise, deadlock]);
  } finally {
    clearTimeout(timer);
  }
}

async function nextChunk(chunks: Chunks): Promise<string> {
  const next = await within(chunks.next(), 'the next chunk');
  return next.done ? '<end>' : next.value.toString();
}

async function responseOf(req: http.ClientRequest): Promise<http.IncomingMessage> {
  const [res] = (await within(once(req, 'response'), 'the response head')) as [http.IncomingMessage];
  return res;
}

let env: TestEnv;
const runtimes = {} as Record<FunctionName, TestRuntime>;
const fns = {} as Record<FunctionName, FunctionApp>;
const servers = {} as Record<FunctionName, Served>;
let upstreams: Upstreams;
let router: Router;
let front: Served;
let closedUrl: string;

beforeAll(async () => {
  env = await makeTestEnv({
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_PROBE_INTERVAL_MS: '0',
    FLUX_TENANT_PROBE_GATEWAY_URL: 'http://127.0.0.1:9',
  });
  for (const fn of FUNCTION_NAMES) {
    runtimes[fn] = testRuntime(fn, env, {
      projects: [PROJECT],
      clusters: [{ name: 'shared-1', url: 'postgres://127.0.0.1:9/none', maxConcurrentDumps: 1 }],
    });
    fns[fn] = FACTORIES[fn](runtimes[fn]);
    servers[fn] = await serveFetch(fns[fn].app.fetch);
  }
  upstreams = Object.fromEntries(FUNCTION_NAMES.map((fn) => [fn, servers[fn].url])) as Upstreams;
  // A port that was free a moment ago: connection refused, as for a stopped service.
  const spare = await serveFetch(() => new Response('x'));
  closedUrl = spare.url;
  await closeServer(spare.server);
  router = createRouter({
    upstreams,
    log: createLogger('router', { level: 'silent' }),
    metrics: createRegistry({ defaultMetrics: false }),
  });
  front = await serveFetch(router.app.fetch);
});

afterAll(async () => {
  if (front) await closeServer(front.server);
  await router?.close(0);
  for (const s of Object.values(servers)) await closeServer(s.server);
  await env?.cleanup();
});

describe('router', () => {
  it('forwards each route to the function that owns it, with Authorization passed through', async () => {
    const status = await fetch(`${front.url}/api/ops/v1/status`, { headers: ADMIN.header });
    expect(status.status).toBe(200);
    const body = (await status.json()) as { projects: Array<{ slug: string; tier: string }> };
    expect(body.projects).toEqual([expect.objectContaining({ slug: 'router-tenant', tier: 'no_backups' })]);

    // Without the header the function itself refuses: the router adds no credentials of its own.
    const anonymous = await fetch(`${front.url}/api/ops/v1/status`);
    expect(anonymous.status).toBe(401);
    expect(((await anonymous.json()) as { code: string }).code).toBe('unauthorized');

    const probes = await fetch(`${front.url}/probes`, { headers: ADMIN.header });
    expect(probes.status).toBe(200);
    expect(await probes.json()).toMatchObject({ notYetProbed: ['router-tenant'] });

    // /<fn>/... reaches that function's own surface.
    for (const fn of FUNCTION_NAMES) {
      const ready = await fetch(`${front.url}/${fn}/readyz`);
      expect(((await ready.json()) as { fn: string }).fn).toBe(fn);
    }

    // The migrate route lands on migrate (its own validation answers).
    const migrate = await fetch(`${front.url}/api/cli/v1/migrate`, {
      method: 'POST',
      headers: { ...ADMIN.header, 'content-type': 'application/json' },
      body: JSON.stringify({ slug: 'no-such-project', hash: '0000000', dryRun: true }),
    });
    expect(migrate.status).toBe(404);
    expect(((await migrate.json()) as { error: string }).error).toMatch(/no-such-project|0000000/);

    const verify = await fetch(
      `${front.url}/api/cli/v1/projects/${PROJECT.hash}/backups/${randomUUID()}/verify`,
      {
        method: 'POST',
        headers: ADMIN.header,
      },
    );
    expect(verify.status).toBe(404);
    expect(runtimes.verify.logs.text()).toContain(
      '"route":"/api/cli/v1/projects/:hash/backups/:backupId/verify"',
    );

    const unknown = await fetch(`${front.url}/nowhere`);
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({ code: 'not_found' });
  });

  it('keeps an offered x-request-id end to end and makes one when none is offered', async () => {
    const offered = `req-${randomUUID()}`;
    const res = await fetch(`${front.url}/api/ops/v1/status`, {
      headers: { ...ADMIN.header, 'x-request-id': offered },
    });
    expect(res.headers.get('x-request-id')).toBe(offered);
    expect(runtimes.dump.logs.lines.some((l) => l.requestId === offered && l.msg === 'access')).toBe(true);

    const made = await fetch(`${front.url}/api/ops/v1/status`, { headers: ADMIN.header });
    const id = made.headers.get('x-request-id');
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(runtimes.dump.logs.lines.some((l) => l.requestId === id)).toBe(true);

    const invalid = await fetch(`${front.url}/api/ops/v1/status`, {
      headers: { ...ADMIN.header, 'x-request-id': 'bad id with spaces' },
    });
    expect(invalid.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('streams the request and the response body through without buffering either', async () => {
    const echo = await startEchoUpstream();
    const streaming = createRouter({
      upstreams: { ...upstreams, dump: echo.url },
      log: createLogger('router', { level: 'silent' }),
      metrics: createRegistry({ defaultMetrics: false }),
    });
    const served = await serveFetch(streaming.app.fetch);
    try {
      const { port } = new URL(served.url);
      const req = http.request({
        host: '127.0.0.1',
        port: Number(port),
        method: 'POST',
        path: `/api/cli/v1/projects/${PROJECT.hash}/backups/x/download?part=1`,
        headers: { 'content-type': 'application/octet-stream', authorization: 'Bearer not-checked-here' },
      });
      req.write('chunk-1');
      const res = await responseOf(req);
      expect(res.statusCode).toBe(200);
      const chunks = chunksOf(res);
      // The echo of chunk 1 arrives while the request is still open: neither direction waited for the end.
      expect(await nextChunk(chunks)).toBe('chunk-1');
      expect(streaming.inFlight()).toBe(1);
      req.write('chunk-2');
      expect(await nextChunk(chunks)).toBe('chunk-2');
      req.end();
      expect(await nextChunk(chunks)).toBe('|end');
      expect(await nextChunk(chunks)).toBe('<end>');
      expect(echo.seen[0]?.authorization).toBe('Bearer not-checked-here');
      expect(echo.seen[0]?.['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
      expect(echo.seen[0]?.host).toBe(new URL(echo.url).host);
      await eventually(() => streaming.inFlight() === 0);
    } finally {
      await closeServer(served.server);
      await streaming.close(0);
      await closeServer(echo.server);
    }
  });

  it('answers 502 naming the function that is down, and /readyz says which one', async () => {
    const ready = await fetch(`${front.url}/readyz`);
    const all = (await ready.json()) as {
      ok: boolean;
      functions: Record<string, { ok: boolean; fn?: string }>;
    };
    expect(ready.status).toBe(200);
    expect(all.ok).toBe(true);
    expect(Object.keys(all.functions).sort()).toEqual([...FUNCTION_NAMES].sort());
    for (const fn of FUNCTION_NAMES) expect(all.functions[fn]).toMatchObject({ ok: true, fn });

    const degraded = createRouter({
      upstreams: { ...upstreams, migrate: closedUrl },
      log: createLogger('router', { level: 'silent' }),
      metrics: createRegistry({ defaultMetrics: false }),
    });
    try {
      const res = await degraded.app.request('/api/cli/v1/migrate', {
        method: 'POST',
        headers: { ...ADMIN.header, 'content-type': 'application/json' },
        body: JSON.stringify({ slug: PROJECT.slug, hash: PROJECT.hash, dryRun: true }),
      });
      expect(res.status).toBe(502);
      const body = (await res.json()) as { error: string; code: string; upstream: string };
      expect(body.upstream).toBe('migrate');
      expect(body.code).toBe('upstream_unavailable');
      expect(body.error).toMatch(/migrate function is unreachable .*ECONNREFUSED.*FLUX_MIGRATE_URL/);
      expect(body.error).not.toContain(ADMIN.token);

      const readyz = await degraded.app.request('/readyz');
      expect(readyz.status).toBe(503);
      const r = (await readyz.json()) as {
        ok: boolean;
        functions: Record<string, { ok: boolean; detail?: string }>;
      };
      expect(r.ok).toBe(false);
      expect(r.functions.migrate).toMatchObject({ ok: false, status: 502 });
      expect(r.functions.migrate?.detail).toMatch(/unreachable/);
      expect(r.functions.dump?.ok).toBe(true);

      // The other functions still answer through the same router.
      expect((await degraded.app.request('/dump/healthz')).status).toBe(200);
    } finally {
      await degraded.close(0);
    }
  });

  it('serves the status page with a policy that allows only its own script', async () => {
    const res = await fetch(`${front.url}/status`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.headers.get('content-security-policy')).toMatch(/script-src 'sha256-[A-Za-z0-9+/=]+'; /);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await res.text()).toContain('backup trust status');
  });
});

describe('router process (functions/router/main.ts)', () => {
  const freePort = async () => {
    const s = await serveFetch(() => new Response(''));
    const port = Number(new URL(s.url).port);
    await closeServer(s.server);
    return port;
  };

  it('forwards on FLUX_PORT, passes the image healthcheck, and lets a stream finish after SIGTERM', async () => {
    const echo = await startEchoUpstream();
    const port = await freePort();
    const processEnv = {
      ...env.env,
      FLUX_HOST: '127.0.0.1',
      FLUX_PORT: String(port),
      FLUX_DUMP_URL: echo.url,
      FLUX_REPLICATE_URL: upstreams.replicate,
      FLUX_VERIFY_URL: upstreams.verify,
      FLUX_PROBE_URL: upstreams.probe,
      FLUX_MIGRATE_URL: upstreams.migrate,
      FLUX_SHUTDOWN_GRACE_MS: '20000',
    };
    const child = execa(process.execPath, ['--import', 'tsx', 'functions/router/main.ts'], {
      cwd: ROOT,
      env: processEnv,
      reject: false,
    });
    let output = '';
    child.stdout?.on('data', (c: Buffer) => {
      output += c.toString();
    });
    try {
      await eventually(async () => (await fetch(`http://127.0.0.1:${port}/healthz`)).ok, 60_000, 100);
      const probes = await fetch(`http://127.0.0.1:${port}/probes`, { headers: ADMIN.header });
      expect(probes.status).toBe(200);

      const healthcheck = (extra: Record<string, string | undefined>, args: string[] = []) =>
        execa(process.execPath, ['--import', 'tsx', 'functions/router/healthcheck.ts', ...args], {
          cwd: ROOT,
          env: { ...processEnv, ...extra },
          extendEnv: false,
          reject: false,
          timeout: 60_000,
        });
      // The container healthcheck is liveness: the router answers, so it is healthy…
      const routerHealth = await healthcheck({ FLUX_FUNCTION: 'router' });
      expect(routerHealth.exitCode).toBe(0);
      // …while --ready asks /readyz: the echo upstream has no /readyz JSON (dump answers 200 with a
      // non-JSON body, so it is not ready).
      const routerReady = await healthcheck({ FLUX_FUNCTION: 'router' }, ['--ready']);
      expect(routerReady.exitCode).toBe(1);
      expect(routerReady.stderr).toMatch(/answered 503/);
      const dumpHealth = await healthcheck({
        FLUX_FUNCTION: 'dump',
        FLUX_DUMP_PORT: new URL(upstreams.dump).port,
      });
      expect(dumpHealth.exitCode).toBe(0);
      const unset = await healthcheck({ FLUX_FUNCTION: undefined });
      expect(unset.exitCode).toBe(1);
      expect(unset.stderr).toMatch(/FLUX_FUNCTION is not set/);

      // A stream in flight when SIGTERM arrives is finished before the process exits.
      const req = http.request({
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: `/api/cli/v1/projects/${PROJECT.hash}/backups/x/download`,
        headers: { 'content-type': 'application/octet-stream' },
      });
      req.write('before');
      const res = await responseOf(req);
      const chunks = chunksOf(res);
      expect(await nextChunk(chunks)).toBe('before');
      child.kill('SIGTERM');
      await eventually(() => output.includes('"msg":"stopping'), 30_000);
      req.end('after');
      let rest = '';
      for (let chunk = await nextChunk(chunks); chunk !== '<end>'; chunk = await nextChunk(chunks))
        rest += chunk;
      expect(rest).toBe('after|end');
      const result = await child;
      expect(result.exitCode).toBe(0);
      expect(result.stdout).toContain('"msg":"stopped"');
      expect(result.stdout).not.toContain(ADMIN.token);
    } finally {
      child.kill('SIGKILL');
      await closeServer(echo.server);
    }
  });
});
