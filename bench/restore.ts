// restore: a backup of a v1 database (the verify bench's bulk-data fixture) restored through the restore
// process with `mode: "new"` (the whole POST: fetch check, create, prepare, pg_restore, validation against
// the manifest) against raw `createdb` + `pg_restore --no-owner` of the same dump file on the same server,
// in one run; plus the write-unavailability window of one in-place restore of a v2 tenant (its schema is
// set aside for the whole restore and validation) and of a v1 database (switched in one transaction).
import { randomUUID } from 'node:crypto';
import { execa } from 'execa';
import { backupPaths } from '../shared/catalog/layout.js';
import { generateBulkData, seedTenant, tenantSchemaOf } from '../test/support/fixtures.js';
import { freePort } from '../test/support/pg.js';
import { type BenchContext, type Dirs, hashOf, writeRegistry } from './context.js';
import { alternate, median, summarize } from './stats.js';
import { defer, type FunctionProcess, MB, memoryOf, resetPeak, startFunction } from './support.js';

/** The database the v2 tenant lives in, beside the v1 database of the comparison. */
const TENANTS_DB = 'bench_restore_tenants';
/** Where every `mode: "new"` round lands (dropped after each round, like the raw side's). */
const NEW_DB = 'bench_restore_new';
const RAW_DB = 'bench_restore_raw';

interface Project {
  id: string;
  hash: string;
  slug: string;
}

interface Stage {
  stage: string;
  seconds: number;
}

interface RestoreAnswer {
  ok?: boolean;
  error?: string;
  restore?: {
    id: string;
    status: string;
    seconds: number;
    stages: Stage[];
    rungs: Array<{ rung: string; result: string }>;
    writeUnavailableSeconds?: number;
    created?: string;
  };
}

const project = (slug: string): Project => {
  const id = randomUUID();
  return { id, hash: hashOf(id), slug };
};

/** Per-stage medians over a list of restore answers' `stages`. */
function stageMedians(list: Stage[][]): Record<string, number> {
  const names = [...new Set(list.flatMap((stages) => stages.map((s) => s.stage)))];
  return Object.fromEntries(
    names.map((name) => [
      name,
      median(list.map((stages) => stages.filter((s) => s.stage === name).reduce((n, s) => n + s.seconds, 0))),
    ]),
  );
}

export async function benchRestore(ctx: BenchContext): Promise<void> {
  const { options } = ctx;
  const source = await ctx.source();
  const cluster = source.cluster;
  const dropDatabase = (name: string) =>
    cluster.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).then(() => undefined);
  defer('restore bench databases', async () => {
    for (const name of [NEW_DB, RAW_DB]) await dropDatabase(name);
  });

  // The v1 database: the verify bench's fixture, at the restore bench's size (shared when both run).
  const db = await source.projectDb('bench_verify', options.restoreMb);
  // The v2 tenant: a seeded tenant whose schema holds bulk data of the same size.
  const tenant = project('bench-restore-tenant');
  const dedicated = project('bench-restore-v1');
  await cluster.createDatabase(TENANTS_DB);
  await seedTenant(cluster, { db: TENANTS_DB, projectId: tenant.id, rows: 20_000 });
  const grown = performance.now();
  const bulk = await generateBulkData(cluster, {
    db: TENANTS_DB,
    schema: tenantSchemaOf(tenant.id),
    megabytes: options.restoreMb,
  });
  await cluster.query('VACUUM (FREEZE, ANALYZE)', [], TENANTS_DB);
  await cluster.query('CHECKPOINT');
  ctx.say(
    `restore: tenant schema grown to ${Math.round(bulk.bytes / MB)} MB of bulk data in ${((performance.now() - grown) / 1000).toFixed(1)} s`,
  );

  const dirs = await ctx.dirs('restore');
  await writeRegistry(dirs.projects, {
    clusters: [{ name: 'bench-restore', url: 'env:BENCH_TENANTS_URL' }],
    projects: [
      { ...dedicated, engine: 'v1_dedicated', databaseUrl: 'env:BENCH_RESTORE_DB_URL' },
      { ...tenant, engine: 'v2_shared', cluster: 'bench-restore' },
    ],
  });
  const urls = { BENCH_RESTORE_DB_URL: db.url, BENCH_TENANTS_URL: cluster.url(TENANTS_DB) };

  // dump serves the backups and, later, the in-place restores' safety backups; restore is its own
  // process beside it (as in compose), so its peak RSS is the restore function's alone.
  const dumpPort = await freePort();
  const restorePort = await freePort();
  const dump = await startFunction({
    main: 'dump',
    port: dumpPort,
    ready: true,
    env: ctx.env(dirs, { ...urls, FLUX_DUMP_PORT: String(dumpPort) }),
  });
  let proc: FunctionProcess | undefined;
  try {
    const create = async (p: Project) => {
      const res = await fetch(`${dump.url}/api/cli/v1/projects/${p.hash}/backups`, {
        method: 'POST',
        headers: ctx.token.header,
      });
      const body = (await res.json()) as { backup?: { id: string; sizeBytes: number }; error?: string };
      if (res.status !== 200 || !body.backup)
        throw new Error(`dump create answered ${res.status}: ${body.error}\n${dump.output().slice(-2000)}`);
      return body.backup;
    };
    const v1Backup = await create(dedicated);
    const v2Backup = await create(tenant);
    const dumpFile = backupPaths(dirs.local, dedicated.id, v1Backup.id).dump;
    ctx.say(
      `restore: ${Math.round(db.bytes / MB)} MB database, backup of ${Math.round(v1Backup.sizeBytes / MB)} MB; tenant backup of ${Math.round(v2Backup.sizeBytes / MB)} MB`,
    );

    const own: Dirs = { ...dirs, state: `${dirs.base}/state-restore` };
    proc = await startFunction({
      main: 'restore',
      port: restorePort,
      ready: true,
      env: ctx.env(own, {
        ...urls,
        FLUX_RESTORE_PORT: String(restorePort),
        FLUX_DUMP_URL: dump.url,
        FLUX_RESTORE_TIMEOUT_MS: String(2 * 60 * 60_000),
        // The replaced copies go once each in-place restore is proven: the bench keeps no disk.
        FLUX_RESTORE_KEEP_PREVIOUS_HOURS: '0',
      }),
    });
    const restoreProc = proc;

    const post = async (p: Project, backupId: string, body: Record<string, unknown>) => {
      await resetPeak(restoreProc.pid);
      const started = performance.now();
      const res = await fetch(
        `${restoreProc.url}/api/cli/v1/projects/${p.hash}/backups/${backupId}/restore`,
        {
          method: 'POST',
          headers: { ...ctx.token.header, 'content-type': 'application/json' },
          body: JSON.stringify({ source: 'local', ...body }),
        },
      );
      const answer = (await res.json()) as RestoreAnswer;
      const wall = (performance.now() - started) / 1000;
      if (res.status !== 200 || answer.restore?.status !== 'completed') {
        throw new Error(
          `restore ${JSON.stringify(body)} answered ${res.status}: ${answer.error ?? JSON.stringify(answer)}\n${restoreProc.output().slice(-2000)}`,
        );
      }
      return { wall, restore: answer.restore, peakMb: (await memoryOf(restoreProc.pid)).peak / MB };
    };

    const stages: Stage[][] = [];
    const peaks: number[] = [];
    const reported: number[] = [];
    const viaFunction = async () => {
      await dropDatabase(NEW_DB);
      const { wall, restore, peakMb } = await post(dedicated, v1Backup.id, {
        mode: 'new',
        targetName: NEW_DB,
      });
      const failed = restore.rungs.filter((r) => r.result !== 'passed');
      if (failed.length > 0) throw new Error(`restore validation: ${JSON.stringify(failed)}`);
      stages.push(restore.stages);
      peaks.push(peakMb);
      reported.push(restore.seconds);
      await dropDatabase(NEW_DB);
      return wall;
    };
    const libpq = { ...process.env, ...cluster.env('postgres') };
    // The raw side's own split, to set against the function's stages.
    const rawSplit: Array<{ createdb: number; pgRestore: number }> = [];
    const raw = async () => {
      await dropDatabase(RAW_DB);
      const started = performance.now();
      const created = await execa('createdb', [RAW_DB], { env: libpq, reject: false });
      if (created.exitCode !== 0) throw new Error(`createdb failed: ${created.stderr}`);
      const createdAt = performance.now();
      const restored = await execa('pg_restore', ['--no-owner', '-d', RAW_DB, dumpFile], {
        env: libpq,
        reject: false,
      });
      const ended = performance.now();
      const elapsed = (ended - started) / 1000;
      rawSplit.push({ createdb: (createdAt - started) / 1000, pgRestore: (ended - createdAt) / 1000 });
      if (restored.exitCode !== 0)
        throw new Error(`pg_restore failed: ${String(restored.stderr).slice(-1000)}`);
      await dropDatabase(RAW_DB);
      return elapsed;
    };
    ctx.say(`restore: mode new vs createdb + pg_restore, ${options.rounds} alternating rounds`);
    const runs = await alternate(options.rounds, { fn: viaFunction, base: raw }, { warmup: options.warmup });
    const measured = stages.slice(-options.rounds);
    ctx.record({
      id: 'restore.new',
      group: 'restore',
      name: `restore mode new (validated), ${Math.round(v1Backup.sizeBytes / MB)} MB dump`,
      unit: 's',
      fn: summarize(runs.fn),
      baseline: { ...summarize(runs.base), label: 'createdb + pg_restore --no-owner' },
      goals: [{ of: 'ratio', op: '<=', value: 1.1 }],
      peakRssMb: Math.max(...peaks.slice(-options.rounds)),
      details: {
        dumpBytes: v1Backup.sizeBytes,
        databaseBytes: db.bytes,
        stageSecondsMedian: stageMedians(measured),
        reportedSecondsMedian: median(reported.slice(-options.rounds)),
        rawSecondsMedian: {
          createdb: median(rawSplit.slice(-options.rounds).map((r) => r.createdb)),
          pgRestore: median(rawSplit.slice(-options.rounds).map((r) => r.pgRestore)),
        },
      },
      note: `stage medians: ${Object.entries(stageMedians(measured))
        .map(([s, v]) => `${s} ${v.toFixed(2)} s`)
        .join(
          ', ',
        )}; raw: createdb ${median(rawSplit.slice(-options.rounds).map((r) => r.createdb)).toFixed(2)} s, pg_restore ${median(rawSplit.slice(-options.rounds).map((r) => r.pgRestore)).toFixed(2)} s`,
    });

    // The in-place windows: one restore each (a safety backup through dump first; not in the window).
    ctx.say('restore: in-place restores of the v2 tenant and the v1 database (write-unavailability windows)');
    const inPlace = { mode: 'in_place', yes: true, skipBackupCheck: true };
    const windows: Array<[Project, { id: string; sizeBytes: number }, string, string]> = [
      [tenant, v2Backup, 'v2', 'live schema set aside for the whole restore and validation'],
      [
        dedicated,
        v1Backup,
        'v1',
        'restored and validated in a staging database, switched in one transaction',
      ],
    ];
    for (const [p, backup, engine, how] of windows) {
      const { wall, restore, peakMb } = await post(p, backup.id, inPlace);
      if (restore.writeUnavailableSeconds === undefined)
        throw new Error(`in-place restore of ${engine} reported no writeUnavailableSeconds`);
      ctx.record({
        id: `restore.in_place.${engine}.unavailable`,
        group: 'restore',
        name: `restore in place (${engine}), ${Math.round(backup.sizeBytes / MB)} MB dump: write-unavailable window`,
        unit: 's',
        fn: summarize([restore.writeUnavailableSeconds]),
        peakRssMb: peakMb,
        details: {
          dumpBytes: backup.sizeBytes,
          wallSeconds: wall,
          stageSeconds: Object.fromEntries(restore.stages.map((s) => [s.stage, s.seconds])),
        },
        note: `one run; ${how}; whole POST ${wall.toFixed(1)} s (${restore.stages.map((s) => `${s.stage} ${s.seconds.toFixed(2)}`).join(', ')})`,
      });
    }
  } finally {
    await proc?.stop();
    await dump.stop();
  }
}
