// A real HTTP sink for events: verifies Standard Webhooks signatures with the test secret and records
// every delivery, so tests assert on what automation would actually receive.
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { CloudEvent } from '../../shared/events/envelope.js';
import { verifyWebhook } from '../../shared/events/signature.js';
import { WEBHOOK_SECRET } from './runtime.js';

export interface ReceivedDelivery {
  event: CloudEvent;
  headers: Record<string, string>;
  verified: boolean;
}

/** One request as it arrived (the time is taken before the body is read) and what it was answered. */
export interface Arrival {
  at: number;
  webhookId: string | undefined;
  path: string;
  status: number;
}

export interface EventReceiver {
  url: string;
  deliveries: ReceivedDelivery[];
  /** Every request in order of arrival, failed ones included. */
  arrivals: Arrival[];
  /** Verified events of one type (or all). */
  events(type?: string): CloudEvent[];
  /** Makes the next `n` requests answer `status` (with optional Retry-After). */
  failNext(n: number, status: number, retryAfter?: string): void;
  /** Makes every request answer `status` until `failNext(0, …)`. */
  failAll(status: number): void;
  close(): Promise<void>;
}

async function bodyOf(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export async function startEventReceiver(
  secrets: readonly string[] = [WEBHOOK_SECRET],
): Promise<EventReceiver> {
  const deliveries: ReceivedDelivery[] = [];
  const arrivals: Arrival[] = [];
  let failures: { n: number; status: number; retryAfter?: string | undefined } = { n: 0, status: 500 };
  const server = createServer(async (req, res) => {
    const arrival: Arrival = {
      at: Date.now(),
      webhookId: typeof req.headers['webhook-id'] === 'string' ? req.headers['webhook-id'] : undefined,
      path: req.url ?? '',
      status: 0,
    };
    arrivals.push(arrival);
    const body = await bodyOf(req);
    if (failures.n > 0) {
      failures.n -= 1;
      arrival.status = failures.status;
      res.writeHead(failures.status, failures.retryAfter ? { 'retry-after': failures.retryAfter } : {});
      res.end('failing on purpose');
      return;
    }
    const headers = Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)]));
    const result = verifyWebhook(secrets, { get: (n) => headers[n.toLowerCase()] }, body, {
      toleranceMs: 300_000,
    });
    let event: CloudEvent;
    try {
      event = JSON.parse(body) as CloudEvent;
    } catch {
      res.writeHead(400).end('bad json');
      return;
    }
    deliveries.push({ event, headers, verified: result.ok });
    arrival.status = result.ok ? 202 : 401;
    res.writeHead(result.ok ? 202 : 401, { 'content-type': 'application/json' }).end('{"ok":true}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/events`,
    deliveries,
    arrivals,
    events: (type) =>
      deliveries.filter((d) => d.verified && (!type || d.event.type === type)).map((d) => d.event),
    failNext(n, status, retryAfter) {
      failures = { n, status, retryAfter };
    },
    failAll(status) {
      failures = { n: Number.POSITIVE_INFINITY, status };
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
