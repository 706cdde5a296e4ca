import { Webhook } from 'standardwebhooks';
import { describe, expect, it } from 'vitest';
import { makeWebhookSecret } from '../../test/support/runtime.js';
import { signWebhook, verifyWebhook } from './signature.js';

const headersOf = (h: Record<string, string>) => ({ get: (n: string) => h[n] });

describe('Standard Webhooks signatures', () => {
  const secret = makeWebhookSecret();
  const body = JSON.stringify({ specversion: '1.0', id: 'evt_1', type: 'flux.backup.created' });

  it('our signature verifies with the standardwebhooks reference library', () => {
    const headers = signWebhook([secret], 'evt_1', body);
    const wh = new Webhook(secret);
    expect(wh.verify(body, headers)).toEqual(JSON.parse(body));
  });

  it('the reference library’s signature verifies with ours', () => {
    const wh = new Webhook(secret);
    const now = new Date();
    const headers = {
      'webhook-id': 'evt_2',
      'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
      'webhook-signature': wh.sign('evt_2', now, body),
    };
    const result = verifyWebhook([secret], headersOf(headers), body, { toleranceMs: 300_000 });
    expect(result).toMatchObject({ ok: true, id: 'evt_2', matchedSecretIndex: 0 });
  });

  it('signs with every secret during rotation; a receiver knowing only one accepts', () => {
    const oldSecret = makeWebhookSecret();
    const headers = signWebhook([secret, oldSecret], 'evt_3', body);
    expect(headers['webhook-signature']!.split(' ')).toHaveLength(2);
    expect(verifyWebhook([oldSecret], headersOf(headers), body, { toleranceMs: 300_000 })).toMatchObject({
      ok: true,
    });
    expect(new Webhook(oldSecret).verify(body, headers)).toBeTruthy();
    // After retirement: signed only by the old secret, rejected by the new-only receiver.
    const oldOnly = signWebhook([oldSecret], 'evt_4', body);
    expect(verifyWebhook([secret], headersOf(oldOnly), body, { toleranceMs: 300_000 })).toMatchObject({
      ok: false,
      reason: 'mismatch',
    });
  });

  it('reports which secret matched, so operators know when retiring the old one is safe', () => {
    const oldSecret = makeWebhookSecret();
    const headers = signWebhook([oldSecret], 'evt_5', body);
    expect(
      verifyWebhook([secret, oldSecret], headersOf(headers), body, { toleranceMs: 300_000 }),
    ).toMatchObject({ ok: true, matchedSecretIndex: 1 });
  });

  it('rejects a tampered body, a wrong secret, missing headers and timestamps outside the tolerance', () => {
    const headers = signWebhook([secret], 'evt_6', body);
    expect(verifyWebhook([secret], headersOf(headers), `${body} `, { toleranceMs: 300_000 })).toMatchObject({
      ok: false,
      reason: 'mismatch',
    });
    expect(
      verifyWebhook([makeWebhookSecret()], headersOf(headers), body, { toleranceMs: 300_000 }),
    ).toMatchObject({ ok: false, reason: 'mismatch' });
    expect(verifyWebhook([secret], headersOf({}), body, { toleranceMs: 300_000 })).toMatchObject({
      ok: false,
      reason: 'missing_headers',
    });
    const old = signWebhook([secret], 'evt_7', body, new Date(Date.now() - 10 * 60_000));
    expect(verifyWebhook([secret], headersOf(old), body, { toleranceMs: 300_000 })).toMatchObject({
      ok: false,
      reason: 'expired',
    });
    const future = signWebhook([secret], 'evt_8', body, new Date(Date.now() + 10 * 60_000));
    expect(verifyWebhook([secret], headersOf(future), body, { toleranceMs: 300_000 })).toMatchObject({
      ok: false,
      reason: 'future',
    });
    expect(() => new Webhook(secret).verify(body, old)).toThrow();
  });
});
