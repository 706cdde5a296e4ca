// How a local sandbox's server is stopped when its wrapper dies before the rest of it: what unshare does
// when it is stopped in the moment between forking the namespace's init and arming that child's
// parent-death signal (a start cancelled at once, a close during a start). Here a plain shell plays the
// wrapper and a child that ignores SIGQUIT plays the init left behind, holding the log pipe open.
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isAlive } from '../../test/support/faults.js';
import { eventually } from '../../test/support/runtime.js';
import { preparedDir } from './local-marker.js';
import { LocalSandbox } from './local-sandbox.js';

const VERSIONS = { server: '15.0', serverMajor: 15, pgRestore: '15.0', pgRestoreMajor: 15 };
/** Longer than the SIGKILL fallback of destroy (10 s): a hang is not mistaken for a slow stop. */
const HANG_MS = 20_000;

const dirs: string[] = [];
const pids: number[] = [];
afterEach(async () => {
  for (const pid of pids.splice(0)) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function sandboxWith(script: string) {
  const dir = await mkdtemp(path.join(tmpdir(), 'flux-local-sandbox-test-'));
  dirs.push(dir);
  const prepared = preparedDir(dir);
  await mkdir(prepared.data);
  const sandbox = new LocalSandbox(prepared, VERSIONS, process.env.PATH, () => undefined);
  const wrapped = { file: '/bin/sh', args: ['-c', script], release: async () => undefined };
  return { dir, sandbox, wrapped, childPidFile: path.join(dir, 'child.pid') };
}

/** The pid the script wrote once its child runs. */
async function childPid(file: string): Promise<number> {
  const pid = await eventually(
    async () => Number((await readFile(file, 'utf8').catch(() => '')).trim()) || undefined,
  );
  pids.push(pid);
  return pid;
}

function withinHang<T>(promise: Promise<T>): Promise<T | 'hung'> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<'hung'>((resolve) => {
      timer = setTimeout(() => resolve('hung'), HANG_MS);
    }),
  ]);
}

describe('LocalSandbox', () => {
  it('destroy() stops a server whose wrapper died before the rest of its group, and returns', async () => {
    const { dir, sandbox, wrapped, childPidFile } = await sandboxWith(
      `(trap '' QUIT; exec sleep 300) & echo $! > "$PWD/child.pid"; wait`,
    );
    const controller = new AbortController();
    const starting = sandbox.start(wrapped, controller.signal);
    const pid = await childPid(childPidFile);
    controller.abort(new Error('verification cancelled'));
    await expect(starting).rejects.toThrow('verification cancelled');
    // The wrapper dies of SIGQUIT; its child does not, and keeps the server's log pipe open.
    expect(await withinHang(sandbox.destroy())).toBeUndefined();
    expect(isAlive(pid)).toBe(false);
    await expect(readdir(dir)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a wrapper that exits during start-up fails the start at once, and leaves nothing of its group', async () => {
    const { sandbox, wrapped, childPidFile } = await sandboxWith(
      `sleep 300 & echo $! > "$PWD/child.pid"; echo 'could not start' >&2; exit 1`,
    );
    // No signal: only the wrapper's exit can end the wait for readiness.
    const started = withinHang(sandbox.start(wrapped, undefined).then(() => 'ready'));
    const pid = await childPid(childPidFile);
    await expect(started).rejects.toMatchObject({
      code: 'unverifiable',
      details: { reason: 'sandbox_failed' },
      message: expect.stringMatching(/exited during start-up/),
    });
    await eventually(() => !isAlive(pid));
    expect(sandbox.isRunning).toBe(false);
    expect(await withinHang(sandbox.destroy())).toBeUndefined();
  });
});
