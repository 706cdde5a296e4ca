// HS256 JWTs (RFC 7519, JWS RFC 7515 §A.1) minted for deep probes: the tenant API sees an authenticated
// request without flux-ops holding any user's credentials.
import { createHmac } from 'node:crypto';

/** Short on purpose: a leaked probe token is useless within a minute. */
export const PROBE_JWT_TTL_SECONDS = 60;
/** A UUID (tenant SQL casts `sub` to uuid in auth.uid()) that no real user has. */
export const PROBE_JWT_SUBJECT = '00000000-0000-0000-0000-000000000000';

export interface ProbeClaims {
  sub: string;
  role: 'authenticated';
  iat: number;
  exp: number;
}

function base64url(input: Buffer | string): string {
  return Buffer.from(input).toString('base64url');
}

export function mintProbeJwt(
  secret: string,
  options: { now?: number; ttlSeconds?: number; sub?: string } = {},
): string {
  const iat = Math.floor((options.now ?? Date.now()) / 1000);
  const claims: ProbeClaims = {
    sub: options.sub ?? PROBE_JWT_SUBJECT,
    role: 'authenticated',
    iat,
    exp: iat + (options.ttlSeconds ?? PROBE_JWT_TTL_SECONDS),
  };
  const signingInput = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`;
  const signature = createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${signature}`;
}
