import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mintProbeJwt, PROBE_JWT_TTL_SECONDS } from './jwt.js';

function decode(part: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verifies(token: string, secret: string): boolean {
  const [header, payload, signature] = token.split('.');
  const expected = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return signature === expected;
}

describe('mintProbeJwt', () => {
  it('mints an HS256 JWT with role authenticated and a short expiry', () => {
    const now = Date.UTC(2025, 0, 1, 12, 0, 0);
    const token = mintProbeJwt('s3cret-with-enough-length-0123456789', { now });
    const [header, payload] = token.split('.');
    expect(decode(header!)).toEqual({ alg: 'HS256', typ: 'JWT' });
    expect(decode(payload!)).toEqual({
      sub: '00000000-0000-0000-0000-000000000000',
      role: 'authenticated',
      iat: now / 1000,
      exp: now / 1000 + PROBE_JWT_TTL_SECONDS,
    });
    expect(PROBE_JWT_TTL_SECONDS).toBeLessThanOrEqual(300);
  });

  it('is signed with the given secret and no other', () => {
    const token = mintProbeJwt('tenant-secret-a-0123456789abcdef');
    expect(verifies(token, 'tenant-secret-a-0123456789abcdef')).toBe(true);
    expect(verifies(token, 'tenant-secret-b-0123456789abcdef')).toBe(false);
    expect(token).not.toMatch(/[+/=]/);
  });
});
