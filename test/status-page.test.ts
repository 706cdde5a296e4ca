// The status page in headless Chromium over real data: an all-in-one process over a real Postgres makes
// real backups (replicated offsite by the loopback events), one restore-verified by a local sandbox and one
// that a docker-only verify could not verify, probes go through a real gateway, and the rendered table is
// asserted per project (tier, the three labels, lag, last probe). A screenshot is kept under
// test-artifacts/.
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type ServerType, serve } from '@hono/node-server';
import { Hono } from 'hono';
import { type Browser, chromium, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AllInOne, createAllInOne } from '../functions/all/app.js';
import { registerStatusRoutes, TOKEN_STORAGE_KEY } from '../functions/dump/status/page.js';
import { createApp as createVerify } from '../functions/verify/app.js';
import { loadConfig } from '../shared/config.js';
import { createLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { type Cluster, createStaticRegistry, type Project } from '../shared/registry.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { ADMIN, eventually, makeTestEnv, makeToken, type TestEnv, testRuntime } from './support/runtime.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const CHROMIUM = process.env.FLUX_TEST_CHROMIUM ?? '/usr/bin/chromium';
const INSTALL_CHROMIUM = 'apt-get install -y chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const REFRESH_MS = 1_000;

const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);
const verifiedId = randomUUID();
const unverifiableId = randomUUID();
const neverId = randomUUID();
const PROJECTS: Project[] = [
  {
    id: verifiedId,
    hash: hashOf(verifiedId),
    slug: 'bloom-atelier',
    engine: 'v2_shared',
    cluster: 'shared-1',
    apiHost: `api--bloom-atelier--${hashOf(verifiedId)}.flux.test`,
  },
  {
    id: unverifiableId,
    hash: hashOf(unverifiableId),
    slug: 'copper-kettle',
    engine: 'v2_shared',
    cluster: 'shared-1',
    apiHost: `api--copper-kettle--${hashOf(unverifiableId)}.flux.test`,
  },
  {
    id: neverId,
    hash: hashOf(neverId),
    slug: 'never-backed',
    engine: 'v1_dedicated',
    databaseUrl: 'env:NOWHERE_URL',
  },
];
const CLUSTERS: Cluster[] = [{ name: 'shared-1', url: 'env:TEST_SHARED_URL', maxConcurrentDumps: 2 }];
/** What an operator would paste: read-only plus probe, no admin. */
const VIEWER = makeToken('status-viewer', ['backups:read', 'probe']);
const READ_ONLY = makeToken('status-read-only', ['backups:read']);

const chromiumPresent = existsSync(CHROMIUM);
const CI = process.env.CI === 'true';

function describeBrowser(name: string, fn: () => void): void {
  if (chromiumPresent) {
    describe(name, fn);
    return;
  }
  if (CI) {
    describe(name, () => {
      it(`needs Chromium in CI (${INSTALL_CHROMIUM})`, () => {
        throw new Error(`${CHROMIUM} not found: ${INSTALL_CHROMIUM} (or set FLUX_TEST_CHROMIUM)`);
      });
    });
    return;
  }
  console.warn(`skipping "${name}": ${CHROMIUM} not found (${INSTALL_CHROMIUM})`);
  describe.skip(name, fn);
}

let pg: PgCluster;
let env: TestEnv;
let all: AllInOne;
let front: ServerType;
let baseUrl: string;
let gateway: http.Server;
let browser: Browser;
let sandboxes: string;
/** Status the gateway answers per tenant host (flipped to show the page refreshing by itself). */
const gatewayStatus = new Map<string, number>();

async function api(pathname: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${baseUrl}${pathname}`, { ...init, headers: { ...ADMIN.header, ...init.headers } });
}

async function createBackup(project: Project): Promise<string> {
  const res = await api(`/api/cli/v1/projects/${project.hash}/backups`, { method: 'POST' });
  expect(res.status).toBe(200);
  return ((await res.json()) as { backup: { id: string } }).backup.id;
}

async function openStatus(token: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1500, height: 640 } });
  await page.goto(`${baseUrl}/status`);
  await page.locator('#token').fill(token);
  await page.locator('#login button[type=submit]').click();
  return page;
}

const text = async (locator: Locator) => (await locator.textContent()) ?? '';
const storedToken = (page: Page) =>
  page.evaluate(`sessionStorage.getItem(${JSON.stringify(TOKEN_STORAGE_KEY)})`);
const row = (page: Page, slug: string) => page.locator(`tr[data-project="${slug}"]`);
const cell = (page: Page, slug: string, col: string) => row(page, slug).locator(`td[data-col="${col}"]`);
const stateOf = (page: Page, slug: string, col: string) =>
  cell(page, slug, col).locator('[data-state]').first().getAttribute('data-state');

describeBrowser('status page (headless Chromium, real backups)', () => {
  beforeAll(async () => {
    pg = await startPostgres();
    await pg.createDatabase('shared');
    await seedTenant(pg, { db: 'shared', projectId: verifiedId, rows: 200 });
    await seedTenant(pg, { db: 'shared', projectId: unverifiableId, rows: 50 });

    gatewayStatus.set(PROJECTS[0]!.apiHost!, 200);
    gatewayStatus.set(PROJECTS[1]!.apiHost!, 503);
    gateway = http.createServer((req, res) => {
      res.writeHead(gatewayStatus.get(String(req.headers.host)) ?? 421, {
        'content-type': 'application/json',
      });
      res.end('{}');
    });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));

    sandboxes = await mkdtemp(path.join(tmpdir(), 'flux-status-sandboxes-'));
    // The sandbox server runs as an unprivileged OS user when tests run as root: it must traverse this.
    await chmod(sandboxes, 0o755);
    env = await makeTestEnv({
      TEST_SHARED_URL: pg.url('shared'),
      FLUX_API_TOKENS: [ADMIN.entry, VIEWER.entry, READ_ONLY.entry].join(','),
      FLUX_VERIFY_DRIVER: 'local',
      FLUX_VERIFY_ON: 'none',
      // Sandboxes of this test only: a reaper never meets another test's.
      FLUX_VERIFY_LOCAL_DIR: sandboxes,
      FLUX_TENANT_PROBE_GATEWAY_URL: `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`,
      FLUX_PROBE_INTERVAL_MS: '0',
      FLUX_PROBE_FAILURE_THRESHOLD: '1',
      FLUX_LOG_LEVEL: 'warn',
    });
    all = createAllInOne(env.config, env.env, {
      log: createLogger('flux-ops', { level: 'warn', fn: null }),
      metrics: createRegistry({ defaultMetrics: false }),
      registry: createStaticRegistry({ projects: PROJECTS, clusters: CLUSTERS }),
    });
    // The page mounted in front of the all-in-one app, as the process and the router mount it.
    const app = new Hono();
    registerStatusRoutes(app, { refreshMs: REFRESH_MS });
    app.all('*', (c) => all.app.fetch(c.req.raw));
    front = await new Promise<ServerType>((resolve) => {
      const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
    });
    baseUrl = `http://127.0.0.1:${(front.address() as AddressInfo).port}`;
    all.setBaseUrl(baseUrl);
    await all.start();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  });

  afterAll(async () => {
    await browser?.close();
    if (front) await new Promise((resolve) => front.close(resolve));
    await all?.stop();
    if (gateway) await new Promise((resolve) => gateway.close(resolve));
    await pg?.destroy();
    await env?.cleanup();
    if (sandboxes) await rm(sandboxes, { recursive: true, force: true });
  });

  it('shows each project’s tier, three labels, age, lag and last probe from the live APIs', async () => {
    // Real backups; replicate proves each offsite copy on the loopback flux.backup.created event.
    const verifiedBackup = await createBackup(PROJECTS[0]!);
    const unverifiableBackup = await createBackup(PROJECTS[1]!);
    await eventually(async () => {
      const { projects } = (await (await api('/api/ops/v1/status')).json()) as {
        projects: Array<{ labels: { offsiteReplicated: boolean }; backup?: unknown }>;
      };
      return projects.filter((p) => p.backup).every((p) => p.labels.offsiteReplicated);
    }, 60_000);

    // A real restore into a local sandbox: restore-verified.
    const verified = await api(`/api/cli/v1/projects/${PROJECTS[0]!.hash}/backups/${verifiedBackup}/verify`, {
      method: 'POST',
    });
    expect(verified.status).toBe(200);

    // A verify that may only use Docker, with no engine behind its socket: could not verify (never a pass).
    const dockerOnly = await makeTestEnv({ FLUX_STATE_DIR: path.join(env.root, 'state-docker-verify') });
    const dockerConfig = loadConfig({
      ...env.env,
      FLUX_STATE_DIR: dockerOnly.env.FLUX_STATE_DIR,
      FLUX_VERIFY_DRIVER: 'docker',
      FLUX_DOCKER_SOCKET: path.join(env.root, 'no-docker-here.sock'),
    });
    const verifyRt = testRuntime(
      'verify',
      { env: env.env, config: dockerConfig },
      { projects: PROJECTS, clusters: CLUSTERS },
    );
    const dockerVerify = createVerify(verifyRt);
    try {
      const res = await dockerVerify.app.request(
        `/api/cli/v1/projects/${PROJECTS[1]!.hash}/backups/${unverifiableBackup}/verify`,
        { method: 'POST', headers: ADMIN.header },
      );
      expect(res.status).toBe(503);
      expect(((await res.json()) as { code: string }).code).toBe('unverifiable');
    } finally {
      await dockerVerify.stop();
      await dockerOnly.cleanup();
    }

    const probes = await api('/probes/run', { method: 'POST' });
    expect(probes.status).toBe(200);

    const page = await openStatus(VIEWER.token);
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(m.text());
    });
    await row(page, 'copper-kettle').waitFor();

    // The token never reaches a URL; it stays in this tab's sessionStorage.
    expect(page.url()).toBe(`${baseUrl}/status`);
    expect(page.url()).not.toContain(VIEWER.token);
    expect(await storedToken(page)).toBe(VIEWER.token);
    expect(await page.locator('#token').inputValue()).toBe('');

    // restorable: every label passes, the copy is in sync, the tenant answers through the gateway.
    expect(await row(page, 'bloom-atelier').getAttribute('data-tier')).toBe('restorable');
    expect(await text(cell(page, 'bloom-atelier', 'tier'))).toContain('restorable');
    for (const col of ['artifact', 'restore', 'offsite', 'lag', 'probe']) {
      expect(await stateOf(page, 'bloom-atelier', col), `bloom-atelier ${col}`).toBe('pass');
    }
    expect(await text(cell(page, 'bloom-atelier', 'restore'))).toContain('restore-verified');
    // Each copy its own verification: the page says which copy is proven.
    expect(await text(cell(page, 'bloom-atelier', 'restore'))).toContain('local copy: ✓ proven');
    expect(await text(cell(page, 'bloom-atelier', 'lag'))).toContain('in sync');
    expect(await text(cell(page, 'bloom-atelier', 'probe'))).toContain('200');
    expect(await text(cell(page, 'bloom-atelier', 'age'))).toMatch(/ago/);

    // unverifiable: artifact and offsite pass, the restore label is visibly not a pass.
    expect(await row(page, 'copper-kettle').getAttribute('data-tier')).toBe('unverifiable');
    expect(await stateOf(page, 'copper-kettle', 'artifact')).toBe('pass');
    expect(await stateOf(page, 'copper-kettle', 'offsite')).toBe('pass');
    expect(await stateOf(page, 'copper-kettle', 'restore')).toBe('unverifiable');
    expect(await text(cell(page, 'copper-kettle', 'restore'))).toMatch(/could not verify.*not a pass/);
    expect(await text(cell(page, 'copper-kettle', 'probe'))).toContain('HTTP 503');
    expect(await stateOf(page, 'copper-kettle', 'probe')).toBe('fail');
    const look = (slug: string) =>
      cell(page, slug, 'restore')
        .locator('[data-state]')
        .evaluate((e) => {
          // Runs in the page; this Node project compiles without the DOM types.
          const { getComputedStyle } = globalThis as unknown as {
            getComputedStyle(el: unknown): { color: string; backgroundImage: string; borderStyle: string };
          };
          const style = getComputedStyle(e);
          return [style.color, style.backgroundImage, style.borderStyle].join('|');
        });
    expect(await look('copper-kettle')).not.toBe(await look('bloom-atelier'));

    // no_backups, and a project without an apiHost to probe.
    expect(await row(page, 'never-backed').getAttribute('data-tier')).toBe('no_backups');
    expect(await text(cell(page, 'never-backed', 'tier'))).toContain(
      'flux-ops backup create -p never-backed',
    );
    expect(await stateOf(page, 'never-backed', 'restore')).toBe('none');
    expect(await text(cell(page, 'never-backed', 'age'))).toContain('never');
    expect(await text(cell(page, 'never-backed', 'probe'))).toContain('no apiHost');

    expect(await text(page.locator('#summary'))).toContain('1 of 3 restorable');
    // Freshness beside the tier: the restorable project is fresh (its age against maxAge 26 h), the others
    // have no restorable backup and say what to run.
    expect(await cell(page, 'bloom-atelier', 'freshness').getAttribute('data-freshness')).toBe('fresh');
    expect(await stateOf(page, 'bloom-atelier', 'freshness')).toBe('pass');
    expect(await text(cell(page, 'bloom-atelier', 'freshness'))).toMatch(/fresh.*old · maxAge 26 h/s);
    for (const slug of ['copper-kettle', 'never-backed']) {
      expect(await cell(page, slug, 'freshness').getAttribute('data-freshness')).toBe('never_verified');
      expect(await text(cell(page, slug, 'freshness'))).toContain(`flux-ops backup create -p ${slug}`);
    }
    expect(await text(page.locator('#summary'))).toContain('1 of 3 fresh');

    // The clusters below: the shared one up with its two tenants, the v1 project's own server unreachable.
    const shared = page.locator('#clusters tr[data-cluster="shared-1"]');
    await shared.waitFor();
    const sharedCells = await shared.locator('td').allTextContents();
    expect(sharedCells.slice(0, 2)).toEqual(['shared-1', 'shared']);
    expect(sharedCells[3]).toMatch(/^\d+\.\d+/);
    expect(sharedCells.slice(4, 7)).toEqual(['2', '1 / 2', '1 / 2']);
    const own = await page
      .locator('#clusters tr[data-cluster="dedicated:never-backed"] td')
      .allTextContents();
    expect(own.slice(0, 2)).toEqual(['dedicated:never-backed', 'dedicated (derived)']);
    expect(own[3]).toBe('unreachable');

    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'status-page.png'), fullPage: true });

    // It refreshes by itself: the failing tenant recovers at the gateway and the page follows, no reload.
    gatewayStatus.set(PROJECTS[1]!.apiHost!, 200);
    expect((await api('/probes/run', { method: 'POST' })).status).toBe(200);
    await cell(page, 'copper-kettle', 'probe').locator('[data-state="pass"]').waitFor({ timeout: 30_000 });

    // A reload keeps the token for this tab; "Forget token" drops it.
    await page.reload();
    await row(page, 'bloom-atelier').waitFor();
    await page.locator('#forget').click();
    await page.locator('#login').waitFor();
    expect(await storedToken(page)).toBeNull();
    expect(problems).toEqual([]);
    await page.close();
  });

  it('says what is wrong with a token instead of showing a partial picture as complete', async () => {
    const readOnly = await openStatus(READ_ONLY.token);
    await row(readOnly, 'bloom-atelier').waitFor();
    expect(await text(cell(readOnly, 'bloom-atelier', 'probe'))).toContain('token lacks the probe scope');
    await readOnly.close();

    const wrong = await openStatus(`fxo_${randomUUID()}`);
    await wrong.locator('#banner:not([hidden])').waitFor();
    expect(await text(wrong.locator('#banner'))).toMatch(/token was rejected/);
    expect(await wrong.locator('#login').isVisible()).toBe(true);
    expect(await storedToken(wrong)).toBeNull();
    await wrong.close();
  });

  it('is served with a policy that lets only its own script and origin run', async () => {
    const res = await fetch(`${baseUrl}/status`);
    const policy = res.headers.get('content-security-policy') ?? '';
    expect(policy).toMatch(/default-src 'none'/);
    expect(policy).toMatch(/connect-src 'self'/);
    expect(policy).not.toMatch(/unsafe-inline|unsafe-eval/);
    expect(res.headers.get('x-frame-options')).toBe('DENY');
    // The page embeds no data and no secret: everything comes from the APIs with the pasted token.
    const html = await res.text();
    expect(html).not.toContain(PROJECTS[0]!.slug);
    expect(html).not.toContain(ADMIN.token);
  });
});
