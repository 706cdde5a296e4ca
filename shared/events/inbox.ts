// Receiving signed events: signature check (any configured secret), replay protection by webhook-id
// persisted under FLUX_STATE_DIR, and envelope/data validation. Redeliveries of an event we already
// handled (same id, new timestamp) are acknowledged without running the handler again; a byte-identical
// replay of a request we already accepted is refused.
import { createHash } from 'node:crypto';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, writeJsonAtomic } from '../atomic.js';
import { AppError, errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import { counter, type MetricsRegistry } from '../metrics.js';
import { type CloudEvent, parseEvent } from './envelope.js';
import { verifyWebhook } from './signature.js';

export interface InboxOptions {
  /** The receiving function, a label on the verification metric. */
  name: string;
  dir: string;
  secrets: readonly string[];
  toleranceMs: number;
  log: Logger;
  metrics: MetricsRegistry;
}

export type Received =
  | { kind: 'new'; event: CloudEvent; commit: () => Promise<void>; release: () => void }
  | { kind: 'duplicate'; eventId: string };

export interface Inbox {
  start(): Promise<void>;
  /** Verifies and parses one request; throws AppError with the 4xx to answer. */
  receive(headers: { get(name: string): string | null | undefined }, body: string): Promise<Received>;
}

interface Seen {
  id: string;
  timestamp: number;
  signatureHash: string;
  at: number;
}

const keyOf = (id: string) => createHash('sha256').update(id).digest('hex').slice(0, 32);

export function createInbox(options: InboxOptions): Inbox {
  const seen = new Map<string, Seen>();
  const inProgress = new Set<string>();
  const retentionMs = options.toleranceMs * 2 + 60_000;
  const verifications = counter(
    options.metrics,
    'flux_webhook_verifications_total',
    'Inbound signature checks by receiving function, result and matching secret',
    ['fn', 'result', 'secret'],
  );

  async function prune(): Promise<void> {
    const cutoff = Date.now() - retentionMs;
    for (const [key, s] of seen) {
      if (s.at < cutoff) {
        seen.delete(key);
        await rm(path.join(options.dir, `${key}.json`), { force: true });
      }
    }
  }

  return {
    async start() {
      await ensureDir(options.dir);
      let names: string[] = [];
      try {
        names = await readdir(options.dir);
      } catch (error) {
        if (errnoOf(error) !== 'ENOENT') throw error;
      }
      for (const name of names.filter((n) => n.endsWith('.json') && !n.startsWith('.'))) {
        try {
          const s = JSON.parse(await readFile(path.join(options.dir, name), 'utf8')) as Seen;
          seen.set(name.slice(0, -5), s);
        } catch {
          await rm(path.join(options.dir, name), { force: true });
        }
      }
      await prune();
      setInterval(() => void prune().catch(() => undefined), Math.max(10_000, options.toleranceMs)).unref();
    },

    async receive(headers, body) {
      if (options.secrets.length === 0) {
        throw new AppError(
          'signature_invalid',
          'this process has no FLUX_WEBHOOK_SECRETS configured, so it cannot accept events',
        );
      }
      const verified = verifyWebhook(options.secrets, headers, body, { toleranceMs: options.toleranceMs });
      if (!verified.ok) {
        verifications.inc({ fn: options.name, result: verified.reason, secret: 'none' });
        throw new AppError('signature_invalid', verified.message, { details: { reason: verified.reason } });
      }
      verifications.inc({
        fn: options.name,
        result: 'ok',
        secret: verified.matchedSecretIndex === 0 ? 'primary' : 'non_primary',
      });
      const key = keyOf(verified.id);
      const signatureHash = createHash('sha256')
        .update(headers.get('webhook-signature') ?? '')
        .digest('hex');
      const prior = seen.get(key);
      if (prior) {
        if (prior.timestamp === verified.timestamp && prior.signatureHash === signatureHash) {
          throw new AppError(
            'event_replayed',
            `webhook-id ${verified.id.slice(0, 80)} was already received with this exact signature (replay)`,
          );
        }
        return { kind: 'duplicate', eventId: verified.id };
      }
      if (inProgress.has(key)) {
        throw new AppError(
          'conflict',
          `webhook-id ${verified.id.slice(0, 80)} is being handled right now; retry later`,
          { retryAfterSeconds: 1 },
        );
      }
      const parsed = parseEvent(body);
      if (!parsed.ok)
        throw new AppError(parsed.status === 400 ? 'bad_request' : 'unprocessable', parsed.message);
      if (parsed.event.id !== verified.id) {
        throw new AppError('bad_request', 'webhook-id must equal the CloudEvent id');
      }
      inProgress.add(key);
      return {
        kind: 'new',
        event: parsed.event,
        release: () => inProgress.delete(key),
        commit: async () => {
          const record: Seen = {
            id: verified.id,
            timestamp: verified.timestamp,
            signatureHash,
            at: Date.now(),
          };
          await writeJsonAtomic(path.join(options.dir, `${key}.json`), record);
          seen.set(key, record);
          inProgress.delete(key);
        },
      };
    },
  };
}
