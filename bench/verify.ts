// verify: end-to-end verification of a real dump (sandbox up, dump in, pg_restore, checks against the
// manifest, teardown) through the verify process, with the local sandbox and, when a Docker engine and
// the image are there, the docker sandbox; against the naive way in the same run: a default-config
// cluster (initdb, pg_ctl start), plain pg_restore, stop, remove. Plus the fixed cost of a verification
// (an empty tenant's dump).
import { randomUUID } from 'node:crypto';
import { chown, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Docker from 'dockerode';
import { execa } from 'execa';
import { backupPaths } from '../shared/catalog/layout.js';
import { seedTenant } from '../test/support/fixtures.js';
import { freePort } from '../test/support/pg.js';
import { type BenchContext, type Dirs, hashOf, writeRegistry } from './context.js';
import { alternate, median, summarize } from './stats.js';
import { defer, type FunctionProcess, MB, memoryOf, resetPeak, sleep, startFunction } from './support.js';

const IMAGE = process.env.FLUX_TEST_VERIFY_IMAGE ?? 'flux-ops/postgres-verify:15';
const SOCKET = process.env.FLUX_DOCKER_SOCKET ?? '/var/run/docker.sock';
const INSTANCE_LABEL = 'flux-ops.verify.instance';
/** Pause before an "idle process" fixed-cost run (longer than a local spare initdb takes). */
const IDLE_GAP_MS = 2500;
/** The longest a verify process may take to have its spare sandbox ready again. */
const SETTLE_TIMEOUT_MS = 60_000;
/** The platform roles a Flux dump's policies and grants name (what the function stubs before restoring). */
const ROLES_SQL = [
  'CREATE ROLE anon NOLOGIN',
  'CREATE ROLE authenticated NOLOGIN',
  'CREATE ROLE service_role NOLOGIN BYPASSRLS',
  'CREATE ROLE authenticator NOINHERIT LOGIN',
].join('; ');

interface Project {
  id: string;
  hash: string;
  slug: string;
}

async function dockerUsable(): Promise<string | undefined> {
  const docker = new Docker({ socketPath: SOCKET });
  try {
    await docker.ping();
  } catch (error) {
    return `no Docker engine at ${SOCKET} (${(error as Error).message.slice(0, 120)})`;
  }
  try {
    await docker.getImage(IMAGE).inspect();
  } catch {
    return `image ${IMAGE} is not present (scripts/prepare-test-env.sh builds it)`;
  }
  return undefined;
}

/** Removes the sandbox containers a verify process of ours may have left (it labels them hostname:pid). */
async function removeContainersOf(pid: number): Promise<void> {
  const docker = new Docker({ socketPath: SOCKET });
  const containers = await docker
    .listContainers({ all: true, filters: { label: [`${INSTANCE_LABEL}=${os.hostname()}:${pid}`] } })
    .catch(() => []);
  for (const c of containers)
    await docker
      .getContainer(c.Id)
      .remove({ force: true, v: true })
      .catch(() => undefined);
}

/**
 * Waits until the verify process has its spare sandbox ready again (its `flux_verify_spare_ready` gauge),
 * so the background start of the next spare (for docker: an image copy, initdb and a server start) does
 * not run inside the next measured side. Returns the seconds waited.
 */
async function settle(
  proc: FunctionProcess,
  driver: string,
  header: Record<string, string>,
): Promise<number> {
  const started = performance.now();
  const ready = `flux_verify_spare_ready{driver="${driver}"} 1`;
  while (performance.now() - started < SETTLE_TIMEOUT_MS) {
    const text = await (await fetch(`${proc.url}/metrics`, { headers: header })).text();
    if (text.includes(ready)) return (performance.now() - started) / 1000;
    await sleep(50);
  }
  throw new Error(
    `verify (${driver}) had no spare sandbox ready after ${SETTLE_TIMEOUT_MS / 1000} s\n${proc.output().slice(-2000)}`,
  );
}

/** The unprivileged OS user the naive cluster runs as when we are root (Postgres refuses root). */
async function osUser(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  for (const name of ['postgres', 'nobody']) {
    const uid = await execa('id', ['-u', name], { reject: false });
    const gid = await execa('id', ['-g', name], { reject: false });
    if (uid.exitCode === 0 && gid.exitCode === 0) return { uid: Number(uid.stdout), gid: Number(gid.stdout) };
  }
  throw new Error('running as root without a postgres or nobody OS user to run the naive cluster as');
}

/**
 * The naive verification: a default-config cluster made and started the usual way, a plain pg_restore,
 * a fast stop, the directory removed. Returns wall seconds; throws when pg_restore reports errors.
 */
async function naiveRestore(
  dumpFile: string,
  user: { uid: number; gid: number } | undefined,
): Promise<number> {
  const started = performance.now();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'flux-bench-naive-'));
  const release = defer(`naive cluster ${dir}`, () => stopAndRemove());
  const data = path.join(dir, 'data');
  const asUser = (file: string, args: string[]) =>
    user
      ? execa(
          'setpriv',
          ['--reuid', String(user.uid), '--regid', String(user.gid), '--clear-groups', '--', file, ...args],
          {
            reject: false,
            cwd: dir,
            stdin: 'ignore',
          },
        )
      : execa(file, args, { reject: false, cwd: dir, stdin: 'ignore' });
  let running = false;
  async function stopAndRemove() {
    if (running) await asUser('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
    running = false;
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  }
  try {
    if (user) await chown(dir, user.uid, user.gid);
    const initdb = await asUser('initdb', ['-D', data, '-U', 'postgres']);
    if (initdb.exitCode !== 0) throw new Error(`initdb failed: ${initdb.stderr}`);
    const port = await freePort();
    // From here on a cleanup stops the server (a stop of a server that never started is harmless).
    running = true;
    const start = await asUser('pg_ctl', [
      '-D',
      data,
      '-l',
      path.join(dir, 'log'),
      '-o',
      `-p ${port} -k ${dir} -c listen_addresses=''`,
      '-w',
      'start',
    ]);
    if (start.exitCode !== 0) throw new Error(`pg_ctl start failed: ${start.stderr}`);
    const libpq = { PGHOST: dir, PGPORT: String(port), PGUSER: 'postgres', PGDATABASE: 'postgres' };
    const roles = await execa('psql', ['-X', '-q', '-c', ROLES_SQL], {
      env: { ...process.env, ...libpq },
      reject: false,
    });
    if (roles.exitCode !== 0) throw new Error(`creating roles failed: ${roles.stderr}`);
    const restore = await execa('pg_restore', ['-d', 'postgres', dumpFile], {
      env: { ...process.env, ...libpq },
      reject: false,
    });
    if (restore.exitCode !== 0)
      throw new Error(`plain pg_restore failed: ${String(restore.stderr).slice(-1000)}`);
    await stopAndRemove();
    return (performance.now() - started) / 1000;
  } finally {
    await release();
  }
}

export async function benchVerify(ctx: BenchContext): Promise<void> {
  const { options } = ctx;
  const source = await ctx.source();
  const db = await source.projectDb('bench_verify', options.verifyMb);
  await source.cluster.createDatabase('bench_tenants');
  const big: Project = { id: randomUUID(), hash: '', slug: 'bench-verify' };
  const empty: Project = { id: randomUUID(), hash: '', slug: 'bench-empty-tenant' };
  big.hash = hashOf(big.id);
  empty.hash = hashOf(empty.id);
  await seedTenant(source.cluster, { db: 'bench_tenants', projectId: empty.id, empty: true });

  const dirs = await ctx.dirs('verify');
  await writeRegistry(dirs.projects, {
    clusters: [{ name: 'bench-shared', url: 'env:BENCH_SHARED_URL' }],
    projects: [
      { ...big, engine: 'v1_dedicated', databaseUrl: 'env:BENCH_VERIFY_DB_URL' },
      { ...empty, engine: 'v2_shared', cluster: 'bench-shared' },
    ],
  });
  const urls = { BENCH_VERIFY_DB_URL: db.url, BENCH_SHARED_URL: source.cluster.url('bench_tenants') };

  // The backups to verify, made by the real dump function (manifest, counts, sequences and all).
  const dumpPort = await freePort();
  const dump = await startFunction({
    main: 'dump',
    port: dumpPort,
    ready: true,
    env: ctx.env(dirs, { ...urls, FLUX_DUMP_PORT: String(dumpPort) }),
  });
  const create = async (p: Project) => {
    const res = await fetch(`${dump.url}/api/cli/v1/projects/${p.hash}/backups`, {
      method: 'POST',
      headers: ctx.token.header,
    });
    const body = (await res.json()) as { backup?: { id: string; sizeBytes: number }; error?: string };
    if (res.status !== 200 || !body.backup)
      throw new Error(`dump create answered ${res.status}: ${body.error}`);
    return body.backup;
  };
  let bigBackup: { id: string; sizeBytes: number };
  let emptyBackup: { id: string; sizeBytes: number };
  try {
    bigBackup = await create(big);
    emptyBackup = await create(empty);
  } finally {
    await dump.stop();
  }
  const dumpFile = backupPaths(dirs.local, big.id, bigBackup.id).dump;
  ctx.say(
    `verify: ${Math.round(db.bytes / MB)} MB database, dump of ${Math.round(bigBackup.sizeBytes / MB)} MB; empty tenant dump of ${emptyBackup.sizeBytes} B`,
  );

  const dockerProblem = await dockerUsable();
  if (dockerProblem) ctx.note(`verify: docker sandbox not measured: ${dockerProblem}`);
  const drivers: Array<'local' | 'docker'> = dockerProblem ? ['local'] : ['local', 'docker'];
  const procs: Partial<Record<'local' | 'docker', FunctionProcess>> = {};
  try {
    for (const driver of drivers) {
      const port = await freePort();
      // Each process owns its backups directory (one verify per directory): the second gets a hard-linked
      // copy of the same backups, so both read the same dump files.
      const own: Dirs = { ...dirs, state: path.join(dirs.base, `state-${driver}`) };
      if (driver !== drivers[0]) {
        own.local = path.join(dirs.base, `backups-${driver}`);
        await execa('cp', ['-al', dirs.local, own.local]);
        // Not the first process's owner lock: a hard link would be that very lock.
        for (const name of await readdir(own.local))
          if (name.startsWith('.flux-owner-')) await rm(path.join(own.local, name));
      }
      const proc = await startFunction({
        main: 'verify',
        port,
        ready: true,
        env: ctx.env(own, {
          ...urls,
          FLUX_VERIFY_PORT: String(port),
          FLUX_VERIFY_DRIVER: driver,
          FLUX_BACKUP_VERIFY_POSTGRES_IMAGE: IMAGE,
          FLUX_DOCKER_SOCKET: SOCKET,
          FLUX_VERIFY_ON: '',
          FLUX_VERIFY_TIMEOUT_MS: String(2 * 60 * 60_000),
        }),
      });
      procs[driver] = proc;
      if (driver === 'docker') defer(`containers of verify ${proc.pid}`, () => removeContainersOf(proc.pid));
    }

    const stages: Record<string, Array<Record<string, number>>> = { local: [], docker: [] };
    const peaks: Record<string, number[]> = { local: [], docker: [] };
    const verifyWith =
      (driver: 'local' | 'docker', p: Project, backupId: string, keep: boolean) => async () => {
        const proc = procs[driver]!;
        await resetPeak(proc.pid);
        const route = `${proc.url}/api/cli/v1/projects/${p.hash}/backups/${backupId}/verify`;
        const started = performance.now();
        const res = await fetch(route, { method: 'POST', headers: ctx.token.header });
        const body = (await res.json()) as {
          ok?: boolean;
          restoreVerificationStatus?: string;
          error?: string;
        };
        const elapsed = (performance.now() - started) / 1000;
        if (res.status !== 200 || body.restoreVerificationStatus !== 'restore_verified') {
          throw new Error(
            `verify (${driver}) answered ${res.status}: ${body.error}\n${proc.output().slice(-2000)}`,
          );
        }
        if (keep) {
          peaks[driver]!.push((await memoryOf(proc.pid)).peak / MB);
          const receipt = (await (await fetch(route, { headers: ctx.token.header })).json()) as {
            verification?: { stages?: Record<string, number> };
          };
          if (receipt.verification?.stages) stages[driver]!.push(receipt.verification.stages);
        }
        return elapsed;
      };
    const user = await osUser();
    const sides: Record<string, () => Promise<number>> = {};
    for (const driver of drivers) sides[driver] = verifyWith(driver, big, bigBackup.id, true);
    sides.naive = () => naiveRestore(dumpFile, user);
    ctx.say(
      `verify: ${drivers.join(' and ')} sandbox vs naive restore, ${options.rounds} alternating rounds`,
    );
    ctx.note(
      'verify: every measured side starts with the verify processes settled (spare sandbox ready, as between nightly backups); the start of the next spare is background work and not counted',
    );
    // Every side starts with both verify processes settled: their spares ready, nothing in the background.
    const settleAll = async () => {
      for (const driver of drivers) await settle(procs[driver]!, driver, ctx.token.header);
    };
    const runs = await alternate(options.rounds, sides, { warmup: options.warmup, before: settleAll });
    const naive = { ...summarize(runs.naive!), label: 'initdb + pg_restore' };
    const stageMedians = (list: Array<Record<string, number>>) => {
      const names = [...new Set(list.flatMap((s) => Object.keys(s)))];
      return Object.fromEntries(
        names.map((n) => [n, median(list.slice(-options.rounds).map((s) => s[n] ?? 0))]),
      );
    };
    for (const driver of drivers) {
      ctx.record({
        id: `verify.${driver}`,
        group: 'verify',
        name: `verify (${driver} sandbox), ${Math.round(bigBackup.sizeBytes / MB)} MB dump`,
        unit: 's',
        fn: summarize(runs[driver]!),
        baseline: naive,
        goals: [{ of: 'ratio', op: '<=', value: 0.8 }],
        peakRssMb: Math.max(...peaks[driver]!.slice(-options.rounds)),
        details: {
          dumpBytes: bigBackup.sizeBytes,
          databaseBytes: db.bytes,
          stageSecondsMedian: stageMedians(stages[driver]!),
        },
      });
    }

    // Fixed cost: everything but the data (sandbox up, roles, transfer, list, restore of nothing, checks,
    // teardown). "Idle": the verification arrives at a process whose spare sandbox is ready, as after a
    // nightly backup; "back-to-back": it arrives right after the previous one (its spare may still be
    // starting: the docker driver starts the next spare only when the previous sandbox is removed).
    ctx.say(`verify: fixed cost (empty tenant dump), ${options.rounds} rounds per case`);
    const fixedCases = drivers.flatMap((driver) => [
      { driver, idle: true },
      { driver, idle: false },
    ]);
    for (const { driver, idle } of fixedCases) {
      const fixedStages: Array<Record<string, number>> = [];
      const samples: number[] = [];
      const run = verifyWith(driver, empty, emptyBackup.id, false);
      const route = `${procs[driver]!.url}/api/cli/v1/projects/${empty.hash}/backups/${emptyBackup.id}/verify`;
      for (let i = 0; i < options.warmup + options.rounds; i++) {
        if (idle) {
          await settleAll();
          await sleep(IDLE_GAP_MS);
        }
        const s = await run();
        const receipt = (await (await fetch(route, { headers: ctx.token.header })).json()) as {
          verification?: { stages?: Record<string, number> };
        };
        if (i >= options.warmup) {
          samples.push(s);
          if (receipt.verification?.stages) fixedStages.push(receipt.verification.stages);
        }
      }
      ctx.record({
        id: `verify.fixed.${driver}${idle ? '.idle' : '.back-to-back'}`,
        group: 'verify',
        name: `verify fixed cost (${driver} sandbox, empty dump, ${idle ? 'idle process' : 'back-to-back'})`,
        unit: 's',
        fn: summarize(samples),
        goals: driver === 'local' && idle ? [{ of: 'median', op: '<=', value: 1 }] : [],
        details: { stageSecondsMedian: stageMedians(fixedStages) },
      });
    }
    if (!dockerProblem) {
      ctx.note(
        'verify: the docker sandbox runs with the default limits (FLUX_VERIFY_CPUS=2, FLUX_VERIFY_MEMORY_MB=1024); the naive baseline has the whole machine',
      );
    }
  } finally {
    for (const proc of Object.values(procs)) await proc?.stop();
    for (const proc of Object.values(procs)) if (proc) await removeContainersOf(proc.pid);
  }
}
