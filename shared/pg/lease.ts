// A cross-process lease on a server: a session advisory lock keyed by a string, held by one connection
// for as long as the work runs (Postgres releases it when the session ends, so a killed holder frees it).
import { AppError, isAppError } from '../errors.js';
import { connectPgClient, parsePgUrl, pgError } from './conn.js';

/** Takes the lease or throws `conflict` with `busy` as its message; returns the release. */
export async function takeSessionLease(
  url: string,
  key: string,
  options: { appName: string; busy: string; what: string },
): Promise<() => Promise<void>> {
  const client = await connectPgClient(parsePgUrl(url), options.appName).catch((error: unknown) => {
    throw pgError(error, options.what);
  });
  try {
    const r = await client.query<{ ok: boolean }>(
      'SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS ok',
      [key],
    );
    if (!r.rows[0]?.ok) throw new AppError('conflict', options.busy, { retryAfterSeconds: 60 });
  } catch (error) {
    await client.end().catch(() => undefined);
    throw isAppError(error) ? error : pgError(error, options.what);
  }
  return async () => {
    await client.end().catch(() => undefined);
  };
}
