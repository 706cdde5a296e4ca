// Connection strings turned into pg client options and libpq environment variables. Passwords travel
// only in PGPASSWORD (child env) or the client config, never in argv or logs.
import pg from 'pg';
import { AppError } from '../errors.js';

export interface PgTarget {
  host: string;
  port: number;
  user: string;
  password?: string;
  database: string;
  sslmode?: string;
}

export function parsePgUrl(url: string): PgTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new AppError('config_invalid', 'a database URL is not a valid postgres:// URL (value not shown)');
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new AppError('config_invalid', `a database URL has protocol ${u.protocol}; expected postgres://`);
  }
  const socketHost = u.searchParams.get('host');
  const target: PgTarget = {
    host: socketHost ?? (decodeURIComponent(u.hostname) || 'localhost'),
    port: u.port ? Number(u.port) : 5432,
    user: decodeURIComponent(u.username) || 'postgres',
    database: decodeURIComponent(u.pathname.replace(/^\//, '')) || 'postgres',
  };
  if (u.password) target.password = decodeURIComponent(u.password);
  const sslmode = u.searchParams.get('sslmode');
  if (sslmode) target.sslmode = sslmode;
  return target;
}

/** libpq environment for a child process (pg_dump, pg_restore, psql). */
export function libpqEnv(target: PgTarget, applicationName: string): Record<string, string> {
  return {
    PGHOST: target.host,
    PGPORT: String(target.port),
    PGUSER: target.user,
    PGDATABASE: target.database,
    PGAPPNAME: applicationName,
    PGCONNECT_TIMEOUT: '10',
    ...(target.password !== undefined ? { PGPASSWORD: target.password } : {}),
    ...(target.sslmode ? { PGSSLMODE: target.sslmode } : {}),
  };
}

export function pgClientConfig(target: PgTarget, applicationName: string): pg.ClientConfig {
  return {
    host: target.host,
    port: target.port,
    user: target.user,
    password: target.password,
    database: target.database,
    application_name: applicationName,
    connectionTimeoutMillis: 10_000,
    ...(target.sslmode && target.sslmode !== 'disable'
      ? { ssl: { rejectUnauthorized: target.sslmode === 'verify-full' } }
      : {}),
  };
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
  const e = error as { code?: string; message?: string };
  const code = e?.code;
  if (code === SQLSTATE.invalidPassword || code === SQLSTATE.invalidAuthorization) {
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
  const client = new pg.Client(pgClientConfig(parsePgUrl(url), applicationName));
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => undefined);
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
