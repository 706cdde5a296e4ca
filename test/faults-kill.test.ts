// kill -9 of each function in the middle of its work, then a restart on the same dirs: dump mid-stream
// (no partial counts, no orphaned pg_dump, no stale lease), replicate mid-copy (the start-up reconcile
// completes the copy), verify mid-restore with the local and the docker sandbox (nothing left behind, a
// re-verify passes), the outbox redelivering what a dead process could not, and the catalog as the HTTP
// API lists it afterwards. Every function runs as its own real process and is killed by its pid.
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, stat, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashFile, TEMP_PREFIX } from '../shared/atomic.js';
import type { ApiBackup } from '../shared/catalog/read-model.js';
import type { BackupState, OffsiteReceipt, VerifyReceipt } from '../shared/catalog/records.js';
import type { Delivery } from '../shared/events/outbox.js';
import { createFsOffsiteStore } from '../shared/offsite/fs.js';
import { LABEL, sandboxNamePrefix } from '../shared/sandbox/docker-engine.js';
import { LOCAL_SANDBOX_PREFIX } from '../shared/sandbox/local-marker.js';
import { writeLargeBackup } from './replicate-fixtures.js';
import {
  containersLabelled,
  type DedupeSink,
  descendantsOf,
  type FnProcess,
  faultsEnv,
  freezeWhen,
  isAlive,
  killStartedFunctions,
  largestTempFile,
  listProcesses,
  processesWith,
  shimOf,
  startDedupeSink,
  startFunction,
  type ThrottledPgDump,
  throttledPgDump,
  writeProjectsFile,
} from './support/faults.js';
import { seedTenant } from './support/fixtures.js';
import { type PgCluster, startPostgres } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv } from './support/runtime.js';
import { describeDocker, dockerGate } from './support/sandbox-contract.js';

const IMAGE = process.env.FLUX_TEST_VERIFY_IMAGE ?? 'flux-ops/postgres-verify:15';
const SOCKET = process.env.FLUX_DOCKER_SOCKET ?? '/var/run/docker.sock';
const gate = await dockerGate(SOCKET, IMAGE);

// A v2 tenant on a shared cluster (real dumps), and a v1 project whose one large backup is written by
// the test (replicate only needs a complete backup, not a restorable one).
const tenantId = randomUUID();
const tenant = { id: tenantId, hash: tenantId.replaceAll('-', '').slice(0, 7), slug: 'kill-nine' };
const bigId = randomUUID();
// writeLargeBackup's manifest names the project by the first 7 characters of its id and `p-<8 chars>`.
const big = { id: bigId, hash: bigId.slice(0, 7), slug: `p-${bigId.slice(0, 8)}` };
const BIG_BYTES = 96 * 1024 * 1024;

let pg: PgCluster;
let testEnv: TestEnv;
let sink: DedupeSink;
let throttle: ThrottledPgDump;
let base: NodeJS.ProcessEnv;
/** The dump process alive at the moment (replaced by each restart); lists the catalog over HTTP. */
let dump: FnProcess;
let replicate: FnProcess | undefined;
let interruptedId: string;
let completedId: string;

const localDir = () => testEnv.config.FLUX_BACKUPS_LOCAL_DIR;
const offsiteDir = () => testEnv.config.FLUX_BACKUPS_OFFSITE_DIR;
let verifyScratch: string;
const verifyLocalDir = () => verifyScratch;

/** Temp files in a backups root, as `<project>/<name>`. */
async function tempsIn(root: string): Promise<string[]> {
  const temps: string[] = [];
  for (const project of await readdir(root)) {
    for (const name of await readdir(path.join(root, project)).catch(() => [] as string[])) {
      if (name.startsWith(TEMP_PREFIX)) temps.push(`${project}/${name}`);
    }
  }
  return temps;
}

async function readJson<T>(file: string): Promise<T> {
  return JSON.parse(await readFile(file, 'utf8')) as T;
}

async function list(project: { hash: string }): Promise<ApiBackup[]> {
  const res = await dump.fetch(`/api/cli/v1/projects/${project.hash}/backups`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { backups: ApiBackup[] }).backups;
}

async function tierOf(projectId: string): Promise<{ tier: string; labels: Record<string, boolean> }> {
  const res = await dump.fetch('/api/ops/v1/status');
  const body = (await res.json()) as {
    projects: Array<{ id: string; tier: string; labels: Record<string, boolean> }>;
  };
  return body.projects.find((p) => p.id === projectId)!;
}

const exists = (file: string) =>
  stat(file).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('shared');
  await seedTenant(pg, { db: 'shared', projectId: tenantId, rows: 30_000 });
  sink = await startDedupeSink();
  testEnv = await makeTestEnv({ FAULTS_SHARED_URL: pg.url('shared') });
  // The local sandbox's server runs as an unprivileged user: its parent dir must be searchable by it.
  verifyScratch = await mkdtemp(path.join(tmpdir(), 'flux-faults-verify-'));
  await chmod(verifyScratch, 0o755);
  throttle = await throttledPgDump(testEnv.root, { chunkBytes: 16 * 1024, delayMs: 25 });
  await writeProjectsFile(testEnv.config.FLUX_PROJECTS_FILE, {
    clusters: [{ name: 'shared-1', url: 'env:FAULTS_SHARED_URL', maxConcurrentDumps: 1 }],
    projects: [
      { ...tenant, engine: 'v2_shared', cluster: 'shared-1' },
      // Never dumped here: its one backup is written by the test.
      { ...big, engine: 'v1_dedicated', databaseUrl: 'env:FAULTS_UNUSED_URL' },
    ],
  });
  base = faultsEnv(testEnv.env, throttle, sink, {
    // Never a dead letter while a function is down: 100 attempts, 400 ms apart after the first few.
    FLUX_OUTBOX_RETRY_SCHEDULE_MS: [0, 100, 200, ...Array(97).fill(400)].join(','),
    FLUX_VERIFY_LOCAL_DIR: verifyLocalDir(),
    FLUX_REPLICATE_RETRY_BASE_DELAY_MS: '100',
  });
});

afterAll(async () => {
  await killStartedFunctions();
  await sink?.close();
  await pg?.destroy();
  await testEnv?.cleanup();
  if (verifyScratch) await rm(verifyScratch, { recursive: true, force: true });
});

describe('kill -9 mid-work, then restart on the same dirs', () => {
  it('dump killed mid-stream: nothing partial counts, pg_dump does not survive, the next backup works', async () => {
    await throttle.setThrottled(true);
    const first = await startFunction('dump', base);
    const res = await first.fetch(`/api/cli/v1/projects/${tenant.hash}/backups`, {
      method: 'POST',
      headers: { prefer: 'respond-async' },
    });
    expect(res.status).toBe(202);
    interruptedId = ((await res.json()) as { backup: { id: string } }).backup.id;
    const projectDir = path.join(localDir(), tenantId);

    // Genuinely streaming: pg_dump runs under the process and more than 256 KiB are already on disk.
    const pgDump = await eventually(
      async () => {
        if ((await largestTempFile(projectDir)) <= 256 * 1024) return undefined;
        return descendantsOf(first.pid).find((p) => p.argv.some((a) => a.startsWith('--snapshot=')));
      },
      60_000,
      20,
    );
    // pg_dump holding the exported snapshot, and the throttle around it.
    const children = descendantsOf(first.pid);
    await first.kill9();

    // None of them outlives the process (pg_dump dies on its next write into the dead reader's pipe), so
    // nothing keeps the snapshot (and the xmin horizon of the shared cluster) pinned.
    const survivors = () =>
      children.filter(
        (c) =>
          isAlive(c.pid) &&
          listProcesses().some((p) => p.pid === c.pid && p.argv.join(' ') === c.argv.join(' ')),
      );
    expect(children.map((c) => c.pid)).toContain(pgDump.pid);
    await eventually(() => survivors().length === 0, 10_000, 20).catch(() => {
      throw new Error(
        `still running after the kill: ${survivors()
          .map((p) => `${p.pid} ${p.argv.join(' ')}`)
          .join('; ')}`,
      );
    });
    // The crash left its partial behind (that is what recovery must handle).
    expect((await readdir(projectDir)).some((n) => n.startsWith(TEMP_PREFIX))).toBe(true);

    await throttle.setThrottled(false);
    dump = await startFunction('dump', base);
    const names = await readdir(projectDir);
    expect(names.filter((n) => n.startsWith(TEMP_PREFIX))).toEqual([]);
    expect(names).not.toContain(`${interruptedId}.dump`);
    expect(names).not.toContain(`${interruptedId}.manifest.json`);
    const state = await readJson<BackupState>(path.join(projectDir, `${interruptedId}.state.json`));
    expect(state).toMatchObject({ status: 'failed', reason: 'interrupted' });

    const [interrupted] = await list(tenant);
    expect(interrupted).toMatchObject({
      id: interruptedId,
      status: 'failed',
      localArtifactStatus: 'missing',
      checksumSha256: null,
      completedAt: null,
    });
    expect(interrupted!.error).toMatch(/stopped before the backup completed/);
    expect((await tierOf(tenantId)).tier).toBe('latest_not_complete');
    // Automation waiting on this backup hears that it failed.
    const failed = await eventually(() =>
      sink.events('flux.backup.failed').find((e) => e.subject === `${tenantId}/${interruptedId}`),
    );
    expect(failed.data).toMatchObject({ backupId: interruptedId, reason: 'interrupted' });

    // No stale lease: the next backup of the same project runs and completes.
    const next = await dump.fetch(`/api/cli/v1/projects/${tenant.hash}/backups`, { method: 'POST' });
    expect(next.status).toBe(200);
    const { backup } = (await next.json()) as { backup: ApiBackup };
    completedId = backup.id;
    expect(backup).toMatchObject({ status: 'complete', artifactValidationStatus: 'artifact_valid' });
    const listed = await list(tenant);
    expect(listed.map((b) => [b.id, b.status])).toEqual([
      [completedId, 'complete'],
      [interruptedId, 'failed'],
    ]);
  });

  it('replicate killed mid-copy: the start-up reconcile completes it, one receipt, the offsite hash matches', async () => {
    const first = await startFunction('replicate', base);
    const offsiteProject = path.join(offsiteDir(), bigId);
    // Sliced execution: the copy is looked at only while the process is stopped, so "a temp file and no
    // object yet" is what the process still sees when it is killed.
    const frozen = freezeWhen(first.pid, async () => {
      const names = await readdir(offsiteProject).catch(() => [] as string[]);
      const temp = names.find((n) => n.startsWith(TEMP_PREFIX) && n.includes('.dump.'));
      return temp && !names.some((n) => n.endsWith('.dump')) ? temp : undefined;
    });
    const backup = await writeLargeBackup(localDir(), bigId, BIG_BYTES);
    const temp = await frozen;
    const partial = (await stat(path.join(offsiteProject, temp))).size;
    await first.kill9();
    expect(partial).toBeLessThanOrEqual(BIG_BYTES);
    const receiptFile = path.join(localDir(), bigId, `${backup.backupId}.offsite.json`);
    expect(await exists(receiptFile)).toBe(false);

    replicate = await startFunction('replicate', base);
    const receipt = await eventually(async () => {
      const r = (await exists(receiptFile)) ? await readJson<OffsiteReceipt>(receiptFile) : undefined;
      return r?.status === 'replicated' ? r : undefined;
    }, 90_000);
    expect(receipt).toMatchObject({ contentSha256: backup.sha256, sizeBytes: BIG_BYTES, attempts: 1 });
    expect(await hashFile(path.join(offsiteProject, `${backup.backupId}.dump`))).toEqual({
      sha256: backup.sha256,
      sizeBytes: BIG_BYTES,
    });
    // What the store counts: the object and its manifest, never the killed process's temp file.
    const store = createFsOffsiteStore({ root: offsiteDir() });
    const keys: string[] = [];
    for await (const object of store.list(`${bigId}/`)) keys.push(object.key);
    expect(keys.sort()).toEqual([
      `${bigId}/${backup.backupId}.dump`,
      `${bigId}/${backup.backupId}.manifest.json`,
    ]);
    // Exactly one receipt file for the backup, and one replicated event (per webhook-id, after dedupe).
    const receipts = (await readdir(path.join(localDir(), bigId))).filter((n) => n.endsWith('.offsite.json'));
    expect(receipts).toEqual([`${backup.backupId}.offsite.json`]);
    const replicated = await eventually(() => {
      const e = sink
        .events('flux.backup.replicated')
        .filter((x) => x.subject === `${bigId}/${backup.backupId}`);
      return e.length > 0 ? e : undefined;
    });
    expect(replicated).toHaveLength(1);
    expect(replicated[0]!.data).toMatchObject({ trigger: 'startup', sha256: backup.sha256 });

    // The killed copy's temp file is the only other file; once abandoned past the sweep age, the next
    // scan (here on demand) removes it without waiting for another restart. The killed process may also
    // have been writing another project's files (the start-up reconcile copies every project at once):
    // those temps are its leftovers too, and go the same way, once no copy of the restart is in flight.
    const left = (await readdir(offsiteProject)).filter((n) => n.startsWith(TEMP_PREFIX));
    expect(left).toEqual([temp]);
    await eventually(async () => {
      const res = await replicate!.fetch('/replicate/status');
      return res.ok && ((await res.json()) as { pending: number }).pending === 0;
    });
    const leftovers = await tempsIn(offsiteDir());
    expect(leftovers).toContain(`${bigId}/${temp}`);
    const abandoned = new Date(Date.now() - 2 * 60 * 60 * 1000);
    for (const name of leftovers) await utimes(path.join(offsiteDir(), name), abandoned, abandoned);
    expect((await replicate.fetch('/replicate/run', { method: 'POST' })).status).toBe(200);
    expect(await tempsIn(offsiteDir())).toEqual([]);
    expect((await readdir(offsiteProject)).sort()).toEqual([
      `${backup.backupId}.dump`,
      `${backup.backupId}.manifest.json`,
    ]);

    const [listed] = await list(big);
    expect(listed).toMatchObject({
      id: backup.backupId,
      status: 'complete',
      offsiteStatus: 'complete',
      offsiteContentSha256: backup.sha256,
      artifactValidationStatus: 'artifact_valid',
    });
  });

  /** Starts an async verify and returns the live pg_restore of the restore, frozen with SIGSTOP. */
  async function frozenRestore(
    verify: FnProcess,
    parentOf: () => Promise<number | undefined>,
  ): Promise<{ pid: number; argv: string[] }> {
    const res = await verify.fetch(`/api/cli/v1/projects/${tenant.hash}/backups/${completedId}/verify`, {
      method: 'POST',
      headers: { prefer: 'respond-async' },
    });
    expect(res.status).toBe(202);
    const status = `/api/cli/v1/projects/${tenant.hash}/backups/${completedId}/verify`;
    const found = await eventually(
      async () => {
        const parent = await parentOf();
        const restore = parent
          ? descendantsOf(parent).find(
              (p) => p.argv[0]?.endsWith('pg_restore') && p.argv.includes('--single-transaction'),
            )
          : undefined;
        if (restore) return { restore };
        // A verification that ended before its restore was seen says why (and fails the test at once).
        const s = (await (await verify.fetch(status)).json()) as { running: boolean; verification: unknown };
        return s.running ? undefined : { ended: s.verification };
      },
      90_000,
      5,
    );
    if (!found.restore) throw new Error(`the verification ended early: ${JSON.stringify(found.ended)}`);
    const { restore } = found;
    process.kill(restore.pid, 'SIGSTOP');
    // Still restoring (not exited) when frozen: this is mid-restore.
    expect(isAlive(restore.pid)).toBe(true);
    return restore;
  }

  async function verifySync(verify: FnProcess): Promise<Record<string, unknown>> {
    const res = await verify.fetch(`/api/cli/v1/projects/${tenant.hash}/backups/${completedId}/verify`, {
      method: 'POST',
    });
    const body = (await res.json()) as Record<string, unknown>;
    expect(res.status, JSON.stringify(body)).toBe(200);
    return body;
  }

  it('verify (local sandbox) killed mid-restore: the reaper removes the sandbox and its server, a re-verify passes', async () => {
    const env = { ...base, FLUX_VERIFY_DRIVER: 'local' };
    const first = await startFunction('verify', env);
    const restore = await frozenRestore(first, async () => first.pid);
    // The restore's input lives in <sandbox>/in/backup.dump.
    const input = restore.argv.at(-1)!;
    const sandbox = path.dirname(path.dirname(input));
    expect(path.basename(sandbox).startsWith(LOCAL_SANDBOX_PREFIX)).toBe(true);
    await first.kill9();
    process.kill(restore.pid, 'SIGCONT');
    // Left behind by the crash: the directory and its server.
    expect(await exists(sandbox)).toBe(true);
    expect(processesWith(path.join(sandbox, 'data')).length).toBeGreaterThan(0);

    const second = await startFunction('verify', env);
    // The start-up reaper ran before the process served: the sandbox, its server and the restore are gone.
    expect(await exists(sandbox)).toBe(false);
    await eventually(() => processesWith(sandbox).length === 0, 20_000, 20);
    const body = await verifySync(second);
    expect(body).toMatchObject({ ok: true, restoreVerificationStatus: 'restore_verified', driver: 'local' });
    // Only sandboxes of the live process remain (its spare); none of the killed one.
    for (const name of await readdir(verifyLocalDir())) {
      const marker = await readJson<{ ownerPid: number }>(path.join(verifyLocalDir(), name, 'sandbox.json'));
      expect(marker.ownerPid).toBe(second.pid);
    }
    await second.stop();
  });

  describeDocker(gate, 'docker sandbox', () => {
    it('verify (docker sandbox) killed mid-restore: no container is left after the restart, a re-verify passes', async () => {
      const env = { ...base, FLUX_VERIFY_DRIVER: 'docker', FLUX_BACKUP_VERIFY_POSTGRES_IMAGE: IMAGE };
      // A claimed warm spare carries the backup id in its name (labels cannot change after creation).
      const mine = [`${LABEL.verify}=1`];
      const named = sandboxNamePrefix(completedId);
      const first = await startFunction('verify', env);
      let container: string | undefined;
      const restore = await frozenRestore(first, async () => {
        container ??= (await containersLabelled(mine, undefined, named))[0];
        return container ? shimOf(container)?.pid : undefined;
      });
      await first.kill9();
      process.kill(restore.pid, 'SIGCONT');
      expect(await containersLabelled(mine, undefined, named)).toEqual([container]);

      const second = await startFunction('verify', env);
      expect(await containersLabelled(mine, undefined, named)).toEqual([]);
      const body = await verifySync(second);
      expect(body).toMatchObject({
        ok: true,
        restoreVerificationStatus: 'restore_verified',
        driver: 'docker',
      });
      expect(await containersLabelled(mine, undefined, named)).toEqual([]);
      await second.stop();
    });
  });

  it('the outbox redelivers after a kill: every event reaches the receiver, once per webhook-id', async () => {
    sink.setDown(503);
    const res = await dump.fetch(`/api/cli/v1/projects/${tenant.hash}/backups`, { method: 'POST' });
    expect(res.status).toBe(200);
    const { backup } = (await res.json()) as { backup: ApiBackup };
    const pendingDir = path.join(testEnv.config.FLUX_STATE_DIR, 'outbox', 'dump', 'pending');
    // Durable and already refused by the sink at least once.
    const pending = await eventually(async () => {
      const deliveries: Delivery[] = [];
      for (const name of await readdir(pendingDir)) {
        if (name.endsWith('.json') && !name.startsWith('.'))
          deliveries.push(await readJson<Delivery>(path.join(pendingDir, name)));
      }
      const created = deliveries.find(
        (d) => d.event.type === 'flux.backup.created' && d.event.subject === `${tenantId}/${backup.id}`,
      );
      return created && (sink.refused.get(created.event.id) ?? 0) > 0 ? deliveries : undefined;
    });
    await dump.kill9();
    sink.setDown(undefined);

    dump = await startFunction('dump', base);
    const ids = pending.map((d) => d.event.id);
    await eventually(() => ids.every((id) => sink.accepted.has(id)), 30_000);
    // No loss, each id once at the receiver (a redelivery of an id it has is acknowledged and dropped).
    for (const d of pending) expect(sink.accepted.get(d.event.id)).toEqual(d.event);
    expect(new Set(ids).size).toBe(ids.length);
    expect(sink.unverified).toBe(0);
    await eventually(async () => (await readdir(pendingDir)).filter((n) => n.endsWith('.json')).length === 0);
    expect(await readdir(path.join(testEnv.config.FLUX_STATE_DIR, 'outbox', 'dump', 'dead'))).toEqual([]);
  });

  it('the final catalog is right: statuses and tiers as the HTTP API lists them', async () => {
    // The newest backup is verified now; replicate (restarted above) copies everything complete.
    const verify = await startFunction('verify', { ...base, FLUX_VERIFY_DRIVER: 'local' });
    const tenantList = await list(tenant);
    const newest = tenantList[0]!;
    const verified = await verify.fetch(`/api/cli/v1/projects/${tenant.hash}/backups/${newest.id}/verify`, {
      method: 'POST',
    });
    expect(verified.status).toBe(200);
    await verify.stop();

    const settled = await eventually(async () => {
      const l = await list(tenant);
      return l.filter((b) => b.status === 'complete').every((b) => b.offsiteStatus === 'complete')
        ? l
        : undefined;
    });
    expect(settled.map((b) => b.id)).toEqual([newest.id, completedId, interruptedId]);
    expect(settled[0]).toMatchObject({
      status: 'complete',
      artifactValidationStatus: 'artifact_valid',
      offsiteStatus: 'complete',
      restoreVerificationStatus: 'restore_verified',
    });
    expect(settled[1]).toMatchObject({
      status: 'complete',
      artifactValidationStatus: 'artifact_valid',
      offsiteStatus: 'complete',
      restoreVerificationStatus: 'restore_verified',
    });
    expect(settled[2]).toMatchObject({
      status: 'failed',
      localArtifactStatus: 'missing',
      offsiteStatus: 'pending',
    });
    expect(await tierOf(tenantId)).toMatchObject({
      tier: 'restorable',
      labels: { artifactValidated: true, restoreVerified: true, offsiteReplicated: true },
    });
    expect(await tierOf(bigId)).toMatchObject({
      tier: 'not_restore_verified',
      labels: { artifactValidated: true, restoreVerified: false, offsiteReplicated: true },
    });
    // Nothing partial anywhere in either root, once replicate has no job left: a copy a late trigger
    // asked for (a redelivered created event) writes its temp files while it runs, which is work in
    // progress, not a leftover.
    await eventually(async () => {
      const res = await replicate!.fetch('/replicate/status');
      return res.ok && ((await res.json()) as { pending: number }).pending === 0;
    });
    for (const root of [localDir(), offsiteDir()]) expect(await tempsIn(root), root).toEqual([]);
    const offsiteReceipts: OffsiteReceipt[] = [];
    const verifyReceipts: VerifyReceipt[] = [];
    for (const b of settled.filter((x) => x.status === 'complete')) {
      offsiteReceipts.push(await readJson(path.join(localDir(), tenantId, `${b.id}.offsite.json`)));
      verifyReceipts.push(await readJson(path.join(localDir(), tenantId, `${b.id}.verify.json`)));
    }
    expect(offsiteReceipts.every((r) => r.status === 'replicated')).toBe(true);
    expect(verifyReceipts.every((r) => r.status === 'restore_verified')).toBe(true);
    await replicate?.stop();
  });
});
