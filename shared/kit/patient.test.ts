// A long synchronous answer over a real socket, read by Node's fetch: short work keeps its own status;
// long work gets its headers and whitespace early and its JSON last, a late failure a body no success
// reader accepts (upstream's CLI among them: it reads `backup.id` of a create, `ok: true` of a verify).
import type { AddressInfo } from 'node:net';
import { type ServerType, serve } from '@hono/node-server';
import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiError, createClient } from '../../cli/http.js';
import { AppError } from '../errors.js';
import type { AppEnv } from './app.js';
import { errorBody } from './app.js';
import { type PatientResult, patientJson } from './patient.js';

const after = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const PATIENCE = { headersAfterMs: 100, heartbeatMs: 40 };

let server: ServerType;
/** Work the test finishes by hand: a response that arrives before the gate opens had its headers early. */
let gate: (() => void) | undefined;
let base: string;
const lateErrors: AppError[] = [];

function work(ms: number, outcome: 'ok' | 'fail'): Promise<PatientResult> {
  return after(ms).then(() => {
    if (outcome === 'fail') throw new AppError('precondition_failed', 'the backup gate said no');
    return { status: 200, body: { backup: { id: '01JDZ0000000000000000000AA', status: 'complete' } } };
  });
}

beforeAll(async () => {
  const app = new Hono<AppEnv>();
  app.onError((error, c) => {
    const e = error instanceof AppError ? error : new AppError('internal', String(error));
    return c.json(errorBody(e), e.status as 412);
  });
  app.post('/gated', (c) =>
    patientJson(
      c,
      new Promise<PatientResult>((resolve) => {
        gate = () => resolve({ status: 200, body: { backup: { id: '01JDZ0000000000000000000AA' } } });
      }),
      PATIENCE,
    ),
  );
  app.post('/work/:ms/:outcome', (c) =>
    patientJson(c, work(Number(c.req.param('ms')), c.req.param('outcome') as 'ok' | 'fail'), {
      ...PATIENCE,
      onLateError: (e) => lateErrors.push(e),
    }),
  );
  server = await new Promise<ServerType>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

/** What upstream's CLI does with an answer: non-2xx is a failure, then the body must be the success shape. */
function upstreamReads(status: number, text: string): 'success' | 'failure' {
  if (status < 200 || status > 299) return 'failure';
  const body = text.trim() ? (JSON.parse(text) as { backup?: { id?: unknown } }) : null;
  return typeof body?.backup?.id === 'string' ? 'success' : 'failure';
}

describe('patientJson', () => {
  it('short work: its own status and body, no deferral', async () => {
    const ok = await fetch(`${base}/work/0/ok`, { method: 'POST' });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('x-flux-deferred')).toBeNull();
    expect(upstreamReads(ok.status, await ok.text())).toBe('success');
    const failed = await fetch(`${base}/work/0/fail`, { method: 'POST' });
    expect(failed.status).toBe(412);
    expect(await failed.json()).toMatchObject({
      code: 'precondition_failed',
      error: 'the backup gate said no',
    });
  });

  it('long work: headers and whitespace before the work ends, the JSON body after it', async () => {
    const res = await fetch(`${base}/gated`, { method: 'POST' });
    // fetch resolved: the headers are here while the work is still waiting for its gate.
    expect(gate).toBeDefined();
    expect(res.status).toBe(200);
    expect(res.headers.get('x-flux-deferred')).toBe('1');
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    // Heartbeats keep coming while the work waits.
    while (text.length < 3) text += decoder.decode((await reader.read()).value, { stream: true });
    expect(text.trim()).toBe('');
    gate!();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(text).toMatch(/^\n{3,}\{/);
    expect(JSON.parse(text)).toEqual({ backup: { id: '01JDZ0000000000000000000AA' } });
    expect(upstreamReads(res.status, text)).toBe('success');
  });

  it('long work that fails: a 200 whose JSON error no success reader takes for a success', async () => {
    const res = await fetch(`${base}/work/400/fail`, { method: 'POST' });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-flux-deferred')).toBe('1');
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({
      ok: false,
      status: 412,
      code: 'precondition_failed',
      error: 'the backup gate said no',
    });
    expect(upstreamReads(res.status, text)).toBe('failure');
    expect(lateErrors.map((e) => e.code)).toEqual(['precondition_failed']);
  });

  it('flux-ops’s own CLI reads a late failure as the failure it is, and a late success as a success', async () => {
    const client = createClient({ base, baseSource: 'flag', token: undefined }, 'patient-test');
    try {
      const failed = await client.json('POST', '/work/400/fail', { long: true }).catch((e: unknown) => e);
      expect(failed).toBeInstanceOf(ApiError);
      expect(failed).toMatchObject({ status: 412, code: 'precondition_failed' });
      const ok = await client.json<{ backup: { id: string } }>('POST', '/work/400/ok', { long: true });
      expect(ok.body.backup.id).toBe('01JDZ0000000000000000000AA');
    } finally {
      await client.close();
    }
  });
});
