// Whether the sandbox server stayed up while tenant code ran in it, observed rather than read from
// messages: a superuser session is held open on the server through the restore. A server that crashed,
// restarted after a killed backend, or stopped ends every session, so this one's end is the signal; tenant
// code (an unprivileged role) can neither end it nor fake its end, whatever its errors say. A driver that
// holds such a session itself (local: its in-process one) watches with that instead.
import { randomBytes } from 'node:crypto';
import { AppError } from '../errors.js';
import { queryJson } from './query.js';
import type { ExecOptions, Sandbox, ServerWatch } from './types.js';
import { sandboxUnavailable } from './unavailable.js';

const CONNECT_DEADLINE_MS = 30_000;

/** Opens the watching session and returns once the server shows it connected. */
export async function watchServer(sandbox: Sandbox, options: ExecOptions = {}): Promise<ServerWatch> {
  if (sandbox.watch) return sandbox.watch(options);
  const abort = new AbortController();
  const tag = `flux-verify-watch-${randomBytes(6).toString('hex')}`;
  let ended = false;
  const signal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal;
  const session = sandbox.exec(['psql', '-X', '-q', '-c', `SELECT pg_sleep(86400) /* ${tag} */`], { signal });
  session.then(
    (result) => {
      if (!result.isCanceled) ended = true;
    },
    () => {
      ended = true;
    },
  );
  const deadline = Date.now() + CONNECT_DEADLINE_MS;
  for (let delay = 5; ; delay = Math.min(200, delay * 2)) {
    if (options.signal?.aborted) {
      abort.abort();
      throw options.signal.reason ?? new AppError('shutting_down', 'cancelled');
    }
    if (ended || Date.now() > deadline) {
      abort.abort();
      throw sandboxUnavailable(
        'sandbox_failed',
        'the sandbox server did not hold a session open before the restore',
      );
    }
    if (await isConnected()) break;
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
  async function isConnected(): Promise<boolean> {
    const [row] = await queryJson<{ n: number }>(
      sandbox,
      `SELECT count(*)::int AS n FROM pg_catalog.pg_stat_activity
        WHERE query LIKE ${`'%${tag}%'`} AND pid <> pg_catalog.pg_backend_pid()`,
      'watching the sandbox server',
      options,
    );
    return (row?.n ?? 0) > 0;
  }
  return {
    async isIntact() {
      if (ended) return false;
      try {
        return await isConnected();
      } catch (error) {
        if (options.signal?.aborted) throw error;
        return false;
      }
    },
    stop() {
      abort.abort();
    },
  };
}
