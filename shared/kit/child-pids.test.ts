import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createChildPids } from './child-pids.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'flux-child-pids-'));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

function sleeper() {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_c, s) => resolve(s)));
  return { child, exited };
}

describe('createChildPids', () => {
  it('reaps a recorded child that still runs, and forgets what has exited', async () => {
    const pids = createChildPids({ dir: path.join(dir, 'a') });
    const running = sleeper();
    await pids.record(running.child.pid!, 'sleep');
    await pids.record(999_999_999, 'pg_dump');
    const reaped = await pids.reap();
    expect(reaped).toEqual(
      expect.arrayContaining([
        { pid: running.child.pid, tool: 'sleep', killed: true },
        { pid: 999_999_999, tool: 'pg_dump', killed: false },
      ]),
    );
    expect(await running.exited).toBe('SIGKILL');
    expect(await readdir(path.join(dir, 'a'))).toEqual([]);
    // Forget after a normal exit: nothing left to reap.
    const other = sleeper();
    await pids.record(other.child.pid!, 'sleep');
    await pids.forget(other.child.pid!);
    expect(await pids.reap()).toEqual([]);
    other.child.kill('SIGKILL');
    await other.exited;
  });

  it('never kills a process that only has the recorded pid (reused: another start time)', async () => {
    const pids = createChildPids({ dir: path.join(dir, 'b') });
    const running = sleeper();
    await pids.record(running.child.pid!, 'pg_dump');
    const file = path.join(dir, 'b', `${running.child.pid}.json`);
    const record = JSON.parse(await readFile(file, 'utf8')) as { startTicks: string };
    await writeFile(file, JSON.stringify({ ...record, startTicks: `${record.startTicks}0` }));
    expect(await pids.reap()).toEqual([{ pid: running.child.pid, tool: 'pg_dump', killed: false }]);
    expect(running.child.exitCode).toBeNull();
    running.child.kill('SIGKILL');
    await running.exited;
  });
});
