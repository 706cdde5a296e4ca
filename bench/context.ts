// The run's shared state: options (full or --quick sizes), a temp root, the generated source cluster
// (databases grown to a size, never shrunk), the environment function processes start from, and tokens.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createFluxRoles, generateBulkData, seedProjectDb } from '../test/support/fixtures.js';
import { freePort, type PgCluster, startPostgres } from '../test/support/pg.js';
import { type EventReceiver, startEventReceiver } from '../test/support/receiver.js';
import { makeToken, type TestToken, WEBHOOK_SECRET } from '../test/support/runtime.js';
import { type BenchResult, type Group, makeResult, num, type ResultInput } from './report.js';
import { defer, type FunctionProcess, MB, startFunction } from './support.js';

export interface BenchOptions {
  quick: boolean;
  /** Measured rounds per comparison (each round runs the function and its baseline once). */
  rounds: number;
  /** Unrecorded rounds first (caches, JIT, hint bits). */
  warmup: number;
  only: ReadonlySet<Group> | undefined;
  /** Database sizes of the dump benchmark (MB): the second is double the first. */
  dumpMb: [number, number];
  /** Size of the large replicate backup (MiB). */
  replicateMb: number;
  /** Small backups for replicate latency (one at a time, then all at once). */
  smallBackups: number;
  /** Database size for the verify benchmark (MB); its -Z1 dump is about half of it. */
  verifyMb: number;
  /** Database size for the restore benchmark (MB; the verify fixture, so shared when both run). */
  restoreMb: number;
  tenants: number;
  /** Tenants of the fleet cycle (it also runs at a tenth of them, for the growth). */
  fleetTenants: number;
  events: number;
  e2eRuns: number;
}

export function defaultOptions(quick: boolean): BenchOptions {
  return quick
    ? {
        quick,
        rounds: 3,
        warmup: 0,
        only: undefined,
        dumpMb: [50, 100],
        replicateMb: 128,
        smallBackups: 200,
        verifyMb: 60,
        restoreMb: 60,
        tenants: 1000,
        fleetTenants: 100,
        events: 500,
        e2eRuns: 3,
      }
    : {
        quick,
        rounds: 5,
        warmup: 1,
        only: undefined,
        dumpMb: [500, 1000],
        replicateMb: 1024,
        smallBackups: 1000,
        verifyMb: 700,
        restoreMb: 700,
        tenants: 1000,
        fleetTenants: 1000,
        events: 2000,
        e2eRuns: 5,
      };
}

export interface SourceDb {
  db: string;
  /** Connection URL (secret: passed to processes through env:NAME, never argv). */
  url: string;
  /** pg_database_size after the last growth. */
  bytes: number;
}

export interface Source {
  cluster: PgCluster;
  /**
   * A v1-style project database (users, todos, RLS, sequences, a view) plus `bulk_data` filled with
   * random text and numbers until that table holds `mb` MB. Grows an existing one; never shrinks it.
   */
  projectDb(db: string, mb: number): Promise<SourceDb>;
}

export interface BenchContext {
  options: BenchOptions;
  /** Temp directory for this run; removed at the end. */
  root: string;
  say(line: string): void;
  /** Completes a result (ratio, goals) and adds it to the run's results at once. */
  record(result: ResultInput): BenchResult;
  /** Caveats worth printing with the table and keeping in results.json. */
  note(line: string): void;
  source(): Promise<Source>;
  token: TestToken;
  webhookSecret: string;
  /** A fresh directory set under the run's root for one function process (or a group of them). */
  dirs(name: string): Promise<Dirs>;
  /** The environment a function process starts from: this process's PATH etc., no inherited FLUX_*. */
  env(dirs: Dirs, extra: Record<string, string>): NodeJS.ProcessEnv;
}

export interface Dirs {
  base: string;
  local: string;
  offsite: string;
  state: string;
  projects: string;
}

export async function createContext(
  options: BenchOptions,
  say: (line: string) => void,
  notes: string[],
  results: BenchResult[],
): Promise<BenchContext> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'flux-ops-bench-'));
  defer('temp root', () => rm(root, { recursive: true, force: true, maxRetries: 3 }));
  let source: Promise<Source> | undefined;
  const sizes = new Map<string, number>();

  async function startSource(): Promise<Source> {
    say('source: starting a throwaway Postgres cluster');
    const cluster = await startPostgres({
      // A source that behaves like a server: durable, room for sorts; autovacuum off so it never starts
      // in the middle of a measurement (the data is frozen after every growth instead).
      settings: { fsync: 'on', autovacuum: 'off', shared_buffers: '128MB', maintenance_work_mem: '256MB' },
    });
    defer('source cluster', () => cluster.destroy());
    await createFluxRoles(cluster);
    return {
      cluster,
      async projectDb(db, mb) {
        if (!sizes.has(db)) {
          await seedProjectDb(cluster, { db, rows: 20_000 });
          sizes.set(db, 0);
        }
        if ((sizes.get(db) ?? 0) < mb) {
          const started = performance.now();
          const bulk = await generateBulkData(cluster, { db, schema: 'public', megabytes: mb });
          // Set hint bits and freeze now, so no measured run pays for the first read of fresh rows.
          await cluster.query('VACUUM (FREEZE, ANALYZE)', [], db);
          await cluster.query('CHECKPOINT');
          sizes.set(db, mb);
          say(
            `source: ${db} grown to ${Math.round(bulk.bytes / MB)} MB of bulk data (${bulk.rows} rows) in ${((performance.now() - started) / 1000).toFixed(1)} s`,
          );
        }
        const [row] = await cluster.query<{ b: string }>('SELECT pg_database_size($1) AS b', [db]);
        return { db, url: cluster.url(db), bytes: Number(row?.b) };
      },
    };
  }

  const token = makeToken('bench', ['admin']);
  return {
    options,
    root,
    say,
    record(input) {
      const result = makeResult(input);
      results.push(result);
      const ratio = result.ratio === undefined ? '' : `, ratio ${num(result.ratio)}`;
      const verdict = result.pass === null ? '' : result.pass ? ' (pass)' : ' (MISS)';
      say(`  = ${result.name}: ${num(result.fn.median)} ${result.unit}${ratio}${verdict}`);
      return result;
    },
    note: (line) => {
      if (!notes.includes(line)) notes.push(line);
    },
    source: () => {
      source ??= startSource();
      return source;
    },
    token,
    webhookSecret: WEBHOOK_SECRET,
    async dirs(name) {
      const base = path.join(root, name);
      const d: Dirs = {
        base,
        local: path.join(base, 'backups'),
        offsite: path.join(base, 'offsite'),
        state: path.join(base, 'state'),
        projects: path.join(base, 'projects.json'),
      };
      for (const dir of [d.local, d.offsite, d.state]) await mkdir(dir, { recursive: true });
      return d;
    },
    env(dirs, extra) {
      const inherited = Object.fromEntries(
        Object.entries(process.env).filter(([k]) => !k.startsWith('FLUX_') && !k.startsWith('BENCH_')),
      );
      return {
        ...inherited,
        FLUX_HOST: '127.0.0.1',
        FLUX_BACKUPS_LOCAL_DIR: dirs.local,
        FLUX_BACKUPS_OFFSITE_DIR: dirs.offsite,
        FLUX_STATE_DIR: dirs.state,
        FLUX_PROJECTS_FILE: dirs.projects,
        FLUX_API_TOKENS: token.entry,
        FLUX_WEBHOOK_SECRETS: WEBHOOK_SECRET,
        FLUX_LOG_LEVEL: 'warn',
        FLUX_SHUTDOWN_GRACE_MS: '2000',
        FLUX_RATE_LIMIT_PER_MINUTE: '1000000',
        ...extra,
      };
    },
  };
}

export interface RegistryProject {
  id: string;
  hash: string;
  slug: string;
  engine: 'v1_dedicated' | 'v2_shared';
  cluster?: string;
  databaseUrl?: string;
  apiHost?: string;
}

export async function writeRegistry(
  file: string,
  data: {
    clusters?: Array<{ name: string; url: string; maxConcurrentDumps?: number }>;
    projects: RegistryProject[];
  },
): Promise<void> {
  await writeFile(file, `${JSON.stringify({ clusters: data.clusters ?? [], projects: data.projects })}\n`);
}

/** The 7-hex project hash the CLI routes use, derived like the platform does (first 7 hex of the id). */
export const hashOf = (id: string) => id.replaceAll('-', '').slice(0, 7);

/**
 * The all-in-one process on `dirs` (local verify sandbox, no probe cycle) with a receiver of its signed
 * flux.backup.* events; `release` stops both. Not /readyz: there is no gateway for probe here, which
 * readiness rightly reports.
 */
export async function startAllInOne(
  ctx: BenchContext,
  dirs: Dirs,
  extra: Record<string, string>,
): Promise<{ proc: FunctionProcess; receiver: EventReceiver; release: () => Promise<void> }> {
  const receiver = await startEventReceiver([ctx.webhookSecret]);
  const releaseReceiver = defer('all-in-one event receiver', () => receiver.close());
  const port = await freePort();
  try {
    const proc = await startFunction({
      main: 'all',
      port,
      env: ctx.env(dirs, {
        FLUX_PORT: String(port),
        FLUX_EVENT_SINKS: JSON.stringify([{ url: receiver.url, types: ['flux.backup.*'] }]),
        FLUX_VERIFY_DRIVER: 'local',
        FLUX_PROBE_INTERVAL_MS: '0',
        ...extra,
      }),
    });
    return {
      proc,
      receiver,
      release: async () => {
        await proc.stop();
        await releaseReceiver();
      },
    };
  } catch (error) {
    await releaseReceiver();
    throw error;
  }
}
