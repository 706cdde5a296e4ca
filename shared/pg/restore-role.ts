// The role a tenant's archive is restored as. Restoring runs the tenant's code (CHECK constraints,
// generated columns, index expressions, materialized views…) with the privileges of the restoring
// session, so it must be a role with no more privilege than the tenant: not superuser, no BYPASSRLS, no
// membership in the predefined roles that reach the server's files or programs or every table. Checked
// before every restore, in the database it restores into.
import type pg from 'pg';
import { AppError } from '../errors.js';

/** Predefined roles whose membership would let tenant code out of its schema. */
export const PRIVILEGED_ROLES = [
  'pg_execute_server_program',
  'pg_read_server_files',
  'pg_write_server_files',
  'pg_read_all_data',
  'pg_write_all_data',
  'pg_signal_backend',
] as const;

/**
 * One row per reason `$1` may not restore a tenant's archive (none: it may). `pg_has_role(…, 'MEMBER')`
 * follows memberships through other roles. Only roles that exist on this server are asked about.
 */
export const ROLE_PROBLEMS_SQL = `SELECT p.problem FROM pg_catalog.pg_roles r,
  LATERAL (
    SELECT 'superuser' AS problem WHERE r.rolsuper
    UNION ALL SELECT 'BYPASSRLS' WHERE r.rolbypassrls
    UNION ALL SELECT 'REPLICATION' WHERE r.rolreplication
    UNION ALL SELECT 'CREATEROLE' WHERE r.rolcreaterole
    UNION ALL SELECT 'member of ' || g.rolname FROM pg_catalog.pg_roles g
     WHERE g.rolname = ANY (ARRAY['${PRIVILEGED_ROLES.join("', '")}'])
       AND pg_catalog.pg_has_role(r.oid, g.oid, 'MEMBER')
  ) p
 WHERE r.rolname = $1`;

export function privilegedRoleError(role: string, problems: readonly string[], where: string): AppError {
  return new AppError(
    'precondition_failed',
    `role ${role} would run the tenant's code during the restore into ${where}, but it has more privilege than a tenant ` +
      `(${problems.join(', ')}): nothing was restored; revoke that from the role (ALTER ROLE … NOSUPERUSER NOBYPASSRLS, REVOKE … FROM …)`,
    { details: { role, problems: [...problems] } },
  );
}

/** Throws `precondition_failed` when `role` has more privilege than a tenant may have. */
export async function assertUnprivileged(client: pg.ClientBase, role: string, where: string): Promise<void> {
  const result = await client.query<{ problem: string }>(ROLE_PROBLEMS_SQL, [role]);
  if (result.rows.length > 0) {
    throw privilegedRoleError(
      role,
      result.rows.map((r) => r.problem),
      where,
    );
  }
}

/** At most this much of the text a restore printed goes into a finding (it is the tenant's). */
const TENANT_TEXT_MAX = 2000;

/**
 * Text the restore printed is the tenant's: its objects' names, its functions' RAISE messages. It informs
 * the operator, bounded, with control characters flattened and marked as quoted; it never decides an outcome.
 */
export function tenantText(text: string, max = TENANT_TEXT_MAX): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is removed here.
  const flat = text.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, ' ');
  return `«${flat.length > max ? `${flat.slice(0, max)}…` : flat}»`;
}
