// Verify reconciles from the catalog like replicate: backups made while no verify ran (no created event
// ever reaches it) are verified once verify starts, bounded by half of its queue (the rest left for the
// next scan), each once; with FLUX_VERIFY_ON=none nothing is owed. Real dumps, the real local sandbox.
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp as createDumpApp } from '../functions/dump/app.js';
import { createApp as createVerifyApp } from '../functions/verify/app.js';
import type { VerifyReceipt } from '../shared/catalog/records.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import type { Project } from '../shared/registry.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv, testRuntime } from './support/runtime.js';

const tenantId = randomUUID();
const tenant: Project = {
  id: tenantId,
  hash: tenantId.replaceAll('-', '').slice(0, 7),
  slug: 'owed-verify',
  engine: 'v2_shared',
  cluster: 'shared-1',
};
const clusters = [{ name: 'shared-1', url: 'env:OWED_SHARED_URL', maxConcurrentDumps: 1 }];

let pg: PgCluster;
let testEnv: TestEnv;
let localBase: string;
let dumpFn: FunctionApp;

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: tenantId, rows: 100 });
  localBase = await mkdtemp(path.join(tmpdir(), 'flux-verify-reconcile-'));
  await chmod(localBase, 0o755);
  // No sinks: no event ever reaches a verify function; only the catalog says what is owed.
  testEnv = await makeTestEnv({ OWED_SHARED_URL: pg.url('shared') });
  dumpFn = createDumpApp(testRuntime('dump', testEnv, { projects: [tenant], clusters }));
  await dumpFn.start();
});

afterAll(async () => {
  await dumpFn?.stop();
  await pg?.destroy();
  await testEnv?.cleanup();
  if (localBase) await rm(localBase, { recursive: true, force: true });
});

async function backup(): Promise<string> {
  const res = await dumpFn.app.request(`/api/cli/v1/projects/${tenant.hash}/backups`, {
    method: 'POST',
    headers: ADMIN.header,
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { backup: { id: string } }).backup.id;
}

function verifyEnv(extra: Record<string, string>): Promise<TestEnv> {
  return makeTestEnv({
    FLUX_BACKUPS_LOCAL_DIR: testEnv.config.FLUX_BACKUPS_LOCAL_DIR,
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_VERIFY_LOCAL_DIR: localBase,
    ...extra,
  });
}

describe('verify reconcile', () => {
  it('FLUX_VERIFY_ON=none: nothing is owed, nothing is verified by itself', async () => {
    const backupId = await backup();
    const env = await verifyEnv({ FLUX_VERIFY_ON: 'none', FLUX_VERIFY_RECONCILE_INTERVAL_MS: '200' });
    const rt = testRuntime('verify', env, { projects: [tenant], clusters });
    const fn = createVerifyApp(rt, { spare: false });
    try {
      await fn.start();
      await new Promise((resolve) => setTimeout(resolve, 1000));
      expect(await rt.metrics.metrics()).not.toMatch(/flux_verify_reconcile_scans_total\{/);
      const status = await fn.app.request(`/api/cli/v1/projects/${tenant.hash}/backups/${backupId}/verify`, {
        headers: ADMIN.header,
      });
      expect(await status.json()).toMatchObject({ running: false, restoreVerificationStatus: 'pending' });
    } finally {
      await fn.stop();
      await env.cleanup();
    }
  });

  it('verifies every backup made while verify was away, half a queue at a time, each once', async () => {
    // Three more owed (four in all): one running and one waiting fill half of a queue of 2; the rest wait
    // for the next scans.
    const owed = [(await rt0()).backupId, await backup(), await backup(), await backup()];
    const env = await verifyEnv({
      FLUX_VERIFY_CONCURRENCY: '1',
      FLUX_VERIFY_QUEUE_MAX: '2',
      FLUX_VERIFY_RECONCILE_INTERVAL_MS: '300',
    });
    const rt = testRuntime('verify', env, { projects: [tenant], clusters });
    const fn = createVerifyApp(rt, { spare: false });
    try {
      await fn.start();
      const startup = await eventually(() =>
        rt.logs.lines.find((l) => l.msg === 'verify reconcile: backups owed a verification'),
      );
      expect(startup).toMatchObject({ trigger: 'startup', owed: 4, started: 2, busy: 2, failed: 0 });
      const receipts = await eventually(
        async () => {
          const out: VerifyReceipt[] = [];
          for (const id of owed) {
            const r = (await rt.catalog.get(tenantId, id))?.verify;
            if (!r) return undefined;
            out.push(r);
          }
          return out;
        },
        240_000,
        250,
      );
      expect(receipts.map((r) => [r.backupId, r.status, r.source])).toEqual(
        owed.map((id) => [id, 'restore_verified', 'local']),
      );
      // Each once: later scans find nothing owed and verify nothing again.
      const scansNow = () =>
        rt.metrics
          .metrics()
          .then((m) =>
            Number(/flux_verify_reconcile_scans_total\{trigger="interval"\} (\d+)/.exec(m)?.[1] ?? 0),
          );
      const seen = await scansNow();
      await eventually(async () => (await scansNow()) >= seen + 2, 20_000);
      for (const [i, id] of owed.entries()) {
        expect((await rt.catalog.get(tenantId, id))?.verify?.finishedAt).toBe(receipts[i]!.finishedAt);
      }
      const metrics = await rt.metrics.metrics();
      expect(metrics).toMatch(/flux_verify_reconciled_total\{result="started"\} 4/);
      expect(metrics).toMatch(/flux_verify_reconciled_total\{result="busy"\} [1-9]/);
      expect(metrics).toMatch(/flux_verify_reconcile_owed 0/);
    } finally {
      await fn.stop();
      await env.cleanup();
    }
  });
});

/** The backup the first test made (still unverified: verify was on demand only then). */
async function rt0(): Promise<{ backupId: string }> {
  const res = await dumpFn.app.request(`/api/cli/v1/projects/${tenant.hash}/backups`, {
    headers: ADMIN.header,
  });
  const { backups } = (await res.json()) as { backups: Array<{ id: string }> };
  expect(backups).toHaveLength(1);
  return { backupId: backups[0]!.id };
}
