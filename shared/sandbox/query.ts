// SQL inside a sandbox, on the driver's in-process session where it has one (local: the private socket),
// else through the sandbox's own psql (docker: exec in the container):
// statements run with ON_ERROR_STOP, query results come back as one single-line JSON (jsonb) document.
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { AppError } from '../errors.js';
import { quoteLiteral } from '../pg/conn.js';
import { type ExecOptions, type ExecResult, SANDBOX_SUPERUSER, type Sandbox } from './types.js';

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

/** One script of a sequence and the role it runs as (the superuser when none is named). */
export interface SqlStep {
  sql: string;
  user?: string | undefined;
}

/** A role name psql's `\c` takes as it is. */
const PLAIN_ROLE = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * Runs scripts one after another, each as its own role, stopping at the first that fails; the result is
 * the last one run. Through psql (docker) the steps share one exec, switching role with `\c` (a new
 * connection, so nothing of one step's session reaches the next); on a driver's session, one call each.
 */
export async function runSqlSteps(
  sandbox: Sandbox,
  steps: readonly SqlStep[],
  options: ExecOptions = {},
): Promise<ExecResult> {
  const [first, ...rest] = steps;
  if (!first) throw new AppError('internal', 'runSqlSteps needs a step');
  const as = (step: SqlStep) => ({ ...options, ...(step.user ? { user: step.user } : {}) });
  const bytes = steps.reduce((n, step) => n + Buffer.byteLength(step.sql), 0);
  const isOneExec =
    !sandbox.sql &&
    rest.length > 0 &&
    bytes <= INLINE_SQL_MAX_BYTES &&
    rest.every((step) => step.user === undefined || PLAIN_ROLE.test(step.user));
  if (isOneExec) {
    const argv: string[] = [...PSQL, '-c', first.sql];
    for (const step of rest) argv.push('-c', `\\c - ${step.user ?? SANDBOX_SUPERUSER}`, '-c', step.sql);
    return sandbox.exec(argv, as(first));
  }
  let result = await runSql(sandbox, first.sql, as(first));
  for (const step of rest) {
    if (result.failed) break;
    result = await runSql(sandbox, step.sql, as(step));
  }
  return result;
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
