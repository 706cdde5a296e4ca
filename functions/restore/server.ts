import type pg from 'pg';
import { AppError, isAppError } from '../../shared/errors.js';
import { parsePgUrl, pgError, quoteIdent, withPgClient } from '../../shared/pg/conn.js';
import { assertUnprivileged } from '../../shared/pg/restore-role.js';
import { createRestoreLogin, type RestoreLogin, type TargetChanges } from '../../shared/pg/target.js';

export const RESTORE_APP_NAME = 'flux-ops-restore';

/** The application_name of a run's pg_restore, by which a rollback finds and ends its sessions. */
export function restoreAppNameOf(restoreId: string): string {
  return `${RESTORE_APP_NAME}-${restoreId.toLowerCase()}`;
}

/** The same server and credentials, another database. */
export function urlWithDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

/** A database to run CREATE/DROP/ALTER DATABASE from: never one of `avoid` (you cannot rename your own). */
export function maintenanceUrl(url: string, avoid: readonly string[]): string {
  const candidates = [parsePgUrl(url).database, 'postgres', 'template1'];
  return urlWithDatabase(url, candidates.find((d) => !avoid.includes(d)) ?? 'template1');
}

const exists = async (client: pg.ClientBase, sql: string, params: unknown[]) =>
  ((await client.query(sql, params)).rowCount ?? 0) > 0;

export async function databaseExists(url: string, name: string): Promise<boolean> {
  return withPgClient(url, RESTORE_APP_NAME, (c) =>
    exists(c, 'SELECT 1 FROM pg_database WHERE datname = $1', [name]),
  );
}

export async function schemaExists(url: string, name: string): Promise<boolean> {
  return withPgClient(url, RESTORE_APP_NAME, (c) =>
    exists(c, 'SELECT 1 FROM pg_namespace WHERE nspname = $1', [name]),
  );
}

/** CREATE DATABASE from template0 (nothing of template1's extras), refusing a name that is taken. */
export async function createDatabase(url: string, name: string, owner?: string): Promise<void> {
  await withPgClient(url, RESTORE_APP_NAME, async (client) => {
    try {
      await client.query(
        `CREATE DATABASE ${quoteIdent(name)} TEMPLATE template0${owner ? ` OWNER ${quoteIdent(owner)}` : ''}`,
      );
    } catch (error) {
      if ((error as { code?: string }).code === '42P04') {
        throw new AppError(
          'conflict',
          `database ${name} already exists on the target: choose another name (targetName) or drop it; nothing was changed`,
        );
      }
      throw pgError(error, `creating database ${name}`);
    }
  });
}

/** Drops a database this run created, closing its sessions first. Absent is fine. */
export async function dropDatabase(url: string, name: string): Promise<void> {
  await withPgClient(url, RESTORE_APP_NAME, async (client) => {
    await client.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
  });
}

/** in_place v2: the live schema renamed aside, in one short transaction. */
export async function setAsideSchema(
  url: string,
  names: { live: string; aside: string },
  lockTimeoutMs: number,
): Promise<void> {
  await withPgClient(url, RESTORE_APP_NAME, async (client) => {
    try {
      await client.query('BEGIN');
      await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.floor(lockTimeoutMs))}`);
      await client.query(`ALTER SCHEMA ${quoteIdent(names.live)} RENAME TO ${quoteIdent(names.aside)}`);
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw pgError(error, `setting schema ${names.live} aside as ${names.aside}`);
    }
  });
}

/**
 * Puts the set-aside live schema back, in one transaction: whatever stands at the live name now is this
 * run's (the live copy is at `aside`) and is dropped first. When `aside` does not exist the live schema
 * was never moved, and nothing is touched. Backends still running this run's restore are ended first.
 */
export async function putBackSchema(
  url: string,
  names: { live: string; aside: string },
  options: { restoreAppName: string },
): Promise<'put_back' | 'never_moved'> {
  return withPgClient(url, RESTORE_APP_NAME, async (client) => {
    await client
      .query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()`,
        [options.restoreAppName],
      )
      .catch(() => undefined);
    try {
      await client.query('BEGIN');
      if (!(await exists(client, 'SELECT 1 FROM pg_namespace WHERE nspname = $1', [names.aside]))) {
        await client.query('ROLLBACK');
        return 'never_moved';
      }
      await client.query(`DROP SCHEMA IF EXISTS ${quoteIdent(names.live)} CASCADE`);
      await client.query(`ALTER SCHEMA ${quoteIdent(names.aside)} RENAME TO ${quoteIdent(names.live)}`);
      await client.query('COMMIT');
      return 'put_back';
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw pgError(error, `putting schema ${names.aside} back as ${names.live}`);
    }
  });
}

export async function dropSchema(url: string, name: string): Promise<void> {
  await withPgClient(url, RESTORE_APP_NAME, async (client) => {
    await client.query(`DROP SCHEMA IF EXISTS ${quoteIdent(name)} CASCADE`);
  });
}

/**
 * A backup is taken without grants (`--no-acl`), so the restored copy gets the grants the live one had:
 * on each schema, on each relation of the same name and kind, and each schema's default privileges, read
 * from `fromUrl` (the live copy, or the copy set aside) and granted in `toUrl`. Column and function grants
 * are not carried (functions keep PUBLIC's default EXECUTE).
 */
export async function carryGrants(
  fromUrl: string,
  toUrl: string,
  schemas: ReadonlyArray<{ from: string; to: string }>,
): Promise<number> {
  const grantee = (name: string | null) => (name === null ? 'PUBLIC' : quoteIdent(name));
  const statements = await withPgClient(fromUrl, RESTORE_APP_NAME, async (client) => {
    const out: string[] = [];
    for (const names of schemas) {
      const schema = await client.query<{ grantee: string | null; privilege: string; grantable: boolean }>(
        `SELECT r.rolname AS grantee, a.privilege_type AS privilege, a.is_grantable AS grantable
           FROM pg_namespace n, aclexplode(n.nspacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
          WHERE n.nspname = $1 AND a.grantee <> n.nspowner`,
        [names.from],
      );
      for (const g of schema.rows) {
        out.push(
          `GRANT ${g.privilege} ON SCHEMA ${quoteIdent(names.to)} TO ${grantee(g.grantee)}${g.grantable ? ' WITH GRANT OPTION' : ''}`,
        );
      }
      const relations = await client.query<{
        name: string;
        kind: string;
        grantee: string | null;
        privilege: string;
        grantable: boolean;
      }>(
        `SELECT c.relname AS name, c.relkind::text AS kind, r.rolname AS grantee, a.privilege_type AS privilege,
                a.is_grantable AS grantable
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
           LEFT JOIN pg_roles r ON r.oid = a.grantee
          WHERE n.nspname = $1 AND c.relacl IS NOT NULL AND a.grantee <> c.relowner
            AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')`,
        [names.from],
      );
      for (const g of relations.rows) {
        const what = g.kind === 'S' ? 'SEQUENCE' : 'TABLE';
        out.push(
          `GRANT ${g.privilege} ON ${what} ${quoteIdent(names.to)}.${quoteIdent(g.name)} TO ${grantee(g.grantee)}${g.grantable ? ' WITH GRANT OPTION' : ''}`,
        );
      }
      const defaults = await client.query<{
        owner: string;
        objtype: string;
        grantee: string | null;
        privilege: string;
      }>(
        `SELECT o.rolname AS owner, d.defaclobjtype::text AS objtype, r.rolname AS grantee, a.privilege_type AS privilege
           FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace
           JOIN pg_roles o ON o.oid = d.defaclrole, aclexplode(d.defaclacl) a
           LEFT JOIN pg_roles r ON r.oid = a.grantee
          WHERE n.nspname = $1 AND a.grantee <> d.defaclrole`,
        [names.from],
      );
      const objects: Record<string, string> = { r: 'TABLES', S: 'SEQUENCES', f: 'FUNCTIONS', T: 'TYPES' };
      for (const g of defaults.rows) {
        const on = objects[g.objtype];
        if (!on) continue;
        out.push(
          `ALTER DEFAULT PRIVILEGES FOR ROLE ${quoteIdent(g.owner)} IN SCHEMA ${quoteIdent(names.to)} GRANT ${g.privilege} ON ${on} TO ${grantee(g.grantee)}`,
        );
      }
    }
    return out;
  });
  await withPgClient(toUrl, RESTORE_APP_NAME, async (client) => {
    try {
      await client.query('BEGIN');
      for (const statement of statements) {
        // A relation the live copy has and the backup does not is skipped, not an error.
        await client.query('SAVEPOINT g');
        try {
          await client.query(statement);
          await client.query('RELEASE SAVEPOINT g');
        } catch (error) {
          if ((error as { code?: string }).code !== '42P01' && (error as { code?: string }).code !== '3F000')
            throw error;
          await client.query('ROLLBACK TO SAVEPOINT g');
        }
      }
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw pgError(error, "carrying the live copy's grants over to the restored copy");
    }
  });
  return statements.length;
}

/**
 * The role a project database is restored as: its live owner when that role has no more privilege than
 * a tenant may (the application keeps owning its objects), otherwise the project's own tenant role.
 */
export async function ownerFor(
  url: string,
  liveDatabase: string,
  tenantRole: string,
): Promise<{ role: string; isLiveOwner: boolean }> {
  return withPgClient(url, RESTORE_APP_NAME, async (client) => {
    const owner = await client.query<{ r: string }>(
      'SELECT r.rolname AS r FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = $1',
      [liveDatabase],
    );
    const candidate = owner.rows[0]?.r;
    if (candidate) {
      try {
        await assertUnprivileged(client, candidate, 'the target server');
        return { role: candidate, isLiveOwner: true };
      } catch (error) {
        if (!isAppError(error)) throw error;
      }
    }
    return { role: tenantRole, isLiveOwner: false };
  });
}

/**
 * Prepares a new, empty project database for a restore by `owner`: missing roles (the owner, the roles
 * the archive's policies name) created NOLOGIN, `public` owned by the owner, the archive's extensions
 * created by us (the owner may not) in their recorded schemas, and the run's restore login. `record` is
 * called before COMMIT, as prepareTarget does.
 */
export async function prepareDatabase(
  url: string,
  names: {
    owner: string;
    policyRoles: readonly string[];
    restoreLogin: string;
    extensions: ReadonlyArray<{ name: string; schema?: string | undefined }>;
  },
  options: { record: (changes: TargetChanges) => Promise<void> },
): Promise<{ changes: TargetChanges; login: RestoreLogin; extensionSchemas: string[] }> {
  return withPgClient(url, RESTORE_APP_NAME, async (client) => {
    const changes: TargetChanges = { roles: [], memberships: [] };
    const extensionSchemas: string[] = [];
    try {
      await client.query('BEGIN');
      for (const role of [names.owner, ...names.policyRoles]) {
        if (role === 'public' || role.startsWith('pg_')) continue;
        if (await exists(client, 'SELECT 1 FROM pg_roles WHERE rolname = $1', [role])) continue;
        await client.query(`CREATE ROLE ${quoteIdent(role)} NOLOGIN`);
        changes.roles.push(role);
      }
      await assertUnprivileged(client, names.owner, 'the target database');
      const db = (await client.query<{ d: string }>('SELECT current_database() AS d')).rows[0]!.d;
      await client.query(`ALTER DATABASE ${quoteIdent(db)} OWNER TO ${quoteIdent(names.owner)}`);
      await client.query(`ALTER SCHEMA public OWNER TO ${quoteIdent(names.owner)}`);
      await client.query(`SET LOCAL search_path = pg_catalog, pg_temp`);
      for (const ext of names.extensions) {
        const schema = ext.schema ?? 'public';
        if (schema !== 'public' && schema !== 'pg_catalog' && !extensionSchemas.includes(schema)) {
          await client.query(`CREATE SCHEMA ${quoteIdent(schema)} AUTHORIZATION ${quoteIdent(names.owner)}`);
          extensionSchemas.push(schema);
        }
        await client.query(
          `CREATE EXTENSION IF NOT EXISTS ${quoteIdent(ext.name)} SCHEMA ${quoteIdent(schema)}`,
        );
      }
      const login = await createRestoreLogin(client, names.restoreLogin, names.owner, changes);
      await options.record(changes);
      await client.query('COMMIT');
      return { changes, login, extensionSchemas };
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw isAppError(error) ? error : pgError(error, 'preparing the restored database (roles, extensions)');
    }
  });
}

/**
 * in_place v1: closes the live database to new connections, ends its sessions, and renames live → aside
 * and staging → live in one transaction, so the server has the old or the new database under the live
 * name at every instant. Returns how long the live name took no connections.
 */
export async function switchDatabases(
  url: string,
  names: { live: string; staging: string; aside: string },
  lockTimeoutMs: number,
): Promise<{ unavailableSeconds: number }> {
  return withPgClient(url, RESTORE_APP_NAME, async (client) => {
    const started = performance.now();
    await client.query(`ALTER DATABASE ${quoteIdent(names.live)} ALLOW_CONNECTIONS false`);
    try {
      await client.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
        [names.live],
      );
      await client.query('BEGIN');
      await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.floor(lockTimeoutMs))}`);
      await client.query(`ALTER DATABASE ${quoteIdent(names.live)} RENAME TO ${quoteIdent(names.aside)}`);
      await client.query(`ALTER DATABASE ${quoteIdent(names.staging)} RENAME TO ${quoteIdent(names.live)}`);
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      await client
        .query(`ALTER DATABASE ${quoteIdent(names.live)} ALLOW_CONNECTIONS true`)
        .catch(() => undefined);
      throw pgError(error, `switching ${names.staging} in as ${names.live}`);
    }
    const unavailableSeconds = (performance.now() - started) / 1000;
    // The copy set aside keeps its own setting; the live name opens again.
    await client.query(`ALTER DATABASE ${quoteIdent(names.aside)} ALLOW_CONNECTIONS true`);
    return { unavailableSeconds };
  });
}

/** After a crash: which side of the switch the server is on, and the live name opened again. */
export async function settleSwitch(
  url: string,
  names: { live: string; staging: string; aside: string },
): Promise<'switched' | 'not_switched'> {
  return withPgClient(url, RESTORE_APP_NAME, async (client) => {
    const has = (name: string) => exists(client, 'SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    const switched = (await has(names.aside)) && !(await has(names.staging));
    await client
      .query(`ALTER DATABASE ${quoteIdent(names.live)} ALLOW_CONNECTIONS true`)
      .catch(() => undefined);
    if (switched) {
      await client
        .query(`ALTER DATABASE ${quoteIdent(names.aside)} ALLOW_CONNECTIONS true`)
        .catch(() => undefined);
    }
    return switched ? 'switched' : 'not_switched';
  });
}
