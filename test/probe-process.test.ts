// The real probe process (functions/probe/main.ts under tsx) as an operator runs it: trust through
// NODE_EXTRA_CA_CERTS, scheduled and on-demand probes over HTTP, and the refusals at start-up.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantProbe } from '../functions/probe/monitor.js';
import { EXIT } from '../shared/errors.js';
import { freePort } from './support/pg.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv } from './support/runtime.js';
import { createCa, destroyCa, type Gateway, issueCert, startTlsGateway, type TestCa } from './support/tls.js';

const ROOT = path.resolve(import.meta.dirname, '..');
// `node --import tsx`, not the tsx CLI: the CLI runs main.ts in a child and relays a signal to it, and
// SIGKILLs that child when it has not reported the signal back within 30 ms (often missed on a loaded
// machine, exit 143 instead of a clean stop). The test signals the very process whose handlers decide.
const NODE_ARGS = ['--import', 'tsx', 'functions/probe/main.ts'];
const API_HOST = 'api--bloom-atelier--0a1b2c3.flux.test';

let ca: TestCa;
let gw: Gateway;
let testEnv: TestEnv;
const children: ResultPromise[] = [];

interface Child {
  base: string;
  process: ResultPromise;
  probes(method: 'GET' | 'POST', route: string): Promise<{ results: TenantProbe[] }>;
}

/** Starts main.ts with `env` on a free port and waits until it answers /healthz. */
async function startProbe(env: Record<string, string | undefined>): Promise<Child> {
  const port = await freePort();
  const child = execa(process.execPath, NODE_ARGS, {
    cwd: ROOT,
    env: {
      ...testEnv.env,
      FLUX_HOST: '127.0.0.1',
      FLUX_PROBE_PORT: String(port),
      // Two probe processes at once: each its own state dir (one owner per function per directory).
      FLUX_STATE_DIR: path.join(testEnv.root, `state-${port}`),
      ...env,
    },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
  });
  children.push(child);
  const base = `http://127.0.0.1:${port}`;
  await eventually(async () => {
    if (child.exitCode !== null) throw new Error(`probe exited ${child.exitCode}`);
    return (await fetch(`${base}/healthz`)).ok;
  }, 60_000);
  return {
    base,
    process: child,
    async probes(method, route) {
      const res = await fetch(`${base}${route}`, { method, headers: ADMIN.header });
      expect(res.status).toBe(200);
      return (await res.json()) as { results: TenantProbe[] };
    },
  };
}

beforeAll(async () => {
  ca = await createCa('Operator Private CA');
  const cert = await issueCert(ca, { hosts: ['*.flux.test'] });
  gw = await startTlsGateway({
    cert,
    routes: { [API_HOST]: (_req, res) => res.writeHead(200).end('ok') },
  });
  testEnv = await makeTestEnv({ FLUX_TENANT_PROBE_GATEWAY_URL: gw.url, NODE_EXTRA_CA_CERTS: undefined });
  await writeFile(
    testEnv.env.FLUX_PROJECTS_FILE!,
    JSON.stringify({
      clusters: [{ name: 'shared-1', url: 'env:SHARED_URL' }],
      projects: [
        {
          id: '550e8400-e29b-41d4-a716-446655440000',
          hash: '0a1b2c3',
          slug: 'bloom-atelier',
          engine: 'v2_shared',
          cluster: 'shared-1',
          apiHost: API_HOST,
        },
      ],
    }),
  );
});

afterAll(async () => {
  for (const child of children) {
    if (child.exitCode === null) child.kill('SIGTERM');
    await child;
  }
  await gw?.close();
  await testEnv?.cleanup();
  if (ca) await destroyCa(ca);
});

describe('probe process', () => {
  it('trusts a private CA through NODE_EXTRA_CA_CERTS, on schedule and on demand; without it, tls_verify', async () => {
    const [trusted, untrusted] = await Promise.all([
      startProbe({ NODE_EXTRA_CA_CERTS: ca.certPath, FLUX_PROBE_INTERVAL_MS: '300' }),
      startProbe({ FLUX_PROBE_INTERVAL_MS: '0' }),
    ]);

    // The schedule probes by itself (the first cycle starts within the interval).
    const scheduled = await eventually(async () => (await trusted.probes('GET', '/probes')).results[0]);
    expect(scheduled).toMatchObject({ slug: 'bloom-atelier', success: true, status: 200, sni: API_HOST });

    const run = await trusted.probes('POST', '/probes/run?project=bloom-atelier');
    expect(run.results).toMatchObject([{ success: true, status: 200, sni: API_HOST, reason: null }]);
    expect(gw.received.some((r) => r.sni === API_HOST && r.host === API_HOST)).toBe(true);

    // Same process, same code, no extra CA: verification stays on and fails with the fix.
    const refused = await untrusted.probes('POST', '/probes/run');
    expect(refused.results).toMatchObject([{ success: false, reason: 'tls_verify' }]);
    expect(refused.results[0]!.hint).toContain('NODE_EXTRA_CA_CERTS');

    const metrics = await (await fetch(`${trusted.base}/metrics`)).text();
    expect(metrics).toMatch(
      /^probe_success\{tenant="bloom-atelier",host="api--bloom-atelier--0a1b2c3\.flux\.test"\} 1$/m,
    );

    trusted.process.kill('SIGTERM');
    const exited = await trusted.process;
    expect(exited.exitCode).toBe(0);
    expect(String(exited.stdout)).not.toContain(ADMIN.token);
  });

  it('refuses to start with NODE_TLS_REJECT_UNAUTHORIZED=0', async () => {
    const result = await execa(process.execPath, NODE_ARGS, {
      cwd: ROOT,
      env: { ...testEnv.env, NODE_TLS_REJECT_UNAUTHORIZED: '0', FLUX_PROBE_PORT: String(await freePort()) },
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
      timeout: 60_000,
    });
    expect(result.exitCode).toBe(EXIT.config);
    expect(String(result.stderr)).toMatch(/NODE_TLS_REJECT_UNAUTHORIZED: is 0.*NODE_EXTRA_CA_CERTS/);
  });

  it('refuses to start when FLUX_PROBE_CA_FILE cannot be read', async () => {
    const missing = path.join(testEnv.root, 'no-such-ca.pem');
    const result = await execa(process.execPath, NODE_ARGS, {
      cwd: ROOT,
      env: { ...testEnv.env, FLUX_PROBE_CA_FILE: missing, FLUX_PROBE_PORT: String(await freePort()) },
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
      timeout: 60_000,
    });
    expect(result.exitCode).toBe(EXIT.config);
    expect(String(result.stderr)).toContain(`FLUX_PROBE_CA_FILE=${missing} cannot be read`);
  });
});
