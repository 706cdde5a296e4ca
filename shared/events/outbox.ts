// Durable at-least-once delivery: every (event, sink) pair is a file under FLUX_STATE_DIR before it is
// sent; retries follow a schedule (FLUX_OUTBOX_RETRY_SCHEDULE_MS, honouring Retry-After); after the last
// attempt it becomes a dead letter that can be replayed. A restart resumes from the files. The files name
// a sink by its id, never by its URL (which may carry credentials): the URL lives in the config only.
import { createHash } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, fsyncDir, writeJsonAtomic } from '../atomic.js';
import { type EventSink, redactUrl } from '../config.js';
import { AppError, errnoOf, isAppError, RUN_AS_UID } from '../errors.js';
import type { Logger } from '../log.js';
import { counter, Gauge, gauge, type MetricsRegistry, metric } from '../metrics.js';
import { CLOUDEVENTS_CONTENT_TYPE, type CloudEvent, typeMatches } from './envelope.js';
import type { EventLog } from './eventlog.js';
import { signWebhook } from './signature.js';

export interface SinkRef {
  /** The sink's name, or url-<sha256 of its URL> for an unnamed one: what the outbox files record. */
  id: string;
  /** How logs and listings show it: its name, or its URL with credentials removed. */
  shown: string;
}

export interface Delivery {
  event: CloudEvent;
  sink: SinkRef;
  attempts: number;
  createdAt: string;
  nextAttemptAt: number;
  lastError?: string;
  lastStatus?: number;
  deadAt?: string;
}

export interface OutboxOptions {
  dir: string;
  sinks: () => readonly EventSink[];
  secrets: readonly string[];
  log: Logger;
  metrics: MetricsRegistry;
  /** Delay before each attempt (FLUX_OUTBOX_RETRY_SCHEDULE_MS); its length is the number of attempts. */
  retryScheduleMs: readonly number[];
  /** The function label of the per-sink metrics (default: the outbox directory's name). */
  fn?: string;
  concurrency?: number;
  requestTimeoutMs?: number;
  /** Where every enqueued event is kept for tail and replay --since (else a small buffer in memory). */
  eventLog?: EventLog;
}

export interface Outbox {
  /** Persists one delivery per matching sink, then sends in the background. Resolves once durable. */
  enqueue(event: CloudEvent): Promise<number>;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Resolves when nothing is being enqueued, pending or in flight (tests, shutdown). */
  idle(timeoutMs?: number): Promise<boolean>;
  depth(): number;
  /** The events enqueued, oldest first, from the event log (so they outlive a restart): `events tail`. */
  recent(): Promise<readonly CloudEvent[]>;
  /** Sends every logged event whose time is at or after `sinceMs` again to the sinks matching it now. */
  replaySince(sinceMs: number): Promise<{ events: number; deliveries: number }>;
  deadLetters(): Promise<Array<Delivery & { file: string }>>;
  /** Moves dead letters (all, or those of one event id) back to pending. */
  replay(eventId?: string): Promise<number>;
  /** Each configured sink's delivery state, for /readyz. */
  sinkStates(): Promise<SinkState[]>;
}

export interface SinkState {
  sink: string;
  /** ok: nothing waiting on a failure; retrying: a delivery failed and waits for its next attempt; dead_letters: some gave up. */
  state: 'ok' | 'retrying' | 'dead_letters';
  pending: number;
  dead: number;
  /** Age of the oldest delivery still waiting for this sink. */
  lagSeconds: number;
  lastStatus?: number;
  lastError?: string;
  lastDeliveredAt?: string;
}

const RECENT_EVENTS = 500;
const PERMANENT_4XX_EXCEPTIONS = new Set([408, 425, 429]);
/** Jitter lengthens each scheduled delay by up to this share, never shortens it. */
export const RETRY_JITTER_RATIO = 0.1;
/** A Retry-After beyond this is taken as this (a receiver's typo must not park an event for a year). */
export const MAX_RETRY_AFTER_MS = 24 * 60 * 60 * 1000;
/**
 * The error code our inbox answers 409 with while it handles the same webhook-id (inbox.ts): the event
 * is not yet taken, so it is retried. Any other 409 means the receiver already has it: delivered.
 */
export const IN_PROGRESS_CODE = 'conflict';

/** Why an event could not be made durable, in FLUX_STATE_DIR's words (the outbox lives there). */
export function outboxWriteError(error: unknown, dir: string, event: CloudEvent): AppError {
  if (isAppError(error)) return error;
  const errno = errnoOf(error);
  const what = `event ${event.type} (${event.id}) could not be written to the outbox in ${dir}`;
  const details = { eventId: event.id, type: event.type, ...(errno ? { errno } : {}) };
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    return new AppError(
      'disk_full',
      `${what}: no space left on FLUX_STATE_DIR's filesystem; free space there (the event log and dead letters are bounded, other files are not), then retry`,
      { cause: error, details },
    );
  }
  if (errno === 'EACCES' || errno === 'EPERM' || errno === 'EROFS' || errno === 'ENOTDIR') {
    return new AppError(
      'dir_not_writable',
      `${what} (${errno}): FLUX_STATE_DIR must be writable by this process (uid ${process.getuid?.()}; the image runs as uid ${RUN_AS_UID}); remount it read-write or chown it to uid ${RUN_AS_UID}, then retry`,
      { cause: error, details },
    );
  }
  return new AppError('internal', `${what}: ${(error as Error)?.message ?? String(error)}`, {
    cause: error,
    details,
  });
}

export function sinkRefOf(sink: { url: string; name?: string | undefined }): SinkRef {
  return {
    id: sink.name ?? `url-${createHash('sha256').update(sink.url).digest('hex').slice(0, 16)}`,
    shown: sink.name ?? redactUrl(sink.url),
  };
}

function deliveryName(event: CloudEvent, sinkId: string): string {
  const sinkKey = createHash('sha256').update(sinkId).digest('hex').slice(0, 12);
  return `${event.id}~${sinkKey}.json`;
}

/** Retry-After as seconds or an HTTP date (RFC 9110 §10.2.3). */
export function retryAfterMs(header: string | null, now: number = Date.now()): number | undefined {
  if (!header) return undefined;
  if (/^\d+$/.test(header.trim())) return Number(header.trim()) * 1000;
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/**
 * The wait before attempt `attempt + 1` after `attempt` failed: the schedule's step lengthened by jitter,
 * or the receiver's Retry-After when longer. Undefined when the schedule is used up (a dead letter).
 */
export function retryDelayMs(
  schedule: readonly number[],
  attempt: number,
  retryAfter: number | undefined,
  random: () => number = Math.random,
): number | undefined {
  const step = schedule[attempt];
  if (step === undefined) return undefined;
  const jittered = Math.round(step * (1 + RETRY_JITTER_RATIO * random()));
  return Math.max(jittered, Math.min(retryAfter ?? 0, MAX_RETRY_AFTER_MS));
}

/** The `code` of a JSON error body, if it is one. */
function errorCodeOf(text: string): string | undefined {
  try {
    const code = (JSON.parse(text) as { code?: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  } catch {
    return undefined;
  }
}

interface SinkStats {
  lastStatus?: number;
  lastError?: string;
  lastDeliveredAt?: string;
  dead: number;
}

// The lag gauge is read at scrape time from every outbox sharing the registry (the all-in-one's five).
const lagSources = new WeakMap<MetricsRegistry, Set<(g: Gauge) => void>>();

export function createOutbox(options: OutboxOptions): Outbox {
  const pendingDir = path.join(options.dir, 'pending');
  const deadDir = path.join(options.dir, 'dead');
  const concurrency = options.concurrency ?? 8;
  const fn = options.fn ?? path.basename(options.dir);
  const pending = new Map<string, Delivery>();
  const inFlight = new Set<string>();
  let timer: NodeJS.Timeout | undefined;
  let stopped = true;
  const idleWaiters = new Set<() => void>();
  /** Enqueues between their start and their deliveries being pending (the event log write, persist). */
  let enqueuing = 0;
  const isIdle = () => pending.size === 0 && inFlight.size === 0 && enqueuing === 0;
  const recentEvents: CloudEvent[] = [];
  const stats = new Map<string, SinkStats>();
  const statsOf = (id: string): SinkStats => {
    let s = stats.get(id);
    if (!s) {
      s = { dead: 0 };
      stats.set(id, s);
    }
    return s;
  };

  const deliveries = counter(
    options.metrics,
    'flux_events_deliveries_total',
    'Event delivery attempts by result',
    ['type', 'result'],
  );
  const sinkDeliveries = counter(
    options.metrics,
    'flux_events_sink_deliveries_total',
    'Delivery attempts per sink: delivered, failed (to be retried) or dead (gave up)',
    ['fn', 'sink', 'result'],
  );
  const sinkDead = gauge(options.metrics, 'flux_events_sink_dead_letters', 'Dead letters kept per sink', [
    'fn',
    'sink',
  ]);
  const depthGauge = gauge(options.metrics, 'flux_events_outbox_depth', 'Deliveries waiting in the outbox', [
    'dir',
  ]);
  const deadGauge = gauge(options.metrics, 'flux_events_dead_letters', 'Deliveries kept as dead letters', [
    'dir',
  ]);
  metric(
    options.metrics,
    'flux_events_sink_lag_seconds',
    (registers) =>
      new Gauge({
        name: 'flux_events_sink_lag_seconds',
        help: 'Age of the oldest delivery still waiting for each sink (0 when none waits)',
        labelNames: ['fn', 'sink'],
        registers,
        collect() {
          this.reset();
          for (const report of lagSources.get(options.metrics) ?? []) report(this);
        },
      }),
  );
  let sources = lagSources.get(options.metrics);
  if (!sources) {
    sources = new Set();
    lagSources.set(options.metrics, sources);
  }
  sources.add((g) => {
    for (const [id, lag] of lagBySink()) g.set({ fn, sink: id }, lag);
  });

  const label = { dir: path.basename(options.dir) };
  const updateDepth = () => depthGauge.set(label, pending.size);

  function configuredSinks(): Map<string, EventSink> {
    return new Map(options.sinks().map((s) => [sinkRefOf(s).id, s]));
  }

  function lagBySink(): Map<string, number> {
    const now = Date.now();
    const out = new Map<string, number>();
    for (const id of configuredSinks().keys()) out.set(id, 0);
    for (const d of pending.values()) {
      const age = Math.max(0, (now - Date.parse(d.createdAt)) / 1000);
      out.set(d.sink.id, Math.max(out.get(d.sink.id) ?? 0, age));
    }
    return out;
  }

  async function persist(name: string, delivery: Delivery): Promise<void> {
    await writeJsonAtomic(path.join(pendingDir, name), delivery);
  }

  function schedule(): void {
    if (stopped) return;
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (isIdle()) {
      for (const resolve of idleWaiters) resolve();
      idleWaiters.clear();
      return;
    }
    const now = Date.now();
    let next = Number.POSITIVE_INFINITY;
    for (const [name, d] of pending) {
      if (inFlight.has(name)) continue;
      if (d.nextAttemptAt <= now && inFlight.size < concurrency) {
        inFlight.add(name);
        void attempt(name, d).finally(() => {
          inFlight.delete(name);
          schedule();
        });
      } else if (!inFlight.has(name)) next = Math.min(next, Math.max(d.nextAttemptAt, now + 5));
    }
    if (Number.isFinite(next)) {
      timer = setTimeout(schedule, Math.min(next - now, 60_000));
      timer.unref();
    }
  }

  async function bury(name: string, d: Delivery, why: string): Promise<void> {
    deliveries.inc({ type: d.event.type, result: 'dead' });
    sinkDeliveries.inc({ fn, sink: d.sink.id, result: 'dead' });
    d.deadAt = new Date().toISOString();
    await ensureDir(deadDir);
    await writeJsonAtomic(path.join(deadDir, name), d);
    await rm(path.join(pendingDir, name), { force: true });
    pending.delete(name);
    updateDepth();
    deadGauge.inc(label);
    statsOf(d.sink.id).dead += 1;
    sinkDead.set({ fn, sink: d.sink.id }, statsOf(d.sink.id).dead);
    options.log.error(
      {
        eventId: d.event.id,
        type: d.event.type,
        sink: d.sink.shown,
        attempts: d.attempts,
        status: d.lastStatus,
        error: d.lastError,
      },
      `event delivery gave up${why}; kept as a dead letter: replay with \`flux-ops events replay\``,
    );
  }

  async function attempt(name: string, d: Delivery): Promise<void> {
    const sink = configuredSinks().get(d.sink.id);
    if (!sink) {
      d.lastError = `sink ${d.sink.shown} is no longer configured (FLUX_EVENT_SINKS)`;
      await bury(name, d, ' (its sink is no longer configured)');
      return;
    }
    const body = JSON.stringify(d.event);
    let status: number | undefined;
    let retryAfter: number | undefined;
    let error: string | undefined;
    let code: string | undefined;
    try {
      const response = await fetch(sink.url, {
        method: 'POST',
        headers: {
          'content-type': CLOUDEVENTS_CONTENT_TYPE,
          ...signWebhook(options.secrets, d.event.id, body),
        },
        body,
        signal: AbortSignal.timeout(options.requestTimeoutMs ?? 30_000),
      });
      status = response.status;
      retryAfter = retryAfterMs(response.headers.get('retry-after'));
      if (!response.ok) {
        const text = await response.text().catch(() => '');
        code = errorCodeOf(text);
        error = `HTTP ${status}: ${text.slice(0, 300)}`;
      } else await response.arrayBuffer().catch(() => undefined);
    } catch (e) {
      error =
        (e as Error).name === 'TimeoutError'
          ? 'timed out'
          : (((e as Error).cause as Error)?.message ?? (e as Error).message);
    }
    d.attempts += 1;
    const sinkStats = statsOf(d.sink.id);
    if (status !== undefined) sinkStats.lastStatus = status;
    // 2xx delivered; a 409 means the receiver already has this webhook-id (idempotent: delivered), unless
    // it says the same id is being handled right now: then it is not taken yet and is retried.
    const inProgress = status === 409 && code === IN_PROGRESS_CODE;
    if (status !== undefined && ((status >= 200 && status < 300) || (status === 409 && !inProgress))) {
      deliveries.inc({ type: d.event.type, result: 'delivered' });
      sinkDeliveries.inc({ fn, sink: d.sink.id, result: 'delivered' });
      sinkStats.lastDeliveredAt = new Date().toISOString();
      delete sinkStats.lastError;
      pending.delete(name);
      updateDepth();
      await rm(path.join(pendingDir, name), { force: true });
      options.log.debug(
        { eventId: d.event.id, type: d.event.type, sink: d.sink.shown, status },
        'event delivered',
      );
      return;
    }
    const permanent =
      !inProgress &&
      status !== undefined &&
      status >= 400 &&
      status < 500 &&
      !PERMANENT_4XX_EXCEPTIONS.has(status);
    d.lastError = error ?? 'unknown';
    sinkStats.lastError = d.lastError;
    if (status !== undefined) d.lastStatus = status;
    const delay = permanent ? undefined : retryDelayMs(options.retryScheduleMs, d.attempts, retryAfter);
    if (delay === undefined) {
      await bury(name, d, permanent ? ' (the receiver refused it)' : '');
      return;
    }
    deliveries.inc({ type: d.event.type, result: 'retry' });
    sinkDeliveries.inc({ fn, sink: d.sink.id, result: 'failed' });
    d.nextAttemptAt = Date.now() + delay;
    await persist(name, d).catch((e) =>
      options.log.error({ err: e }, 'outbox: could not persist retry state'),
    );
    options.log.warn(
      {
        eventId: d.event.id,
        type: d.event.type,
        sink: d.sink.shown,
        attempts: d.attempts,
        status,
        error: d.lastError,
        retryInMs: delay,
      },
      'event delivery failed; will retry',
    );
  }

  async function loadDir(dir: string): Promise<Array<[string, Delivery]>> {
    let names: string[];
    try {
      names = (await readdir(dir)).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return [];
      throw error;
    }
    const out: Array<[string, Delivery]> = [];
    for (const name of names) {
      try {
        const d = JSON.parse(await readFile(path.join(dir, name), 'utf8')) as Delivery;
        // Files of an earlier version held the sink's URL: rewritten without it on first read.
        const legacy = d.sink as unknown as { url?: string; name?: string };
        if (typeof legacy.url === 'string') {
          d.sink = sinkRefOf({ url: legacy.url, name: legacy.name });
          await writeJsonAtomic(path.join(dir, name), d);
        }
        out.push([name, d]);
      } catch (error) {
        options.log.error({ file: name, err: error }, 'outbox: unreadable delivery file left in place');
      }
    }
    return out;
  }

  /** One pending delivery per sink that takes the event's type, durable before it resolves. */
  async function deliver(event: CloudEvent): Promise<number> {
    const sinks = options.sinks().filter((s) => typeMatches(event.type, s.types));
    if (sinks.length === 0) return 0;
    await ensureDir(pendingDir);
    const now = Date.now();
    for (const sink of sinks) {
      const ref = sinkRefOf(sink);
      const name = deliveryName(event, ref.id);
      const delivery: Delivery = {
        event,
        sink: ref,
        attempts: 0,
        createdAt: new Date(now).toISOString(),
        nextAttemptAt: now + (options.retryScheduleMs[0] ?? 0),
      };
      await persist(name, delivery);
      pending.set(name, delivery);
    }
    updateDepth();
    schedule();
    return sinks.length;
  }

  return {
    async enqueue(event) {
      // Counted from the first moment: an event being logged and persisted is not idle yet.
      enqueuing += 1;
      try {
        // The deliveries first: they are what must not be lost. A directory that cannot take them fails
        // the caller with the reason (never a silent drop); one that takes them but not the event log
        // only costs `events tail` this event.
        let count: number;
        try {
          count = await deliver(event);
        } catch (error) {
          throw outboxWriteError(error, pendingDir, event);
        }
        if (options.eventLog) {
          await options.eventLog
            .append(event)
            .catch((error) =>
              options.log.error(
                { err: error, eventId: event.id, type: event.type },
                'event log: could not record an event (it is delivered, but `events tail` will not show it)',
              ),
            );
        } else {
          recentEvents.push(event);
          if (recentEvents.length > RECENT_EVENTS)
            recentEvents.splice(0, recentEvents.length - RECENT_EVENTS);
        }
        return count;
      } finally {
        enqueuing -= 1;
        schedule();
      }
    },

    async replaySince(sinceMs) {
      const events = options.eventLog ? await options.eventLog.since(sinceMs) : [];
      let deliveries = 0;
      for (const event of events) deliveries += await deliver(event);
      return { events: events.length, deliveries };
    },

    async start() {
      await ensureDir(pendingDir);
      await ensureDir(deadDir);
      for (const [name, d] of await loadDir(pendingDir)) pending.set(name, d);
      const dead = await loadDir(deadDir);
      deadGauge.set(label, dead.length);
      for (const [, d] of dead) statsOf(d.sink.id).dead += 1;
      for (const [id, s] of stats) sinkDead.set({ fn, sink: id }, s.dead);
      updateDepth();
      stopped = false;
      schedule();
    },

    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = undefined;
      const deadline = Date.now() + 5_000;
      // Deliveries under way, and events being written (an emit that began before the stop): both
      // settle before the stop returns, so nothing lands in FLUX_STATE_DIR after it.
      while ((inFlight.size > 0 || enqueuing > 0) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
    },

    idle(timeoutMs = 30_000) {
      if (isIdle()) return Promise.resolve(true);
      return new Promise((resolve) => {
        const done = () => {
          clearTimeout(t);
          resolve(true);
        };
        const t = setTimeout(() => {
          idleWaiters.delete(done);
          resolve(false);
        }, timeoutMs);
        idleWaiters.add(done);
      });
    },

    depth: () => pending.size,

    recent: async () => (options.eventLog ? options.eventLog.events() : recentEvents),

    async deadLetters() {
      return (await loadDir(deadDir)).map(([file, d]) => ({ ...d, file }));
    },

    async replay(eventId) {
      let moved = 0;
      for (const [name, d] of await loadDir(deadDir)) {
        if (eventId && d.event.id !== eventId) continue;
        const revived: Delivery = { ...d, attempts: 0, nextAttemptAt: Date.now() };
        delete revived.deadAt;
        await persist(name, revived);
        await rm(path.join(deadDir, name), { force: true });
        pending.set(name, revived);
        const s = statsOf(d.sink.id);
        s.dead = Math.max(0, s.dead - 1);
        sinkDead.set({ fn, sink: d.sink.id }, s.dead);
        moved += 1;
      }
      if (moved > 0) {
        await fsyncDir(deadDir);
        deadGauge.dec(label, moved);
        updateDepth();
        schedule();
      }
      return moved;
    },

    async sinkStates() {
      const lags = lagBySink();
      const shown = new Map<string, string>();
      for (const [id, s] of configuredSinks()) shown.set(id, sinkRefOf(s).shown);
      const counts = new Map<string, { pending: number; retrying: number }>();
      for (const d of pending.values()) {
        const c = counts.get(d.sink.id) ?? { pending: 0, retrying: 0 };
        c.pending += 1;
        if (d.attempts > 0) c.retrying += 1;
        counts.set(d.sink.id, c);
        if (!shown.has(d.sink.id)) shown.set(d.sink.id, d.sink.shown);
      }
      return [...shown].map(([id, name]): SinkState => {
        const s = stats.get(id) ?? { dead: 0 };
        const c = counts.get(id) ?? { pending: 0, retrying: 0 };
        return {
          sink: name,
          state: c.retrying > 0 ? 'retrying' : s.dead > 0 ? 'dead_letters' : 'ok',
          pending: c.pending,
          dead: s.dead,
          lagSeconds: Math.round((lags.get(id) ?? 0) * 1000) / 1000,
          ...(s.lastStatus !== undefined ? { lastStatus: s.lastStatus } : {}),
          ...(s.lastError !== undefined ? { lastError: s.lastError.slice(0, 300) } : {}),
          ...(s.lastDeliveredAt !== undefined ? { lastDeliveredAt: s.lastDeliveredAt } : {}),
        };
      });
    },
  };
}
