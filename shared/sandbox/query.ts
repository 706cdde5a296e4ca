// SQL inside a sandbox, on the driver's in-process session where it has one (local: the private socket),
// else through the sandbox's own psql (docker: exec in the container):
// statements run with ON_ERROR_STOP, query results come back as one single-line JSON (jsonb) document.
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { AppError } from '../errors.js';
import { quoteLiteral } from '../pg/conn.js';
import type { ExecOptions, ExecResult, Sandbox } from './types.js';

/** Above this the SQL goes in as a file (one argv string is limited to 128 KiB on Linux). */
const INLINE_SQL_MAX_BYTES = 64 * 1024;

const PSQL = ['psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1'];

export function textArray(values: readonly string[]): string {
  return `ARRAY[${values.map(quoteLiteral).join(', ')}]::text[]`;
}

/** Runs a script (several statements allowed); the result says how it went, nothing is thrown for SQL errors. */
export async function runSql(sandbox: Sandbox, sql: string, options: ExecOptions = {}): Promise<ExecResult> {
  if (sandbox.sql) return sandbox.sql(sql, options);
  const bytes = Buffer.byteLength(sql);
  if (bytes <= INLINE_SQL_MAX_BYTES) return sandbox.exec([...PSQL, '-c', sql], options);
  const file = await sandbox.putFile(
    `query-${randomBytes(6).toString('hex')}.sql`,
    Readable.from([Buffer.from(sql)]),
    bytes,
    options,
  );
  return sandbox.exec([...PSQL, '-f', file], options);
}

/** An SQL error inside the sandbox, with psql's stderr (no secrets: sandboxes have none). */
export function sqlError(what: string, result: ExecResult): AppError {
  return new AppError(
    'internal',
    `${what} failed in the sandbox (exit ${result.exitCode}): ${result.stderr.trim().slice(-500) || 'no error output'}`,
    { details: { exitCode: result.exitCode } },
  );
}

/** Throws the abort reason when the command was cancelled (timeout, shutdown). */
export function throwIfCanceled(result: ExecResult, signal: AbortSignal | undefined): void {
  if (result.isCanceled) throw signal?.reason ?? new AppError('shutting_down', 'cancelled');
}

/** Rows of `select` as objects (keys = column names), via json_agg. */
export async function queryJson<T>(
  sandbox: Sandbox,
  select: string,
  what: string,
  options: ExecOptions = {},
): Promise<T[]> {
  const result = await runSql(
    sandbox,
    `SELECT coalesce(jsonb_agg(q), '[]'::jsonb) FROM (${select}) AS q`,
    options,
  );
  throwIfCanceled(result, options.signal);
  if (result.failed) throw sqlError(what, result);
  return parseLastJson<T[]>(result.stdout, what);
}

/** The last non-empty output line as JSON (a script prints only its final SELECT under -q -t). */
export function parseLastJson<T>(stdout: string, what: string): T {
  const line = stdout
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .at(-1);
  try {
    return JSON.parse(line ?? '') as T;
  } catch {
    throw new AppError(
      'internal',
      `${what}: unexpected psql output ${JSON.stringify((line ?? '').slice(0, 120))}`,
    );
  }
}
