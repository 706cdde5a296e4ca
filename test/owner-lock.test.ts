// One owner per function per directory, as real processes: a second all-in-one (or a second process of
// one function) on the same FLUX_STATE_DIR or backup root refuses to start in one line and changes
// nothing; a kill -9'd owner's lock is taken over; different functions share a state dir; a port in use
// stops a process before any start-up work.
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newBackupId } from '../shared/catalog/ids.js';
import type { BackupState } from '../shared/catalog/records.js';
import { EXIT } from '../shared/errors.js';
import { killStartedFunctions, ROOT, startFunction } from './support/faults.js';
import { freePort } from './support/pg.js';
import { eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

let testEnv: TestEnv;
const children: ResultPromise[] = [];

beforeAll(async () => {
  testEnv = await makeTestEnv({ FLUX_VERIFY_DRIVER: 'local', FLUX_PROBE_INTERVAL_MS: '0' });
});
afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  await Promise.allSettled(children);
  await killStartedFunctions();
  await testEnv?.cleanup();
});

/** Separate directories under the test root, for one scenario. */
function dirsOf(name: string): Record<string, string> {
  const base = path.join(testEnv.root, name);
  return {
    FLUX_STATE_DIR: path.join(base, 'state'),
    FLUX_BACKUPS_LOCAL_DIR: path.join(base, 'backups'),
    FLUX_BACKUPS_OFFSITE_DIR: path.join(base, 'offsite'),
  };
}

/** `node --import tsx <main>` with `env`, output collected (not awaited). */
function spawnMain(main: string, env: Record<string, string>): ResultPromise {
  const child = execa(process.execPath, ['--import', 'tsx', main], {
    cwd: ROOT,
    env: { ...testEnv.env, FLUX_HOST: '127.0.0.1', ...env },
    reject: false,
    stdin: 'ignore',
    forceKillAfterDelay: false,
  });
  children.push(child);
  return child;
}

async function startAll(env: Record<string, string>): Promise<{ child: ResultPromise; url: string }> {
  const port = await freePort();
  const child = spawnMain('functions/all/main.ts', { ...env, FLUX_PORT: String(port) });
  const url = `http://127.0.0.1:${port}`;
  await eventually(async () => {
    if (child.exitCode !== null) throw new Error(`all-in-one exited ${child.exitCode}: ${child.stderr}`);
    return (await fetch(`${url}/healthz`)).ok;
  }, 90_000);
  return { child, url };
}

/** What a dump in progress leaves on disk: its running state record and its temp file. */
async function plantRunningDump(root: string): Promise<{ state: string; temp: string; bytes: string }> {
  const projectId = randomUUID();
  const backupId = newBackupId();
  const dir = path.join(root, projectId);
  await mkdir(dir, { recursive: true });
  const now = new Date().toISOString();
  const record: BackupState = {
    backupId,
    projectId,
    kind: 'project_db',
    status: 'running',
    createdAt: now,
    updatedAt: now,
    pid: process.pid,
  };
  const state = path.join(dir, `${backupId}.state.json`);
  const temp = path.join(dir, `.tmp-${backupId}.dump.0123456789ab`);
  await writeFile(state, JSON.stringify(record));
  await writeFile(temp, 'partial dump bytes');
  return { state, temp, bytes: JSON.stringify(record) };
}

function oneLine(stderr: unknown): string {
  const lines = String(stderr).trimEnd().split('\n');
  expect(lines).toHaveLength(1);
  return lines[0]!;
}

describe('one owner per state directory and backup root', () => {
  it('a second all-in-one on the same dirs exits non-zero in one line; the first and its work are untouched', async () => {
    const dirs = dirsOf('two-all');
    const first = await startAll(dirs);
    const work = await plantRunningDump(dirs.FLUX_BACKUPS_LOCAL_DIR!);

    const second = spawnMain('functions/all/main.ts', { ...dirs, FLUX_PORT: String(await freePort()) });
    const refused = await second;
    expect(refused.exitCode).toBe(EXIT.tempFail);
    const line = oneLine(refused.stderr);
    expect(line).toMatch(
      new RegExp(
        `^flux-ops all: FLUX_STATE_DIR=${dirs.FLUX_STATE_DIR} is in use by dump process pid ${first.child.pid} on host \\S+ .*stop that process, or give this one its own FLUX_STATE_DIR`,
      ),
    );
    // Refused before it logged its start, recovered, swept or listened.
    expect(String(refused.stdout)).toBe('');

    // The first one's running backup is still running: its state and temp file are as they were.
    expect(await readFile(work.state, 'utf8')).toBe(work.bytes);
    expect(await readFile(work.temp, 'utf8')).toBe('partial dump bytes');
    expect((await fetch(`${first.url}/healthz`)).ok).toBe(true);

    first.child.kill('SIGTERM');
    expect((await first.child).exitCode).toBe(0);
    // A clean stop releases every lock.
    expect(await readdir(path.join(dirs.FLUX_STATE_DIR!, 'owners'))).toEqual([]);
    expect((await readdir(dirs.FLUX_BACKUPS_LOCAL_DIR!)).filter((n) => n.startsWith('.flux-owner'))).toEqual(
      [],
    );
  });

  it("a kill -9'd owner's lock is taken over by the next start", async () => {
    const env = { ...testEnv.env, ...dirsOf('killed') };
    const first = await startFunction('dump', env);
    const lock = path.join(env.FLUX_STATE_DIR!, 'owners', 'dump.lock');
    expect(JSON.parse(await readFile(lock, 'utf8'))).toMatchObject({ fn: 'dump', pid: first.pid });
    await first.kill9();
    // The dead owner's lock is still there...
    await stat(lock);
    // ...and the next process takes it over.
    const next = await startFunction('dump', env);
    expect(JSON.parse(await readFile(lock, 'utf8'))).toMatchObject({ fn: 'dump', pid: next.pid });
    expect(await next.stop()).toBe(0);
  });

  it('different functions share one state dir; the same function is refused on the state dir and on the root', async () => {
    const dirs = dirsOf('shared-state');
    const env = { ...testEnv.env, ...dirs };
    const dump = await startFunction('dump', env);
    const replicate = await startFunction('replicate', env);
    const probe = await startFunction('probe', env);
    expect((await replicate.fetch('/readyz')).status).toBeLessThan(600);

    // Same state dir, another backup root.
    const sameState = await spawnMain('functions/dump/main.ts', {
      ...dirs,
      FLUX_BACKUPS_LOCAL_DIR: path.join(testEnv.root, 'shared-state', 'other-root'),
      FLUX_DUMP_PORT: String(await freePort()),
    });
    expect(sameState.exitCode).toBe(EXIT.tempFail);
    expect(oneLine(sameState.stderr)).toMatch(
      new RegExp(`^flux-ops dump: FLUX_STATE_DIR=\\S+ is in use by dump process pid ${dump.pid} `),
    );
    // Same backup root, another state dir.
    const sameRoot = await spawnMain('functions/dump/main.ts', {
      ...dirs,
      FLUX_STATE_DIR: path.join(testEnv.root, 'shared-state', 'other-state'),
      FLUX_DUMP_PORT: String(await freePort()),
    });
    expect(sameRoot.exitCode).toBe(EXIT.tempFail);
    expect(oneLine(sameRoot.stderr)).toMatch(
      new RegExp(
        `^flux-ops dump: FLUX_BACKUPS_LOCAL_DIR=${dirs.FLUX_BACKUPS_LOCAL_DIR} is in use by dump process pid ${dump.pid} .*own FLUX_BACKUPS_LOCAL_DIR`,
      ),
    );
    // An all-in-one holds every function's lock, so it is refused beside any of them.
    const all = await spawnMain('functions/all/main.ts', { ...dirs, FLUX_PORT: String(await freePort()) });
    expect(all.exitCode).toBe(EXIT.tempFail);
    expect(oneLine(all.stderr)).toMatch(/^flux-ops all: FLUX_STATE_DIR=\S+ is in use by dump process/);

    for (const fn of [probe, replicate, dump]) expect(await fn.stop()).toBe(0);
  });

  it('a port in use: one line naming the port and the variable, non-zero, before any start-up work', async () => {
    const dirs = dirsOf('port-in-use');
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      // A dump a crashed process left running: a start that got past the port would mark it interrupted.
      const work = await plantRunningDump(dirs.FLUX_BACKUPS_LOCAL_DIR!);
      const result = await spawnMain('functions/dump/main.ts', { ...dirs, FLUX_DUMP_PORT: String(port) });
      expect(result.exitCode).toBe(EXIT.tempFail);
      const line = oneLine(result.stderr);
      expect(line).toBe(
        `flux-ops dump: port ${port} on 127.0.0.1 is already in use (is this function already running?): ` +
          'stop that process, or set FLUX_DUMP_PORT to a free port',
      );
      expect(await readFile(work.state, 'utf8')).toBe(work.bytes);
      expect(await readFile(work.temp, 'utf8')).toBe('partial dump bytes');
      expect(String(result.stdout)).not.toContain('"msg":"listening"');
      // Its locks went with it.
      expect(await readdir(path.join(dirs.FLUX_STATE_DIR!, 'owners'))).toEqual([]);

      const all = await spawnMain('functions/all/main.ts', { ...dirs, FLUX_PORT: String(port) });
      expect(all.exitCode).toBe(EXIT.tempFail);
      expect(oneLine(all.stderr)).toMatch(
        new RegExp(`^flux-ops all: port ${port} on 127\\.0\\.0\\.1 is already in use .*set FLUX_PORT`),
      );
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });
});
