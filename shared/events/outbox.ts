// Durable at-least-once delivery: every (event, sink) pair is a file under FLUX_STATE_DIR before it is
// sent; retries back off (honouring Retry-After); after the last attempt it becomes a dead letter that
// can be replayed. A restart resumes from the files.
import { createHash } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, fsyncDir, writeJsonAtomic } from '../atomic.js';
import { type EventSink, redactUrl } from '../config.js';
import { errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import { counter, gauge, type Registry } from '../metrics.js';
import { CLOUDEVENTS_CONTENT_TYPE, type CloudEvent, typeMatches } from './envelope.js';
import { signWebhook } from './signature.js';

export interface Delivery {
  event: CloudEvent;
  sink: { url: string; name?: string | undefined };
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
  metrics: Registry;
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  concurrency?: number;
  requestTimeoutMs?: number;
}

export interface Outbox {
  /** Persists one delivery per matching sink, then sends in the background. Resolves once durable. */
  enqueue(event: CloudEvent): Promise<number>;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Resolves when nothing is pending or in flight (tests, shutdown). */
  idle(timeoutMs?: number): Promise<boolean>;
  depth(): number;
  /** The most recent events enqueued by this process (oldest first), for `flux-ops events tail`. */
  recent(): readonly CloudEvent[];
  deadLetters(): Promise<Array<Delivery & { file: string }>>;
  /** Moves dead letters (all, or those of one event id) back to pending. */
  replay(eventId?: string): Promise<number>;
}

const RECENT_EVENTS = 500;
const PERMANENT_4XX_EXCEPTIONS = new Set([408, 425, 429]);

function deliveryName(event: CloudEvent, sinkUrl: string): string {
  const sinkKey = createHash('sha256').update(sinkUrl).digest('hex').slice(0, 12);
  return `${event.id}~${sinkKey}.json`;
}

/** Retry-After as seconds or an HTTP date (RFC 9110 §10.2.3). */
export function retryAfterMs(header: string | null, now: number = Date.now()): number | undefined {
  if (!header) return undefined;
  if (/^\d+$/.test(header.trim())) return Number(header.trim()) * 1000;
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

export function backoffMs(attempt: number, baseMs: number, maxMs: number): number {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}

export function createOutbox(options: OutboxOptions): Outbox {
  const pendingDir = path.join(options.dir, 'pending');
  const deadDir = path.join(options.dir, 'dead');
  const concurrency = options.concurrency ?? 8;
  const pending = new Map<string, Delivery>();
  const inFlight = new Set<string>();
  let timer: NodeJS.Timeout | undefined;
  let stopped = true;
  const idleWaiters = new Set<() => void>();
  const recentEvents: CloudEvent[] = [];

  const deliveries = counter(
    options.metrics,
    'flux_events_deliveries_total',
    'Event delivery attempts by result',
    ['type', 'result'],
  );
  const depthGauge = gauge(options.metrics, 'flux_events_outbox_depth', 'Deliveries waiting in the outbox', [
    'dir',
  ]);
  const deadGauge = gauge(options.metrics, 'flux_events_dead_letters', 'Deliveries kept as dead letters', [
    'dir',
  ]);
  const label = { dir: path.basename(options.dir) };
  const updateDepth = () => depthGauge.set(label, pending.size);

  async function persist(name: string, delivery: Delivery): Promise<void> {
    await writeJsonAtomic(path.join(pendingDir, name), delivery);
  }

  function schedule(): void {
    if (stopped) return;
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (pending.size === 0 && inFlight.size === 0) {
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

  async function attempt(name: string, d: Delivery): Promise<void> {
    const body = JSON.stringify(d.event);
    let status: number | undefined;
    let retryAfter: number | undefined;
    let error: string | undefined;
    try {
      const response = await fetch(d.sink.url, {
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
      if (!response.ok) error = `HTTP ${status}: ${(await response.text().catch(() => '')).slice(0, 300)}`;
      else await response.arrayBuffer().catch(() => undefined);
    } catch (e) {
      error =
        (e as Error).name === 'TimeoutError'
          ? 'timed out'
          : (((e as Error).cause as Error)?.message ?? (e as Error).message);
    }
    d.attempts += 1;
    const sinkShown = redactUrl(d.sink.url);
    // 2xx delivered; 409 means the receiver already has this webhook-id (idempotent: delivered).
    if (status !== undefined && ((status >= 200 && status < 300) || status === 409)) {
      deliveries.inc({ type: d.event.type, result: 'delivered' });
      pending.delete(name);
      updateDepth();
      await rm(path.join(pendingDir, name), { force: true });
      options.log.debug(
        { eventId: d.event.id, type: d.event.type, sink: sinkShown, status },
        'event delivered',
      );
      return;
    }
    const permanent =
      status !== undefined && status >= 400 && status < 500 && !PERMANENT_4XX_EXCEPTIONS.has(status);
    d.lastError = error ?? 'unknown';
    if (status !== undefined) d.lastStatus = status;
    if (permanent || d.attempts >= options.maxAttempts) {
      deliveries.inc({ type: d.event.type, result: 'dead' });
      d.deadAt = new Date().toISOString();
      await ensureDir(deadDir);
      await writeJsonAtomic(path.join(deadDir, name), d);
      await rm(path.join(pendingDir, name), { force: true });
      pending.delete(name);
      updateDepth();
      deadGauge.inc(label);
      options.log.error(
        {
          eventId: d.event.id,
          type: d.event.type,
          sink: sinkShown,
          attempts: d.attempts,
          status,
          error: d.lastError,
        },
        `event delivery gave up${permanent ? ' (the receiver refused it)' : ''}; kept as a dead letter: replay with \`flux-ops events replay\``,
      );
      return;
    }
    deliveries.inc({ type: d.event.type, result: 'retry' });
    const delay = Math.max(backoffMs(d.attempts, options.baseDelayMs, options.maxDelayMs), retryAfter ?? 0);
    d.nextAttemptAt = Date.now() + delay;
    await persist(name, d).catch((e) =>
      options.log.error({ err: e }, 'outbox: could not persist retry state'),
    );
    options.log.warn(
      {
        eventId: d.event.id,
        type: d.event.type,
        sink: sinkShown,
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
        out.push([name, JSON.parse(await readFile(path.join(dir, name), 'utf8')) as Delivery]);
      } catch (error) {
        options.log.error({ file: name, err: error }, 'outbox: unreadable delivery file left in place');
      }
    }
    return out;
  }

  return {
    async enqueue(event) {
      recentEvents.push(event);
      if (recentEvents.length > RECENT_EVENTS) recentEvents.splice(0, recentEvents.length - RECENT_EVENTS);
      const sinks = options.sinks().filter((s) => typeMatches(event.type, s.types));
      if (sinks.length === 0) return 0;
      await ensureDir(pendingDir);
      for (const sink of sinks) {
        const name = deliveryName(event, sink.url);
        const delivery: Delivery = {
          event,
          sink: { url: sink.url, name: sink.name },
          attempts: 0,
          createdAt: new Date().toISOString(),
          nextAttemptAt: Date.now(),
        };
        await persist(name, delivery);
        pending.set(name, delivery);
      }
      updateDepth();
      schedule();
      return sinks.length;
    },

    async start() {
      await ensureDir(pendingDir);
      await ensureDir(deadDir);
      for (const [name, d] of await loadDir(pendingDir)) pending.set(name, d);
      deadGauge.set(label, (await loadDir(deadDir)).length);
      updateDepth();
      stopped = false;
      schedule();
    },

    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = undefined;
      const deadline = Date.now() + 5_000;
      while (inFlight.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    },

    idle(timeoutMs = 30_000) {
      if (pending.size === 0 && inFlight.size === 0) return Promise.resolve(true);
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

    recent: () => recentEvents,

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
  };
}
