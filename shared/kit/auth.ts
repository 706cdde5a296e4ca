// Bearer tokens stored as SHA-256 hashes with scopes; per-token rate limit (token bucket).
import { createHash, timingSafeEqual } from 'node:crypto';
import type { ApiToken, Scope } from '../config.js';
import { AppError } from '../errors.js';

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** Why a request was refused, for the access log (never the token): no token, a malformed header, … */
export type DenialReason =
  | 'no_tokens_configured'
  | 'missing'
  | 'malformed'
  | 'unknown_token'
  | 'scope_missing'
  | 'signature_invalid';

export type AuthOutcome =
  | { ok: true; token: ApiToken }
  | { ok: false; reason: Exclude<DenialReason, 'scope_missing' | 'signature_invalid'>; error: AppError };

export interface Authenticator {
  /** The token the header names, or why there is none (with the 401 to answer). */
  check(header: string | undefined): AuthOutcome;
  authenticate(header: string | undefined): ApiToken;
}

export function createAuthenticator(tokens: readonly ApiToken[]): Authenticator {
  const hashes = tokens.map((t) => ({ token: t, bytes: Buffer.from(t.sha256, 'hex') }));
  function check(header: string | undefined): AuthOutcome {
    // A server with no tokens refuses every token; saying so spares the operator a hunt for a typo.
    if (hashes.length === 0)
      return {
        ok: false,
        reason: 'no_tokens_configured',
        error: new AppError(
          'unauthorized',
          'this server has no API tokens (FLUX_API_TOKENS is empty), so it accepts none: set FLUX_API_TOKENS ' +
            'on the server (id:<sha256 hex of the token>:admin), or run npm start on loopback, which prints a dev token',
          { details: { tokensConfigured: false } },
        ),
      };
    if (!header)
      return {
        ok: false,
        reason: 'missing',
        error: new AppError(
          'unauthorized',
          'missing Authorization: Bearer <token> (set FLUX_API_TOKEN for the CLI)',
        ),
      };
    const m = /^Bearer\s+(\S{1,512})$/i.exec(header.trim());
    if (!m)
      return {
        ok: false,
        reason: 'malformed',
        error: new AppError('unauthorized', 'Authorization must be "Bearer <token>"'),
      };
    const offered = Buffer.from(hashToken(m[1]!), 'hex');
    // Compare against every hash so timing does not reveal which ids exist.
    let found: ApiToken | undefined;
    for (const h of hashes) if (timingSafeEqual(h.bytes, offered)) found = found ?? h.token;
    if (!found)
      return {
        ok: false,
        reason: 'unknown_token',
        error: new AppError(
          'unauthorized',
          'the Bearer token is not valid (unknown, or removed by rotation)',
        ),
      };
    return { ok: true, token: found };
  }
  return {
    check,
    authenticate(header) {
      const outcome = check(header);
      if (!outcome.ok) throw outcome.error;
      return outcome.token;
    },
  };
}

export function requireScopeOf(token: ApiToken, scope: Scope): void {
  if (!token.scopes.includes(scope) && !token.scopes.includes('admin')) {
    throw new AppError('forbidden', `token "${token.id}" lacks the "${scope}" scope this route needs`, {
      details: { missingScope: scope },
    });
  }
}

export interface RateDecision {
  allowed: boolean;
  limit: number;
  remaining: number;
  resetSeconds: number;
}

/** Token bucket per key: `perMinute` capacity, refilled continuously. */
export function createRateLimiter(perMinute: number, now: () => number = Date.now) {
  const buckets = new Map<string, { tokens: number; at: number }>();
  const ratePerMs = perMinute / 60_000;
  return {
    take(key: string): RateDecision {
      const t = now();
      const b = buckets.get(key) ?? { tokens: perMinute, at: t };
      b.tokens = Math.min(perMinute, b.tokens + (t - b.at) * ratePerMs);
      b.at = t;
      const allowed = b.tokens >= 1;
      if (allowed) b.tokens -= 1;
      buckets.set(key, b);
      const resetSeconds = Math.max(
        1,
        Math.ceil((allowed ? perMinute - b.tokens : 1 - b.tokens) / ratePerMs / 1000),
      );
      return { allowed, limit: perMinute, remaining: Math.floor(b.tokens), resetSeconds };
    },
  };
}
