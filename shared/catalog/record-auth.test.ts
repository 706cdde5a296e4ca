// Record authentication both ways, for receipts as for manifests: a receipt its writer tagged is authentic
// under its key and a rotation that keeps it; an edited status, another kind's tag or a foreign key is
// forged; untagged records are refused while keys are set unless FLUX_MANIFEST_ALLOW_UNSIGNED.
import { describe, expect, it } from 'vitest';
import { makeWebhookSecret } from '../../test/support/runtime.js';
import { authenticateRecord, distrustOf, tagRecord } from './record-auth.js';
import { type VerifyReceipt, VerifyReceiptSchema } from './records.js';

const key = makeWebhookSecret();
const receipt: VerifyReceipt = VerifyReceiptSchema.parse({
  backupId: '01JDZ0000000000000000000AA',
  projectId: '550e8400-e29b-41d4-a716-446655440000',
  status: 'restore_failed',
  sha256: 'a'.repeat(64),
  driver: 'local',
  rungs: [],
  stages: {},
  startedAt: '2026-01-01T00:00:00.000Z',
  finishedAt: '2026-01-01T00:00:01.000Z',
  seconds: 1,
  reason: 'volume_mismatch',
});

describe('record authentication', () => {
  it('a tagged receipt is authentic after a JSON round trip, also once its key is second', () => {
    const tagged = tagRecord('verify-receipt', VerifyReceiptSchema, receipt, [key]);
    const readBack = VerifyReceiptSchema.parse(JSON.parse(JSON.stringify(tagged)));
    expect(authenticateRecord('verify-receipt', VerifyReceiptSchema, readBack, [key])).toBe('authentic');
    expect(
      authenticateRecord('verify-receipt', VerifyReceiptSchema, readBack, [makeWebhookSecret(), key]),
    ).toBe('authentic');
  });

  it('restore_failed edited to restore_verified, another kind, or another key is forged', () => {
    const tagged = tagRecord('verify-receipt', VerifyReceiptSchema, receipt, [key]);
    const edited = { ...tagged, status: 'restore_verified' as const };
    expect(authenticateRecord('verify-receipt', VerifyReceiptSchema, edited, [key])).toBe('forged');
    expect(authenticateRecord('offsite-receipt', VerifyReceiptSchema, tagged, [key])).toBe('forged');
    expect(authenticateRecord('verify-receipt', VerifyReceiptSchema, tagged, [makeWebhookSecret()])).toBe(
      'forged',
    );
    const garbage = { ...tagged, auth: { alg: 'hmac-sha256', tag: 42 } } as unknown as VerifyReceipt;
    expect(authenticateRecord('verify-receipt', undefined, garbage, [key])).toBe('forged');
  });

  it('untagged is refused while keys are set, unless allowed; no key checks nothing', () => {
    expect(authenticateRecord('verify-receipt', VerifyReceiptSchema, receipt, [key])).toBe('unsigned');
    expect(distrustOf('unsigned', { secrets: [key] })).toMatch(/FLUX_MANIFEST_ALLOW_UNSIGNED/);
    expect(distrustOf('unsigned', { secrets: [key], allowUnsigned: true })).toBeUndefined();
    expect(distrustOf('forged', { secrets: [key], allowUnsigned: true })).toMatch(/matches none/);
    expect(authenticateRecord('verify-receipt', VerifyReceiptSchema, receipt, [])).toBe('unchecked');
    expect(distrustOf('unchecked', { secrets: [] })).toBeUndefined();
    expect(tagRecord('verify-receipt', VerifyReceiptSchema, receipt, [])).toBe(receipt);
  });
});
