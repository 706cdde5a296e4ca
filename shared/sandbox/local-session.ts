// SQL on a local sandbox from this process, over its private unix socket: no psql process (and no new
// server backend) per statement. A script's result has exec's shape, its stdout what `psql -X -q -A -t`
// would print, so callers read either transport the same way.
import pg from 'pg';
import type { ExecResult } from './types.js';

const CONNECT_TIMEOUT_MS = 10_000;

/** Every value as the server's text, as psql prints it (nothing is parsed here; callers parse JSON). */
const AS_TEXT = { getTypeParser: () => (value: string) => value };

/** psql's exit code for a connection that failed or broke; 1 is an SQL error (ON_ERROR_STOP). */
const EXIT_CONNECTION = 2;
const EXIT_SQL_ERROR = 1;

export interface SessionTarget {
  /** The socket directory. */
  socket: string;
  port: number;
  user: string;
}

/** The error as psql reports it: `ERROR:  message`, then DETAIL and HINT lines when the server gave them. */
function errorText(error: unknown): string {
  const e = error as { severity?: string; message?: string; detail?: string; hint?: string };
  const lines = [`${e.severity ?? 'ERROR'}:  ${e.message ?? String(error)}`];
  if (e.detail) lines.push(`DETAIL:  ${e.detail}`);
  if (e.hint) lines.push(`HINT:  ${e.hint}`);
  return lines.join('\n');
}

function outcome(
  started: number,
  fields: { exitCode: number | null; stdout?: string; stderr?: string; isCanceled?: boolean },
): ExecResult {
  const isCanceled = fields.isCanceled ?? false;
  return {
    command: 'sql (in-process session)',
    exitCode: fields.exitCode,
    stdout: fields.stdout ?? '',
    stderr: fields.stderr ?? '',
    seconds: (performance.now() - started) / 1000,
    isCanceled,
    failed: isCanceled || fields.exitCode !== 0,
  };
}

/** A script that could not run: no session to run it on, or none could be opened. */
export function notRun(stderr: string, started = performance.now()): ExecResult {
  return outcome(started, { exitCode: EXIT_CONNECTION, stderr });
}

/** One connected session. Its end (the server stopped or restarted, close()) is final: it never reconnects. */
export class SandboxSession {
  #client: pg.Client;
  #ended = false;

  private constructor(client: pg.Client) {
    this.#client = client;
    client.on('error', () => {
      this.#ended = true;
    });
    client.on('end', () => {
      this.#ended = true;
    });
  }

  /** Connects as `target.user`; throws the driver's error when the server does not take the session. */
  static async open(target: SessionTarget): Promise<SandboxSession> {
    const client = new pg.Client({
      host: target.socket,
      port: target.port,
      user: target.user,
      database: 'postgres',
      application_name: 'flux-ops-verify',
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    });
    client.on('error', () => undefined);
    try {
      await client.connect();
    } catch (error) {
      await client.end().catch(() => undefined);
      throw error;
    }
    return new SandboxSession(client);
  }

  /** The session is still connected (as far as this process has heard). */
  get isOpen(): boolean {
    return !this.#ended;
  }

  /**
   * Runs a script (several statements run as one simple query, as `psql -c` sends them); SQL errors come
   * back in the result, never thrown. A cancelled script ends the session (the sandbox goes next).
   */
  async run(sql: string, signal?: AbortSignal): Promise<ExecResult> {
    const started = performance.now();
    if (signal?.aborted) return outcome(started, { exitCode: null, isCanceled: true });
    if (this.#ended) return notRun('the sandbox server ended the session (it stopped or restarted)', started);
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<'aborted'>((resolve) => {
      onAbort = () => resolve('aborted');
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    const query = this.#client.query<string[]>({ text: sql, rowMode: 'array', types: AS_TEXT });
    query.catch(() => undefined);
    try {
      const settled = await Promise.race([query, aborted]);
      if (settled === 'aborted') {
        void this.close();
        return outcome(started, { exitCode: null, isCanceled: true });
      }
      const results = (Array.isArray(settled) ? settled : [settled]) as pg.QueryArrayResult<string[]>[];
      const stdout = results
        .flatMap((r) => r.rows ?? [])
        .map((row) => row.map((v) => v ?? '').join('|'))
        .join('\n');
      return outcome(started, { exitCode: 0, stdout });
    } catch (error) {
      const code = (error as { code?: string }).code;
      // A server error carries an SQLSTATE; anything else is the connection's.
      const exitCode = code && /^[0-9A-Z]{5}$/.test(code) && !this.#ended ? EXIT_SQL_ERROR : EXIT_CONNECTION;
      return outcome(started, { exitCode, stderr: errorText(error) });
    } finally {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Whether the server still answers on this session (SELECT 1); throws nothing. */
  async answers(signal?: AbortSignal): Promise<boolean> {
    const probe = await this.run('SELECT 1', signal);
    return probe.exitCode === 0 && probe.stdout === '1';
  }

  /** Ends the session (idempotent; does not wait for the server). */
  async close(): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    await this.#client.end().catch(() => undefined);
  }
}
