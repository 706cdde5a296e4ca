// Events end to end over real HTTP: signed delivery from the durable outbox, retries honouring
// Retry-After, dead letters and replay, redelivery after a restart, and the receiving side's checks.
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, redactConfig } from '../shared/config.js';
import { createOutbox, retryDelayMs, sinkRefOf } from '../shared/events/outbox.js';
import { signWebhook } from '../shared/events/signature.js';
import { createKit } from '../shared/kit/app.js';
import { silentLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { filesUnder, secretFinder, serveOnLoopback } from './support/hardening.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import {
  ADMIN,
  backupCreatedEvent,
  eventually,
  makeTestEnv,
  makeWebhookSecret,
  signedEvent,
  type TestEnv,
  testRuntime,
  WEBHOOK_SECRET,
} from './support/runtime.js';

const projectId = '550e8400-e29b-41d4-a716-446655440000';
const created = () =>
  backupCreatedEvent(projectId, '01JDZ0000000000000000000AA', {
    kind: 'tenant_export',
    sizeBytes: 10,
    tables: 1,
    rows: 2,
  });

let env: TestEnv;
let receiver: EventReceiver;

beforeAll(async () => {
  env = await makeTestEnv();
  receiver = await startEventReceiver();
});
afterAll(async () => {
  await receiver.close();
  await env.cleanup();
});

function outboxFor(dir: string, retryScheduleMs: number[] = [0, 20, 40, 80, 100]) {
  return createOutbox({
    dir: path.join(env.root, dir),
    sinks: () => [
      { url: receiver.url, types: ['flux.backup.*'] },
      { url: `${receiver.url}?other`, types: ['flux.tenant.*'] },
    ],
    secrets: [WEBHOOK_SECRET],
    log: silentLogger(),
    metrics: createRegistry({ defaultMetrics: false }),
    retryScheduleMs,
  });
}

describe('outbox', () => {
  it('delivers signed CloudEvents to the sinks whose type filter matches', async () => {
    const outbox = outboxFor('ob-1');
    await outbox.start();
    const event = created();
    expect(await outbox.enqueue(event)).toBe(1);
    const got = await eventually(() => receiver.deliveries.find((d) => d.event.id === event.id));
    expect(got.verified).toBe(true);
    expect(got.headers['content-type']).toBe('application/cloudevents+json');
    expect(got.headers['webhook-id']).toBe(event.id);
    expect(got.event).toMatchObject({
      specversion: '1.0',
      type: 'flux.backup.created',
      source: '/flux-ops/dump',
    });
    expect(await outbox.idle(5_000)).toBe(true);
    await outbox.stop();
  });

  it('waits as long as Retry-After asks before the next attempt, then delivers', async () => {
    // The schedule alone would retry after 20 ms; the receiver asks for 2 s.
    const outbox = outboxFor('ob-2', [0, 20, 20]);
    await outbox.start();
    receiver.failNext(1, 503, '2');
    const event = created();
    await outbox.enqueue(event);
    await eventually(() => receiver.deliveries.find((d) => d.event.id === event.id), 20_000);
    const arrivals = receiver.arrivals.filter((a) => a.webhookId === event.id);
    expect(arrivals.map((a) => a.status)).toEqual([503, 202]);
    // Measured at the receiver: the second request came no sooner than 2 s after the first.
    expect(arrivals[1]!.at - arrivals[0]!.at).toBeGreaterThanOrEqual(2_000);
    await outbox.stop();
  });

  it('follows the retry schedule: one attempt per entry, each gap at least its step, then a dead letter', async () => {
    const schedule = [0, 100, 300, 600];
    const outbox = outboxFor('ob-schedule', schedule);
    await outbox.start();
    receiver.failAll(500);
    const event = created();
    try {
      await outbox.enqueue(event);
      await eventually(async () => (await outbox.deadLetters()).find((d) => d.event.id === event.id), 20_000);
    } finally {
      receiver.failNext(0, 500);
    }
    const times = receiver.arrivals.filter((a) => a.webhookId === event.id).map((a) => a.at);
    expect(times).toHaveLength(schedule.length);
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    gaps.forEach((gap, i) => {
      expect(gap, `gap before attempt ${i + 2}`).toBeGreaterThanOrEqual(schedule[i + 1]!);
    });
    await outbox.stop();
  });

  it('keeps a dead letter after the last attempt (or a refusal), and replays it', async () => {
    const outbox = outboxFor('ob-3', [0, 20]);
    await outbox.start();
    receiver.failNext(2, 500);
    const event = created();
    await outbox.enqueue(event);
    await eventually(async () => (await outbox.deadLetters()).find((d) => d.event.id === event.id));
    expect(receiver.deliveries.find((d) => d.event.id === event.id)).toBeUndefined();
    expect(await outbox.replay(event.id)).toBe(1);
    await eventually(() => receiver.deliveries.find((d) => d.event.id === event.id));
    expect(await outbox.deadLetters()).toHaveLength(0);

    receiver.failNext(1, 400);
    const refused = created();
    await outbox.enqueue(refused);
    const dead = await eventually(async () =>
      (await outbox.deadLetters()).find((d) => d.event.id === refused.id),
    );
    expect(dead).toMatchObject({ attempts: 1, lastStatus: 400 });
    await outbox.stop();
  });

  it('is not idle while an event is still being logged and persisted', async () => {
    const rt = testRuntime('dump', env, { extraSinks: () => [{ url: receiver.url, types: ['*'] }] });
    await rt.outbox.start();
    const event = created();
    // Not awaited: idle() is asked while the enqueue is still writing the event log and the delivery.
    const enqueued = rt.outbox.enqueue(event);
    expect(await rt.outbox.idle(10_000)).toBe(true);
    expect(receiver.deliveries.some((d) => d.event.id === event.id)).toBe(true);
    expect(await enqueued).toBe(1);
    await rt.outbox.stop();
  });

  it('survives a restart: what was pending is delivered by the next process', async () => {
    const first = outboxFor('ob-4');
    // Not started: the enqueue is durable but nothing is sent (as if the process died right after).
    const event = created();
    await first.enqueue(event);
    expect(await readdir(path.join(env.root, 'ob-4', 'pending'))).toHaveLength(1);
    const second = outboxFor('ob-4');
    await second.start();
    await eventually(() => receiver.deliveries.find((d) => d.event.id === event.id));
    expect(await second.idle(5_000)).toBe(true);
    expect(await readdir(path.join(env.root, 'ob-4', 'pending'))).toHaveLength(0);
    await second.stop();
  });
});

describe('POST /events (inbox)', () => {
  function kitApp() {
    const rt = testRuntime('replicate', env);
    const seen: string[] = [];
    const kit = createKit({
      name: 'replicate',
      config: env.config,
      log: rt.log,
      metrics: rt.metrics,
      inbox: rt.inbox,
      outbox: rt.outbox,
      checks: () => [],
      handlers: {
        'flux.backup.created': async (event) => {
          seen.push(event.id);
          return { status: 202 };
        },
      },
    });
    return { rt, app: kit.app, seen };
  }

  it('accepts a signed event once; a redelivery is acknowledged without running the handler; a replay is refused', async () => {
    const { rt, app, seen } = kitApp();
    await rt.inbox.start();
    const event = created();
    const first = signedEvent(event);
    expect((await app.request('/events', first)).status).toBe(202);
    expect(seen).toEqual([event.id]);
    // The same request again, byte for byte: a replay.
    const replay = await app.request('/events', first);
    expect(replay.status).toBe(409);
    expect(((await replay.json()) as { code: string }).code).toBe('event_replayed');
    // A redelivery (new timestamp/signature, same id) after a lost ack: idempotent 200.
    const redelivery = signedEvent(event);
    (redelivery.headers as Record<string, string>)['webhook-timestamp'] = String(
      Math.floor(Date.now() / 1000) + 1,
    );
    (redelivery.headers as Record<string, string>)['webhook-signature'] = signWebhook(
      [WEBHOOK_SECRET],
      event.id,
      redelivery.body as string,
      new Date(Date.now() + 1000),
    )['webhook-signature']!;
    const again = await app.request('/events', redelivery);
    expect(again.status).toBe(200);
    expect(await again.json()).toMatchObject({ duplicate: true });
    expect(seen).toEqual([event.id]);
    // A new process (same state dir) still refuses the replay.
    const restarted = kitApp();
    await restarted.rt.inbox.start();
    expect((await restarted.app.request('/events', first)).status).toBe(409);
    expect(restarted.seen).toEqual([]);
  });

  it('answers each bad delivery with the right 4xx and a message', async () => {
    const { rt, app, seen } = kitApp();
    await rt.inbox.start();
    const event = created();
    const good = signedEvent(event);
    const cases: Array<[string, RequestInit, number, RegExp]> = [
      [
        'no signature',
        { method: 'POST', headers: { 'content-type': 'application/cloudevents+json' }, body: good.body },
        401,
        /missing webhook-id/,
      ],
      ['wrong secret', signedEvent(event, [makeWebhookSecret()]), 401, /no webhook-signature matches/],
      [
        'expired',
        {
          ...good,
          headers: {
            ...(good.headers as object),
            ...signWebhook([WEBHOOK_SECRET], event.id, good.body as string, new Date(Date.now() - 3_600_000)),
          },
        },
        401,
        /older than/,
      ],
      [
        'tampered body',
        { ...good, body: (good.body as string).replace('"rows":2', '"rows":3') },
        401,
        /matches/,
      ],
      [
        'wrong content type',
        { ...good, headers: { ...(good.headers as object), 'content-type': 'text/plain' } },
        415,
        /cloudevents/,
      ],
      ['malformed JSON', signedRaw('{not json', 'evt_bad'), 400, /not JSON/],
      ['not a CloudEvent', signedRaw(JSON.stringify({ hello: 1 }), 'evt_nce'), 400, /CloudEvents/],
      [
        'unknown type',
        signedRaw(JSON.stringify({ ...created(), id: 'evt_u', type: 'flux.backup.exploded' }), 'evt_u'),
        422,
        /unknown event type/,
      ],
      [
        'bad data',
        signedRaw(JSON.stringify({ ...created(), id: 'evt_d', data: { projectId: 'nope' } }), 'evt_d'),
        422,
        /invalid data/,
      ],
      [
        'oversized',
        signedRaw('x'.repeat(env.config.FLUX_BODY_LIMIT_BYTES + 10), 'evt_big'),
        413,
        /FLUX_BODY_LIMIT_BYTES/,
      ],
    ];
    for (const [name, init, status, message] of cases) {
      const res = await app.request('/events', init);
      expect(res.status, name).toBe(status);
      expect(((await res.json()) as { error: string }).error, name).toMatch(message);
    }
    expect(seen).toEqual([]);
  });

  it('dead letters are listed and replayed through the kit routes (events scope)', async () => {
    const { app } = kitApp();
    const noToken = await app.request('/events/dead');
    expect(noToken.status).toBe(401);
    const listed = await app.request('/events/dead', { headers: ADMIN.header });
    expect(listed.status).toBe(200);
    expect(await listed.json()).toEqual({ deadLetters: [] });
  });
});

function signedRaw(body: string, id: string): RequestInit {
  return {
    method: 'POST',
    headers: { 'content-type': 'application/cloudevents+json', ...signWebhook([WEBHOOK_SECRET], id, body) },
    body,
  };
}

describe('config', () => {
  it('lists every bad variable at once with the fix and never echoes values', () => {
    const secret = 'super-secret-value-123';
    expect(() =>
      loadConfig({
        FLUX_DUMP_PORT: '99999',
        FLUX_VERIFY_DRIVER: 'podman',
        FLUX_API_TOKENS: `ops:${secret}:backups:read`,
        FLUX_WEBHOOK_SECRETS: secret,
        NODE_TLS_REJECT_UNAUTHORIZED: '0',
      }),
    ).toThrow(
      expect.objectContaining({
        code: 'config_invalid',
        message: expect.stringMatching(
          /5 problems[\s\S]*NODE_TLS_REJECT_UNAUTHORIZED[\s\S]*NODE_EXTRA_CA_CERTS[\s\S]*FLUX_DUMP_PORT: must be at most 65535[\s\S]*FLUX_API_TOKENS[\s\S]*FLUX_WEBHOOK_SECRETS: secret #1 must be whsec_[\s\S]*FLUX_VERIFY_DRIVER: must be one of auto, docker, local/,
        ),
      }),
    );
    try {
      loadConfig({ FLUX_API_TOKENS: `ops:${secret}:backups:read`, FLUX_WEBHOOK_SECRETS: secret });
    } catch (error) {
      expect((error as Error).message).not.toContain(secret);
    }
  });

  it('has the seed’s defaults and an embedded profile under ./.flux-data', () => {
    const production = loadConfig({});
    expect(production).toMatchObject({
      FLUX_BACKUPS_LOCAL_DIR: '/srv/flux/backups',
      FLUX_BACKUPS_OFFSITE_DIR: '/srv/flux/backups-offsite',
      FLUX_BACKUP_VERIFY_POSTGRES_IMAGE: 'postgres:17-alpine',
      FLUX_PORT: 8080,
      FLUX_DUMP_PORT: 8081,
      FLUX_MIGRATE_PORT: 8085,
      FLUX_VERIFY_DRIVER: 'auto',
      FLUX_DUMP_COMPRESSION: 1,
    });
    const embedded = loadConfig({}, { profile: 'embedded', cwd: '/tmp/x' });
    expect(embedded.FLUX_BACKUPS_LOCAL_DIR).toBe('/tmp/x/.flux-data/backups');
    expect(embedded.FLUX_HOST).toBe('127.0.0.1');
  });

  it('a half-configured s3 offsite store is a startup error, not a fallback', () => {
    expect(() =>
      loadConfig({ FLUX_BACKUPS_OFFSITE_DIR: 's3://bucket/prefix', FLUX_S3_ACCESS_KEY_ID: 'AKIA' }),
    ).toThrow(/FLUX_S3_SECRET_ACCESS_KEY: is required/);
  });
});

describe('tokens', () => {
  it('parses id:sha256:scope+scope where scopes contain colons, and rejects unknown scopes', () => {
    const sha = 'b'.repeat(64);
    const config = loadConfig({ FLUX_API_TOKENS: `ops:${sha}:backups:read+backups:write, ci:${sha}:verify` });
    expect(config.FLUX_API_TOKENS).toEqual([
      { id: 'ops', sha256: sha, scopes: ['backups:read', 'backups:write'] },
      { id: 'ci', sha256: sha, scopes: ['verify'] },
    ]);
    expect(() => loadConfig({ FLUX_API_TOKENS: `ops:${sha}:backups:delete` })).toThrow(
      /unknown scope "backups:delete"/,
    );
    expect(() => loadConfig({ FLUX_API_TOKENS: `ops:${sha}` })).toThrow(
      /must be id:<sha256 hex of the token>:scope/,
    );
  });
});

describe('outbox delivery under stress', () => {
  it('the default schedule is Svix-like and spans more than a day; jitter only lengthens a step', () => {
    const schedule = loadConfig({}).FLUX_OUTBOX_RETRY_SCHEDULE_MS;
    expect(schedule).toEqual([0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000]);
    expect(schedule.reduce((a, b) => a + b, 0)).toBeGreaterThan(24 * 60 * 60 * 1000);
    expect(retryDelayMs(schedule, 1, undefined, () => 0)).toBe(5_000);
    expect(retryDelayMs(schedule, 1, undefined, () => 0.999)).toBeLessThanOrEqual(5_500);
    expect(retryDelayMs(schedule, 2, 10 * 60_000, () => 0)).toBe(10 * 60_000);
    expect(retryDelayMs(schedule, 2, 1_000, () => 0)).toBe(300_000);
    expect(retryDelayMs(schedule, schedule.length, undefined)).toBeUndefined();
    expect(() => loadConfig({ FLUX_OUTBOX_RETRY_SCHEDULE_MS: '0,5s' })).toThrow(
      /FLUX_OUTBOX_RETRY_SCHEDULE_MS: must be 1 to 100 comma-separated delays in ms/,
    );
  });

  it('a 409 "being handled right now" from our inbox is retried until the receiver has really taken the event', async () => {
    // A real receiver (the kit's POST /events) whose handler hangs on the first delivery until the
    // sender gives up on it; the sender's retry meets the inbox's in-progress 409.
    const rt = testRuntime('replicate', env);
    await rt.inbox.start();
    let release!: () => void;
    const hung = new Promise<void>((resolve) => {
      release = resolve;
    });
    const handled: string[] = [];
    let calls = 0;
    const kit = createKit({
      name: 'replicate',
      config: env.config,
      log: rt.log,
      metrics: rt.metrics,
      inbox: rt.inbox,
      outbox: rt.outbox,
      checks: () => [],
      handlers: {
        'flux.backup.created': async (event) => {
          calls += 1;
          if (calls === 1) {
            await hung;
            throw new Error('the first handling failed after its sender had given up');
          }
          handled.push(event.id);
          return { status: 202 };
        },
      },
    });
    const statuses: number[] = [];
    const served = await serveOnLoopback(async (request) => {
      const res = await kit.app.fetch(request);
      statuses.push(res.status);
      if (res.status === 409) release();
      return res;
    });
    const outbox = createOutbox({
      dir: path.join(env.root, 'ob-in-progress'),
      sinks: () => [{ url: `${served.url}/events`, types: ['*'] }],
      secrets: [WEBHOOK_SECRET],
      log: silentLogger(),
      metrics: createRegistry({ defaultMetrics: false }),
      retryScheduleMs: [0, 20, 20, 20, 20, 20],
      requestTimeoutMs: 300,
    });
    await outbox.start();
    const event = created();
    try {
      await outbox.enqueue(event);
      await eventually(() => statuses.includes(409));
      expect(await outbox.idle(20_000)).toBe(true);
      // Idle only once a handling succeeded: the 409 was not taken for a delivery.
      expect(handled).toEqual([event.id]);
      expect(await outbox.deadLetters()).toEqual([]);
    } finally {
      release();
      await outbox.stop();
      await served.close();
    }
  });

  it('outbox and dead-letter files hold no sink credential, nor do logs, /readyz or the metrics; each sink has its state and metrics', async () => {
    const PATH_CREDENTIAL = `T${randomBytes(12).toString('hex')}`;
    const FIRST_SEGMENT_CREDENTIAL = `hook${randomBytes(12).toString('hex')}`;
    const QUERY_CREDENTIAL = `q${randomBytes(12).toString('hex')}`;
    const refusing = await startEventReceiver();
    const flaky = await startEventReceiver();
    const stateEnv = await makeTestEnv({
      FLUX_OUTBOX_RETRY_SCHEDULE_MS: '0,50,50,50,50',
      FLUX_EVENT_SINKS: JSON.stringify([
        // Slack-like: the secret after the first segment, plus one in the query.
        {
          url: `${flaky.url.replace('/events', '')}/services/${PATH_CREDENTIAL}/x?token=${QUERY_CREDENTIAL}`,
          types: ['*'],
        },
        // The whole secret as the first path segment, and no name: shown redacted.
        { url: `${refusing.url.replace('/events', '')}/${FIRST_SEGMENT_CREDENTIAL}`, types: ['*'] },
      ]),
    });
    const find = secretFinder({ PATH_CREDENTIAL, FIRST_SEGMENT_CREDENTIAL, QUERY_CREDENTIAL });
    const rt = testRuntime('dump', stateEnv);
    const kit = createKit({
      name: 'dump',
      config: stateEnv.config,
      log: rt.log,
      metrics: rt.metrics,
      inbox: rt.inbox,
      outbox: rt.outbox,
      checks: () => [],
      handlers: {},
    });
    try {
      // Nothing sent yet: the pending files exist for both sinks.
      const event = created();
      expect(await rt.outbox.enqueue(event)).toBe(2);
      const pendingFiles = await filesUnder([stateEnv.config.FLUX_STATE_DIR]);
      expect(pendingFiles.length).toBeGreaterThanOrEqual(2);

      flaky.failNext(2, 503);
      refusing.failAll(400);
      await rt.outbox.start();
      await eventually(() => flaky.events().some((e) => e.id === event.id));
      await eventually(async () => (await rt.outbox.deadLetters()).length === 1);

      const ready = await (await kit.app.request('/readyz')).json();
      const metrics = await rt.metrics.metrics();
      const dead = await (await kit.app.request('/events/dead', { headers: ADMIN.header })).text();
      const files = [...pendingFiles, ...(await filesUnder([stateEnv.config.FLUX_STATE_DIR]))];
      const leaks = [
        ...files.flatMap((f) => find(f.content).map((s) => `${s} in ${f.file}`)),
        ...find(rt.logs.text()).map((s) => `${s} in the logs`),
        ...find(JSON.stringify(ready)).map((s) => `${s} in /readyz`),
        ...find(metrics).map((s) => `${s} in /metrics`),
        ...find(dead).map((s) => `${s} in /events/dead`),
        ...find(JSON.stringify(redactConfig(stateEnv.config))).map((s) => `${s} in the startup line`),
      ];
      expect(leaks).toEqual([]);
      // The dead letter names its sink by id and shows it without the credential.
      const [letter] = await rt.outbox.deadLetters();
      expect(letter!.sink.id).toMatch(/^url-[0-9a-f]{16}$/);
      expect(letter!.sink.shown).toBe(`${new URL(refusing.url).origin}/…`);
      // Retries were logged with the redacted sink too, so the logs were really looked at.
      expect(rt.logs.lines.some((l) => l.msg === 'event delivery failed; will retry')).toBe(true);

      // Per-sink state in /readyz and per-sink metrics.
      const sinks = (ready as { sinks: Array<Record<string, unknown>> }).sinks;
      expect(sinks).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ state: 'ok', pending: 0, dead: 0, lastStatus: 202 }),
          expect.objectContaining({ state: 'dead_letters', pending: 0, dead: 1, lastStatus: 400 }),
        ]),
      );
      const sample = (name: string, sink: string, result?: string) =>
        Number(
          new RegExp(
            `^${name}\\{fn="dump",sink="${sink}"${result ? `,result="${result}"` : ''}\\} (\\S+)$`,
            'm',
          ).exec(metrics)?.[1] ?? Number.NaN,
        );
      const [flakyId, refusingId] = stateEnv.config.FLUX_EVENT_SINKS.map((s) => sinkRefOf(s).id);
      expect(sample('flux_events_sink_deliveries_total', flakyId!, 'failed')).toBe(2);
      expect(sample('flux_events_sink_deliveries_total', flakyId!, 'delivered')).toBe(1);
      expect(sample('flux_events_sink_deliveries_total', refusingId!, 'dead')).toBe(1);
      expect(sample('flux_events_sink_dead_letters', refusingId!)).toBe(1);
      expect(sample('flux_events_sink_lag_seconds', flakyId!)).toBe(0);

      // A delivery that waits shows as lag and a retrying sink.
      flaky.failAll(503);
      const waiting = created();
      await rt.outbox.enqueue(waiting);
      await eventually(() => flaky.arrivals.some((a) => a.webhookId === waiting.id));
      await eventually(async () =>
        ((await (await kit.app.request('/readyz')).json()) as { sinks: Array<{ state: string }> }).sinks.some(
          (s) => s.state === 'retrying',
        ),
      );
      expect(
        Number(
          /^flux_events_sink_lag_seconds\{fn="dump",sink="url-[0-9a-f]+"\} (\S+)$/m.exec(
            await rt.metrics.metrics(),
          )?.[1],
        ),
      ).toBeGreaterThan(0);
    } finally {
      flaky.failNext(0, 500);
      await rt.outbox.stop();
      await refusing.close();
      await flaky.close();
      await stateEnv.cleanup();
    }
  });
});
