// Standard Webhooks signing and verification (https://www.standardwebhooks.com/, spec v1):
// signature = base64(HMAC-SHA256(secret, `${id}.${timestamp}.${body}`)), header `v1,<sig>` space-separated.
import { createHmac, timingSafeEqual } from 'node:crypto';

export const WEBHOOK_HEADERS = {
  id: 'webhook-id',
  timestamp: 'webhook-timestamp',
  signature: 'webhook-signature',
} as const;

function secretBytes(secret: string): Buffer {
  return Buffer.from(secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret, 'base64');
}

function hmac(secret: string, id: string, timestamp: number, body: string): string {
  return createHmac('sha256', secretBytes(secret)).update(`${id}.${timestamp}.${body}`).digest('base64');
}

/**
 * Headers for one delivery. Every configured secret signs (space-separated signatures) so receivers
 * that know only the new or only the old secret both accept during a rotation.
 */
export function signWebhook(
  secrets: readonly string[],
  id: string,
  body: string,
  now: Date = new Date(),
): Record<string, string> {
  if (secrets.length === 0) throw new Error('no webhook secret configured (FLUX_WEBHOOK_SECRETS)');
  const timestamp = Math.floor(now.getTime() / 1000);
  const signature = secrets.map((s) => `v1,${hmac(s, id, timestamp, body)}`).join(' ');
  return {
    [WEBHOOK_HEADERS.id]: id,
    [WEBHOOK_HEADERS.timestamp]: String(timestamp),
    [WEBHOOK_HEADERS.signature]: signature,
  };
}

export type VerifyFailure = 'missing_headers' | 'bad_timestamp' | 'expired' | 'future' | 'mismatch';

export type VerifyResult =
  | { ok: true; id: string; timestamp: number; matchedSecretIndex: number }
  | { ok: false; reason: VerifyFailure; message: string };

export interface VerifyOptions {
  toleranceMs: number;
  now?: Date;
}

export function verifyWebhook(
  secrets: readonly string[],
  headers: { get(name: string): string | null | undefined },
  body: string,
  options: VerifyOptions,
): VerifyResult {
  const id = headers.get(WEBHOOK_HEADERS.id);
  const ts = headers.get(WEBHOOK_HEADERS.timestamp);
  const sig = headers.get(WEBHOOK_HEADERS.signature);
  if (!id || !ts || !sig) {
    return {
      ok: false,
      reason: 'missing_headers',
      message: 'missing webhook-id, webhook-timestamp or webhook-signature header (Standard Webhooks)',
    };
  }
  if (!/^\d{1,12}$/.test(ts))
    return { ok: false, reason: 'bad_timestamp', message: 'webhook-timestamp must be unix seconds' };
  const timestamp = Number(ts);
  const nowS = Math.floor((options.now ?? new Date()).getTime() / 1000);
  const toleranceS = Math.floor(options.toleranceMs / 1000);
  if (nowS - timestamp > toleranceS) {
    return {
      ok: false,
      reason: 'expired',
      message: `webhook-timestamp is older than the ${toleranceS}s tolerance`,
    };
  }
  if (timestamp - nowS > toleranceS) {
    return {
      ok: false,
      reason: 'future',
      message: `webhook-timestamp is more than ${toleranceS}s in the future`,
    };
  }
  const offered = sig
    .split(' ')
    .map((part) => part.trim())
    .filter((part) => part.startsWith('v1,'))
    .map((part) => Buffer.from(part.slice(3), 'base64'));
  for (const [index, secret] of secrets.entries()) {
    const expected = Buffer.from(hmac(secret, id, timestamp, body), 'base64');
    if (
      offered.some(
        (candidate) => candidate.length === expected.length && timingSafeEqual(candidate, expected),
      )
    ) {
      return { ok: true, id, timestamp, matchedSecretIndex: index };
    }
  }
  return {
    ok: false,
    reason: 'mismatch',
    message: 'no webhook-signature matches a configured secret (FLUX_WEBHOOK_SECRETS)',
  };
}
