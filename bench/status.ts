// status: GET /api/ops/v1/status of a project with a long history (2,000 backups; 500 on --quick) against
// the same project with one backup, each through its own dump process: the status must cost what the
// newest backups cost, not what the history does. Every backup is complete, with a small dump and a
// passing verify receipt for its bytes, so the newest is restorable (the common case of a healthy fleet).
import { createHash, randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { ensureDir, writeJsonAtomic } from '../shared/atomic.js';
import { newBackupId } from '../shared/catalog/ids.js';
import { backupPaths } from '../shared/catalog/layout.js';
import { fakeManifest, fakeVerifyReceipt } from '../test/replicate-fixtures.js';
import { freePort } from '../test/support/pg.js';
import { type BenchContext, type Dirs, hashOf, writeRegistry } from './context.js';
import { alternate, summarize } from './stats.js';
import { type FunctionProcess, MB, memoryOf, startFunction } from './support.js';

/** Backups written for a history, oldest first, with ids in creation order a second apart. */
async function writeHistory(dirs: Dirs, projectId: string, count: number): Promise<void> {
  const start = Date.now() - count * 1000;
  for (let i = 0; i < count; i++) {
    const backupId = newBackupId(start + i * 1000);
    const paths = backupPaths(dirs.local, projectId, backupId);
    const bytes = Buffer.from(`dump ${backupId}\n`);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const createdAt = new Date(start + i * 1000).toISOString();
    await ensureDir(paths.dir);
    await writeFile(paths.dump, bytes);
    const manifest = { ...fakeManifest(projectId, backupId, { sizeBytes: bytes.length, sha256 }), createdAt };
    await writeJsonAtomic(paths.manifest, manifest);
    await writeJsonAtomic(
      paths.verify,
      fakeVerifyReceipt(projectId, backupId, sha256, 'restore_verified', createdAt),
    );
  }
}

export async function benchStatus(ctx: BenchContext): Promise<void> {
  const history = ctx.options.quick ? 500 : 2000;
  const sides: FunctionProcess[] = [];
  for (const [name, count] of [
    ['one', 1],
    ['history', history],
  ] as const) {
    const dirs = await ctx.dirs(`status-${name}`);
    const id = randomUUID();
    await writeRegistry(dirs.projects, {
      projects: [
        { id, hash: hashOf(id), slug: `status-${name}`, engine: 'v1_dedicated', databaseUrl: 'env:UNUSED' },
      ],
    });
    await writeHistory(dirs, id, count);
    const port = await freePort();
    const proc = await startFunction({
      main: 'dump',
      port,
      env: ctx.env(dirs, { FLUX_DUMP_PORT: String(port), UNUSED: 'postgresql://127.0.0.1:1/unused' }),
    });
    sides.push(proc);
  }
  try {
    const timed = (proc: FunctionProcess) => async () => {
      const started = performance.now();
      const res = await fetch(`${proc.url}/api/ops/v1/status`, { headers: ctx.token.header });
      const body = (await res.json()) as { projects?: Array<{ tier: string }> };
      const elapsed = performance.now() - started;
      if (res.status !== 200 || body.projects?.[0]?.tier !== 'restorable')
        throw new Error(`status answered ${res.status}: ${JSON.stringify(body).slice(0, 300)}`);
      return elapsed;
    };
    const [one, long] = sides as [FunctionProcess, FunctionProcess];
    const rounds = Math.max(ctx.options.rounds, 10);
    ctx.say(`status: a project with ${history} backups against one with 1, ${rounds} alternating rounds`);
    // The first status of each process hashes the newest dump (then cached by size and mtime): warm-up.
    const runs = await alternate(rounds, { fn: timed(long), base: timed(one) }, { warmup: 2 });
    ctx.record({
      id: 'status.history',
      group: 'status',
      name: `status of a project with ${history} backups`,
      unit: 'ms',
      fn: summarize(runs.fn),
      baseline: { ...summarize(runs.base), label: 'status of the project with one backup' },
      goals: [{ of: 'ratio', op: '<=', value: 2 }],
      peakRssMb: (await memoryOf(long.pid)).peak / MB,
      details: { backups: history },
      note: 'the cost of a status call must not grow with a project history',
    });
  } finally {
    for (const proc of sides) await proc.stop();
  }
}
