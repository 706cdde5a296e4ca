// Everything a restore of a tenant's archive into a real server does there (a migration's dedicated
// database, a restore's target): the role stubs, schema auth and the tenant schema (each recorded only
// when this run created it), the pg_restore, the validation read and the rollback that drops exactly
// what was recorded.
//
// The restore runs the tenant's code (its CHECKs, generated columns, index expressions, materialized
// views), so it runs as the tenant: pg_restore logs in as a login role made for this run alone (no
// privilege, a member of the tenant role only, a random password that only its SCRAM verifier reaches
// the server as) and SET ROLEs to the tenant role, which then owns what it creates, with its grants.
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import type pg from 'pg';
import { AppError, isAppError } from '../errors.js';
import type { ToolInfo } from '../tools.js';
import { libpqEnv, parsePgUrl, pgError, quoteIdent, quoteLiteral, SQLSTATE, withPgClient } from './conn.js';
import { AUTHENTICATOR, authenticatorMemberships, stubRoles } from './platform-roles.js';
import { type ExcludedEntries, excludeEntries } from './restore-list.js';
import { assertUnprivileged, tenantText } from './restore-role.js';
import {
  countInventory,
  guardTenantReads,
  readInventory,
  type SequenceValue,
  type TableCount,
} from './snapshot.js';

/** What this run created in the target: the rollback drops exactly these, nothing else. */
export interface TargetChanges {
  schema?: string | undefined;
  /** USAGE on an existing schema `auth` granted to the tenant role by this run (its policies call auth.uid()). */
  authUsage?: string | undefined;
  /** The login role pg_restore connected as (also listed in `roles`): dropped after the restore. */
  restoreLogin?: string | undefined;
  authSchema?: boolean | undefined;
  authUid?: boolean | undefined;
  roles: string[];
  /** `role` granted to `member` by this run (on roles that existed before). */
  memberships: Array<{ role: string; member: string }>;
}

export const AUTH_UID_SQL = `CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
  AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$`;

export function hasChanges(changes: TargetChanges): boolean {
  return Boolean(
    changes.schema ||
      changes.authSchema ||
      changes.authUsage ||
      changes.authUid ||
      changes.roles.length > 0 ||
      changes.memberships.length > 0,
  );
}

async function exists(client: pg.Client, sql: string, params: unknown[]): Promise<boolean> {
  return ((await client.query(sql, params)).rowCount ?? 0) > 0;
}

/** A login role pg_restore uses once: its name and password (the password is never recorded). */
export interface RestoreLogin {
  role: string;
  password: string;
}

/** The SCRAM-SHA-256 verifier of `password` (RFC 5802/7677, as libpq's PQencryptPasswordConn makes it). */
export function scramVerifier(password: string, iterations = 4096): string {
  const salt = randomBytes(16);
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/**
 * The run's restore login, inside the caller's transaction: no privilege, a member of `memberOf` only (it
 * SET ROLEs there), a random password only its SCRAM verifier reaches the server as, CONNECT on this
 * database. Recorded in `changes` so a rollback drops it.
 */
export async function createRestoreLogin(
  client: pg.ClientBase,
  name: string,
  memberOf: string,
  changes: TargetChanges,
): Promise<RestoreLogin> {
  const password = randomBytes(24).toString('base64url');
  await client.query(
    `CREATE ROLE ${quoteIdent(name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION ` +
      `NOBYPASSRLS NOINHERIT CONNECTION LIMIT 4 PASSWORD ${quoteLiteral(scramVerifier(password))} ` +
      `IN ROLE ${quoteIdent(memberOf)}`,
  );
  changes.roles.push(name);
  changes.restoreLogin = name;
  const database = (await client.query<{ d: string }>('SELECT current_database() AS d')).rows[0]!.d;
  await client.query(`GRANT CONNECT ON DATABASE ${quoteIdent(database)} TO ${quoteIdent(name)}`);
  return { role: name, password };
}

/**
 * Creates, in one transaction, the missing role stubs, memberships of `authenticator`, schema `auth`
 * with `auth.uid()`, the empty tenant schema owned by the tenant role, and the run's restore login. The
 * tenant role is refused when it has more privilege than a tenant may (it runs the tenant's code).
 * `record` is called with the planned changes before COMMIT so a crash right after the commit still
 * leaves a record a restart can roll back.
 */
export async function prepareTarget(
  url: string,
  names: { schema: string; tenantRole: string; policyRoles: readonly string[]; restoreLogin: string },
  options: { appName: string; lockTimeoutMs: number; record: (changes: TargetChanges) => Promise<void> },
): Promise<{ changes: TargetChanges; login: RestoreLogin }> {
  return withPgClient(
    url,
    options.appName,
    async (client) => {
      const changes: TargetChanges = { roles: [], memberships: [] };
      try {
        await client.query('BEGIN');
        await client.query(`SET LOCAL lock_timeout = ${Math.max(0, Math.floor(options.lockTimeoutMs))}`);
        for (const role of stubRoles(names.tenantRole, names.policyRoles)) {
          if (await exists(client, 'SELECT 1 FROM pg_roles WHERE rolname = $1', [role.name])) continue;
          await client.query(`CREATE ROLE ${quoteIdent(role.name)} ${role.options}`);
          changes.roles.push(role.name);
        }
        for (const role of authenticatorMemberships(names.tenantRole)) {
          const isMember = await exists(
            client,
            `SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
              WHERE r.rolname = $1 AND u.rolname = $2`,
            [role, AUTHENTICATOR],
          );
          if (isMember) continue;
          await client.query(`GRANT ${quoteIdent(role)} TO ${quoteIdent(AUTHENTICATOR)}`);
          changes.memberships.push({ role, member: AUTHENTICATOR });
        }
        if (!(await exists(client, `SELECT 1 FROM pg_namespace WHERE nspname = 'auth'`, []))) {
          await client.query('CREATE SCHEMA auth');
          const grantees = ['anon', 'authenticated', 'service_role', names.tenantRole].map(quoteIdent);
          await client.query(`GRANT USAGE ON SCHEMA auth TO ${grantees.join(', ')}`);
          changes.authSchema = true;
        }
        if (!(await exists(client, `SELECT 1 WHERE to_regprocedure('auth.uid()') IS NOT NULL`, []))) {
          await client.query(AUTH_UID_SQL);
          changes.authUid = true;
        }
        // The tenant's policies call auth.uid() as the tenant: an auth schema that was already there
        // must let the tenant role in, as the source's does.
        if (
          !changes.authSchema &&
          !(await exists(client, `SELECT 1 WHERE has_schema_privilege($1, 'auth', 'USAGE')`, [
            names.tenantRole,
          ]))
        ) {
          await client.query(`GRANT USAGE ON SCHEMA auth TO ${quoteIdent(names.tenantRole)}`);
          changes.authUsage = names.tenantRole;
        }
        await assertUnprivileged(client, names.tenantRole, 'the dedicated database');
        const login = await createRestoreLogin(client, names.restoreLogin, names.tenantRole, changes);
        try {
          await client.query(
            `CREATE SCHEMA ${quoteIdent(names.schema)} AUTHORIZATION ${quoteIdent(names.tenantRole)}`,
          );
        } catch (error) {
          if ((error as { code?: string }).code === SQLSTATE.duplicateSchema) {
            throw new AppError(
              'precondition_failed',
              `schema ${names.schema} appeared in the target after the preflight (another actor created it); nothing was changed`,
            );
          }
          throw error;
        }
        changes.schema = names.schema;
        await options.record(changes);
        await client.query('COMMIT');
        return { changes, login };
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw isAppError(error) ? error : pgError(error, 'preparing the target (role stubs, schemas)');
      }
    },
    'connecting to the target',
  );
}

export interface ChildResult {
  exitCode: number | undefined;
  signal: string | undefined;
  timedOut: boolean;
  isCanceled: boolean;
  stderr: string;
  stdout: string;
}

function stderrTail(text: string): string {
  return text.trim().split('\n').slice(-5).join(' | ').slice(0, 1500);
}

/** Who runs a restore, for its errors: the function and the code a failed child is reported with. */
export interface RestoreRunner {
  fn: string;
  failCode: 'migrate_failed' | 'restore_failed';
  /** What bounds the child's time, named in a timeout error. */
  timeoutNote: string;
}

export function childError(tool: string, result: ChildResult, runner: RestoreRunner): AppError {
  if (result.isCanceled)
    return new AppError('shutting_down', `${tool} was cancelled (${runner.fn} is stopping)`);
  if (result.timedOut)
    return new AppError('timeout', `${tool} ran past ${runner.timeoutNote} and was killed`);
  const how = result.signal ? `was killed by ${result.signal}` : `exited ${result.exitCode}`;
  // What pg_restore printed may be the tenant's own text (its objects' names, its functions' messages).
  const said = stderrTail(result.stderr);
  return new AppError(runner.failCode, `${tool} ${how}: ${said ? tenantText(said) : 'no error output'}`, {
    details: { exitCode: result.exitCode ?? null, signal: result.signal ?? null },
  });
}

/** Conninfo form of a database name, so a name containing `=` is never read as a connection string. */
export function dbnameConninfo(database: string): string {
  return `dbname='${database.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`;
}

/**
 * Restores the dump into the target as the tenant: logged in as the run's restore login, `--role` the
 * tenant role (so the tenant owns what is created and its code runs with the tenant's privileges only),
 * the restore list minus what the caller created itself (the tenant schema, which must be in the list
 * exactly once; extensions and their schemas), `--no-owner --exit-on-error`, the archive's grants applied,
 * password only in PGPASSWORD of the child's env.
 */
export async function restoreDump(options: {
  url: string;
  login: RestoreLogin;
  tenantRole: string;
  dumpFile: string;
  listFile: string;
  /** The tenant schema this run created (v2); absent for a whole database. */
  schema?: string | undefined;
  /** More entries the caller handled as superuser beforehand. */
  exclude?: ExcludedEntries;
  pgRestore: ToolInfo;
  pathEnv: string | undefined;
  appName: string;
  timeoutMs: number;
  signal: AbortSignal;
  runner: RestoreRunner;
}): Promise<{ seconds: number }> {
  const started = performance.now();
  const target = { ...parsePgUrl(options.url), user: options.login.role, password: options.login.password };
  const run = async (args: string[]): Promise<ChildResult> => {
    const r = await execa(options.pgRestore.path, args, {
      env: { ...libpqEnv(target, options.appName), PATH: options.pathEnv ?? '' },
      extendEnv: false,
      stdin: 'ignore',
      timeout: Math.max(1, options.timeoutMs - (performance.now() - started)),
      cancelSignal: options.signal,
      forceKillAfterDelay: 5_000,
      reject: false,
      maxBuffer: 64 * 1024 * 1024,
    });
    return {
      exitCode: r.exitCode,
      signal: r.signal,
      timedOut: r.timedOut,
      isCanceled: r.isCanceled,
      stderr: typeof r.stderr === 'string' ? r.stderr : '',
      stdout: typeof r.stdout === 'string' ? r.stdout : '',
    };
  };
  const listed = await run(['--list', options.dumpFile]);
  if (listed.exitCode !== 0 || listed.timedOut || listed.isCanceled) {
    throw childError('pg_restore --list', listed, options.runner);
  }
  const schemas = [...(options.schema ? [options.schema] : []), ...(options.exclude?.schemas ?? [])];
  const { list, excluded } = excludeEntries(listed.stdout, {
    schemas,
    extensions: options.exclude?.extensions ?? false,
  });
  const schemaEntries = options.schema ? (excluded.schemas[options.schema] ?? 0) : 1;
  if (schemaEntries !== 1) {
    throw new AppError(
      options.runner.failCode,
      `the dump's restore list has ${schemaEntries} entries creating schema ${options.schema} (expected 1); nothing was restored`,
    );
  }
  await writeFile(options.listFile, list, { mode: 0o600 });
  const restored = await run([
    '--no-owner',
    `--role=${options.tenantRole}`,
    '--exit-on-error',
    `--use-list=${options.listFile}`,
    `--dbname=${dbnameConninfo(target.database)}`,
    options.dumpFile,
  ]);
  if (restored.exitCode !== 0 || restored.timedOut || restored.isCanceled) {
    throw childError('pg_restore', restored, options.runner);
  }
  return { seconds: (performance.now() - started) / 1000 };
}

/**
 * Drops the run's restore login once the restore is over. Anything it came to own (tenant code that
 * RESET ROLE) goes to the tenant role first, so nothing is lost with it.
 */
export async function dropRestoreLogin(
  url: string,
  changes: TargetChanges,
  options: { appName: string },
): Promise<void> {
  const role = changes.restoreLogin;
  if (!role) return;
  await withPgClient(url, options.appName, async (client) => {
    const present = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
    if ((present.rowCount ?? 0) > 0) {
      await client.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()`,
        [role],
      );
      const tenant = await client.query<{ r: string }>(
        `SELECT g.rolname AS r FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 LIMIT 1`,
        [role],
      );
      const heir = tenant.rows[0]?.r;
      if (heir) await client.query(`REASSIGN OWNED BY ${quoteIdent(role)} TO ${quoteIdent(heir)}`);
      await client.query(`DROP OWNED BY ${quoteIdent(role)}`);
      await client.query(`DROP ROLE ${quoteIdent(role)}`);
    }
  });
  changes.roles = changes.roles.filter((r) => r !== role);
  changes.restoreLogin = undefined;
}

/** Exact counts and sequence values of the restored schema, read in one snapshot of the target. */
export async function readTargetCounts(
  url: string,
  schema: string,
  options: { appName: string; statementTimeoutMs: number },
): Promise<{ tables: TableCount[]; sequences: SequenceValue[] }> {
  return withPgClient(
    url,
    options.appName,
    async (client) => {
      try {
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY');
        await client.query(
          `SET LOCAL statement_timeout = ${Math.max(1, Math.floor(options.statementTimeoutMs))}`,
        );
        await guardTenantReads(client);
        const inventory = await readInventory(client, { kind: 'tenant_export', schema });
        const counts = await countInventory(client, inventory);
        await client.query('COMMIT');
        return counts;
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw isAppError(error) ? error : pgError(error, 'validating the target');
      }
    },
    'connecting to the target for validation',
  );
}

/** SQLSTATE 2BP01: DROP ROLE refused because objects or privileges still depend on the role. */
const DEPENDENT_OBJECTS_STILL_EXIST = '2BP01';

export interface RollbackResult {
  ok: boolean;
  dropped: string[];
  /** What could not be dropped, with why: the operator removes these by hand. */
  leftovers: Array<{ object: string; error: string }>;
}

/**
 * Drops what `changes` records, in dependency order, each step on its own so one failure does not keep
 * the rest: first any backend still running this run's restore is terminated, then the tenant schema
 * (CASCADE: everything pg_restore put in it), auth.uid(), schema auth, memberships, and the roles.
 */
export async function rollbackTarget(
  url: string,
  changes: TargetChanges,
  options: { appName: string; restoreAppName: string; lockTimeoutMs: number },
): Promise<RollbackResult> {
  const result: RollbackResult = { ok: true, dropped: [], leftovers: [] };
  if (!hasChanges(changes)) return result;
  try {
    await withPgClient(url, options.appName, async (client) => {
      await client.query(`SET lock_timeout = ${Math.max(1, Math.floor(options.lockTimeoutMs))}`);
      const step = async (object: string, sql: string[]) => {
        try {
          for (const statement of sql) await client.query(statement);
          result.dropped.push(object);
        } catch (error) {
          result.ok = false;
          result.leftovers.push({ object, error: (error as Error).message });
        }
      };
      // A killed pg_restore's backend may still hold locks (a long CREATE INDEX notices the lost client late).
      await client
        .query(
          `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE application_name = $1 AND pid <> pg_backend_pid()`,
          [options.restoreAppName],
        )
        .catch(() => undefined);
      if (changes.schema) {
        await step(`schema ${changes.schema}`, [
          `DROP SCHEMA IF EXISTS ${quoteIdent(changes.schema)} CASCADE`,
        ]);
      }
      if (changes.authUid) await step('function auth.uid()', ['DROP FUNCTION IF EXISTS auth.uid()']);
      if (changes.authUsage) {
        const role = changes.authUsage;
        const present = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
        if ((present.rowCount ?? 0) > 0)
          await step(`usage on schema auth for ${role}`, [
            `REVOKE USAGE ON SCHEMA auth FROM ${quoteIdent(role)}`,
          ]);
      }
      if (changes.authSchema) await step('schema auth', ['DROP SCHEMA IF EXISTS auth']);
      for (const m of changes.memberships) {
        const both = await client.query(
          'SELECT 1 FROM pg_roles WHERE rolname = $1 OR rolname = $2 HAVING count(*) = 2',
          [m.role, m.member],
        );
        if ((both.rowCount ?? 0) === 0) continue;
        await step(`membership ${m.role} in ${m.member}`, [
          `REVOKE ${quoteIdent(m.role)} FROM ${quoteIdent(m.member)}`,
        ]);
      }
      for (const role of [...changes.roles].reverse()) {
        const present = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
        if ((present.rowCount ?? 0) === 0) continue;
        try {
          await client.query(`DROP ROLE ${quoteIdent(role)}`);
          result.dropped.push(`role ${role}`);
        } catch (error) {
          if ((error as { code?: string }).code !== DEPENDENT_OBJECTS_STILL_EXIST) {
            result.ok = false;
            result.leftovers.push({ object: `role ${role}`, error: (error as Error).message });
            continue;
          }
          // The role is this run's own: whatever it owns or was granted here came from this run.
          await step(`role ${role}`, [`DROP OWNED BY ${quoteIdent(role)}`, `DROP ROLE ${quoteIdent(role)}`]);
        }
      }
    });
  } catch (error) {
    result.ok = false;
    result.leftovers.push({
      object: 'target connection',
      error: `${(error as Error).message}; still to drop: ${describeChanges(changes)}`,
    });
  }
  return result;
}

export function describeChanges(changes: TargetChanges): string {
  const parts: string[] = [];
  if (changes.schema) parts.push(`schema ${changes.schema}`);
  if (changes.authUid) parts.push('function auth.uid()');
  if (changes.authSchema) parts.push('schema auth');
  if (changes.authUsage) parts.push(`usage on schema auth for ${changes.authUsage}`);
  for (const m of changes.memberships) parts.push(`membership ${m.role} in ${m.member}`);
  for (const r of changes.roles) parts.push(`role ${r}`);
  return parts.join(', ') || 'nothing';
}
