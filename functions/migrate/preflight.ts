// Preflight of a migration, run in this process: the client tools on *this* PATH with their majors, the
// source schema with its inventory (and exact counts for a dry run), the target's state. Read-only on
// both servers: the source in a READ ONLY snapshot, the target through catalog queries.
import type pg from 'pg';
import { AppError, isAppError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { parsePgUrl, pgError, withPgClient } from '../../shared/pg/conn.js';
import { authenticatorMemberships, stubRoles } from '../../shared/pg/platform-roles.js';
import {
  countInventory,
  guardTenantReads,
  type Inventory,
  readInventory,
  type SequenceValue,
  serverFacts,
  type TableCount,
} from '../../shared/pg/snapshot.js';
import type { Project } from '../../shared/registry.js';
import { missingToolMessage, requireTool, type ToolInfo } from '../../shared/tools.js';
import type { Ends } from './ends.js';
import {
  MIGRATE_TOOLS,
  type MigrateTool,
  majorOf,
  neededMajor,
  type Problem,
  type ServerIdentity,
  type TargetFacts,
  targetProblems,
  toolVersionProblems,
} from './plan.js';

export const MIGRATE_APP_NAME = 'flux-ops-migrate';

/** The application_name of a run's pg_dump on the source: how a cancel finds its queries there. */
export function dumpAppNameOf(runId: string): string {
  return `${MIGRATE_APP_NAME}-dump-${runId.toLowerCase()}`;
}

/** The application_name of a run's pg_restore in the target: how a rollback finds its sessions. */
export function restoreAppNameOf(runId: string): string {
  return `${MIGRATE_APP_NAME}-restore-${runId.toLowerCase()}`;
}

export interface SourceFacts {
  server: ServerIdentity & { serverVersion: string };
  schemaExists: boolean;
  inventory?: Inventory;
  counts?: { tables: TableCount[]; sequences: SequenceValue[] };
}

async function identity(client: pg.Client, url: { host: string; port: number; database: string }) {
  const facts = await serverFacts(client);
  return {
    host: url.host,
    port: url.port,
    database: url.database,
    systemIdentifier: facts.systemIdentifier,
    serverVersionNum: facts.serverVersionNum,
    serverVersion: facts.serverVersion,
  };
}

/** Server facts, whether the tenant schema exists, its inventory and (dry run) exact counts in one snapshot. */
export async function inspectSource(
  url: string,
  schema: string,
  options: { counts: boolean; lockTimeoutMs: number; statementTimeoutMs: number; what: string },
): Promise<SourceFacts> {
  return withPgClient(
    url,
    MIGRATE_APP_NAME,
    async (client) => {
      try {
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY');
        await client.query(`SET LOCAL lock_timeout = ${Math.max(0, Math.floor(options.lockTimeoutMs))}`);
        await client.query(
          `SET LOCAL statement_timeout = ${Math.max(0, Math.floor(options.statementTimeoutMs))}`,
        );
        await guardTenantReads(client);
        // serverFacts rolls back to this savepoint when pg_control_system() is not allowed.
        await client.query('SAVEPOINT before_identity');
        const server = await identity(client, parsePgUrl(url));
        const exists = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
        const facts: SourceFacts = { server, schemaExists: (exists.rowCount ?? 0) > 0 };
        if (facts.schemaExists) {
          facts.inventory = await readInventory(client, { kind: 'tenant_export', schema });
          if (options.counts) facts.counts = await countInventory(client, facts.inventory);
        }
        await client.query('COMMIT');
        return facts;
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw isAppError(error) ? error : pgError(error, `reading the source (${options.what})`);
      }
    },
    `connecting to the source (${options.what})`,
  );
}

/** The target's state as far as a migration cares: identity, privileges, schema, roles, auth, extensions. */
export async function inspectTarget(
  url: string,
  names: { schema: string; tenantRole: string; policyRoles: readonly string[] },
  what: string,
): Promise<TargetFacts & { server: { serverVersion: string }; memberships: Record<string, boolean> }> {
  return withPgClient(
    url,
    MIGRATE_APP_NAME,
    async (client) => {
      try {
        await client.query('BEGIN READ ONLY');
        await client.query('SAVEPOINT before_identity');
        const server = await identity(client, parsePgUrl(url));
        const user = await client.query<{
          name: string;
          superuser: boolean;
          createrole: boolean;
          cancreate: boolean;
        }>(
          `SELECT current_user AS name, r.rolsuper AS superuser, r.rolcreaterole AS createrole,
                  has_database_privilege(current_database(), 'CREATE') AS cancreate
             FROM pg_roles r WHERE r.rolname = current_user`,
        );
        const schema = await client.query<{ relations: string }>(
          `SELECT count(c.oid)::text AS relations FROM pg_namespace n
             LEFT JOIN pg_class c ON c.relnamespace = n.oid WHERE n.nspname = $1 GROUP BY n.oid`,
          [names.schema],
        );
        const wanted = stubRoles(names.tenantRole, names.policyRoles).map((r) => r.name);
        const present = await client.query<{ rolname: string }>(
          'SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])',
          [wanted],
        );
        const presentSet = new Set(present.rows.map((r) => r.rolname));
        const members = await client.query<{ role: string }>(
          `SELECT r.rolname AS role FROM pg_auth_members m
             JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
            WHERE u.rolname = 'authenticator'`,
        );
        const memberSet = new Set(members.rows.map((r) => r.role));
        const auth = await client.query<{ schema: boolean; uid: string | null; returns: string | null }>(
          `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'auth') AS schema,
                  to_regprocedure('auth.uid()')::text AS uid,
                  (SELECT format_type(p.prorettype, NULL) FROM pg_proc p
                    WHERE p.oid = to_regprocedure('auth.uid()')) AS returns`,
        );
        const ext = await client.query<{ name: string; installed: boolean }>(
          `SELECT name, installed_version IS NOT NULL AS installed FROM pg_available_extensions ORDER BY 1`,
        );
        await client.query('COMMIT');
        const u = user.rows[0]!;
        const a = auth.rows[0]!;
        return {
          server,
          user: { name: u.name, superuser: u.superuser, createrole: u.createrole },
          canCreateSchema: u.superuser || u.cancreate,
          schema: { exists: schema.rows.length > 0, relations: Number(schema.rows[0]?.relations ?? 0) },
          roles: Object.fromEntries(wanted.map((r) => [r, presentSet.has(r)])),
          memberships: Object.fromEntries(
            authenticatorMemberships(names.tenantRole).map((r) => [r, memberSet.has(r)]),
          ),
          auth: { schema: a.schema, uid: a.uid !== null, uidReturns: a.returns ?? undefined },
          extensions: {
            installed: ext.rows.filter((e) => e.installed).map((e) => e.name),
            available: ext.rows.map((e) => e.name),
          },
        };
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw isAppError(error) ? error : pgError(error, `reading the target (${what})`);
      }
    },
    `connecting to the target (${what})`,
  );
}

export type Tools = Record<MigrateTool, ToolInfo>;

/**
 * Finds the tools on PATH of this process and checks their majors against the servers. The first problem
 * is thrown as a 503 (tool_missing / tool_version) whose message names the major the image must carry.
 */
export async function requireMigrateTools(
  pathEnv: string | undefined,
  tools: readonly MigrateTool[],
  majors: { source?: number | undefined; target?: number | undefined },
): Promise<Partial<Tools>> {
  const n = neededMajor(majors.source, majors.target);
  const found: Partial<Tools> = {};
  for (const tool of tools) {
    try {
      found[tool] = await requireTool(tool, pathEnv, n);
    } catch (error) {
      if (isAppError(error) && error.code === 'tool_missing') {
        throw new AppError('tool_missing', `migrate preflight: ${missingToolMessage(tool, n)}`, {
          cause: error,
          details: {
            tool,
            ...(n ? { neededMajor: n } : {}),
            searched: (pathEnv ?? '').split(':').filter(Boolean),
          },
        });
      }
      throw error;
    }
  }
  const [problem] = toolVersionProblems(found, majors.source, majors.target);
  if (problem) {
    const info = found[problem.tool];
    throw new AppError('tool_version', `migrate preflight: ${problem.message}`, {
      details: {
        tool: problem.tool,
        toolVersion: info?.version,
        ...(majors.source ? { sourceMajor: majors.source } : {}),
        ...(majors.target ? { targetMajor: majors.target } : {}),
        ...(n ? { neededMajor: n } : {}),
      },
    });
  }
  return found;
}

export function toolSummary(
  tools: Partial<Tools>,
): Record<string, { path: string; version: string; major: number }> {
  const out: Record<string, { path: string; version: string; major: number }> = {};
  for (const tool of MIGRATE_TOOLS) {
    const info = tools[tool];
    if (info) out[tool] = { path: info.path, version: info.version, major: info.major };
  }
  return out;
}

/** A short reachability probe for /readyz: server version, nothing else. */
export async function probeServer(
  url: string,
  what: string,
): Promise<{ serverVersion: string; major: number }> {
  return withPgClient(
    url,
    MIGRATE_APP_NAME,
    async (client) => {
      const r = await client.query<{ v: string; n: string }>(
        `SELECT current_setting('server_version') AS v, current_setting('server_version_num') AS n`,
      );
      return { serverVersion: r.rows[0]!.v.split(' ')[0]!, major: majorOf(Number(r.rows[0]!.n)) };
    },
    `connecting to ${what}`,
  );
}

export interface Preflight {
  source: SourceFacts;
  target?: Awaited<ReturnType<typeof inspectTarget>>;
  targetError?: AppError;
  tools: Partial<Tools>;
  problems: Problem[];
}

/**
 * The whole preflight of a run or a dry run: both servers inspected, the tools found for their majors,
 * and what in the target refuses the move. A missing source schema throws; a target that cannot be read
 * is kept as `targetError` (the dry run reports it, the run refuses with it).
 */
export async function runPreflight(
  rt: Pick<Runtime, 'config' | 'env'>,
  project: Project,
  ends: Ends,
  mode: { counts: boolean; dumpOnly: boolean; timeoutMs: number; inspectTarget: boolean },
): Promise<Preflight> {
  const what = `cluster ${ends.cluster}`;
  let source: SourceFacts | undefined;
  let sourceError: unknown;
  try {
    source = await inspectSource(ends.sourceUrl, ends.schema, {
      counts: mode.counts,
      lockTimeoutMs: rt.config.FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS,
      statementTimeoutMs: mode.timeoutMs,
      what,
    });
  } catch (error) {
    sourceError = error;
  }
  let target: Preflight['target'];
  let targetError: AppError | undefined;
  try {
    if (!mode.inspectTarget) throw new AppError('not_found', 'a dump-only run does not use the target');
    target = await inspectTarget(
      ends.targetUrl,
      { schema: ends.schema, tenantRole: ends.tenantRole, policyRoles: source?.inventory?.roles ?? [] },
      `dedicated database of ${project.slug}`,
    );
  } catch (error) {
    targetError = isAppError(error) ? error : pgError(error, 'reading the target');
  }
  // Tools first: a missing pg_dump is the failure an old, un-rebuilt image shows, whatever else is wrong.
  const sourceMajor = source ? Math.floor(source.server.serverVersionNum / 10000) : undefined;
  const targetMajor = target ? Math.floor(target.server.serverVersionNum / 10000) : undefined;
  const tools = await requireMigrateTools(rt.env.PATH, mode.dumpOnly ? ['pg_dump'] : MIGRATE_TOOLS, {
    source: sourceMajor,
    target: mode.dumpOnly ? undefined : targetMajor,
  });
  if (!source) throw sourceError;
  if (!source.schemaExists) {
    throw new AppError(
      'not_found',
      `schema ${ends.schema} of ${project.slug} does not exist on ${what}: the registry's cluster for this project does not hold its data`,
    );
  }
  const problems = target
    ? targetProblems(source.server, target, {
        schema: ends.schema,
        tenantRole: ends.tenantRole,
        policyRoles: source.inventory?.roles ?? [],
      })
    : [];
  return {
    source,
    tools,
    problems,
    ...(target ? { target } : {}),
    ...(targetError ? { targetError } : {}),
  };
}

/** A tool the preflight found, for a phase that needs it (a dump-only preflight looks for pg_dump only). */
export function requireToolInfo(tools: Partial<Tools>, name: keyof Tools): ToolInfo {
  const info = tools[name];
  if (!info) throw new AppError('tool_missing', `${name} is not on PATH of this process`);
  return info;
}
