// The event log as an operator meets it: the real all-in-one process emits an event, is stopped and
// started again on the same FLUX_STATE_DIR, and the real CLI still tails that event; `events replay
// --since` sends the logged events of that time and later to a sink again, and none before it.

import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ChildFunction, startAllInOneProcess } from './support/hardening.js';
import { type EventReceiver, startEventReceiver } from './support/receiver.js';
import { ADMIN, eventually, makeTestEnv, type TestEnv } from './support/runtime.js';

const BIN = path.resolve(import.meta.dirname, '../bin/flux-ops.mjs');
const API_HOST = 'api--event-log--0a1b2c3.flux.test';

let env: TestEnv;
let gateway: Server;
let sink: EventReceiver;
let child: ChildFunction | undefined;

async function cli(
  base: string,
  args: string[],
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const r = await execa(process.execPath, [BIN, ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/tmp',
      FLUX_API_BASE: base,
      FLUX_API_TOKEN: ADMIN.token,
    },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 60_000,
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

const tailed = (stdout: string) =>
  stdout
    .trimEnd()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { id: string; type: string; time: string });

beforeAll(async () => {
  // A gateway that answers every probe 503: each probe run fails, and the first failure is an event.
  gateway = createServer((_req, res) => res.writeHead(503).end('down'));
  await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
  sink = await startEventReceiver();
  env = await makeTestEnv({
    FLUX_TENANT_PROBE_GATEWAY_URL: `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`,
    FLUX_PROBE_INTERVAL_MS: '0',
    FLUX_PROBE_FAILURE_THRESHOLD: '1',
    FLUX_VERIFY_DRIVER: 'local',
    FLUX_LOG_LEVEL: 'info',
  });
  await writeFile(
    env.config.FLUX_PROJECTS_FILE,
    JSON.stringify({
      clusters: [],
      projects: [
        {
          id: '550e8400-e29b-41d4-a716-446655440000',
          hash: '0a1b2c3',
          slug: 'event-log',
          engine: 'v1_dedicated',
          databaseUrl: 'env:UNUSED_URL',
          apiHost: API_HOST,
        },
      ],
    }),
  );
});

afterAll(async () => {
  await child?.stop();
  await sink?.close();
  await new Promise<void>((resolve) => gateway?.close(() => resolve()));
  await env?.cleanup();
});

describe('the event log', () => {
  it('events tail shows an event after a restart; events replay --since sends it again, and nothing from before the given time', async () => {
    child = await startAllInOneProcess(env.env);
    const run = await fetch(`${child.url}/probes/run`, { method: 'POST', headers: ADMIN.header });
    expect(run.status).toBe(200);
    const before = tailed((await cli(child.url, ['events', 'tail', '--fn', 'probe', '--json'])).stdout);
    const failed = before.find((e) => e.type === 'flux.tenant.probe_failed');
    expect(failed).toBeDefined();
    await child.stop();

    // The same state directory, a new process, and now a sink for probe events.
    child = await startAllInOneProcess({
      ...env.env,
      FLUX_EVENT_SINKS: JSON.stringify([{ url: sink.url, types: ['flux.tenant.*'], name: 'pager' }]),
    });
    const tail = await cli(child.url, ['events', 'tail', '--fn', 'probe', '--json']);
    expect(tail.exitCode, tail.stderr).toBe(0);
    expect(tailed(tail.stdout).map((e) => e.id)).toContain(failed!.id);
    expect(sink.deliveries).toEqual([]);

    // After the event: nothing is sent again.
    const later = new Date(Date.parse(failed!.time) + 1).toISOString();
    const none = await cli(child.url, ['events', 'replay', '--fn', 'probe', '--since', later, '--json']);
    expect(none.exitCode, none.stderr).toBe(0);
    expect(JSON.parse(none.stdout)).toMatchObject({ replayed: { probe: { events: 0, deliveries: 0 } } });

    // From the event's own time: it reaches the sink, signed, with its original id.
    const replay = await cli(child.url, ['events', 'replay', '--fn', 'probe', '--since', failed!.time]);
    expect(replay.exitCode, replay.stderr).toBe(0);
    expect(replay.stdout).toMatch(/^probe: sent 1 event since \S+ again \(1 delivery\)$/m);
    await eventually(() => sink.events().some((e) => e.id === failed!.id));
    expect(sink.events().map((e) => e.id)).toEqual([failed!.id]);
  });
});
