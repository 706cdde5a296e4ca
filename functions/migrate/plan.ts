// Pure rules of a migration: which client tools can do it, what in the target refuses it, and how the
// target is compared with the snapshot. Plain functions over data, unit-tested beside this file.
import { stubRoles } from '../../shared/pg/platform-roles.js';
import type { SequenceValue, TableCount } from '../../shared/pg/snapshot.js';
import { hasRelationKindProtection, type ToolInfo } from '../../shared/tools.js';

export const MIGRATE_TOOLS = ['pg_dump', 'pg_restore', 'psql'] as const;
export type MigrateTool = (typeof MIGRATE_TOOLS)[number];

export const PHASES = ['preflight', 'gate', 'dump', 'prepare', 'restore', 'validate'] as const;
export type Phase = (typeof PHASES)[number];

/** The rows of all the tables counted. */
export function totalRows(tables: readonly { rows: number }[]): number {
  return tables.reduce((n, t) => n + t.rows, 0);
}

/** The client-tool major an image should carry: new enough for both servers. */
export function neededMajor(sourceMajor?: number, targetMajor?: number): number | undefined {
  const majors = [sourceMajor, targetMajor].filter((m): m is number => typeof m === 'number' && m > 0);
  return majors.length > 0 ? Math.max(...majors) : undefined;
}

export interface ToolProblem {
  tool: MigrateTool;
  message: string;
}

/**
 * Version rules for the tools found: pg_dump must be at least the source's major (it refuses newer
 * servers), pg_restore at least pg_dump's (archives of a newer pg_dump are unreadable to it) and at least
 * the source's, psql at least the source's (the operator's hand tool for the same servers).
 */
export function toolVersionProblems(
  tools: Partial<Record<MigrateTool, Pick<ToolInfo, 'version' | 'major'>>>,
  sourceMajor?: number,
  targetMajor?: number,
): ToolProblem[] {
  const problems: ToolProblem[] = [];
  const n = neededMajor(sourceMajor, targetMajor);
  const fix = n
    ? `the image must include PostgreSQL client tools of major ${n} (postgresql-client-${n}) and be rebuilt; a restart of the old container is not enough`
    : 'the image must include newer PostgreSQL client tools and be rebuilt; a restart is not enough';
  for (const tool of MIGRATE_TOOLS) {
    const info = tools[tool];
    if (!info || sourceMajor === undefined) continue;
    if (info.major < sourceMajor) {
      problems.push({
        tool,
        message: `${tool} ${info.version} on PATH is older than the source server (major ${sourceMajor}): ${fix}`,
      });
    }
  }
  const dump = tools.pg_dump;
  const restore = tools.pg_restore;
  if (dump && !hasRelationKindProtection(dump.version)) {
    problems.push({
      tool: 'pg_dump',
      message: `pg_dump ${dump.version} lacks restrict_nonsystem_relation_kind (CVE-2024-7348: a tenant could swap a table for a view mid-dump and run its code as the dumping role): ${fix}`,
    });
  }
  if (dump && restore && restore.major < dump.major) {
    problems.push({
      tool: 'pg_restore',
      message: `pg_restore ${restore.version} cannot read archives written by pg_dump ${dump.version}: ${fix}`,
    });
  }
  return problems;
}

export interface ServerIdentity {
  host: string;
  port: number;
  database: string;
  systemIdentifier: string;
  serverVersionNum: number;
}

export interface TargetFacts {
  server: ServerIdentity;
  user: { name: string; superuser: boolean; createrole: boolean };
  canCreateSchema: boolean;
  schema: { exists: boolean; relations: number };
  /** Role name → present in the target cluster. */
  roles: Record<string, boolean>;
  auth: { schema: boolean; uid: boolean; uidReturns?: string | undefined };
  extensions: { installed: string[]; available: string[] };
}

export interface Problem {
  code:
    | 'same_database'
    | 'target_older'
    | 'target_schema_exists'
    | 'cannot_create_roles'
    | 'cannot_create_bypassrls'
    | 'cannot_create_schema';
  message: string;
}

export function majorOf(serverVersionNum: number): number {
  return Math.floor(serverVersionNum / 10000);
}

export function isSameDatabase(a: ServerIdentity, b: ServerIdentity): boolean {
  if (a.database !== b.database) return false;
  if (a.systemIdentifier !== 'unavailable' && a.systemIdentifier === b.systemIdentifier) return true;
  return a.host === b.host && a.port === b.port;
}

/** What in the target refuses a real run (a dry run lists them; a real run answers 412 with them). */
export function targetProblems(
  source: ServerIdentity,
  target: TargetFacts,
  names: { schema: string; tenantRole: string; policyRoles: readonly string[] },
): Problem[] {
  const problems: Problem[] = [];
  if (isSameDatabase(source, target.server)) {
    problems.push({
      code: 'same_database',
      message: `the dedicatedUrl points at the source database ${source.database} itself; set it to the tenant's dedicated database`,
    });
  }
  const sourceMajor = majorOf(source.serverVersionNum);
  const targetMajor = majorOf(target.server.serverVersionNum);
  if (targetMajor < sourceMajor) {
    problems.push({
      code: 'target_older',
      message: `the target server is PostgreSQL ${targetMajor}, older than the source (${sourceMajor}); a dump cannot be restored into an older major: upgrade the dedicated server`,
    });
  }
  if (target.schema.exists) {
    problems.push({
      code: 'target_schema_exists',
      message:
        `the target database already has schema ${names.schema} (${target.schema.relations} relations): an earlier migration may have completed. ` +
        `Inspect it; if it is a leftover, drop it (DROP SCHEMA ${names.schema} CASCADE) and retry`,
    });
  }
  const missing = stubRoles(names.tenantRole, names.policyRoles).filter((r) => !target.roles[r.name]);
  if (missing.length > 0 && !target.user.superuser && !target.user.createrole) {
    problems.push({
      code: 'cannot_create_roles',
      message: `roles ${missing.map((r) => r.name).join(', ')} are missing in the target and ${target.user.name} has no CREATEROLE: create them or connect as a role that may`,
    });
  } else if (missing.some((r) => r.needsSuperuser) && !target.user.superuser) {
    problems.push({
      code: 'cannot_create_bypassrls',
      message: `service_role (BYPASSRLS) is missing in the target and only a superuser can create it: run CREATE ROLE service_role NOLOGIN BYPASSRLS as a superuser`,
    });
  }
  if (!target.canCreateSchema) {
    problems.push({
      code: 'cannot_create_schema',
      message: `${target.user.name} may not create schemas in the target database: GRANT CREATE ON DATABASE ${target.server.database} TO ${target.user.name}`,
    });
  }
  return problems;
}

export interface Mismatch {
  kind: 'missing_table' | 'unexpected_table' | 'rows' | 'missing_sequence' | 'sequence';
  name: string;
  expected?: string;
  actual?: string;
}

const qualified = (o: { schema: string; name: string }) => `${o.schema}.${o.name}`;

/** Every table's row count and every sequence's value in the target against the snapshot's. */
export function compareWithSnapshot(
  expected: { tables: readonly TableCount[]; sequences: readonly SequenceValue[] },
  actual: { tables: readonly TableCount[]; sequences: readonly SequenceValue[] },
): Mismatch[] {
  const mismatches: Mismatch[] = [];
  const actualTables = new Map(actual.tables.map((t) => [qualified(t), t]));
  for (const t of expected.tables) {
    const found = actualTables.get(qualified(t));
    if (!found) mismatches.push({ kind: 'missing_table', name: qualified(t) });
    else if (found.rows !== t.rows) {
      mismatches.push({
        kind: 'rows',
        name: qualified(t),
        expected: String(t.rows),
        actual: String(found.rows),
      });
    }
  }
  const expectedTables = new Set(expected.tables.map(qualified));
  for (const t of actual.tables) {
    if (!expectedTables.has(qualified(t))) mismatches.push({ kind: 'unexpected_table', name: qualified(t) });
  }
  const actualSequences = new Map(actual.sequences.map((s) => [qualified(s), s]));
  for (const s of expected.sequences) {
    const found = actualSequences.get(qualified(s));
    if (!found) mismatches.push({ kind: 'missing_sequence', name: qualified(s) });
    else if (found.lastValue !== s.lastValue || found.isCalled !== s.isCalled) {
      mismatches.push({
        kind: 'sequence',
        name: qualified(s),
        expected: `${s.lastValue} (is_called ${s.isCalled})`,
        actual: `${found.lastValue} (is_called ${found.isCalled})`,
      });
    }
  }
  return mismatches;
}

export function describeMismatches(mismatches: readonly Mismatch[], limit = 5): string {
  const text: Record<Mismatch['kind'], (m: Mismatch) => string> = {
    missing_table: (m) => `table ${m.name} is missing`,
    unexpected_table: (m) => `table ${m.name} is not in the snapshot`,
    rows: (m) => `${m.name} has ${m.actual} rows, the snapshot ${m.expected}`,
    missing_sequence: (m) => `sequence ${m.name} is missing`,
    sequence: (m) => `sequence ${m.name} is at ${m.actual}, the snapshot at ${m.expected}`,
  };
  const shown = mismatches.slice(0, limit).map((m) => text[m.kind](m));
  const more = mismatches.length > limit ? ` (and ${mismatches.length - limit} more)` : '';
  return `${shown.join('; ')}${more}`;
}

/** The steps a real run takes, for the dry run's plan. */
export function planSteps(options: { dumpOnly: boolean; lockWrites: boolean; schema: string }): string[] {
  const started = options.lockWrites
    ? 'emit flux.migrate.started with lockWrites (the gateway drains writes)'
    : 'emit flux.migrate.started';
  if (options.dumpOnly) {
    return [
      'check the backup gate (restorable newest backup, younger than maxAge, unless skipBackupCheck)',
      started,
      `dump schema ${options.schema} in one snapshot into a catalogued tenant_export backup (replicated and verifiable like any other)`,
    ];
  }
  return [
    'check the backup gate (restorable newest backup, younger than maxAge, unless skipBackupCheck)',
    started,
    `dump schema ${options.schema} in one snapshot (exact row counts and sequence values recorded) to a temporary file`,
    'create the missing role stubs, schema auth with auth.uid() if missing, and the tenant schema in the target',
    'pg_restore --no-owner --no-acl --exit-on-error into the target',
    "validate every table's row count and every sequence's value against the snapshot",
    'on any failure: drop exactly what this run created in the target; the source is never modified',
  ];
}
