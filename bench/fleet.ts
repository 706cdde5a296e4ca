// fleet: one full cycle over a shared cluster of Flux-like tenants (a `t_<id>_api` schema each: two
// tables with keys, a sequence, a view and a row-security policy, 50 rows), every tenant dumped,
// replicated and verified through the all-in-one process as deployed, against a naive serial loop doing
// the same work one tenant at a time (pg_dump --schema, cp + sha256sum, pg_restore into a fresh database).
// Run at N/10 and at N tenants on clusters of that many, so the per-tenant cost's growth is shown beside
// raw pg_dump's own. Reports wall time, the per-tenant split (dump, replicate, verify, waiting), peak RSS,
// delivery retries and refused creates.
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { seedTenant, tenantSchemaOf } from '../test/support/fixtures.js';
import { freePort } from '../test/support/pg.js';
import {
  type BenchContext,
  type Dirs,
  hashOf,
  type Source,
  startAllInOne,
  writeRegistry,
} from './context.js';
import { alternate, median, summarize } from './stats.js';
import {
  childrenCpuSecondsOf,
  cpuSecondsOf,
  MB,
  machineBusySeconds,
  memoryOf,
  sleep,
  startFunction,
} from './support.js';

const DB = 'bench_fleet';
/** Creates in flight at once: the cluster's two dump slots and two more waiting, so dump never idles. */
const CREATORS = 4;
const ROWS = 50;
/** Alternating rounds of the per-backup overhead comparison (each about a second a side). */
const OVERHEAD_ROUNDS = 15;
/** What the dump process may add to raw pg_dump per small tenant, in ms. */
const OVERHEAD_MAX_MS = 50;

interface Tenant {
  id: string;
  slug: string;
}

interface Cycle {
  seconds: number;
  /** CPU seconds the machine was busy over the cycle. */
  busySeconds: number;
  /**
   * Of those: the all-in-one's own, the tools and sandboxes it ran, the source cluster's (its postmaster
   * and every backend, pg_dump's included), and this benchmark process's.
   */
  cpu: { process: number; children: number; sourceCluster: number; bench: number };
  perTenant: {
    dump: number;
    /** From the create's answer to the replicated event's arrival here. */
    replicate: number;
    /** From the created event to the replicated event, by their own times. */
    replicateEmitted: number;
    verify: number;
    waiting: number;
  };
  /** Seconds from an event's emission to its arrival at the receiver. */
  deliveryLag: { median: number; max: number };
  /** Median seconds per verification stage (sandbox, prepare, transfer, restore, checks, teardown...). */
  verifyStages: Record<string, number>;
  peakRssMb: number;
  retries: number;
  deadLetters: number;
  refused: number;
  failed: number;
}

const secondsSince = (t: number) => (performance.now() - t) / 1000;

function metricSum(text: string, name: string, match: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(match))
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** CPU seconds of the source cluster: its postmaster's own and its reaped backends' (the rest are few). */
async function clusterCpuSeconds(source: Source): Promise<number> {
  const pidFile = await readFile(path.join(source.cluster.dataDir, 'postmaster.pid'), 'utf8');
  const pid = Number(pidFile.split('\n')[0]);
  return (await cpuSecondsOf(pid)) + (await childrenCpuSecondsOf(pid));
}

/** Every tenant as a v2 project on the shared cluster `fleet` (its URL in BENCH_FLEET_URL). */
async function writeFleetRegistry(dirs: Dirs, tenants: readonly Tenant[]): Promise<void> {
  await writeRegistry(dirs.projects, {
    clusters: [{ name: 'fleet', url: 'env:BENCH_FLEET_URL', maxConcurrentDumps: 2 }],
    projects: tenants.map((t) => ({
      id: t.id,
      hash: hashOf(t.id),
      slug: t.slug,
      engine: 'v2_shared' as const,
      cluster: 'fleet',
    })),
  });
}

/**
 * One small tenant's create through the dump process alone (no event sinks, so nothing replicates or
 * verifies beside it) against raw `pg_dump -Fc -Z1 --schema` of the same tenant, alternating, one tenant
 * per round on the same cluster: what flux-ops adds to each backup of a fleet.
 */
async function dumpOverhead(
  ctx: BenchContext,
  source: Source,
  tenants: readonly Tenant[],
): Promise<{ fn: number[]; base: number[] }> {
  const dirs = await ctx.dirs(`fleet-dump-${tenants.length}`);
  await writeFleetRegistry(dirs, tenants);
  const port = await freePort();
  const proc = await startFunction({
    main: 'dump',
    port,
    ready: true,
    env: ctx.env(dirs, { FLUX_DUMP_PORT: String(port), BENCH_FLEET_URL: source.cluster.url(DB) }),
  });
  const rawFile = path.join(dirs.base, 'raw.dump');
  // Each side walks the tenants in the same order, so a round compares the same tenant.
  const turn = { fn: 0, base: 0 };
  const next = (side: keyof typeof turn) => tenants[turn[side]++ % tenants.length]!;
  try {
    const viaFunction = async () => {
      const t = next('fn');
      const started = performance.now();
      const res = await fetch(`${proc.url}/api/cli/v1/projects/${hashOf(t.id)}/backups`, {
        method: 'POST',
        headers: ctx.token.header,
      });
      const body = (await res.json()) as { backup?: { id: string }; error?: string };
      const elapsed = performance.now() - started;
      if (res.status !== 200 || !body.backup)
        throw new Error(`dump create answered ${res.status}: ${body.error}\n${proc.output().slice(-2000)}`);
      return elapsed;
    };
    const raw = async () => {
      const t = next('base');
      const started = performance.now();
      await execa('pg_dump', ['-Fc', '-Z1', '--schema', tenantSchemaOf(t.id), '-f', rawFile, DB], {
        env: { ...process.env, ...source.cluster.env(DB) },
      });
      const elapsed = performance.now() - started;
      await rm(rawFile, { force: true });
      return elapsed;
    };
    return await alternate(OVERHEAD_ROUNDS, { fn: viaFunction, base: raw }, { warmup: 1 });
  } finally {
    await proc.stop();
  }
}

async function fluxCycle(ctx: BenchContext, source: Source, tenants: readonly Tenant[]): Promise<Cycle> {
  const dirs = await ctx.dirs(`fleet-${tenants.length}`);
  await writeFleetRegistry(dirs, tenants);
  const { proc, receiver, release } = await startAllInOne(ctx, dirs, {
    BENCH_FLEET_URL: source.cluster.url(DB),
    // Settings to compare against the defaults, e.g. BENCH_FLEET_ENV='{"FLUX_VERIFY_CONCURRENCY":"2"}'.
    ...(JSON.parse(process.env.BENCH_FLEET_ENV ?? '{}') as Record<string, string>),
  });
  try {
    const created = new Map<string, { at: number; dumpSeconds: number }>();
    let refused = 0;
    let failed = 0;
    const busyBefore = await machineBusySeconds();
    const processBefore = await cpuSecondsOf(proc.pid);
    const childrenBefore = await childrenCpuSecondsOf(proc.pid);
    const sourceBefore = await clusterCpuSeconds(source);
    const benchBefore = process.cpuUsage();
    const started = performance.now();
    const queue = [...tenants];
    const creator = async () => {
      for (let t = queue.shift(); t; t = queue.shift()) {
        for (;;) {
          const res = await fetch(`${proc.url}/api/cli/v1/projects/${hashOf(t.id)}/backups`, {
            method: 'POST',
            headers: ctx.token.header,
          });
          const body = (await res.json()) as {
            backup?: { id: string; createdAt: string; completedAt: string | null };
            code?: string;
          };
          if (res.status === 503 && body.code === 'queue_full') {
            refused++;
            await sleep(100);
            continue;
          }
          if (res.status !== 200 || !body.backup?.completedAt) {
            failed++;
            break;
          }
          const { id, createdAt, completedAt } = body.backup;
          created.set(`${t.id}/${id}`, {
            at: Date.now(),
            dumpSeconds: (Date.parse(completedAt) - Date.parse(createdAt)) / 1000,
          });
          break;
        }
      }
    };
    await Promise.all(Array.from({ length: CREATORS }, creator));
    // Every backup's replicated and verified (or failed) events, read as they arrive.
    const replicatedAt = new Map<string, number>();
    // The events' own times (the server's clock): replicate's lag without the delivery to this receiver.
    const createdTime = new Map<string, number>();
    const replicatedTime = new Map<string, number>();
    const verified = new Map<string, { at: number; seconds: number }>();
    const stages = new Map<string, number[]>();
    const deadline = performance.now() + 120_000 + tenants.length * 10_000;
    let seen = 0;
    // When each delivery reached the receiver (Date.now), not when this loop got to it: the loop starts
    // only once every create has been answered.
    const arrivedAt = new Map<string | undefined, number>();
    let arrived = 0;
    const arrivalOf = (id: string) => {
      for (; arrived < receiver.arrivals.length; arrived++) {
        const a = receiver.arrivals[arrived]!;
        arrivedAt.set(a.webhookId, a.at);
      }
      return arrivedAt.get(id) ?? Date.now();
    };
    while (verified.size < created.size) {
      for (; seen < receiver.deliveries.length; seen++) {
        const { event, verified: signed } = receiver.deliveries[seen]!;
        if (!signed || !event.subject) continue;
        if (event.type === 'flux.backup.replicated') {
          replicatedAt.set(event.subject, arrivalOf(event.id));
          replicatedTime.set(event.subject, Date.parse(event.time ?? ''));
        }
        if (event.type === 'flux.backup.created')
          createdTime.set(event.subject, Date.parse(event.time ?? ''));
        if (event.type === 'flux.backup.verified') {
          const data = event.data as { seconds?: number; stages?: Record<string, number> };
          verified.set(event.subject, { at: arrivalOf(event.id), seconds: Number(data.seconds ?? 0) });
          const timed = data.stages ?? {};
          for (const [name, value] of Object.entries(timed)) {
            if (!stages.has(name)) stages.set(name, []);
            stages.get(name)!.push(value);
          }
        }
        if (event.type === 'flux.backup.verify_failed' || event.type === 'flux.backup.unverifiable') {
          failed++;
          verified.set(event.subject, { at: arrivalOf(event.id), seconds: 0 });
        }
      }
      if (performance.now() > deadline)
        throw new Error(
          `fleet: ${created.size - verified.size} backups never verified\n${proc.output().slice(-2000)}`,
        );
      await sleep(20);
    }
    const seconds = secondsSince(started);
    // From each event's own time to its arrival here (both on this machine's clock): the outbox's part.
    const deliveryLag = receiver.deliveries
      .map((d) => (arrivalOf(d.event.id) - Date.parse(d.event.time ?? '')) / 1000)
      .filter(Number.isFinite);
    const busySeconds = (await machineBusySeconds()) - busyBefore;
    const benchUsage = process.cpuUsage(benchBefore);
    const cpu = {
      process: (await cpuSecondsOf(proc.pid)) - processBefore,
      children: (await childrenCpuSecondsOf(proc.pid)) - childrenBefore,
      sourceCluster: (await clusterCpuSeconds(source)) - sourceBefore,
      bench: (benchUsage.user + benchUsage.system) / 1e6,
    };
    const metrics = await (await fetch(`${proc.url}/metrics`)).text();
    const dump: number[] = [];
    const replicate: number[] = [];
    const replicateEmitted: number[] = [];
    const verify: number[] = [];
    const waiting: number[] = [];
    for (const [subject, c] of created) {
      const v = verified.get(subject)!;
      dump.push(c.dumpSeconds);
      const r = replicatedAt.get(subject);
      if (r !== undefined) replicate.push((r - c.at) / 1000);
      const emitted = (replicatedTime.get(subject) ?? Number.NaN) - (createdTime.get(subject) ?? Number.NaN);
      if (Number.isFinite(emitted)) replicateEmitted.push(emitted / 1000);
      verify.push(v.seconds);
      waiting.push(Math.max(0, (v.at - c.at) / 1000 - v.seconds));
    }
    return {
      seconds,
      busySeconds,
      cpu,
      perTenant: {
        dump: median(dump),
        replicate: replicate.length > 0 ? median(replicate) : Number.NaN,
        replicateEmitted: replicateEmitted.length > 0 ? median(replicateEmitted) : Number.NaN,
        verify: median(verify),
        waiting: median(waiting),
      },
      deliveryLag: { median: median(deliveryLag), max: Math.max(0, ...deliveryLag) },
      verifyStages: Object.fromEntries([...stages].map(([name, values]) => [name, median(values)])),
      peakRssMb: (await memoryOf(proc.pid)).peak / MB,
      retries: metricSum(metrics, 'flux_events_deliveries_total', 'result="retry"'),
      deadLetters: metricSum(metrics, 'flux_events_deliveries_total', 'result="dead"'),
      refused,
      failed,
    };
  } finally {
    await release();
  }
}

/** The same work one tenant at a time with the raw tools: what an operator's shell loop would do. */
async function naiveCycle(
  ctx: BenchContext,
  source: Source,
  tenants: readonly Tenant[],
): Promise<{ seconds: number; busySeconds: number; sourceCluster: number }> {
  const dir = path.join(ctx.root, `fleet-naive-${tenants.length}`);
  await mkdir(dir, { recursive: true });
  const env = { ...process.env, ...source.cluster.env(DB) };
  const busyBefore = await machineBusySeconds();
  const sourceBefore = await clusterCpuSeconds(source);
  const started = performance.now();
  for (const t of tenants) {
    const file = path.join(dir, `${t.id}.dump`);
    const copy = path.join(dir, `${t.id}.copy`);
    await execa('pg_dump', ['-Fc', '-Z1', '--schema', tenantSchemaOf(t.id), '-f', file, DB], { env });
    await execa('cp', [file, copy]);
    await execa('sha256sum', [copy]);
    const fresh = `naive_${t.id.replaceAll('-', '').slice(0, 12)}`;
    await execa('createdb', [fresh], { env });
    // Tenant code references the platform's roles and schemas the fresh database lacks: pg_restore reports
    // those and goes on, as a shell loop would.
    await execa('pg_restore', ['-d', fresh, file], { env, reject: false });
    await execa('dropdb', [fresh], { env });
    await rm(file, { force: true });
    await rm(copy, { force: true });
  }
  const seconds = secondsSince(started);
  const busySeconds = (await machineBusySeconds()) - busyBefore;
  const sourceCluster = (await clusterCpuSeconds(source)) - sourceBefore;
  await rm(dir, { recursive: true, force: true });
  return { seconds, busySeconds, sourceCluster };
}

export async function benchFleet(ctx: BenchContext): Promise<void> {
  const n = ctx.options.fleetTenants;
  const sizes = [...new Set([Math.max(1, Math.round(n / 10)), n])];
  const source = await ctx.source();
  await source.cluster.createDatabase(DB);
  const tenants: Tenant[] = [];
  const perTenant: Array<{ size: number; flux: number; naive: number }> = [];
  for (const size of sizes) {
    const seedStarted = performance.now();
    while (tenants.length < size) {
      const id = randomUUID();
      await seedTenant(source.cluster, { db: DB, projectId: id, rows: ROWS });
      tenants.push({ id, slug: `fleet-${tenants.length + 1}` });
    }
    ctx.say(`fleet: ${size} tenants on the cluster (seeded in ${secondsSince(seedStarted).toFixed(0)} s)`);
    const {
      seconds: naive,
      busySeconds: naiveBusy,
      sourceCluster: naiveSource,
    } = await naiveCycle(ctx, source, tenants);
    ctx.say(`fleet: naive serial loop over ${size} tenants: ${naive.toFixed(1)} s`);
    const flux = await fluxCycle(ctx, source, tenants);
    ctx.say(`fleet: flux-ops all-in-one cycle over ${size} tenants: ${flux.seconds.toFixed(1)} s`);
    perTenant.push({ size, flux: flux.seconds / size, naive: naive / size });
    const overhead = await dumpOverhead(ctx, source, tenants);
    ctx.say(
      `fleet: one small tenant's create ${median(overhead.fn).toFixed(0)} ms, raw pg_dump ${median(overhead.base).toFixed(0)} ms`,
    );
    ctx.record({
      id: `fleet.dump-overhead.${size}`,
      group: 'fleet',
      name: `dump create of one small tenant, ${size}-tenant cluster`,
      unit: 'ms',
      fn: summarize(overhead.fn),
      baseline: { ...summarize(overhead.base), label: 'pg_dump -Fc -Z1 --schema' },
      goals: [{ of: 'difference', op: '<=', value: OVERHEAD_MAX_MS }],
      note: `the dump process alone, a different tenant each of ${OVERHEAD_ROUNDS} alternating rounds; added = the function's median minus pg_dump's`,
    });
    ctx.record({
      id: `fleet.cycle.${size}`,
      group: 'fleet',
      name: `fleet cycle, ${size} tenants (dump, replicate, verify each)`,
      unit: 's',
      fn: summarize([flux.seconds]),
      baseline: { ...summarize([naive]), label: 'serial pg_dump, cp + sha256sum, pg_restore' },
      goals: [
        { of: 'ratio', op: '<=', value: 0.7 },
        { of: 'peakRssMb', op: '<=', value: 150 },
      ],
      peakRssMb: flux.peakRssMb,
      details: {
        tenants: size,
        perTenantSecondsMedian: flux.perTenant,
        // The machine's busy CPU seconds per tenant: what the cycle costs, whatever it overlaps.
        cpuSecondsPerTenant: {
          flux: flux.busySeconds / size,
          fluxProcess: flux.cpu.process / size,
          fluxChildren: flux.cpu.children / size,
          fluxSourceCluster: flux.cpu.sourceCluster / size,
          benchProcess: flux.cpu.bench / size,
          naive: naiveBusy / size,
          naiveSourceCluster: naiveSource / size,
        },
        verifyStageSecondsMedian: flux.verifyStages,
        eventDeliverySeconds: flux.deliveryLag,
        deliveryRetries: flux.retries,
        deadLetters: flux.deadLetters,
        refusedCreates: flux.refused,
        failed: flux.failed,
      },
      note: 'the all-in-one process, local verify sandbox, defaults; one cycle each (one sample)',
    });
  }
  if (perTenant.length === 2) {
    const [small, large] = perTenant as [(typeof perTenant)[0], (typeof perTenant)[0]];
    const fluxGrowth = large.flux / small.flux;
    const naiveGrowth = large.naive / small.naive;
    ctx.record({
      id: 'fleet.growth',
      group: 'fleet',
      name: `per-tenant cost growth from ${small.size} to ${large.size} tenants`,
      unit: 'x',
      fn: summarize([fluxGrowth]),
      baseline: { ...summarize([naiveGrowth]), label: 'the naive loop’s own growth' },
      goals: [{ of: 'ratio', op: '<=', value: 1 }],
      details: { perTenant },
      note: 'flux-ops per-tenant cost at N over at N/10, against the same for the naive loop',
    });
  }
}
