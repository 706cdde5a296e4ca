// A synchronous verify that takes longer than Node's fetch waits for headers (undici: 300 s for the headers,
// 300 s between body bytes), over a real socket with fetch's default timeouts: the answer arrives, and it is
// the success upstream's CLI reads. The restore is slow by construction (every row's CHECK sleeps 50 ms), so
// this file takes about six minutes; everything else in it is kept small.
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ServerType } from '@hono/node-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createApp as createVerifyApp } from '../functions/verify/app.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import { listen } from '../shared/kit/serve.js';
import type { Cluster, Project } from '../shared/registry.js';
import { MINUTE_MS, SECOND_MS } from '../shared/units.js';
import { seedSlowRestoreTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { ADMIN, makeTestEnv, type TestEnv, testRuntime } from './support/runtime.js';

/** Past undici's 300 s headers timeout with room: 6,600 rows × 50 ms ≈ 330 s of restore alone. */
const ROWS = 6_600;
const UNDICI_HEADERS_TIMEOUT_MS = 300 * SECOND_MS;

const id = randomUUID();
const SLOW: Project = {
  id,
  hash: id.replaceAll('-', '').slice(0, 7),
  slug: 'slow-restore',
  engine: 'v2_shared',
  cluster: 'shared-1',
} as Project;

let cluster: PgCluster;
let env: TestEnv;
let localBase: string;
let verify: FunctionApp;
let server: ServerType;
let base: string;
let backupId: string;

beforeAll(async () => {
  cluster = await startPostgres();
  await cluster.createDatabase('flux');
  await seedSlowRestoreTenant(cluster, { db: 'flux', projectId: SLOW.id, rows: ROWS });
  localBase = await mkdtemp(path.join(tmpdir(), 'flux-sync-long-'));
  await chmod(localBase, 0o755);
  env = await makeTestEnv({
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: localBase,
    FLUX_VERIFY_ON: 'none',
  });
  const clusters: Cluster[] = [{ name: 'shared-1', url: cluster.url('flux'), maxConcurrentDumps: 1 }];
  const dump = createDumpApp(testRuntime('dump', env, { projects: [SLOW], clusters }));
  const created = await dump.app.request(`/api/cli/v1/projects/${SLOW.hash}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(created.status, await created.clone().text()).toBe(200);
  backupId = ((await created.json()) as { backup: { id: string } }).backup.id;
  verify = createVerifyApp(testRuntime('verify', env, { projects: [SLOW], clusters }));
  await verify.start();
  server = await listen({ fetch: verify.app.fetch, port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}, 5 * MINUTE_MS);

afterAll(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await verify?.stop();
  await cluster?.destroy();
  await env?.cleanup();
  if (localBase) await rm(localBase, { recursive: true, force: true });
});

describe('a synchronous verify longer than fetch waits for headers', () => {
  it(
    'Node’s fetch with its default timeouts gets the verified answer after more than 300 s',
    async () => {
      const started = Date.now();
      // The global fetch, no dispatcher, no signal: undici's defaults, as upstream's CLI uses it.
      const res = await fetch(`${base}/api/cli/v1/projects/${SLOW.hash}/backups/${backupId}/verify`, {
        method: 'POST',
        headers: { ...ADMIN.header, accept: 'application/json' },
      });
      const text = await res.text();
      const elapsed = Date.now() - started;
      // The test only means something when the work outlasted undici's headers timeout.
      expect(elapsed).toBeGreaterThan(UNDICI_HEADERS_TIMEOUT_MS);
      expect(res.status, text.trim().slice(0, 500)).toBe(200);
      expect(res.headers.get('x-flux-deferred')).toBe('1');
      // What upstream's CLI does with it: trim, parse, and require { ok: true, backupId, restoreVerificationStatus }.
      const body = JSON.parse(text.trim()) as Record<string, unknown>;
      expect(body).toMatchObject({ ok: true, backupId, restoreVerificationStatus: 'restore_verified' });
      // The catalog says the same as the answer.
      const listed = await verify.app.request(
        `/api/cli/v1/projects/${SLOW.hash}/backups/${backupId}/verify`,
        { headers: ADMIN.header },
      );
      expect(await listed.json()).toMatchObject({
        running: false,
        restoreVerificationOutcome: 'restore_verified',
      });
    },
    15 * MINUTE_MS,
  );
});
