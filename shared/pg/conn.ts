// Connections from one URL with libpq's meaning on both ends: node-postgres client options and the libpq
// environment of child tools (pg_dump, pg_restore, psql). Passwords travel only in PGPASSWORD (child env) or
// the client config, never in argv, logs or error messages.
import pg from 'pg';
import { AppError, isAppError } from '../errors.js';
import { isSocketHost, type PgTarget, parsePgUrl, type TargetSessionAttrs } from './conninfo.js';
import { isTlsError, isTlsVerifyError, nodeTlsOptions, resolveTlsFiles, type TlsOptions } from './tls.js';

export type { PgHost, PgTarget, SslMode, TargetSessionAttrs } from './conninfo.js';
export { parsePgUrl } from './conninfo.js';
export type { TlsOptions } from './tls.js';

/**
 * libpq environment for a child process (pg_dump, pg_restore, psql): every host and port of the URL, sslmode
 * and the certificate files libpq would use (checked first, see resolveTlsFiles), options and
 * target_session_attrs. The password only as PGPASSWORD.
 */
export function libpqEnv(
  target: PgTarget,
  applicationName: string,
  options: TlsOptions = {},
): Record<string, string> {
  const files = resolveTlsFiles(target, options);
  const env: Record<string, string> = {
    PGHOST: target.hosts.map((h) => h.host).join(','),
    PGPORT: target.hosts.map((h) => String(h.port)).join(','),
    PGUSER: target.user,
    PGDATABASE: target.database,
    PGAPPNAME: applicationName,
    PGCONNECT_TIMEOUT: String(target.connectTimeoutSeconds),
    PGSSLMODE: target.sslmode,
  };
  if (files.sslrootcert !== undefined) env.PGSSLROOTCERT = files.sslrootcert;
  if (files.sslcrl !== undefined) env.PGSSLCRL = files.sslcrl;
  if (files.sslcert !== undefined) env.PGSSLCERT = files.sslcert;
  if (files.sslkey !== undefined) env.PGSSLKEY = files.sslkey;
  if (target.options !== undefined) env.PGOPTIONS = target.options;
  if (target.targetSessionAttrs !== undefined) env.PGTARGETSESSIONATTRS = target.targetSessionAttrs;
  if (target.password !== undefined) env.PGPASSWORD = target.password;
  return env;
}

/** node-postgres connects to one host: a multi-host URL is refused, never narrowed to its first host. */
function singleHost(target: PgTarget) {
  const [only, ...more] = target.hosts;
  if (!only || more.length > 0) {
    throw new AppError(
      'config_invalid',
      `a database URL names ${target.hosts.length} hosts (${target.host}); flux-ops opens its own sessions ` +
        'with node-postgres, which connects to one host: put the one server this URL is for in it (the ' +
        'primary, or a proxy or virtual IP in front of the cluster)',
    );
  }
  return only;
}

/**
 * The node-postgres configurations libpq's sslmode tries, in order: `allow` plaintext then TLS, `prefer`
 * (libpq's default) TLS then plaintext, the other modes one attempt. node-postgres cannot fall back within
 * one connection as libpq does, so connectPgClient opens a second one where libpq would retry.
 */
export function pgClientAttempts(
  target: PgTarget,
  applicationName: string,
  options: TlsOptions = {},
): pg.ClientConfig[] {
  const { host, port } = singleHost(target);
  const files = resolveTlsFiles(target, options);
  const base: pg.ClientConfig = {
    host,
    port,
    user: target.user,
    password: target.password,
    database: target.database,
    application_name: applicationName,
    connectionTimeoutMillis: target.connectTimeoutSeconds * 1000,
    ...(target.options !== undefined ? { options: target.options } : {}),
  };
  // ssl is always given: left undefined, node-postgres would read PGSSLMODE from this process's env.
  const plain = { ...base, ssl: false };
  // libpq never uses TLS on a Unix socket, whatever the sslmode.
  if (target.sslmode === 'disable' || isSocketHost(host)) return [plain];
  const tls = { ...base, ssl: nodeTlsOptions(target.sslmode, files) };
  if (target.sslmode === 'allow') return [plain, tls];
  if (target.sslmode === 'prefer') return [tls, plain];
  return [tls];
}

/**
 * node-postgres configuration of the first (for allow/prefer: the first of two) connection attempt;
 * connect with connectPgClient or withPgClient, which make the second where libpq would.
 */
export function pgClientConfig(
  target: PgTarget,
  applicationName: string,
  options: TlsOptions = {},
): pg.ClientConfig {
  return pgClientAttempts(target, applicationName, options)[0]!;
}

/**
 * How long a server's "no TLS here" answer to a `prefer` connection is remembered: meanwhile `prefer`
 * connections to it go straight to plaintext, where the TLS attempt would have ended. libpq falls back on
 * the same socket; node-postgres needs a second connection for it (another backend started and ended on
 * the server, about a dozen ms each), which a fleet of small dumps pays on every one. A server that turns
 * TLS on is used with it again once this has passed.
 */
export const PREFER_NO_TLS_MEMORY_MS = 60_000;
/** Host:port of servers that answered a `prefer` SSLRequest with "no TLS", and when. */
const noTlsAnswers = new Map<string, number>();

function answeredNoTlsRecently(server: string): boolean {
  const at = noTlsAnswers.get(server);
  if (at === undefined) return false;
  if (Date.now() - at < PREFER_NO_TLS_MEMORY_MS) return true;
  noTlsAnswers.delete(server);
  return false;
}

const isNoTlsAnswer = (error: unknown) =>
  (error as { message?: unknown })?.message === 'The server does not support SSL connections';

/** Whether libpq, after `error` on one attempt, makes the next (fe-connect.c: allow/prefer retries). */
function libpqWouldRetry(error: unknown): boolean {
  if (error instanceof pg.DatabaseError) return true; // an ErrorResponse during startup, e.g. pg_hba
  if (isTlsError(error)) return true;
  // node-postgres' own errors for the server's answer to SSLRequest carry no code.
  const message = (error as { message?: unknown })?.message;
  return isNoTlsAnswer(error) || message === 'There was an error establishing an SSL connection';
}

const SESSION_CHECKS: Partial<Record<TargetSessionAttrs, { sql: string; is: string; fix: string }>> = {
  'read-write': {
    sql: "SELECT current_setting('transaction_read_only') = 'off' AS ok",
    is: 'read-only',
    fix: 'point the URL at the primary',
  },
  'read-only': {
    sql: "SELECT current_setting('transaction_read_only') = 'on' AS ok",
    is: 'read-write',
    fix: 'point the URL at a standby or a read-only server',
  },
  primary: {
    sql: 'SELECT NOT pg_is_in_recovery() AS ok',
    is: 'a standby',
    fix: 'point the URL at the primary',
  },
  standby: {
    sql: 'SELECT pg_is_in_recovery() AS ok',
    is: 'a primary',
    fix: 'point the URL at a standby',
  },
};

/** target_session_attrs on one host, checked as libpq checks each host it tries. */
async function checkSession(client: pg.Client, target: PgTarget): Promise<void> {
  const attrs = target.targetSessionAttrs;
  const check = attrs ? SESSION_CHECKS[attrs] : undefined;
  if (!check) return; // any, prefer-standby: with one host, whatever it is
  const r = await client.query<{ ok: boolean }>(check.sql);
  if (r.rows[0]?.ok !== true) {
    throw new AppError(
      'dependency_unavailable',
      `the server at ${target.host}:${target.port} is ${check.is}, but the URL says target_session_attrs=${attrs}: ${check.fix}`,
    );
  }
}

/**
 * A connected client for `target` with libpq's attempt order; the caller ends it. Failures are thrown as
 * they come (AppError for a refused URL, else the driver's error): translate with pgError.
 */
export async function connectPgClient(
  target: PgTarget,
  applicationName: string,
  options: TlsOptions = {},
): Promise<pg.Client> {
  let attempts = pgClientAttempts(target, applicationName, options);
  const server = `${attempts[0]!.host}:${attempts[0]!.port}`;
  const isPrefer = target.sslmode === 'prefer' && attempts.length === 2;
  if (isPrefer && answeredNoTlsRecently(server)) attempts = attempts.slice(1);
  for (const [i, config] of attempts.entries()) {
    const client = new pg.Client(config);
    client.on('error', () => undefined);
    try {
      await client.connect();
    } catch (error) {
      await client.end().catch(() => undefined);
      if (isPrefer && i === 0 && isNoTlsAnswer(error)) noTlsAnswers.set(server, Date.now());
      if (i + 1 < attempts.length && libpqWouldRetry(error)) continue;
      throw error;
    }
    try {
      await checkSession(client, target);
    } catch (error) {
      await client.end().catch(() => undefined);
      throw error;
    }
    return client;
  }
  throw new AppError('internal', 'no connection attempt was made');
}

/** SQLSTATE classes we act on (https://www.postgresql.org/docs/current/errcodes-appendix.html). */
export const SQLSTATE = {
  invalidPassword: '28P01',
  invalidAuthorization: '28000',
  invalidCatalogName: '3D000',
  adminShutdown: '57P01',
  crashShutdown: '57P02',
  cannotConnectNow: '57P03',
  lockNotAvailable: '55P03',
  queryCanceled: '57014',
  duplicateObject: '42710',
  duplicateSchema: '42P06',
  undefinedObject: '42704',
  insufficientPrivilege: '42501',
} as const;

/** Translates a pg connection/query error into an AppError without echoing connection details. */
export function pgError(error: unknown, what: string): AppError {
  if (isAppError(error)) return error;
  const e = error as { code?: string; message?: string };
  const code = e?.code;
  if (isTlsVerifyError(error)) {
    return new AppError(
      'dependency_unavailable',
      `${what}: the server's TLS certificate failed verification (${code}: ${e.message}), so nothing was sent ` +
        "to it: the server is not the one the URL's sslrootcert (and under verify-full its host name) vouches " +
        'for. Fix the server certificate or sslrootcert; do not lower sslmode to get past this',
      { cause: error },
    );
  }
  if (e?.message === 'The server does not support SSL connections') {
    return new AppError(
      'dependency_unavailable',
      `${what}: the server does not accept TLS, which the URL's sslmode requires: turn on ssl in the server`,
      { cause: error },
    );
  }
  if (isTlsError(error)) {
    return new AppError(
      'dependency_unavailable',
      `${what}: the TLS handshake failed (${code}: ${e.message})`,
      {
        cause: error,
      },
    );
  }
  if (code === SQLSTATE.invalidAuthorization) {
    // pg_hba.conf's verdict, e.g. "… rejects connection …, no encryption"; it names no secret.
    return new AppError(
      'dependency_unavailable',
      `${what}: the server refused the connection (${e.message}): check the URL's user, database and sslmode ` +
        "against the server's pg_hba.conf",
      { cause: error },
    );
  }
  if (code === SQLSTATE.invalidPassword) {
    return new AppError(
      'dependency_unavailable',
      `${what}: authentication failed (check the credentials of the URL)`,
      { cause: error },
    );
  }
  if (code === SQLSTATE.invalidCatalogName)
    return new AppError('dependency_unavailable', `${what}: the database does not exist`, { cause: error });
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'ETIMEDOUT' || code === 'EHOSTUNREACH') {
    return new AppError('dependency_unavailable', `${what}: cannot reach the Postgres server (${code})`, {
      cause: error,
    });
  }
  if (
    code === SQLSTATE.adminShutdown ||
    code === SQLSTATE.crashShutdown ||
    code === SQLSTATE.cannotConnectNow
  ) {
    return new AppError(
      'dependency_unavailable',
      `${what}: the Postgres server shut down or is restarting (${code})`,
      { cause: error },
    );
  }
  if (code === SQLSTATE.lockNotAvailable)
    return new AppError('timeout', `${what}: lock wait timed out (${code})`, { cause: error });
  return new AppError('dependency_unavailable', `${what}: ${e?.message ?? String(error)}`, { cause: error });
}

/** Runs `fn` with a connected client and always ends it (graphile-worker's withPgClient habit). */
export async function withPgClient<T>(
  url: string,
  applicationName: string,
  fn: (client: pg.Client) => Promise<T>,
  what = 'connecting to Postgres',
): Promise<T> {
  let client: pg.Client;
  try {
    client = await connectPgClient(parsePgUrl(url), applicationName);
  } catch (error) {
    throw pgError(error, what);
  }
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** A standard-conforming string literal (standard_conforming_strings is on since PostgreSQL 9.1). */
export function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}
