// The real replicate process (functions/replicate/main.ts under tsx): file arrival alone triggers the
// copy; backups that arrive while it is stopped are copied by the start-up reconcile; a store it cannot
// offer yet stops it at start with a clear message.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ReconcileSummary } from '../functions/replicate/replicator.js';
import { hashFile } from '../shared/atomic.js';
import {
  type FakeBackup,
  metricValue,
  newProjectId,
  offsiteFiles,
  readReceipt,
  writeBackup,
} from './replicate-fixtures.js';
import { freePort } from './support/pg.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

const ROOT = path.resolve(import.meta.dirname, '..');
// `node --import tsx`, not the tsx CLI: the CLI runs main.ts in a child and SIGKILLs it when it has not
// reported a relayed SIGTERM back within 30 ms (often missed on a loaded machine: exit 143, not 0).
const NODE_ARGS = ['--import', 'tsx', path.join(ROOT, 'functions', 'replicate', 'main.ts')];

interface Proc {
  child: ChildProcess;
  url: string;
  output: () => string;
  exited: Promise<number | null>;
}

function spawnReplicate(env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, NODE_ARGS, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (d) => {
    output += d.toString();
  });
  child.stderr?.on('data', (d) => {
    output += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, url: `http://127.0.0.1:${env.FLUX_REPLICATE_PORT}`, output: () => output, exited };
}

async function startReplicate(env: NodeJS.ProcessEnv): Promise<Proc> {
  const proc = spawnReplicate(env);
  await eventually(async () => (await fetch(`${proc.url}/healthz`)).ok, 60_000, 100).catch((error) => {
    throw new Error(`replicate did not start: ${error}\n${proc.output()}`);
  });
  return proc;
}

async function status(proc: Proc): Promise<{ pending: number; lastReconcile: ReconcileSummary | null }> {
  const res = await fetch(`${proc.url}/replicate/status`, { headers: ADMIN.header });
  return (await res.json()) as { pending: number; lastReconcile: ReconcileSummary | null };
}

async function stopReplicate(proc: Proc): Promise<number | null> {
  if (proc.child.exitCode === null) proc.child.kill('SIGTERM');
  return proc.exited;
}

describe('replicate as a process (npx tsx functions/replicate/main.ts)', () => {
  let receiver: EventReceiver;
  let testEnv: TestEnv;
  let env: NodeJS.ProcessEnv;
  const running: Proc[] = [];

  beforeAll(async () => {
    receiver = await startEventReceiver();
    testEnv = await makeTestEnv();
    env = {
      ...testEnv.env,
      FLUX_HOST: '127.0.0.1',
      FLUX_REPLICATE_PORT: String(await freePort()),
      // An hour: within this test only the start-up reconcile runs, so arrivals are seen by the watch.
      FLUX_REPLICATE_RECONCILE_INTERVAL_MS: String(60 * 60 * 1000),
      FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.backup.*'] }]),
      FLUX_LOG_LEVEL: 'info',
      FLUX_SHUTDOWN_GRACE_MS: '2000',
    };
  });

  afterAll(async () => {
    for (const proc of running) await stopReplicate(proc);
    await receiver?.close();
    await testEnv?.cleanup();
  });

  const local = () => testEnv.config.FLUX_BACKUPS_LOCAL_DIR;
  const replicatedAll = async (backups: FakeBackup[]) => {
    for (const b of backups) if ((await readReceipt(local(), b))?.status !== 'replicated') return false;
    return true;
  };

  it('replicates on file arrival alone (no event, no reconcile), also in project dirs created after start', async () => {
    const existing = newProjectId();
    await mkdir(path.join(local(), existing), { recursive: true });
    const proc = await startReplicate(env);
    running.push(proc);
    // The start-up reconcile has run (over an empty catalog) before anything arrives.
    const startup = await eventually(async () => (await status(proc)).lastReconcile ?? undefined);
    expect(startup).toMatchObject({ trigger: 'startup', backups: 0 });

    const fresh = newProjectId();
    const backups: FakeBackup[] = [];
    for (let i = 0; i < 5; i++) backups.push(await writeBackup(local(), existing));
    for (let i = 0; i < 5; i++) backups.push(await writeBackup(local(), fresh));
    await eventually(() => replicatedAll(backups));
    for (const b of backups) {
      expect(
        await hashFile(path.join(testEnv.config.FLUX_BACKUPS_OFFSITE_DIR, b.projectId, `${b.backupId}.dump`)),
      ).toEqual({ sha256: b.sha256, sizeBytes: b.sizeBytes });
    }
    const replicated = await eventually(() => {
      const events = receiver.events('flux.backup.replicated');
      return events.length >= backups.length ? events : undefined;
    });
    expect(replicated.map((e) => (e.data as { trigger: string }).trigger)).toEqual(
      backups.map(() => 'watch'),
    );
    // Still only the start-up reconcile: the watch did all of it.
    expect((await status(proc)).lastReconcile?.trigger).toBe('startup');
    expect(await stopReplicate(proc)).toBe(0);
  });

  it('copies the 50 backups that arrived while it was stopped, at start-up', async () => {
    receiver.deliveries.length = 0;
    const before = (await offsiteFiles(testEnv.config.FLUX_BACKUPS_OFFSITE_DIR)).length;
    const backups: FakeBackup[] = [];
    const projects = [newProjectId(), newProjectId()];
    for (let i = 0; i < 50; i++) backups.push(await writeBackup(local(), projects[i % 2]!));
    const proc = await startReplicate(env);
    running.push(proc);
    await eventually(() => replicatedAll(backups));
    const summary = await eventually(async () => (await status(proc)).lastReconcile ?? undefined);
    expect(summary).toMatchObject({
      trigger: 'startup',
      gaps: { unreplicated: 50 },
      results: { replicated: 50 },
    });
    expect(summary.skipped.replicated).toBe(10);
    const metrics = await (await fetch(`${proc.url}/metrics`)).text();
    expect(metricValue(metrics, 'flux_replicate_reconcile_gap', { gap: 'unreplicated' })).toBe(50);
    expect(metricValue(metrics, 'flux_replicate_results_total', { outcome: 'replicated' })).toBe(50);
    expect((await offsiteFiles(testEnv.config.FLUX_BACKUPS_OFFSITE_DIR)).length).toBe(before + 100);
    const events = await eventually(() => {
      const e = receiver.events('flux.backup.replicated');
      return e.length >= 50 ? e : undefined;
    });
    expect(new Set(events.map((e) => e.subject)).size).toBe(50);
    expect(events.every((e) => (e.data as { trigger: string }).trigger === 'startup')).toBe(true);
    const ready = await fetch(`${proc.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await stopReplicate(proc)).toBe(0);
  });

  it('refuses to start on a half-configured s3:// offsite store, naming what is missing', async () => {
    const proc = spawnReplicate({
      ...env,
      FLUX_BACKUPS_OFFSITE_DIR: 's3://flux-backups/offsite',
      FLUX_S3_ACCESS_KEY_ID: 'test-access-key-id',
      FLUX_S3_SECRET_ACCESS_KEY: '',
    });
    running.push(proc);
    expect(await proc.exited).toBe(78);
    expect(proc.output()).toMatch(
      /FLUX_S3_SECRET_ACCESS_KEY: is required when FLUX_BACKUPS_OFFSITE_DIR is s3:\/\//,
    );
    expect(proc.output()).not.toContain('test-access-key-id');
  });
});
