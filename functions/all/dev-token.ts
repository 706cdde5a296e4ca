// The all-in-one's first-run convenience: on a loopback bind with no FLUX_API_TOKENS, one admin token made
// at start, valid for this process only, held in memory as its hash and shown once on stderr (never on disk,
// never in a log field), so `npm start` is usable by the CLI without minting a token by hand.
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import type { ApiToken, Config } from '../../shared/config.js';
import { hashToken } from '../../shared/kit/auth.js';
import { isLoopbackHost } from '../../shared/kit/security.js';

export const DEV_TOKEN_ID = 'dev';

/** The URL a client on this machine uses for a loopback bind of `host`:`port`. */
export function loopbackBase(host: string, port: number): string {
  const h = host.trim().replace(/^\[|\]$/g, '');
  return isIP(h) === 6 ? `http://[${h}]:${port}` : `http://${h}:${port}`;
}

export interface DevToken {
  token: string;
  entry: ApiToken;
}

/** A dev token for `config`, or undefined when tokens are configured or the bind is not loopback. */
export function devTokenFor(config: Pick<Config, 'FLUX_API_TOKENS' | 'FLUX_HOST'>): DevToken | undefined {
  if (config.FLUX_API_TOKENS.length > 0 || !isLoopbackHost(config.FLUX_HOST)) return undefined;
  const token = `fluxdev_${randomBytes(32).toString('base64url')}`;
  return { token, entry: { id: DEV_TOKEN_ID, sha256: hashToken(token), scopes: ['admin'] } };
}

/** What `npm start` prints once it listens: the token in the one line a shell can paste. */
export function devTokenNotice(token: string, apiBase: string, statusPath: string): string {
  return [
    'flux-ops: no FLUX_API_TOKENS, so this process made a dev token (admin, valid until this process stops, stored nowhere):',
    `export FLUX_API_TOKEN=${token}`,
    `flux-ops: then, in another shell: export FLUX_API_BASE=${apiBase}; npx flux-ops backup status   (status page: ${apiBase}${statusPath})`,
    '',
  ].join('\n');
}

/** Logged instead when a non-loopback bind has no tokens: nothing authenticated answers. */
export const NO_TOKENS_WARNING =
  'no FLUX_API_TOKENS and FLUX_HOST is not loopback: no dev token is made, every authenticated route answers 401; ' +
  'set FLUX_API_TOKENS=id:<sha256 hex of a token>:admin';
