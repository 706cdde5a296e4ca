// events: signed deliveries per second through the durable outbox (each event a file, fsynced, before
// it is sent) to a local receiver that verifies every signature, against the same signed POSTs sent
// from memory; and the end-to-end latency of a small backup through the all-in-one process:
// create -> replicated -> verified, timed by the signed events an operator's automation would receive.
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { type CloudEvent, createEvent } from '../shared/events/envelope.js';
import { createOutbox } from '../shared/events/outbox.js';
import { signWebhook } from '../shared/events/signature.js';
import { createLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { seedTenant } from '../test/support/fixtures.js';
import { type EventReceiver, startEventReceiver } from '../test/support/receiver.js';
import { type BenchContext, hashOf, startAllInOne, writeRegistry } from './context.js';
import { alternate, summarize } from './stats.js';
import { defer, MB, memoryOf, sleep } from './support.js';

/** The outbox's default delivery concurrency, used for the baseline too. */
const CONCURRENCY = 8;
const E2E_TIMEOUT_MS = 120_000;

function sampleEvent(): CloudEvent {
  const projectId = randomUUID();
  const backupId = randomUUID();
  const now = new Date().toISOString();
  return createEvent({
    type: 'flux.backup.created',
    source: '/flux-ops/bench',
    subject: `${projectId}/${backupId}`,
    data: {
      projectId,
      backupId,
      kind: 'project_db',
      sizeBytes: 123_456_789,
      sha256: 'a'.repeat(64),
      createdAt: now,
      completedAt: now,
      tables: 12,
      rows: 345_678,
      sequences: 3,
      serverVersion: '15.8',
    },
  });
}

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

async function benchOutbox(ctx: BenchContext, receiver: EventReceiver): Promise<void> {
  const n = ctx.options.events;
  const log = createLogger('bench-outbox', { level: 'silent' });
  const sinks = [{ url: receiver.url, types: ['*'] }];

  const throughOutbox = async () => {
    const dir = await mkdtemp(path.join(ctx.root, 'outbox-'));
    const outbox = createOutbox({
      dir,
      sinks: () => sinks,
      secrets: [ctx.webhookSecret],
      log,
      metrics: createRegistry({ defaultMetrics: false }),
      retryScheduleMs: [0, 100, 200, 400, 800],
      concurrency: CONCURRENCY,
    });
    await outbox.start();
    const events = Array.from({ length: n }, sampleEvent);
    receiver.deliveries.length = 0;
    const started = performance.now();
    for (const event of events) await outbox.enqueue(event);
    await until(() => receiver.deliveries.length >= n, 120_000, `${n} outbox deliveries`);
    const elapsed = (performance.now() - started) / 1000;
    await outbox.stop();
    await rm(dir, { recursive: true, force: true });
    if (receiver.events().length !== n)
      throw new Error(`outbox: ${receiver.events().length} of ${n} verified`);
    return n / elapsed;
  };

  // The same signed requests from memory: no file per delivery, no retry bookkeeping.
  const fromMemory = async () => {
    const events = Array.from({ length: n }, sampleEvent);
    receiver.deliveries.length = 0;
    const started = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < events.length) {
          const event = events[next++]!;
          const body = JSON.stringify(event);
          const res = await fetch(receiver.url, {
            method: 'POST',
            headers: {
              'content-type': 'application/cloudevents+json',
              ...signWebhook([ctx.webhookSecret], event.id, body),
            },
            body,
          });
          await res.arrayBuffer();
        }
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    if (receiver.events().length !== n)
      throw new Error(`baseline: ${receiver.events().length} of ${n} verified`);
    return n / elapsed;
  };

  ctx.say(`events: ${n} signed deliveries through the outbox, ${ctx.options.rounds} alternating rounds`);
  const runs = await alternate(
    ctx.options.rounds,
    { fn: throughOutbox, base: fromMemory },
    { warmup: ctx.options.warmup },
  );
  ctx.record({
    id: 'events.outbox',
    group: 'events',
    name: `signed deliveries through the outbox (${n} events)`,
    unit: '/s',
    fn: summarize(runs.fn),
    baseline: { ...summarize(runs.base), label: 'signed POSTs from memory' },
    details: { events: n, concurrency: CONCURRENCY },
    note: 'deliveries per second: higher is better; the outbox writes and fsyncs every delivery before sending it',
  });
}

async function benchEndToEnd(ctx: BenchContext): Promise<void> {
  const source = await ctx.source();
  const project = { id: randomUUID(), slug: 'bench-e2e' };
  await source.cluster.createDatabase('bench_e2e');
  await seedTenant(source.cluster, { db: 'bench_e2e', projectId: project.id, rows: 1000 });
  const dirs = await ctx.dirs('e2e');
  await writeRegistry(dirs.projects, {
    clusters: [{ name: 'bench-e2e', url: 'env:BENCH_E2E_URL' }],
    projects: [
      {
        id: project.id,
        hash: hashOf(project.id),
        slug: project.slug,
        engine: 'v2_shared',
        cluster: 'bench-e2e',
      },
    ],
  });
  const { proc, receiver, release } = await startAllInOne(ctx, dirs, {
    BENCH_E2E_URL: source.cluster.url('bench_e2e'),
  });
  const created: number[] = [];
  const replicated: number[] = [];
  const verified: number[] = [];
  const peaks: number[] = [];
  const runs = ctx.options.e2eRuns;
  ctx.say(`events: ${runs} small backups end to end through the all-in-one process`);
  try {
    for (let i = 0; i < ctx.options.warmup + runs; i++) {
      receiver.deliveries.length = 0;
      const started = performance.now();
      const res = await fetch(`${proc.url}/api/cli/v1/projects/${hashOf(project.id)}/backups`, {
        method: 'POST',
        headers: ctx.token.header,
      });
      const body = (await res.json()) as { backup?: { id: string }; error?: string };
      const createdAt = performance.now();
      if (res.status !== 200 || !body.backup) throw new Error(`create answered ${res.status}: ${body.error}`);
      const subject = `${project.id}/${body.backup.id}`;
      const arrivalOf = async (type: string) => {
        await until(
          () => receiver.events(type).some((e) => e.subject === subject),
          E2E_TIMEOUT_MS,
          `${type} of ${subject}`,
        );
        return performance.now();
      };
      const [replicatedAt, verifiedAt] = await Promise.all([
        arrivalOf('flux.backup.replicated'),
        arrivalOf('flux.backup.verified'),
      ]);
      if (
        receiver.events('flux.backup.verify_failed').length +
          receiver.events('flux.backup.unverifiable').length >
        0
      ) {
        throw new Error('the backup did not verify');
      }
      if (i >= ctx.options.warmup) {
        created.push(createdAt - started);
        replicated.push(replicatedAt - started);
        verified.push(verifiedAt - started);
        peaks.push((await memoryOf(proc.pid)).peak / MB);
      }
    }
  } finally {
    await release();
  }
  const seconds = (ms: number[]) => summarize(ms.map((v) => v / 1000));
  const peakRssMb = Math.max(...peaks);
  ctx.record({
    id: 'events.e2e.created',
    group: 'events',
    name: 'e2e small backup: create (sync response)',
    unit: 's',
    fn: seconds(created),
    peakRssMb,
  });
  ctx.record({
    id: 'events.e2e.replicated',
    group: 'events',
    name: 'e2e small backup: create -> replicated event',
    unit: 's',
    fn: seconds(replicated),
    peakRssMb,
  });
  ctx.record({
    id: 'events.e2e.verified',
    group: 'events',
    name: 'e2e small backup: create -> verified event',
    unit: 's',
    fn: seconds(verified),
    peakRssMb,
    note: 'the all-in-one process (functions/all/main.ts), local sandbox; times are when the signed events reached a receiver',
  });
}

export async function benchEvents(ctx: BenchContext): Promise<void> {
  const receiver = await startEventReceiver([ctx.webhookSecret]);
  const release = defer('event receiver', () => receiver.close());
  try {
    await benchOutbox(ctx, receiver);
  } finally {
    await release();
  }
  await benchEndToEnd(ctx);
}
