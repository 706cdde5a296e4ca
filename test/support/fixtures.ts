/**
 * Realistic Flux data for integration tests: platform roles, v2 tenant schemas (`t_<shortId>_api`) and
 * v1 dedicated project databases, plus bulk filler for benchmarks.
 *
 * All returned counts / sequence values are read back from the database after seeding, so tests can
 * compare them with what a restore or migration produced.
 */
import type pg from 'pg';
import type { QueryResultRow } from 'pg';
import { PgCluster, quoteIdent, quoteLiteral } from './pg.js';

/** A cluster (short-lived connection per statement, to `db`) or an already connected client. */
export type SqlTarget = PgCluster | pg.ClientBase;

async function run<R extends QueryResultRow = QueryResultRow>(
  target: SqlTarget,
  sql: string,
  params: unknown[] = [],
  db = 'postgres',
): Promise<R[]> {
  if (target instanceof PgCluster) return target.query<R>(sql, params, db);
  return (await target.query<R>(sql, params)).rows;
}

/** Runs `fn` with one connection to `db` of the cluster (or the given client as is). */
async function withClient<T>(
  target: SqlTarget,
  db: string,
  fn: (client: pg.ClientBase) => Promise<T>,
): Promise<T> {
  if (!(target instanceof PgCluster)) return fn(target);
  const client = await target.connect(db);
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

const pgCode = (err: unknown): string | undefined => (err as { code?: string } | undefined)?.code;

/**
 * Runs a statement that may collide with a concurrent identical one (CREATE ROLE, GRANT, ALTER ROLE):
 * duplicates count as success, "tuple concurrently updated" is retried.
 */
async function runTolerant(target: SqlTarget, sql: string, db: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await run(target, sql, [], db);
      return;
    } catch (err) {
      const code = pgCode(err);
      // 42710 duplicate_object, 23505 unique_violation (two CREATE ROLE racing on pg_authid's index).
      if (code === '42710' || code === '23505') return;
      const retryable = code === '40001' || code === '40P01' || /concurrently/i.test(String(err));
      if (!retryable || attempt >= 10) throw err;
      await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 80));
    }
  }
}

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/** First 12 hex chars of the project UUID without dashes (lowercase). Throws on a non-UUID. */
export function shortIdOf(projectId: string): string {
  if (!UUID_RE.test(projectId)) throw new Error(`not a project UUID: ${projectId}`);
  return projectId.replaceAll('-', '').toLowerCase().slice(0, 12);
}

/** `t_<shortId>_api`: the tenant's schema in the shared v2 database. */
export function tenantSchemaOf(projectId: string): string {
  return `t_${shortIdOf(projectId)}_api`;
}

/** `t_<shortId>_role`: the tenant's NOLOGIN role. */
export function tenantRoleOf(projectId: string): string {
  return `t_${shortIdOf(projectId)}_role`;
}

/**
 * Creates (if missing) the platform roles `anon`, `authenticated` (NOLOGIN), `service_role` (NOLOGIN
 * BYPASSRLS) and `authenticator` (LOGIN NOINHERIT, member of the other three). Roles are cluster-wide, so
 * `db` only selects where to connect. Idempotent and safe against concurrent callers.
 * `authenticatorPassword` (optional) lets tests log in as `authenticator`.
 */
export async function createFluxRoles(
  target: SqlTarget,
  db = 'postgres',
  opts: { authenticatorPassword?: string } = {},
): Promise<void> {
  const statements = [
    'CREATE ROLE anon NOLOGIN',
    'CREATE ROLE authenticated NOLOGIN',
    'CREATE ROLE service_role NOLOGIN BYPASSRLS',
    'CREATE ROLE authenticator NOINHERIT LOGIN',
    // Make attributes right even if a role pre-existed with other ones.
    'ALTER ROLE service_role BYPASSRLS',
    'ALTER ROLE authenticator NOINHERIT LOGIN',
    'GRANT anon, authenticated, service_role TO authenticator',
  ];
  if (opts.authenticatorPassword !== undefined) {
    statements.push(`ALTER ROLE authenticator PASSWORD ${quoteLiteral(opts.authenticatorPassword)}`);
  }
  for (const sql of statements) await runTolerant(target, sql, db);
}

/**
 * Creates schema `auth` and `auth.uid()` (uuid from `request.jwt.claim.sub`) in the connected database if
 * missing, and grants USAGE on it to the platform roles and `extraGrantees`. Serialized with an advisory lock so concurrent seeders of the same database don't collide.
 */
async function ensureAuthSchema(client: pg.ClientBase, extraGrantees: string[] = []): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('flux-test-auth-schema'))`);
    await client.query('CREATE SCHEMA IF NOT EXISTS auth');
    const { rows } = await client.query<{ f: string | null }>(
      `SELECT to_regprocedure('auth.uid()')::text AS f`,
    );
    if (!rows[0]?.f) {
      await client.query(`
        CREATE FUNCTION auth.uid() RETURNS uuid
          LANGUAGE sql STABLE
          AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$`);
    }
    // GRANTs on the same schema race ("tuple concurrently updated"), so they happen under the lock too.
    const grantees = ['anon', 'authenticated', 'service_role', ...extraGrantees.map(quoteIdent)];
    await client.query(`GRANT USAGE ON SCHEMA auth TO ${grantees.join(', ')}`);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

/** Row counts of every ordinary table in `schema`, keyed by table name. */
async function countTables(client: pg.ClientBase, schema: string): Promise<Record<string, number>> {
  const { rows } = await client.query<{ relname: string }>(
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname`,
    [schema],
  );
  const counts: Record<string, number> = {};
  for (const { relname } of rows) {
    const res = await client.query<{ n: string }>(
      `SELECT count(*) AS n FROM ${quoteIdent(schema)}.${quoteIdent(relname)}`,
    );
    counts[relname] = Number(res.rows[0]?.n);
  }
  return counts;
}

/** `last_value` of every sequence in `schema` (null if never used), keyed by sequence name. */
async function readSequences(client: pg.ClientBase, schema: string): Promise<Record<string, number | null>> {
  const { rows } = await client.query<{ sequencename: string; last_value: string | null }>(
    `SELECT sequencename, last_value::text FROM pg_sequences WHERE schemaname = $1 ORDER BY sequencename`,
    [schema],
  );
  const out: Record<string, number | null> = {};
  for (const r of rows) out[r.sequencename] = r.last_value === null ? null : Number(r.last_value);
  return out;
}

export interface SeedTenantOptions {
  /** Database (must exist), e.g. the shared v2 tenant database. */
  db: string;
  /** Project UUID; determines schema and role names. */
  projectId: string;
  /** Rows inserted into each of `customers` and `orders`. Default 1000. Fast even for 1e6. */
  rows?: number;
  /** Create role + schema (with grants) but no tables, sequences or views. */
  empty?: boolean;
}

export interface SeededTenant {
  projectId: string;
  shortId: string;
  /** `t_<shortId>_api`. */
  schema: string;
  /** `t_<shortId>_role`. */
  role: string;
  /** `count(*)` of every table in the schema: `{ customers, orders }`, or `{}` when `empty`. */
  tables: Record<string, number>;
  /** `last_value` of every sequence in the schema (`customers_id_seq`, `orders_id_seq`, `invoice_seq`). */
  sequences: Record<string, number | null>;
}

/**
 * Seeds one v2 tenant into `db`: platform roles, role `t_<shortId>_role`, schema `auth` + `auth.uid()`, and
 * schema `t_<shortId>_api` with tables `customers` / `orders` (FK, RLS policy `orders_owner` for the tenant
 * role and `authenticated` using `auth.uid()`), sequence `invoice_seq` (advanced 7 times from 1000), view
 * `customer_totals`, and grants to the tenant role. Data is random (md5/random, poorly compressible).
 * Fails if the tenant schema already exists.
 */
/**
 * An empty tenant whose one table `slow` restores slowly: every restored row passes a CHECK that sleeps
 * 50 ms (not while seeding), so a restore of `rows` rows takes rows × 50 ms: time to act mid-restore.
 */
export async function seedSlowRestoreTenant(
  cluster: PgCluster,
  opts: { db: string; projectId: string; rows: number },
): Promise<void> {
  await seedTenant(cluster, { db: opts.db, projectId: opts.projectId, empty: true });
  const s = quoteIdent(tenantSchemaOf(opts.projectId));
  await cluster.query(
    `CREATE FUNCTION ${s}.slow_check(v int) RETURNS boolean LANGUAGE plpgsql AS $$
     BEGIN
       IF current_setting('flux.fast', true) = 'on' THEN RETURN true; END IF;
       PERFORM pg_sleep(0.05);
       RETURN true;
     END $$;
     CREATE TABLE ${s}.slow (v int CHECK (${s}.slow_check(v)));
     SET flux.fast = 'on';
     INSERT INTO ${s}.slow SELECT generate_series(1, ${Number(opts.rows)});`,
    [],
    opts.db,
  );
}

export async function seedTenant(cluster: PgCluster, opts: SeedTenantOptions): Promise<SeededTenant> {
  const rows = opts.rows ?? 1000;
  if (!Number.isInteger(rows) || rows < 0) throw new Error(`rows must be a non-negative integer: ${rows}`);
  const shortId = shortIdOf(opts.projectId);
  const schema = tenantSchemaOf(opts.projectId);
  const role = tenantRoleOf(opts.projectId);
  const s = quoteIdent(schema);
  const r = quoteIdent(role);

  await createFluxRoles(cluster, opts.db);
  await runTolerant(cluster, `CREATE ROLE ${r} NOLOGIN`, opts.db);
  await runTolerant(cluster, `GRANT ${r} TO authenticator`, opts.db);

  return withClient(cluster, opts.db, async (client) => {
    await ensureAuthSchema(client, [role]);
    await client.query('BEGIN');
    try {
      await client.query(`CREATE SCHEMA ${s}`);
      await client.query(`GRANT USAGE ON SCHEMA ${s} TO ${r}`);
      if (!opts.empty) {
        await client.query(`
          CREATE TABLE ${s}.customers (
            id bigserial PRIMARY KEY,
            email text NOT NULL,
            name text,
            created_at timestamptz NOT NULL DEFAULT now()
          );
          CREATE TABLE ${s}.orders (
            id bigserial PRIMARY KEY,
            customer_id bigint NOT NULL,
            amount numeric(12, 2) NOT NULL,
            note text,
            owner_id uuid,
            created_at timestamptz NOT NULL DEFAULT now()
          );
          CREATE SEQUENCE ${s}.invoice_seq START 1000;
          SELECT nextval('${schema}.invoice_seq') FROM generate_series(1, 7);
          CREATE VIEW ${s}.customer_totals AS
            SELECT c.id, c.email, count(o.id) AS order_count, coalesce(sum(o.amount), 0) AS total
              FROM ${s}.customers c LEFT JOIN ${s}.orders o ON o.customer_id = c.id
             GROUP BY c.id, c.email;
          ALTER TABLE ${s}.orders ENABLE ROW LEVEL SECURITY;
          CREATE POLICY orders_owner ON ${s}.orders FOR ALL TO ${r}, authenticated
            USING (owner_id = auth.uid()) WITH CHECK (owner_id = auth.uid());
          GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${s} TO ${r};
          GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ${s} TO ${r};
          GRANT SELECT ON ${s}.customer_totals TO authenticated;
        `);
        if (rows > 0) {
          await client.query(
            `INSERT INTO ${s}.customers (email, name, created_at)
             SELECT 'user' || g || '.' || substr(h, 1, 10) || '@example.test',
                    initcap(substr(h, 11, 6)) || ' ' || initcap(substr(h, 17, 9)),
                    now() - random() * interval '365 days'
               FROM generate_series(1, $1::int) AS g
               CROSS JOIN LATERAL (SELECT md5(g::text || random()::text) AS h) AS x`,
            [rows],
          );
          // customers were just created in this transaction, so their ids are exactly 1..rows.
          await client.query(
            `INSERT INTO ${s}.orders (customer_id, amount, note, owner_id)
             SELECT 1 + (g - 1) % $1::int,
                    round((random() * 10000)::numeric, 2),
                    h1 || ' ' || h2,
                    h2::uuid
               FROM generate_series(1, $1::int) AS g
               CROSS JOIN LATERAL (SELECT md5(g::text || random()::text) AS h1, md5(random()::text || g::text) AS h2) AS x`,
            [rows],
          );
        }
        // Constraints and indexes after the bulk insert: validating/building them once is far faster.
        await client.query(`
          SET LOCAL maintenance_work_mem = '256MB';
          ALTER TABLE ${s}.customers ADD CONSTRAINT customers_email_key UNIQUE (email);
          ALTER TABLE ${s}.orders ADD CONSTRAINT orders_customer_id_fkey
            FOREIGN KEY (customer_id) REFERENCES ${s}.customers (id);
          CREATE INDEX orders_customer_id_idx ON ${s}.orders (customer_id);
        `);
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
    return {
      projectId: opts.projectId,
      shortId,
      schema,
      role,
      tables: await countTables(client, schema),
      sequences: await readSequences(client, schema),
    };
  });
}

export interface SeededProjectDb {
  db: string;
  /** `count(*)` of every table in `public`: `{ todos, users }`. */
  tables: Record<string, number>;
  /** `last_value` of every sequence in `public` (`todos_id_seq`, `ticket_seq`). */
  sequences: Record<string, number | null>;
}

/**
 * Seeds a v1 dedicated project database `db` (created if missing): platform roles, `auth.uid()`, and in
 * `public`: `users` (uuid pk), `todos` (FK to users, RLS for `authenticated` via `auth.uid()`), sequence
 * `ticket_seq` (advanced 3 times from 500), view `open_todos`, grants to anon/authenticated/service_role.
 * `rows` (default 1000) rows in each of `users` and `todos`. Fails if the tables already exist.
 */
export async function seedProjectDb(
  cluster: PgCluster,
  opts: { db: string; rows?: number },
): Promise<SeededProjectDb> {
  const rows = opts.rows ?? 1000;
  if (!Number.isInteger(rows) || rows < 0) throw new Error(`rows must be a non-negative integer: ${rows}`);
  await cluster.createDatabase(opts.db);
  await createFluxRoles(cluster, opts.db);
  return withClient(cluster, opts.db, async (client) => {
    await ensureAuthSchema(client);
    await client.query('BEGIN');
    try {
      await client.query(`
        CREATE TABLE public.users (
          id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
          email text NOT NULL UNIQUE,
          display_name text,
          created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE public.todos (
          id bigserial PRIMARY KEY,
          user_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
          title text NOT NULL,
          done boolean NOT NULL DEFAULT false,
          created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX todos_user_id_idx ON public.todos (user_id);
        CREATE SEQUENCE public.ticket_seq START 500;
        SELECT nextval('public.ticket_seq') FROM generate_series(1, 3);
        CREATE VIEW public.open_todos AS
          SELECT t.id, t.title, u.email FROM public.todos t JOIN public.users u ON u.id = t.user_id WHERE NOT t.done;
        ALTER TABLE public.todos ENABLE ROW LEVEL SECURITY;
        CREATE POLICY todos_owner ON public.todos FOR ALL TO authenticated
          USING (user_id = auth.uid()) WITH CHECK (user_id = auth.uid());
        GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
        GRANT SELECT ON public.open_todos TO anon;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO authenticated, service_role;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO authenticated, service_role;
      `);
      if (rows > 0) {
        await client.query(
          `INSERT INTO public.users (email, display_name)
           SELECT 'member' || g || '.' || substr(md5(random()::text), 1, 10) || '@example.test',
                  initcap(substr(md5(random()::text), 1, 12))
             FROM generate_series(1, $1::int) AS g`,
          [rows],
        );
        await client.query(
          `INSERT INTO public.todos (user_id, title, done)
           SELECT id, 'todo ' || md5(random()::text) || ' ' || md5(random()::text), random() < 0.3
             FROM public.users`,
        );
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
    return {
      db: opts.db,
      tables: await countTables(client, 'public'),
      sequences: await readSequences(client, 'public'),
    };
  });
}

export interface BulkDataOptions {
  db: string;
  /** Created if missing. */
  schema: string;
  /** Target `pg_total_relation_size` of the table (heap + indexes + toast); filled until reached. */
  megabytes: number;
  /** Table name. Default `bulk_data`. Created if missing, appended to if it exists. */
  table?: string;
}

/**
 * Fills `<schema>.<table>` (id bigserial pk, payload text of 192 random hex chars, n bigint, created_at) in
 * batches until its total relation size reaches about `megabytes` MB (overshoot < one batch, max ~32 MB).
 * Returns the final row count and size in bytes.
 */
export async function generateBulkData(
  cluster: PgCluster,
  opts: BulkDataOptions,
): Promise<{ schema: string; table: string; rows: number; bytes: number }> {
  const table = opts.table ?? 'bulk_data';
  const qualified = `${quoteIdent(opts.schema)}.${quoteIdent(table)}`;
  const target = Math.round(opts.megabytes * 1024 * 1024);
  return withClient(cluster, opts.db, async (client) => {
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(opts.schema)}`);
    await client.query(`
      CREATE TABLE IF NOT EXISTS ${qualified} (
        id bigserial PRIMARY KEY,
        payload text NOT NULL,
        n bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
    const size = async () => {
      const res = await client.query<{ b: string }>('SELECT pg_total_relation_size($1::regclass) AS b', [
        qualified,
      ]);
      return Number(res.rows[0]?.b);
    };
    // ~290 bytes per row on disk (tuple + pk index entry); measured per batch to adapt.
    let bytesPerRow = 290;
    let bytes = await size();
    while (bytes < target) {
      const batch = Math.max(1000, Math.min(120_000, Math.ceil((target - bytes) / bytesPerRow)));
      await client.query(
        `INSERT INTO ${qualified} (payload, n)
         SELECT md5(random()::text) || md5(random()::text) || md5(random()::text)
                || md5(random()::text) || md5(random()::text) || md5(random()::text),
                (random() * 9e15)::bigint
           FROM generate_series(1, $1::int)`,
        [batch],
      );
      const next = await size();
      if (next > bytes) bytesPerRow = Math.max(50, (next - bytes) / batch);
      bytes = next;
    }
    const count = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${qualified}`);
    return { schema: opts.schema, table, rows: Number(count.rows[0]?.n), bytes };
  });
}
