// Manifest authentication both ways: a manifest dump tagged is authentic under its key (and under a
// rotation that keeps the key), any edited fact or a foreign key makes it forged, no tag is unsigned.
import { describe, expect, it } from 'vitest';
import { fakeManifest } from '../../test/replicate-fixtures.js';
import { makeWebhookSecret } from '../../test/support/runtime.js';
import { authenticateManifest, canonicalJson, signManifest } from './manifest-auth.js';
import { ManifestSchema } from './records.js';

const key = makeWebhookSecret();
const manifest = fakeManifest('550e8400-e29b-41d4-a716-446655440000', '01JDZ0000000000000000000AA', {
  sizeBytes: 1234,
  sha256: 'a'.repeat(64),
});

describe('manifest authentication', () => {
  it('a tagged manifest is authentic after a JSON round trip and a parse, also once the key is second', () => {
    const tagged = signManifest(manifest, [key]);
    expect(tagged.auth).toMatchObject({ alg: 'hmac-sha256' });
    const readBack = ManifestSchema.parse(JSON.parse(JSON.stringify(tagged)));
    expect(authenticateManifest(readBack, [key])).toBe('authentic');
    expect(authenticateManifest(readBack, [makeWebhookSecret(), key])).toBe('authentic');
  });

  it('an edited row count, size or id, or another key, is forged; no tag is unsigned; no key is unchecked', () => {
    const tagged = signManifest(manifest, [key]);
    const edits = [
      { ...tagged, tables: [{ schema: 'public', name: 'items', rows: 4 }] },
      { ...tagged, sizeBytes: 1235 },
      { ...tagged, backupId: '01JDZ0000000000000000000AB' },
    ];
    for (const edited of edits) expect(authenticateManifest(edited, [key])).toBe('forged');
    expect(authenticateManifest(tagged, [makeWebhookSecret()])).toBe('forged');
    expect(authenticateManifest(manifest, [key])).toBe('unsigned');
    expect(authenticateManifest(tagged, [])).toBe('unchecked');
    expect(signManifest(manifest, [])).toBe(manifest);
  });

  it('canonical JSON does not depend on key order', () => {
    expect(canonicalJson({ b: 1, a: [{ d: 2, c: undefined }] })).toBe('{"a":[{"d":2}],"b":1}');
    expect(canonicalJson({ a: [{ d: 2 }], b: 1 })).toBe(canonicalJson({ b: 1, a: [{ d: 2 }] }));
  });
});
