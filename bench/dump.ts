// dump: a create through the real dump process (HTTP, snapshot counts, SHA-256 while streaming, fsync,
// manifest) against raw `pg_dump -Fc -Z1 -f` of the same database, at two database sizes; plus the
// peak RSS of the function process at each size, which must not grow with the database.
import { randomUUID } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { freePort } from '../test/support/pg.js';
import { type BenchContext, hashOf, writeRegistry } from './context.js';
import { alternate, summarize } from './stats.js';
import { cpuSecondsOf, MB, memoryOf, resetPeak, startFunction } from './support.js';

const PEAK_RSS_LIMIT_MB = 100;
/** "Flat" peak RSS: the double-size database may cost at most this much more. */
const PEAK_RSS_GROWTH_MAX = 1.1;

export async function benchDump(ctx: BenchContext): Promise<void> {
  const { options } = ctx;
  const source = await ctx.source();
  const peaks: number[][] = [];
  const dirs = await ctx.dirs('dump');
  const project = { id: randomUUID(), slug: 'bench-dump' };
  await writeRegistry(dirs.projects, {
    projects: [
      {
        id: project.id,
        hash: hashOf(project.id),
        slug: project.slug,
        engine: 'v1_dedicated',
        databaseUrl: 'env:BENCH_DUMP_DB_URL',
      },
    ],
  });
  let peakResettable = true;

  for (const mb of options.dumpMb) {
    const db = await source.projectDb('bench_dump', mb);
    const port = await freePort();
    const proc = await startFunction({
      main: 'dump',
      port,
      ready: true,
      env: ctx.env(dirs, { FLUX_DUMP_PORT: String(port), BENCH_DUMP_DB_URL: db.url }),
    });
    const sizePeaks: number[] = [];
    const cpu: number[] = [];
    const idle: number[] = [];
    const fnBytes: number[] = [];
    const rawBytes: number[] = [];
    const rawFile = path.join(dirs.base, 'raw.dump');
    try {
      const viaFunction = async () => {
        peakResettable = (await resetPeak(proc.pid)) && peakResettable;
        idle.push((await memoryOf(proc.pid)).rss / MB);
        const cpuBefore = await cpuSecondsOf(proc.pid);
        const started = performance.now();
        const res = await fetch(`${proc.url}/api/cli/v1/projects/${hashOf(project.id)}/backups`, {
          method: 'POST',
          headers: ctx.token.header,
        });
        const body = (await res.json()) as { backup?: { id: string; sizeBytes: number }; error?: string };
        const elapsed = (performance.now() - started) / 1000;
        if (res.status !== 200 || !body.backup) {
          throw new Error(`dump create answered ${res.status}: ${body.error}\n${proc.output().slice(-2000)}`);
        }
        sizePeaks.push((await memoryOf(proc.pid)).peak / MB);
        cpu.push((await cpuSecondsOf(proc.pid)) - cpuBefore);
        fnBytes.push(body.backup.sizeBytes);
        // Nothing accumulates between runs (retention is off): the next run starts from the same disk.
        for (const suffix of ['.dump', '.manifest.json', '.state.json']) {
          await rm(path.join(dirs.local, project.id, `${body.backup.id}${suffix}`), { force: true });
        }
        return elapsed;
      };
      const raw = async () => {
        const started = performance.now();
        const result = await execa('pg_dump', ['-Fc', '-Z1', '-f', rawFile, db.db], {
          env: { ...process.env, ...source.cluster.env(db.db) },
          reject: false,
        });
        const elapsed = (performance.now() - started) / 1000;
        if (result.exitCode !== 0) throw new Error(`pg_dump failed: ${result.stderr}`);
        rawBytes.push((await stat(rawFile)).size);
        await rm(rawFile, { force: true });
        return elapsed;
      };
      ctx.say(`dump: ${Math.round(db.bytes / MB)} MB database, ${options.rounds} alternating rounds`);
      const runs = await alternate(
        options.rounds,
        { fn: viaFunction, base: raw },
        { warmup: options.warmup },
      );
      // Warm-up runs pushed side samples too: keep the measured ones (the last `rounds`).
      const measuredPeaks = sizePeaks.slice(-options.rounds);
      peaks.push(measuredPeaks);
      ctx.record({
        id: `dump.create.${mb}mb`,
        group: 'dump',
        name: `dump create, ${Math.round(db.bytes / MB)} MB db`,
        unit: 's',
        fn: summarize(runs.fn),
        baseline: { ...summarize(runs.base), label: 'pg_dump -Fc -Z1' },
        goals: [{ of: 'ratio', op: '<=', value: 1.05 }],
        peakRssMb: Math.max(...measuredPeaks),
        details: {
          databaseBytes: db.bytes,
          dumpBytes: fnBytes.at(-1),
          rawDumpBytes: rawBytes.at(-1),
          functionCpuSeconds: summarize(cpu.slice(-options.rounds)).median,
          rssBeforeCreateMb: summarize(idle.slice(-options.rounds)).median,
        },
      });
    } finally {
      await proc.stop();
    }
  }

  const [small, large] = peaks;
  if (small && large) {
    const [mbSmall, mbLarge] = options.dumpMb;
    ctx.record({
      id: 'dump.peak-rss',
      group: 'dump',
      name: `dump peak RSS, ${mbLarge} vs ${mbSmall} MB db`,
      unit: 'MB',
      fn: summarize(large),
      baseline: { ...summarize(small), label: `at ${mbSmall} MB` },
      goals: [
        { of: 'ratio', op: '<=', value: PEAK_RSS_GROWTH_MAX },
        { of: 'peakRssMb', op: '<=', value: PEAK_RSS_LIMIT_MB },
      ],
      peakRssMb: Math.max(...large),
      note: peakResettable
        ? 'peak RSS (VmHWM) of the node process, reset before each create'
        : 'peak RSS (VmHWM) of the node process since its start (the kernel refused a reset)',
    });
  }
}
