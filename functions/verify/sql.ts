// The SQL verify runs inside a sandbox: the platform roles a Flux dump expects before it is restored,
// and the read-back queries behind the structure, volume, sequences and integrity rungs.
import { tenantRoleOf } from '../../shared/catalog/ids.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { quoteIdent } from '../../shared/pg/conn.js';
import { quoteLiteral, textArray } from '../../shared/sandbox/query.js';

/** Platform roles every Flux database has (their attributes are set below). */
export const PLATFORM_ROLES = ['anon', 'authenticated', 'service_role', 'authenticator'] as const;
/** Schema the amcheck extension is installed into, apart from the restored objects. */
export const AMCHECK_SCHEMA = 'flux_verify_amcheck';

/** Every role a restore of this backup may reference: platform, tenant, and the manifest's policy roles. */
export function rolesFor(manifest: Pick<Manifest, 'projectId' | 'roles'>): string[] {
  return [...new Set([...PLATFORM_ROLES, tenantRoleOf(manifest.projectId), ...manifest.roles])];
}

/**
 * Roles (and for tenant exports the `auth` schema with `auth.uid()`) the restore needs to exist first; a
 * tenant export holds one schema, while its policies refer to platform roles and auth.uid().
 */
export function preRestoreSql(
  manifest: Pick<Manifest, 'projectId' | 'roles' | 'kind' | 'extensions'>,
): string {
  const roles = rolesFor(manifest);
  const tenantRole = tenantRoleOf(manifest.projectId);
  const statements = [
    `DO $flux$ DECLARE r text; BEGIN
  FOREACH r IN ARRAY ${textArray(roles)} LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END $flux$`,
    'ALTER ROLE service_role BYPASSRLS',
    'ALTER ROLE authenticator NOINHERIT LOGIN',
    `GRANT anon, authenticated, service_role, ${quoteIdent(tenantRole)} TO authenticator`,
  ];
  if (manifest.kind === 'tenant_export') {
    // The pooled database provides these around the tenant schema; the export does not carry them.
    statements.push(
      'CREATE SCHEMA IF NOT EXISTS auth',
      `CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
  AS $fn$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $fn$`,
      `GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, ${quoteIdent(tenantRole)}`,
      ...manifest.extensions.map((e) => `CREATE EXTENSION IF NOT EXISTS ${quoteIdent(e.name)}`),
    );
  }
  return `${statements.join(';\n')};`;
}

/** Which of `names` the sandbox cannot install. */
export function missingExtensionsSelect(names: readonly string[]): string {
  return `SELECT n AS name FROM unnest(${textArray(names)}) AS n
   WHERE NOT EXISTS (SELECT 1 FROM pg_available_extensions a WHERE a.name = n)`;
}

export function schemasSelect(schemas: readonly string[]): string {
  return `SELECT nspname AS schema FROM pg_namespace WHERE nspname = ANY(${textArray(schemas)}) ORDER BY 1`;
}

/** Tables (ordinary, partitioned roots) and sequences of the given schemas. */
export function relationsSelect(schemas: readonly string[]): string {
  return `SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = ANY(${textArray(schemas)}) AND c.relkind IN ('r', 'p', 'S') AND NOT c.relispartition
   ORDER BY 1, 2`;
}

const relation = (t: { schema: string; name: string }) => `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;

/** Exact counts, one UNION ALL (the tables must exist: callers pass only restored ones). */
export function countsSelect(tables: ReadonlyArray<{ schema: string; name: string }>): string {
  return tables
    .map(
      (t) =>
        `SELECT ${quoteLiteral(t.schema)} AS schema, ${quoteLiteral(t.name)} AS name, count(*)::bigint AS rows FROM ${relation(t)}`,
    )
    .join('\nUNION ALL\n');
}

export function sequencesSelect(sequences: ReadonlyArray<{ schema: string; name: string }>): string {
  return sequences
    .map(
      (s) =>
        `SELECT ${quoteLiteral(s.schema)} AS schema, ${quoteLiteral(s.name)} AS name, last_value::text AS "lastValue", is_called AS "isCalled",
       (SELECT seqincrement::text FROM pg_sequence WHERE seqrelid = ${quoteLiteral(relation(s))}::regclass) AS increment
  FROM ${relation(s)}`,
    )
    .join('\nUNION ALL\n');
}

/** amcheck available in this sandbox? */
export const AMCHECK_AVAILABLE_SELECT = `SELECT count(*)::int AS n FROM pg_available_extensions WHERE name = 'amcheck'`;

/**
 * bt_index_check on every valid btree index of the schemas, one row per index with its error (or null),
 * so one broken index does not hide the others. Printed as one JSON document.
 */
export function integrityScript(schemas: readonly string[]): string {
  return `CREATE SCHEMA IF NOT EXISTS ${AMCHECK_SCHEMA};
CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA ${AMCHECK_SCHEMA};
CREATE FUNCTION pg_temp.flux_check_indexes(target_schemas text[])
  RETURNS TABLE (idx_schema text, idx_name text, idx_error text) LANGUAGE plpgsql AS $fn$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT n.nspname, c.relname, c.oid
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_am am ON am.oid = c.relam
     WHERE am.amname = 'btree' AND i.indisvalid AND c.relpersistence <> 't'
       AND n.nspname = ANY(target_schemas)
     ORDER BY 1, 2
  LOOP
    idx_schema := r.nspname; idx_name := r.relname; idx_error := NULL;
    BEGIN
      PERFORM ${AMCHECK_SCHEMA}.bt_index_check(r.oid);
    EXCEPTION WHEN OTHERS THEN
      idx_error := SQLERRM;
    END;
    RETURN NEXT;
  END LOOP;
END $fn$;
SELECT coalesce(jsonb_agg(jsonb_build_object('schema', idx_schema, 'index', idx_name, 'error', idx_error)), '[]'::jsonb)
  FROM pg_temp.flux_check_indexes(${textArray(schemas)});`;
}
