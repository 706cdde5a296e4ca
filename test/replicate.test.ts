// replicate in-process against real files: watch + webhook + reconcile triggers, exactly-once copies,
// failure and recovery, conflicts, partial files, constant memory. Events go to a real signed sink.
import { chmod, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../functions/replicate/app.js';
import { IDENTITY_STATE_FILE, STORE_MARKER_KEY } from '../functions/replicate/identity.js';
import type { ReconcileSummary } from '../functions/replicate/replicator.js';
import { hashFile, TEMP_PREFIX } from '../shared/atomic.js';
import type { FunctionApp } from '../shared/kit/runtime.js';
import {
  completeBackup,
  type FakeBackup,
  metricValue,
  newProjectId,
  offsiteFiles,
  readReceipt,
  sha256Of,
  writeBackup,
  writeLargeBackup,
} from './replicate-fixtures.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  backupCreatedEvent,
  eventually,
  makeTestEnv,
  makeToken,
  signedEvent,
  type TestEnv,
  type TestRuntime,
  testRuntime,
} from './support/runtime.js';

interface Harness {
  env: TestEnv;
  rt: TestRuntime;
  fn: FunctionApp;
  local: string;
  offsite: string;
  metrics(): Promise<string>;
  reconcile(): Promise<ReconcileSummary>;
}

let receiver: EventReceiver;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(async () => {
  receiver = await startEventReceiver();
});
afterAll(async () => {
  await receiver.close();
});
afterEach(async () => {
  // Reverse order: stop the function before its directories go.
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  receiver.deliveries.length = 0;
});

async function harness(
  extra: Record<string, string> = {},
  options: { start?: boolean } = {},
): Promise<Harness> {
  const env = await makeTestEnv({
    FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.backup.*'] }]),
    FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60 * 1000),
    FLUX_REPLICATE_RETRY_BASE_DELAY_MS: '20',
    FLUX_REPLICATE_MAX_ATTEMPTS: '3',
    FLUX_LOG_LEVEL: 'info',
    ...extra,
  });
  cleanups.push(env.cleanup);
  const rt = testRuntime('replicate', env);
  const fn = createApp(rt);
  if (options.start !== false) await fn.start();
  cleanups.push(() => fn.stop());
  return {
    env,
    rt,
    fn,
    local: env.config.FLUX_BACKUPS_LOCAL_DIR,
    offsite: env.config.FLUX_BACKUPS_OFFSITE_DIR,
    metrics: async () => (await fn.app.request('/metrics')).text(),
    async reconcile() {
      const res = await fn.app.request('/replicate/run', { method: 'POST', headers: ADMIN.header });
      expect(res.status).toBe(200);
      return ((await res.json()) as { reconcile: ReconcileSummary }).reconcile;
    },
  };
}

async function allReplicated(h: Harness, backups: FakeBackup[]): Promise<boolean> {
  for (const b of backups) {
    const r = await readReceipt(h.local, b);
    if (r?.status !== 'replicated') return false;
  }
  return true;
}

/** Waits until this process has handed every event to the receiver. */
async function drained(h: Harness): Promise<void> {
  expect(await h.rt.outbox.idle(30_000)).toBe(true);
}

/** True when replicate has no job left (queued, copying or waiting to retry). */
async function idle(h: Harness): Promise<boolean> {
  const res = await h.fn.app.request('/replicate/status', { headers: ADMIN.header });
  return ((await res.json()) as { pending: number }).pending === 0;
}

function createdEvent(b: FakeBackup) {
  return backupCreatedEvent(b.projectId, b.backupId, {
    sizeBytes: b.sizeBytes,
    sha256: b.sha256,
    tables: 1,
    rows: 3,
  });
}

describe('replicate (in-process, real files)', () => {
  it('1,000 backups dropped at once: every one replicated and proven, none missed, none copied twice', async () => {
    // The reconcile runs every second here too: the watcher is a hint, the ledger is the truth.
    const h = await harness(
      { FLUX_REPLICATE_RECONCILE_INTERVAL_MS: '1000', FLUX_REPLICATE_CONCURRENCY: '8' },
      { start: false },
    );
    const existing = Array.from({ length: 5 }, newProjectId);
    for (const p of existing) await mkdir(path.join(h.local, p), { recursive: true });
    const { fn } = h;
    await fn.start();
    // Half the projects exist before start, half are created during the drop (watched as they appear).
    const projects = [...existing, ...Array.from({ length: 5 }, newProjectId)];
    const backups: FakeBackup[] = [];
    const webhooks: Array<Promise<Response> | Response> = [];
    const createdIds = new Map<string, string>();
    await Promise.all(
      projects.map(async (projectId) => {
        for (let i = 0; i < 100; i++) {
          const b = await writeBackup(h.local, projectId);
          backups.push(b);
          // Every fifth one is also announced by dump's webhook: watch and webhook both fire.
          if (i % 5 === 0) {
            const event = createdEvent(b);
            createdIds.set(`${b.projectId}/${b.backupId}`, event.id);
            webhooks.push(fn.app.request('/events', signedEvent(event)));
          }
        }
      }),
    );
    expect(backups).toHaveLength(1000);
    for (const res of await Promise.all(webhooks)) expect(res.status).toBe(202);
    await eventually(() => allReplicated(h, backups), 90_000, 200);

    // Proven: every receipt carries the manifest's hash, every offsite copy re-hashes to it.
    for (const b of backups) {
      const r = await readReceipt(h.local, b);
      expect(r).toMatchObject({ status: 'replicated', contentSha256: b.sha256, sizeBytes: b.sizeBytes });
      expect(await hashFile(path.join(h.offsite, b.projectId, `${b.backupId}.dump`))).toEqual({
        sha256: b.sha256,
        sizeBytes: b.sizeBytes,
      });
      const manifest = await readFile(path.join(h.offsite, b.projectId, `${b.backupId}.manifest.json`));
      expect(manifest.equals(await readFile(b.manifest))).toBe(true);
    }
    const files = await offsiteFiles(h.offsite);
    expect(files).toHaveLength(2000);
    expect(files.some((f) => path.basename(f).startsWith(TEMP_PREFIX))).toBe(false);

    // None twice: a second scan finds nothing to do, and each backup was copied and announced once.
    // Receipts are written before their jobs settle (the event is emitted after): a scan that began
    // before that (the periodic one this call may join) counts the backups still announced as in flight.
    await eventually(() => idle(h));
    const settledAt = new Date().toISOString();
    const again = await eventually(async () => {
      const summary = await h.reconcile();
      return summary.startedAt > settledAt ? summary : undefined;
    });
    expect(again.backups).toBe(1000);
    expect(again.skipped.replicated).toBe(1000);
    expect(Object.values(again.gaps).reduce((a, b) => a + b, 0)).toBe(0);
    const metrics = await h.metrics();
    expect(metricValue(metrics, 'flux_replicate_results_total', { outcome: 'replicated' })).toBe(1000);
    expect(metricValue(metrics, 'flux_replicate_results_total', { outcome: 'replicated_existing' })).toBe(0);
    expect(metricValue(metrics, 'flux_replicate_bytes_total')).toBe(
      backups.reduce((n, b) => n + b.sizeBytes, 0),
    );
    expect(metricValue(metrics, 'flux_replicate_lag_seconds_count')).toBe(1000);
    expect(await h.rt.outbox.idle(30_000)).toBe(true);
    const replicated = receiver.events('flux.backup.replicated');
    expect(replicated).toHaveLength(1000);
    expect(new Set(replicated.map((e) => e.subject)).size).toBe(1000);
    // A copy the webhook started names that event as its cause.
    for (const e of replicated) {
      const data = e.data as { trigger: string };
      if (data.trigger === 'event') expect(e.causationid).toBe(createdIds.get(e.subject!));
      if (e.causationid) expect(e.causationid).toBe(createdIds.get(e.subject!));
    }
    expect(receiver.events('flux.backup.replication_failed')).toHaveLength(0);
  });

  it('the flux.backup.created event alone triggers a copy, caused by that event', async () => {
    // Not started: no watcher, no reconcile; only the webhook can make this copy happen.
    const h = await harness({}, { start: false });
    await h.rt.inbox.start();
    await h.rt.outbox.start();
    const projectId = newProjectId();
    const b = await writeBackup(h.local, projectId);
    const lone = await writeBackup(h.local, projectId, { withManifest: false });
    const event = createdEvent(b);
    const res = await h.fn.app.request('/events', signedEvent(event));
    expect(res.status).toBe(202);
    await eventually(() => allReplicated(h, [b]));
    // A created event for a dump whose manifest is not there is acknowledged and ignored.
    const ignored = await h.fn.app.request('/events', signedEvent(createdEvent(lone)));
    expect(await ignored.json()).toMatchObject({ ignored: true });
    await drained(h);
    // The receipt is written before the event is enqueued: wait for the delivery itself.
    const replicated = await eventually(() => receiver.events('flux.backup.replicated')[0]);
    expect(replicated).toMatchObject({ causationid: event.id, subject: `${projectId}/${b.backupId}` });
    expect(replicated?.data).toMatchObject({ sha256: b.sha256, sizeBytes: b.sizeBytes, trigger: 'event' });
    expect(await offsiteFiles(h.offsite)).toEqual([
      `${projectId}/${b.backupId}.dump`,
      `${projectId}/${b.backupId}.manifest.json`,
    ]);
    // The same event again (redelivery) is a duplicate; a new event for the same backup is a no-op.
    await h.fn.app.request('/events', signedEvent(createdEvent(b)));
    await h.reconcile();
    await drained(h);
    expect(receiver.events('flux.backup.replicated')).toHaveLength(1);
  });

  it('offsite unwritable: failure receipt and one event; fixed: replicated by the next periodic reconcile', async () => {
    // Root ignores chmod, so the store is made unwritable the way root also feels: its path runs
    // through a regular file (ENOTDIR).
    const env0 = await makeTestEnv();
    cleanups.push(env0.cleanup);
    const blocker = path.join(env0.root, 'blocker');
    await writeFile(blocker, 'not a directory');
    const h = await harness({
      FLUX_BACKUPS_OFFSITE_DIR: path.join(blocker, 'offsite'),
      FLUX_REPLICATE_RECONCILE_INTERVAL_MS: '300',
      FLUX_REPLICATE_MAX_ATTEMPTS: '2',
    });
    const ready = await h.fn.app.request('/readyz');
    expect(ready.status).toBe(503);
    const readyBody = (await ready.json()) as {
      checks: Array<{ name: string; ok: boolean; detail: string }>;
    };
    expect(readyBody.checks.find((c) => c.name === 'offsite:fs')).toMatchObject({ ok: false });

    const b = await writeBackup(h.local, newProjectId());
    const failed = await eventually(async () => {
      const r = await readReceipt(h.local, b);
      return r?.status === 'failed' ? r : undefined;
    });
    expect(failed).toMatchObject({ reason: 'dir_not_writable', manifestSha256: b.sha256 });
    expect(failed.error).toContain('FLUX_BACKUPS_OFFSITE_DIR');
    // Several reconciles retry while it stays broken; the running count grows, the page went out once.
    await eventually(async () => ((await readReceipt(h.local, b))?.attempts ?? 0) >= 6);
    await drained(h);
    const failures = receiver.events('flux.backup.replication_failed');
    expect(failures).toHaveLength(1);
    expect(failures[0]?.data).toMatchObject({ reason: 'dir_not_writable', backupId: b.backupId });
    expect(
      metricValue(await h.metrics(), 'flux_replicate_failures_total', { reason: 'dir_not_writable' }),
    ).toBeGreaterThan(1);

    // The operator fixes it: the path becomes a directory.
    await rm(blocker);
    await mkdir(blocker);
    const ok = await eventually(async () => {
      const r = await readReceipt(h.local, b);
      return r?.status === 'replicated' ? r : undefined;
    });
    expect(ok).toMatchObject({ contentSha256: b.sha256, sizeBytes: b.sizeBytes });
    expect(await hashFile(path.join(blocker, 'offsite', b.projectId, `${b.backupId}.dump`))).toEqual({
      sha256: b.sha256,
      sizeBytes: b.sizeBytes,
    });
    await drained(h);
    expect(receiver.events('flux.backup.replicated')).toHaveLength(1);
    expect(receiver.events('flux.backup.replicated')[0]?.data).toMatchObject({ trigger: 'reconcile' });
    expect((await h.fn.app.request('/readyz')).status).toBe(200);
  });

  it('a different offsite copy is an alarm and is never overwritten', async () => {
    const h = await harness();
    const projectId = newProjectId();
    // (1) Replicated, then the offsite copy is altered: the next reconcile notices and raises the alarm.
    const first = await writeBackup(h.local, projectId);
    await eventually(() => allReplicated(h, [first]));
    const firstOffsite = path.join(h.offsite, projectId, `${first.backupId}.dump`);
    const tampered = Buffer.concat([await readFile(first.dump), Buffer.from('appended by someone')]);
    await chmod(firstOffsite, 0o640);
    await writeFile(firstOffsite, tampered);
    // (2) Something already sits at the key before the first copy: same size, other bytes.
    const second = await writeBackup(h.local, projectId, { withManifest: false });
    const planted = Buffer.from(await readFile(second.dump));
    planted[0] = (planted[0]! + 1) % 256;
    await mkdir(path.join(h.offsite, projectId), { recursive: true });
    await writeFile(path.join(h.offsite, projectId, `${second.backupId}.dump`), planted);
    await completeBackup(second);

    const summary = await h.reconcile();
    expect(summary.gaps.offsite_changed).toBe(1);
    for (const [b, found] of [
      [first, tampered],
      [second, planted],
    ] as const) {
      const r = await eventually(async () => {
        const receipt = await readReceipt(h.local, b);
        return receipt?.status === 'conflict' ? receipt : undefined;
      });
      expect(r).toMatchObject({
        reason: 'conflict',
        contentSha256: sha256Of(found),
        manifestSha256: b.sha256,
      });
      // Never overwritten: the offsite bytes are still the other ones; the local backup is untouched.
      expect(await readFile(path.join(h.offsite, projectId, `${b.backupId}.dump`))).toEqual(found);
      expect(sha256Of(await readFile(b.dump))).toBe(b.sha256);
    }
    await drained(h);
    const alarms = receiver.events('flux.backup.replication_failed');
    expect(alarms.map((e) => (e.data as { reason: string }).reason)).toEqual(['conflict', 'conflict']);
    expect(alarms.map((e) => (e.data as { foundSha256: string }).foundSha256).sort()).toEqual(
      [sha256Of(tampered), sha256Of(planted)].sort(),
    );
    expect(metricValue(await h.metrics(), 'flux_replicate_failures_total', { reason: 'conflict' })).toBe(2);
    // The alarm is not repeated every reconcile, and nothing is retried while the key is occupied.
    const later = await h.reconcile();
    expect(later.skipped.conflict).toBe(2);
    await drained(h);
    expect(receiver.events('flux.backup.replication_failed')).toHaveLength(2);
    // The operator moves the altered copy aside: the next reconcile copies the local backup again.
    await rm(firstOffsite);
    const resolved = await h.reconcile();
    expect(resolved.results.replicated).toBe(1);
    expect(await readReceipt(h.local, first)).toMatchObject({
      status: 'replicated',
      contentSha256: first.sha256,
    });
  });

  it('an offsite mount point left unmounted gets nothing (its store marker is missing); mounted again, copies resume', async () => {
    const h = await harness({
      FLUX_REPLICATE_RECONCILE_INTERVAL_MS: '300',
      FLUX_REPLICATE_MAX_ATTEMPTS: '2',
    });
    const first = await writeBackup(h.local, newProjectId());
    await eventually(() => allReplicated(h, [first]));
    // The first copy marked the store, and the replicator recorded which store it writes to.
    const marker = JSON.parse(await readFile(path.join(h.offsite, STORE_MARKER_KEY), 'utf8')) as {
      storeId: string;
    };
    const state = JSON.parse(
      await readFile(path.join(h.env.config.FLUX_STATE_DIR, IDENTITY_STATE_FILE), 'utf8'),
    ) as { stores: Record<string, { storeId: string }> };
    expect(Object.values(state.stores).map((s) => s.storeId)).toEqual([marker.storeId]);
    expect((await h.fn.app.request('/readyz')).status).toBe(200);

    // The mount goes away: the store's files are elsewhere, an empty directory is left at the path.
    const mounted = `${h.offsite}.mounted`;
    await rename(h.offsite, mounted);
    await mkdir(h.offsite);
    const second = await writeBackup(h.local, newProjectId());
    const failed = await eventually(async () => {
      const r = await readReceipt(h.local, second);
      return r?.status === 'failed' ? r : undefined;
    });
    expect(failed).toMatchObject({ reason: 'store_identity' });
    expect(failed.error).toMatch(/marker flux-ops-store\.json is missing.*unmounted mount point/);
    // Reconciles keep finding both backups missing there (the first one's copy too), and copy nothing.
    await h.reconcile();
    await h.reconcile();
    expect(await readdir(h.offsite)).toEqual([]);
    const ready = await h.fn.app.request('/readyz');
    expect(ready.status).toBe(503);
    const checks = ((await ready.json()) as { checks: Array<{ name: string; ok: boolean; detail: string }> })
      .checks;
    expect(checks.find((c) => c.name === 'offsite:identity')).toMatchObject({ ok: false });
    await drained(h);
    expect(
      receiver.events('flux.backup.replication_failed').map((e) => (e.data as { reason: string }).reason),
    ).toContain('store_identity');
    expect(
      metricValue(await h.metrics(), 'flux_replicate_failures_total', { reason: 'store_identity' }),
    ).toBeGreaterThan(0);

    // Mounted again: the next periodic reconcile copies what the store lacks.
    await rm(h.offsite, { recursive: true });
    await rename(mounted, h.offsite);
    await eventually(() => allReplicated(h, [first, second]));
    expect(await offsiteFiles(h.offsite)).toContain(`${second.projectId}/${second.backupId}.dump`);
    expect((await h.fn.app.request('/readyz')).status).toBe(200);

    // Another replicator (its own state) pointed at this store adopts its marker instead of replacing it.
    const other = await harness({ FLUX_BACKUPS_OFFSITE_DIR: h.offsite });
    const third = await writeBackup(other.local, newProjectId());
    await eventually(() => allReplicated(other, [third]));
    expect(JSON.parse(await readFile(path.join(h.offsite, STORE_MARKER_KEY), 'utf8'))).toEqual(marker);
  });

  it('a partial local file or a dump without its manifest is never replicated', async () => {
    const h = await harness();
    const projectId = newProjectId();
    const dir = path.join(h.local, projectId);
    // A dump still being written (temp name) and a finished dump whose manifest never came.
    const noManifest = await writeBackup(h.local, projectId, { withManifest: false });
    await writeFile(path.join(dir, `${TEMP_PREFIX}01J0000000000000000000000A.dump.abcdef`), 'partial');
    // Manifests whose dump is shorter than they say, or has other bytes of the same size.
    const truncated = await writeBackup(h.local, projectId, { onDisk: (bytes) => bytes.subarray(0, 100) });
    const altered = await writeBackup(h.local, projectId, {
      onDisk: (bytes) => {
        bytes[10] = (bytes[10]! + 1) % 256;
        return bytes;
      },
    });

    const summary = await h.reconcile();
    expect(summary.backups).toBe(2);
    for (const b of [truncated, altered]) {
      const r = await eventually(async () => {
        const receipt = await readReceipt(h.local, b);
        return receipt?.status === 'failed' ? receipt : undefined;
      });
      expect(r.reason).toBe('artifact_invalid');
    }
    expect(await readReceipt(h.local, noManifest)).toBeUndefined();
    // Nothing offsite: no dump, no manifest, no temp leftover of the refused stream.
    expect(await offsiteFiles(h.offsite)).toEqual([]);
    // A bad local file is not retried every scan (it cannot get better by itself). The failure receipt
    // is written before the job emits its event: the scan waits for the jobs to settle.
    await eventually(() => idle(h));
    const again = await h.reconcile();
    expect(again.skipped.gave_up).toBe(2);
    expect(again.results.failed).toBe(0);
    await drained(h);
    expect(receiver.events('flux.backup.replicated')).toHaveLength(0);
    expect(
      receiver.events('flux.backup.replication_failed').map((e) => (e.data as { reason: string }).reason),
    ).toEqual(['artifact_invalid', 'artifact_invalid']);
  });

  it('a manifest whose local dump is missing (a rebuilt catalog): proven offsite gets its receipt, else it stays pending, never a failure', async () => {
    const h = await harness();
    const projectId = newProjectId();
    // Replicated normally, then the host is lost: the manifest comes back from the store, the dump does not.
    const rebuilt = await writeBackup(h.local, projectId);
    await eventually(() => allReplicated(h, [rebuilt]));
    const offsiteManifest = await readFile(
      path.join(h.offsite, projectId, `${rebuilt.backupId}.manifest.json`),
    );
    for (const suffix of ['.dump', '.manifest.json', '.offsite.json']) {
      await rm(path.join(h.local, projectId, `${rebuilt.backupId}${suffix}`));
    }
    await writeFile(rebuilt.manifest, offsiteManifest);
    // A manifest with no copy anywhere, and one whose offsite copy has other bytes of the same size.
    const nowhere = await writeBackup(h.local, projectId, { withManifest: false });
    const forged = await writeBackup(h.local, projectId, { withManifest: false });
    await mkdir(path.join(h.offsite, projectId), { recursive: true });
    const forgedBytes = Buffer.alloc(forged.sizeBytes, 7);
    await writeFile(path.join(h.offsite, projectId, `${forged.backupId}.dump`), forgedBytes);
    for (const b of [nowhere, forged]) {
      await rm(b.dump);
      await completeBackup(b);
    }

    // The arrival alone: replicate re-hashes the offsite copy and writes its normal receipt.
    const receipt = await eventually(async () => {
      const r = await readReceipt(h.local, rebuilt);
      return r?.status === 'replicated' ? r : undefined;
    });
    expect(receipt).toMatchObject({ contentSha256: rebuilt.sha256, sizeBytes: rebuilt.sizeBytes });
    expect(receipt.lagSeconds).toBeUndefined();
    // The arrivals of the other two leave them pending. Only once those jobs have settled does the scan
    // start jobs of its own for them (it counts a backup still being looked at as in flight instead).
    await eventually(async () => {
      const pending = h.rt.logs.lines
        .filter((l) => l.reason !== undefined && String(l.msg).startsWith('local dump missing'))
        .map((l) => l.backupId);
      return pending.includes(nowhere.backupId) && pending.includes(forged.backupId) && (await idle(h));
    });
    const summary = await h.reconcile();
    expect(summary.inFlight).toBe(0);
    expect(summary.results).toMatchObject({ failed: 0, skipped: 2 });
    await drained(h);
    expect(await readReceipt(h.local, nowhere)).toBeUndefined();
    expect(await readReceipt(h.local, forged)).toBeUndefined();
    expect(receiver.events('flux.backup.replication_failed')).toHaveLength(0);
    const replicated = receiver.events('flux.backup.replicated');
    expect(replicated.map((e) => (e.data as { backupId: string }).backupId)).toContain(rebuilt.backupId);
    expect(
      replicated.find((e) => e.data.backupId === rebuilt.backupId && e.data.created === false),
    ).toBeDefined();
    // Nothing copied for the others, and the forged copy is left as it was (no manifest put beside it).
    const files = await offsiteFiles(h.offsite);
    expect(files.filter((f) => f.includes(nowhere.backupId))).toEqual([]);
    expect(files.filter((f) => f.includes(forged.backupId))).toEqual([
      `${projectId}/${forged.backupId}.dump`,
    ]);
    expect(sha256Of(await readFile(path.join(h.offsite, projectId, `${forged.backupId}.dump`)))).toBe(
      sha256Of(forgedBytes),
    );
    expect(h.rt.logs.text()).toContain('local dump missing: nothing to copy');
  });

  it('POST /replicate/run needs a backups:write token and returns the scan summary', async () => {
    const reader = makeToken('reader', ['backups:read']);
    const h = await harness({ FLUX_API_TOKENS: `${ADMIN.entry},${reader.entry}` }, { start: false });
    expect((await h.fn.app.request('/replicate/run', { method: 'POST' })).status).toBe(401);
    const forbidden = await h.fn.app.request('/replicate/run', { method: 'POST', headers: reader.header });
    expect(forbidden.status).toBe(403);
    expect(await forbidden.json()).toMatchObject({ code: 'forbidden' });
    const b = await writeBackup(h.local, newProjectId());
    const summary = await h.reconcile();
    expect(summary).toMatchObject({
      trigger: 'manual',
      backups: 1,
      gaps: { unreplicated: 1 },
      results: { replicated: 1 },
    });
    expect(await readReceipt(h.local, b)).toMatchObject({ status: 'replicated' });
    const statusRes = await h.fn.app.request('/replicate/status', { headers: reader.header });
    expect(await statusRes.json()).toMatchObject({
      pending: 0,
      store: { driver: 'fs' },
      lastReconcile: { trigger: 'manual' },
    });
  });

  it('copies a large backup with constant memory (1 MiB chunks, never the whole file)', async () => {
    const SIZE = 128 * 1024 * 1024;
    // Not started: the copy runs inside the reconcile call below, nothing else runs beside it.
    const h = await harness({}, { start: false });
    const b = await writeLargeBackup(h.local, newProjectId(), SIZE);
    const before = process.memoryUsage().arrayBuffers;
    let peak = before;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    }, 2);
    try {
      await h.reconcile();
    } finally {
      clearInterval(sampler);
    }
    expect(await readReceipt(h.local, b)).toMatchObject({ status: 'replicated', contentSha256: b.sha256 });
    // Reading the file whole would hold 128 MiB at once; streaming holds a few chunks.
    expect(peak - before).toBeLessThan(48 * 1024 * 1024);
  });
});
