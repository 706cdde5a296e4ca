// The SQL verify runs inside a sandbox: the platform roles a Flux dump expects before it is restored,
// and the one read-back script behind the structure, volume, sequences and integrity rungs.
import { tenantRoleOf } from '../../shared/catalog/ids.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { quoteIdent, quoteLiteral } from '../../shared/pg/conn.js';
/** Platform roles every Flux database has (their attributes are set below). */
import { PLATFORM_ROLES } from '../../shared/pg/platform-roles.js';
import { ROLE_PROBLEMS_SQL } from '../../shared/pg/restore-role.js';
import { textArray } from '../../shared/sandbox/query.js';
/** Schema the amcheck extension is installed into, apart from the restored objects. */
export const AMCHECK_SCHEMA = 'flux_verify_amcheck';

/** Every role a restore of this backup may reference: platform, tenant, and the manifest's policy roles. */
export function rolesFor(manifest: Pick<Manifest, 'projectId' | 'roles'>): string[] {
  return [...new Set([...PLATFORM_ROLES, tenantRoleOf(manifest.projectId), ...manifest.roles])];
}

/**
 * The role the archive is restored as: the tenant's own, unprivileged. Everything the restore creates is
 * owned by it and every tenant expression evaluated during the restore runs with its privileges only.
 */
export function restoreRoleOf(manifest: Pick<Manifest, 'projectId'>): string {
  return tenantRoleOf(manifest.projectId);
}

/** Pins the session's name lookup to the system catalog: no tenant object can shadow what we call. */
export const PINNED_SEARCH_PATH = 'SET search_path = pg_catalog, pg_temp';

/**
 * Our own fixed statements, as the sandbox superuser, before any of the archive runs: the roles the dump
 * expects, the restore role (LOGIN, no privilege beyond creating schemas in this database and owning
 * `public`), amcheck in a schema of its own (installed now, while no tenant object exists that its script
 * could resolve to), and for tenant exports the `auth` schema with `auth.uid()` and the extensions the
 * pooled database provides around the tenant schema. Ends by refusing a restore role with privileges.
 */
export function preRestoreSql(
  manifest: Pick<Manifest, 'projectId' | 'roles' | 'kind' | 'extensions'>,
  options: { amcheck: boolean },
): string {
  const roles = rolesFor(manifest);
  const tenantRole = tenantRoleOf(manifest.projectId);
  const restoreRole = quoteIdent(restoreRoleOf(manifest));
  const statements = [
    PINNED_SEARCH_PATH,
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
    `ALTER ROLE ${restoreRole} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS`,
    `DO $flux$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), ${quoteLiteral(restoreRoleOf(manifest))}); END $flux$`,
    `ALTER SCHEMA public OWNER TO ${restoreRole}`,
  ];
  if (options.amcheck) {
    statements.push(`DO $flux$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck') THEN
    CREATE SCHEMA ${AMCHECK_SCHEMA};
    REVOKE ALL ON SCHEMA ${AMCHECK_SCHEMA} FROM PUBLIC;
    CREATE EXTENSION amcheck SCHEMA ${AMCHECK_SCHEMA};
    GRANT USAGE ON SCHEMA ${AMCHECK_SCHEMA} TO ${restoreRole};
    GRANT EXECUTE ON FUNCTION ${AMCHECK_SCHEMA}.bt_index_check(regclass) TO ${restoreRole};
  END IF;
END $flux$`);
  }
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
  statements.push(refusePrivilegedSql(restoreRoleOf(manifest)));
  return `${statements.join(';\n')};`;
}

/** Raises when `role` has more privilege than a tenant may have (see shared/pg/restore-role.ts). */
function refusePrivilegedSql(role: string): string {
  return `DO $flux$ DECLARE problems text; BEGIN
  SELECT string_agg(q.problem, ', ') INTO problems
    FROM (${ROLE_PROBLEMS_SQL.replace('$1', quoteLiteral(role))}) q;
  IF problems IS NOT NULL THEN
    RAISE EXCEPTION 'the restore role % is privileged: %', ${quoteLiteral(role)}, problems;
  END IF;
END $flux$`;
}

/**
 * The extensions a project database's archive creates, created first by the superuser (the restore role may
 * not), each in the schema the manifest recorded: a schema other than public is created for the restore
 * role to own, and its CREATE SCHEMA entry is then left out of the restore.
 */
export function extensionsSql(
  names: readonly string[],
  manifest: Pick<Manifest, 'projectId' | 'extensions'>,
): { sql: string; schemas: string[] } {
  const restoreRole = quoteIdent(restoreRoleOf(manifest));
  const schemas = new Set<string>();
  const statements = [PINNED_SEARCH_PATH];
  for (const name of names) {
    const schema = manifest.extensions.find((e) => e.name === name)?.schema ?? 'public';
    if (schema !== 'public' && schema !== 'pg_catalog' && !schemas.has(schema)) {
      schemas.add(schema);
      statements.push(`CREATE SCHEMA ${quoteIdent(schema)} AUTHORIZATION ${restoreRole}`);
    }
    statements.push(`CREATE EXTENSION IF NOT EXISTS ${quoteIdent(name)} SCHEMA ${quoteIdent(schema)}`);
  }
  return { sql: `${statements.join(';\n')};`, schemas: [...schemas] };
}

/** After the restore, before the read-back: the restore role may count past its own tables' policies. */
export function postRestoreSql(manifest: Pick<Manifest, 'projectId'>): string {
  return `ALTER ROLE ${quoteIdent(restoreRoleOf(manifest))} BYPASSRLS`;
}

/** Which of `names` the sandbox cannot install. */
export function missingExtensionsSelect(names: readonly string[]): string {
  return `SELECT n AS name FROM unnest(${textArray(names)}) AS n
   WHERE NOT EXISTS (SELECT 1 FROM pg_available_extensions a WHERE a.name = n)`;
}

/** Everything the structure, volume, sequences and integrity rungs need, read back in one psql call. */
export interface ReadBack {
  schemas: string[];
  relations: Array<{ schema: string; name: string; kind: string }>;
  /** Exact row counts of the manifest's tables that were restored. */
  counts: Array<{ schema: string; name: string; rows: number }>;
  /** The manifest's sequences that were restored. */
  sequences: Array<{
    schema: string;
    name: string;
    lastValue: string | null;
    isCalled: boolean;
    increment: string;
  }>;
  /** null when amcheck was not asked for. */
  integrity: {
    available: boolean;
    /** Why amcheck could not be installed (it is available but CREATE EXTENSION failed). */
    error: string | null;
    indexes: Array<{ schema: string; index: string; error: string | null }>;
  } | null;
  /** Server-side seconds of each part. */
  seconds: { structure: number; volume: number; sequences: number; integrity: number };
}

export interface ReadBackInput {
  schemas: readonly string[];
  tables: ReadonlyArray<{ schema: string; name: string }>;
  sequences: ReadonlyArray<{ schema: string; name: string }>;
  amcheck: boolean;
}

/**
 * One script that reads back what the rungs compare with the manifest and prints it as one JSON document:
 * in a docker sandbox every psql is an exec round trip, so the four rungs cost one instead of six. Only
 * restored relations are counted or read (a missing one is the structure rung's finding, not an error);
 * amcheck's bt_index_check runs on every valid btree index, one subtransaction each, so one broken index
 * does not hide the others, and an amcheck that cannot be installed is reported, not raised.
 *
 * It runs as the restore role, never as the superuser: planning count(*) on a table opens its indexes,
 * which constant-folds their expressions and predicates, so tenant functions can run during any query
 * on a tenant's table. Names resolve in pg_catalog only; the role is given BYPASSRLS after the restore
 * (postRestoreSql) so a FORCE ROW LEVEL SECURITY policy cannot hide rows from the count — it bypasses
 * only the policies of its own tables, in a sandbox holding nothing else.
 */
export function readBackSql(input: ReadBackInput): string {
  const pair = (items: ReadonlyArray<{ schema: string; name: string }>) =>
    `${textArray(items.map((i) => i.schema))}, ${textArray(items.map((i) => i.name))}`;
  return `${PINNED_SEARCH_PATH};
CREATE FUNCTION pg_temp.flux_verify_read_back(
    target_schemas text[], table_schemas text[], table_names text[], seq_schemas text[], seq_names text[],
    run_amcheck boolean) RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  t timestamptz := clock_timestamp();
  secs jsonb := '{}';
  v_schemas jsonb;
  v_relations jsonb;
  v_counts jsonb := '[]';
  v_sequences jsonb := '[]';
  v_indexes jsonb := '[]';
  v_integrity jsonb := 'null';
  v_rows bigint;
  v_last text;
  v_called boolean;
  v_increment text;
  v_error text;
  v_amcheck_error text;
  r record;
BEGIN
  SELECT coalesce(jsonb_agg(ns.nspname ORDER BY ns.nspname), '[]') INTO v_schemas
    FROM pg_namespace ns WHERE ns.nspname = ANY(target_schemas);
  SELECT coalesce(jsonb_agg(jsonb_build_object('schema', q.nspname, 'name', q.relname, 'kind', q.relkind)
                            ORDER BY q.nspname, q.relname), '[]') INTO v_relations
    FROM (SELECT ns.nspname, c.relname, c.relkind::text AS relkind
            FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
           WHERE ns.nspname = ANY(target_schemas) AND c.relkind IN ('r', 'p', 'S') AND NOT c.relispartition) q;
  secs := secs || jsonb_build_object('structure', extract(epoch FROM clock_timestamp() - t));

  t := clock_timestamp();
  FOR r IN SELECT x.s, x.n FROM unnest(table_schemas, table_names) AS x(s, n)
            WHERE EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
                           WHERE ns.nspname = x.s AND c.relname = x.n AND c.relkind IN ('r', 'p')
                             AND NOT c.relispartition) LOOP
    EXECUTE format('SELECT count(*) FROM %I.%I', r.s, r.n) INTO v_rows;
    v_counts := v_counts || jsonb_build_array(jsonb_build_object('schema', r.s, 'name', r.n, 'rows', v_rows));
  END LOOP;
  secs := secs || jsonb_build_object('volume', extract(epoch FROM clock_timestamp() - t));

  t := clock_timestamp();
  FOR r IN SELECT x.s, x.n, c.oid FROM unnest(seq_schemas, seq_names) AS x(s, n)
             JOIN pg_namespace ns ON ns.nspname = x.s
             JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = x.n AND c.relkind = 'S' LOOP
    EXECUTE format('SELECT last_value::text, is_called FROM %I.%I', r.s, r.n) INTO v_last, v_called;
    SELECT seqincrement::text INTO v_increment FROM pg_sequence WHERE seqrelid = r.oid;
    v_sequences := v_sequences || jsonb_build_array(jsonb_build_object('schema', r.s, 'name', r.n,
      'lastValue', v_last, 'isCalled', v_called, 'increment', v_increment));
  END LOOP;
  secs := secs || jsonb_build_object('sequences', extract(epoch FROM clock_timestamp() - t));

  t := clock_timestamp();
  IF run_amcheck THEN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck') THEN
      v_integrity := jsonb_build_object('available', false, 'error', NULL, 'indexes', '[]'::jsonb);
    ELSE
      -- Installed before the restore (preRestoreSql), never after: an extension script run now could
      -- resolve names to the tenant's objects.
      IF NOT EXISTS (SELECT 1 FROM pg_extension e JOIN pg_namespace ns ON ns.oid = e.extnamespace
                      WHERE e.extname = 'amcheck' AND ns.nspname = '${AMCHECK_SCHEMA}') THEN
        v_amcheck_error := 'amcheck was not installed in ${AMCHECK_SCHEMA} before the restore';
      END IF;
      IF v_amcheck_error IS NULL THEN
        FOR r IN SELECT ns.nspname, c.relname, c.oid
                   FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indexrelid
                   JOIN pg_namespace ns ON ns.oid = c.relnamespace
                   JOIN pg_am am ON am.oid = c.relam
                  WHERE am.amname = 'btree' AND i.indisvalid AND c.relpersistence <> 't'
                    AND ns.nspname = ANY(target_schemas)
                  ORDER BY 1, 2 LOOP
          v_error := NULL;
          BEGIN
            EXECUTE 'SELECT ${AMCHECK_SCHEMA}.bt_index_check($1)' USING r.oid;
          EXCEPTION WHEN OTHERS THEN
            v_error := SQLERRM;
          END;
          v_indexes := v_indexes || jsonb_build_array(
            jsonb_build_object('schema', r.nspname, 'index', r.relname, 'error', v_error));
        END LOOP;
      END IF;
      v_integrity := jsonb_build_object('available', true, 'error', v_amcheck_error, 'indexes', v_indexes);
    END IF;
  END IF;
  secs := secs || jsonb_build_object('integrity', extract(epoch FROM clock_timestamp() - t));

  RETURN jsonb_build_object('schemas', v_schemas, 'relations', v_relations, 'counts', v_counts,
    'sequences', v_sequences, 'integrity', v_integrity, 'seconds', secs);
END $fn$;
SELECT pg_temp.flux_verify_read_back(${textArray(input.schemas)}, ${pair(input.tables)}, ${pair(input.sequences)}, ${input.amcheck});`;
}
