// Events end to end over real HTTP: signed delivery from the durable outbox, retries honouring
// Retry-After, dead letters and replay, redelivery after a restart, and the receiving side's checks.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../shared/config.js';
import { createOutbox } from '../shared/events/outbox.js';
import { signWebhook } from '../shared/events/signature.js';
import { createKit } from '../shared/kit/app.js';
import { silentLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
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

function outboxFor(dir: string, maxAttempts = 5) {
  return createOutbox({
    dir: path.join(env.root, dir),
    sinks: () => [
      { url: receiver.url, types: ['flux.backup.*'] },
      { url: `${receiver.url}?other`, types: ['flux.tenant.*'] },
    ],
    secrets: [WEBHOOK_SECRET],
    log: silentLogger(),
    metrics: createRegistry({ defaultMetrics: false }),
    maxAttempts,
    baseDelayMs: 20,
    maxDelayMs: 100,
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

  it('retries failures honouring Retry-After, then delivers', async () => {
    const outbox = outboxFor('ob-2');
    await outbox.start();
    receiver.failNext(2, 503, '0');
    const event = created();
    await outbox.enqueue(event);
    await eventually(() => receiver.deliveries.find((d) => d.event.id === event.id));
    await outbox.stop();
  });

  it('keeps a dead letter after the last attempt (or a refusal), and replays it', async () => {
    const outbox = outboxFor('ob-3', 2);
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
