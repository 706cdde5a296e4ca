// Snapshot-consistent dumps: one REPEATABLE READ transaction exports its snapshot, pg_dump runs with
// --snapshot=<id>, and the same transaction records exact row counts and sequence values while pg_dump
// streams, so the artifact and the recorded facts describe the same instant.
import { rm, stat } from 'node:fs/promises';
import { execa } from 'execa';
import type pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { adoptPendingFile, createTempFileFor, type PendingFile } from '../atomic.js';
import { AppError, isAppError } from '../errors.js';
import type { ChildPids } from '../kit/child-pids.js';
import { requireMajorAtLeast, requireRelationKindProtection, requireTool, type ToolInfo } from '../tools.js';
import { readArchiveSequences } from './archive.js';
import { connectPgClient, libpqEnv, parsePgUrl, pgError, quoteIdent } from './conn.js';
import type { IdleSessions } from './idle-sessions.js';

export interface DumpScope {
  kind: 'project_db' | 'tenant_export';
  /** tenant_export: the one schema dumped. */
  schema?: string;
}

export interface TableCount {
  schema: string;
  name: string;
  rows: number;
}
export interface SequenceValue {
  schema: string;
  name: string;
  lastValue: string | null;
  isCalled: boolean;
}

export interface Inventory {
  schemas: string[];
  tables: Array<{ schema: string; name: string }>;
  sequences: Array<{ schema: string; name: string }>;
  extensions: Array<{ name: string; version: string; schema: string }>;
  roles: string[];
}

export interface SnapshotFacts {
  snapshotId: string;
  takenAt: string;
  serverVersion: string;
  serverVersionNum: number;
  systemIdentifier: string;
  database: string;
  host: string;
  port: number;
  schemas: string[];
  tables: TableCount[];
  sequences: SequenceValue[];
  extensions: Array<{ name: string; version: string; schema: string }>;
  roles: string[];
}

const SYSTEM_SCHEMA_FILTER = `n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'`;
const NOT_EXTENSION_MEMBER = `NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`;

/** What is in scope: schemas, tables (ordinary and partitioned), sequences, extensions, policy roles. */
export async function readInventory(client: pg.Client, scope: DumpScope): Promise<Inventory> {
  const schemaFilter = scope.kind === 'tenant_export' ? 'n.nspname = $1' : SYSTEM_SCHEMA_FILTER;
  const params = scope.kind === 'tenant_export' ? [scope.schema] : [];
  const schemas = await client.query<{ nspname: string }>(
    `SELECT n.nspname FROM pg_namespace n WHERE ${schemaFilter}
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
     ORDER BY 1`,
    params,
  );
  const rels = await client.query<{ schema: string; name: string; relkind: string }>(
    `SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p', 'S') AND ${schemaFilter} AND ${NOT_EXTENSION_MEMBER}
        AND NOT c.relispartition
      ORDER BY 1, 2`,
    params,
  );
  const extensions = await client.query<{ name: string; version: string; schema: string }>(
    `SELECT e.extname AS name, e.extversion AS version, n.nspname AS schema
       FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
      WHERE e.extname <> 'plpgsql' ORDER BY 1`,
  );
  // Every role the restore may name: in policies, and as grantees of the objects' grants other than their
  // owners (a migration restores the grants; the owner is whoever restores them).
  const roles = await client.query<{ role: string }>(
    `SELECT role FROM (
       SELECT unnest(p.roles)::text AS role FROM pg_policies p
        WHERE ${scope.kind === 'tenant_export' ? 'p.schemaname = $1' : "p.schemaname NOT IN ('pg_catalog', 'information_schema')"}
       UNION
       SELECT r.rolname::text FROM (
           SELECT (aclexplode(c.relacl)).grantee, c.relowner AS owner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relacl IS NOT NULL AND ${schemaFilter}
           UNION ALL SELECT (aclexplode(n.nspacl)).grantee, n.nspowner FROM pg_namespace n WHERE n.nspacl IS NOT NULL AND ${schemaFilter}
           UNION ALL SELECT (aclexplode(p.proacl)).grantee, p.proowner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.proacl IS NOT NULL AND ${schemaFilter}
           UNION ALL SELECT (aclexplode(t.typacl)).grantee, t.typowner FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE t.typacl IS NOT NULL AND ${schemaFilter}
         ) g JOIN pg_roles r ON r.oid = g.grantee WHERE g.grantee <> g.owner
     ) q WHERE role NOT LIKE 'pg\\_%' ORDER BY 1`,
    params,
  );
  return {
    schemas: schemas.rows.map((r) => r.nspname),
    tables: rels.rows.filter((r) => r.relkind !== 'S').map(({ schema, name }) => ({ schema, name })),
    sequences: rels.rows.filter((r) => r.relkind === 'S').map(({ schema, name }) => ({ schema, name })),
    extensions: extensions.rows,
    roles: roles.rows.map((r) => r.role).filter((r) => r !== 'public'),
  };
}

/**
 * Exact row counts and sequence values, read in the client's current snapshot, without planning a query
 * on a tenant's table: planning one opens its indexes, and opening an index constant-folds its expressions
 * and predicate — an IMMUTABLE tenant function called with constant arguments runs right there, as
 * whoever plans (extended statistics and partition constraints are folded alike). `COPY <table> TO STDOUT`,
 * the path pg_dump reads data by, plans nothing: each table with storage in the inheritance tree (itself,
 * children, partitions) is copied, one narrow column of it, and the rows are counted as lines (COPY's
 * text format escapes newlines inside values). The sum is what count(*) on the table returns.
 */
export async function countInventory(
  client: pg.Client,
  inventory: Inventory,
): Promise<{ tables: TableCount[]; sequences: SequenceValue[] }> {
  const tables: TableCount[] = [];
  const storage = await client.query<{ i: number; schema: string; name: string; col: string | null }>(
    `WITH RECURSIVE wanted(i, s, n) AS (SELECT * FROM unnest($1::int[], $2::text[], $3::text[])),
     tree(i, oid) AS (
       SELECT w.i, c.oid FROM wanted w JOIN pg_namespace ns ON ns.nspname = w.s
         JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n
       UNION SELECT t.i, h.inhrelid FROM tree t JOIN pg_inherits h ON h.inhparent = t.oid)
     SELECT t.i, ns.nspname AS schema, c.relname AS name,
            (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum LIMIT 1) AS col
       FROM tree t JOIN pg_class c ON c.oid = t.oid JOIN pg_namespace ns ON ns.oid = c.relnamespace
      WHERE c.relkind = 'r' ORDER BY t.i`,
    [
      inventory.tables.map((_, i) => i),
      inventory.tables.map((t) => t.schema),
      inventory.tables.map((t) => t.name),
    ],
  );
  const rows = inventory.tables.map(() => 0);
  for (const rel of storage.rows) {
    const columns = rel.col === null ? '' : ` (${quoteIdent(rel.col)})`;
    rows[rel.i] =
      (rows[rel.i] ?? 0) +
      (await copyLines(client, `COPY ${quoteIdent(rel.schema)}.${quoteIdent(rel.name)}${columns} TO STDOUT`));
  }
  for (const [i, t] of inventory.tables.entries()) tables.push({ ...t, rows: rows[i] ?? 0 });
  const sequences: SequenceValue[] = [];
  for (const s of inventory.sequences) {
    const r = await client.query<{ last_value: string; is_called: boolean }>(
      `SELECT last_value::text, is_called FROM ${quoteIdent(s.schema)}.${quoteIdent(s.name)}`,
    );
    sequences.push({ ...s, lastValue: r.rows[0]!.last_value, isCalled: r.rows[0]!.is_called });
  }
  return { tables, sequences };
}

const NEWLINE = 0x0a;

/** Runs a `COPY … TO STDOUT` (text format) and returns how many lines (rows) it sent. */
async function copyLines(client: pg.Client, sql: string): Promise<number> {
  const stream = client.query(copyTo(sql));
  let lines = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    for (let at = chunk.indexOf(NEWLINE); at !== -1; at = chunk.indexOf(NEWLINE, at + 1)) lines += 1;
  }
  return lines;
}

export async function serverFacts(
  client: pg.Client,
): Promise<{ serverVersion: string; serverVersionNum: number; systemIdentifier: string }> {
  const v = await client.query<{ v: string; n: string }>(
    `SELECT current_setting('server_version') AS v, current_setting('server_version_num') AS n`,
  );
  // pg_control_system() may be revoked for non-superusers; identity then rests on host and port. Checked
  // up front because a failing query would abort the transaction that holds the snapshot.
  const s = await client.query<{ id: string | null }>(
    `SELECT CASE WHEN has_function_privilege('pg_control_system()', 'execute')
                 THEN (SELECT system_identifier::text FROM pg_control_system()) END AS id`,
  );
  const systemIdentifier = s.rows[0]?.id ?? 'unavailable';
  return {
    serverVersion: v.rows[0]!.v.split(' ')[0]!,
    serverVersionNum: Number(v.rows[0]!.n),
    systemIdentifier,
  };
}

export interface SnapshotDumpOptions {
  url: string;
  scope: DumpScope;
  /** PATH pg_dump is found on (this process's PATH). */
  pathEnv: string | undefined;
  compression: number;
  lockWaitTimeoutMs: number;
  timeoutMs: number;
  /** The variable that sets `timeoutMs`, named in the timeout error. */
  timeoutVariable?: string;
  signal?: AbortSignal;
  applicationName?: string;
  /**
   * The source's dump slots: this dump waits for one of `slots` session advisory locks keyed by `key` on
   * the source server, so every process dumping from that source (dump functions, migrations) together
   * stays within the limit; a crashed holder's lock goes with its connection.
   */
  admission?: { key: string; slots: number; onWaiting?: () => void };
  /** Keep the objects' grants in the archive (a migration re-applies them; backups leave them out). */
  includeAcl?: boolean;
  /**
   * Where the archive goes once complete. pg_dump writes a temp file beside it (`--file`: a seekable
   * archive gets data offsets in its TOC, so pg_restore can restore in parallel and read single entries
   * without a full scan); the caller commits it.
   */
  target: string;
  /** Explains a failure to create or fill the temp file (the caller knows which variable names the dir). */
  fsError: (error: unknown, path: string) => AppError;
  /** Bytes written so far, about twice a second. */
  onProgress?: (bytes: number) => void;
  /** Where pg_dump's pid is recorded while it runs, so a restart after a kill -9 of this process reaps it. */
  children?: ChildPids;
  /** Called once pg_dump exited 0, before anything else (a fault point: the server may die right here). */
  onPgDumpFinished?: () => void | Promise<void>;
  /**
   * Where the snapshot session is kept after a clean end for the next dump from the same URL, and taken
   * from (see idle-sessions.ts); without it each dump connects and ends its own.
   */
  idle?: IdleSessions;
}

export interface SnapshotDumpResult {
  /** The complete, fsynced dump, not yet renamed into place: the caller commits it. */
  file: PendingFile;
  facts: SnapshotFacts;
  pgDump: { version: string; major: number; flags: string[] };
  seconds: { total: number; counts: number };
  /**
   * Settles when the snapshot's session has ended (a backend takes about as long to end as to start) or
   * has been kept for the next dump with its source dump slot given back: the caller goes on with the file
   * meanwhile.
   */
  ended: Promise<void>;
}

export function pgDumpFlags(
  scope: DumpScope,
  compression: number,
  lockWaitTimeoutMs: number,
  includeAcl = false,
): string[] {
  return [
    '--format=custom',
    `--compress=${compression}`,
    '--no-owner',
    ...(includeAcl ? [] : ['--no-acl']),
    `--lock-wait-timeout=${lockWaitTimeoutMs}ms`,
    ...(scope.kind === 'tenant_export' ? [`--schema=${scope.schema}`] : []),
  ];
}

function stderrTail(stderr: unknown): string {
  const text = typeof stderr === 'string' ? stderr : '';
  return text.trim().split('\n').slice(-5).join(' | ').slice(0, 1000);
}

/** Checks that pg_dump is on PATH, new enough for the server behind `url`, and protects itself from tenants. */
export async function preflightPgDump(pathEnv: string | undefined, serverMajor: number): Promise<ToolInfo> {
  const tool = await requireTool('pg_dump', pathEnv, serverMajor);
  requireMajorAtLeast(tool, serverMajor);
  requireRelationKindProtection(tool);
  return tool;
}

/**
 * Settings of every session that reads a tenant's relations with our privileges (the snapshot's counts,
 * a target's validation): names resolve in pg_catalog only, a view or foreign table where a table was is
 * an error instead of running its query, and row security is off, so a policy is never evaluated (for a
 * role it would apply to, the count fails rather than silently miss rows). `restrict_nonsystem_relation_kind`
 * exists on servers from the August 2024 minors on (see tools.ts); returns whether this server has it.
 * Local to the caller's transaction.
 */
export async function guardTenantReads(client: pg.ClientBase): Promise<boolean> {
  await client.query(
    `SELECT pg_catalog.set_config('search_path', 'pg_catalog', true),
            pg_catalog.set_config('row_security', 'off', true)`,
  );
  const restricted = await client.query(
    `SELECT pg_catalog.set_config(name, 'view, foreign-table', true) FROM pg_catalog.pg_settings
      WHERE name = 'restrict_nonsystem_relation_kind'`,
  );
  return (restricted.rowCount ?? 0) > 0;
}

/** Refuses a server that cannot protect pg_dump (and us) from a relation swapped for a view. */
export function requireServerRelationKindProtection(
  hasProtection: boolean,
  serverVersion: string,
  where: string,
): void {
  if (hasProtection) return;
  throw new AppError(
    'dependency_unavailable',
    `${where} runs PostgreSQL ${serverVersion}, which lacks restrict_nonsystem_relation_kind (CVE-2024-7348): a tenant could ` +
      'swap a table for a view during the dump and run its code as the dumping role; upgrade the server to the current minor ' +
      'release of its major (August 2024 or later), then back up again',
    { details: { serverVersion } },
  );
}

export async function runSnapshotDump(options: SnapshotDumpOptions): Promise<SnapshotDumpResult> {
  const started = performance.now();
  const target = parsePgUrl(options.url);
  const appName = options.applicationName ?? 'flux-ops-dump';
  const sessionKey = `${appName}\n${options.url}`;
  let client: pg.Client;
  try {
    client = (await keptSession(options.idle, sessionKey)) ?? (await connectPgClient(target, appName));
  } catch (error) {
    throw pgError(error, `connecting to ${target.host}:${target.port}/${target.database}`);
  }
  let backendPid: number | undefined;
  // The temp archive from its creation on, until it is handed to the caller: every failure removes it.
  let tmp: string | undefined;
  let file: PendingFile | undefined;
  try {
    if (options.admission) await takeDumpSlot(client, options.admission, options.timeoutMs, options.signal);
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY');
    await client.query(`SET LOCAL lock_timeout = ${Math.max(0, Math.floor(options.lockWaitTimeoutMs))}`);
    // The counting queries share the dump's deadline; a cancelled dump also cancels them (below).
    await client.query(`SET LOCAL statement_timeout = ${Math.max(0, Math.floor(options.timeoutMs))}`);
    backendPid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const isProtected = await guardTenantReads(client);
    const server = await serverFacts(client);
    const serverMajor = Math.floor(server.serverVersionNum / 10000);
    const tool = await preflightPgDump(options.pathEnv, serverMajor);
    requireServerRelationKindProtection(isProtected, server.serverVersion, `${target.host}:${target.port}`);
    if (options.scope.kind === 'tenant_export') {
      const exists = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [
        options.scope.schema,
      ]);
      if (exists.rowCount === 0) {
        throw new AppError(
          'not_found',
          `schema ${options.scope.schema} does not exist on the cluster that should hold this tenant`,
        );
      }
    }
    const snap = await client.query<{ id: string }>('SELECT pg_export_snapshot() AS id');
    const snapshotId = snap.rows[0]!.id;
    const takenAt = new Date().toISOString();

    const flags = pgDumpFlags(
      options.scope,
      options.compression,
      options.lockWaitTimeoutMs,
      options.includeAcl,
    );
    try {
      tmp = await createTempFileFor(options.target);
    } catch (error) {
      throw options.fsError(error, options.target);
    }
    const archive = tmp;
    const child = execa(tool.path, [...flags, `--snapshot=${snapshotId}`, `--file=${archive}`], {
      env: { ...libpqEnv(target, appName), PATH: options.pathEnv ?? '' },
      extendEnv: false,
      stdin: 'ignore',
      stdout: 'ignore',
      stderr: 'pipe',
      timeout: options.timeoutMs,
      ...(options.signal ? { cancelSignal: options.signal } : {}),
      forceKillAfterDelay: 5_000,
      reject: false,
    });
    const childPid = child.pid;
    if (childPid !== undefined) await options.children?.record(childPid, 'pg_dump');
    const progress = options.onProgress
      ? setInterval(() => {
          stat(archive).then(
            (s) => options.onProgress?.(s.size),
            () => undefined,
          );
        }, 500)
      : undefined;
    // What is in scope and its counts are read in the exporting transaction while pg_dump writes: the
    // same snapshot, and no catalog reads of ours before pg_dump starts.
    const countsStarted = performance.now();
    const countsPromise = readInventory(client, options.scope).then(async (inventory) => ({
      inventory,
      ...(await countInventory(client, inventory)),
      seconds: (performance.now() - countsStarted) / 1000,
    }));
    countsPromise.catch(() => undefined);
    const result = await child.finally(() => clearInterval(progress));
    if (childPid !== undefined) await options.children?.forget(childPid);
    if (result.failed) {
      if (result.isCanceled)
        throw new AppError('shutting_down', 'the dump was cancelled; its partial file was removed');
      if (result.timedOut) {
        throw new AppError(
          'timeout',
          `pg_dump ran longer than ${options.timeoutVariable ?? 'FLUX_DUMP_TIMEOUT_MS'} (${options.timeoutMs} ms) and was killed; its partial file was removed`,
        );
      }
      const stderr = typeof result.stderr === 'string' ? result.stderr : '';
      const errno = /No space left on device/i.test(stderr)
        ? 'ENOSPC'
        : /Permission denied|Read-only file system/i.test(stderr)
          ? 'EACCES'
          : undefined;
      if (errno)
        throw options.fsError(Object.assign(new Error(stderrTail(stderr)), { code: errno }), options.target);
      const how = result.signal ? `was killed by ${result.signal}` : `exited ${result.exitCode}`;
      throw new AppError(
        'dump_failed',
        `pg_dump ${how}: ${stderrTail(stderr) || 'no error output'}; the partial file was removed`,
        { details: { exitCode: result.exitCode ?? null, signal: result.signal ?? null } },
      );
    }
    await options.onPgDumpFinished?.();
    try {
      file = await adoptPendingFile(options.target, archive, options.signal);
    } catch (error) {
      throw options.fsError(error, options.target);
    }
    const counts = await countsPromise;
    // Sequence values as the archive holds them (see archive.ts): exact for the restore comparison.
    let sequences = counts.sequences;
    if (sequences.length > 0) {
      const pgRestore = await requireTool('pg_restore', options.pathEnv, serverMajor);
      const fromArchive = await readArchiveSequences(pgRestore.path, file.tmp, options.pathEnv);
      const qualified = await client.query<{ q: string }>(
        `SELECT format('%I.%I', s.schema, s.name) AS q FROM unnest($1::text[], $2::text[]) AS s(schema, name)`,
        [sequences.map((x) => x.schema), sequences.map((x) => x.name)],
      );
      sequences = sequences.map((seq, i) => {
        const archived = fromArchive.find((a) => a.qualified === qualified.rows[i]?.q);
        return archived ? { ...seq, lastValue: archived.lastValue, isCalled: archived.isCalled } : seq;
      });
    }
    // A session kept for the next dump gives its dump slot back here; an ended one with its connection.
    await client.query(options.idle ? 'COMMIT; SELECT pg_catalog.pg_advisory_unlock_all()' : 'COMMIT');
    // Handed over: from here the caller commits or discards it.
    tmp = undefined;
    const { inventory } = counts;
    return {
      file,
      facts: {
        snapshotId,
        takenAt,
        ...server,
        database: target.database,
        host: target.host,
        port: target.port,
        schemas: inventory.schemas,
        tables: counts.tables,
        sequences,
        extensions: inventory.extensions,
        roles: inventory.roles,
      },
      pgDump: { version: tool.version, major: tool.major, flags },
      seconds: { total: (performance.now() - started) / 1000, counts: counts.seconds },
      ended: options.idle
        ? Promise.resolve(options.idle.give(sessionKey, client))
        : client.end().catch(() => undefined),
    };
  } catch (error) {
    // Every failure once the temp archive exists (pg_dump failing, the counts, the sequences, a server
    // gone before COMMIT) removes it: the caller only commits what is returned.
    if (tmp !== undefined) {
      await file?.discard().catch(() => undefined);
      await rm(tmp, { force: true }).catch(() => undefined);
    }
    // A query still counting in this transaction would hold the ROLLBACK (and the caller) until it ends.
    if (backendPid !== undefined) await cancelBackend(target, appName, backendPid);
    await client.query('ROLLBACK').catch(() => undefined);
    await client.end().catch(() => undefined);
    if (isAppError(error)) throw error;
    throw pgError(error, `dumping ${target.host}:${target.port}/${target.database}`);
  }
}

/**
 * A kept session for `key` that still answers, or undefined. One that does not (its server restarted
 * while it was kept) is ended and the next is tried.
 */
async function keptSession(idle: IdleSessions | undefined, key: string): Promise<pg.Client | undefined> {
  for (let client = idle?.take(key); client; client = idle?.take(key)) {
    try {
      await client.query('SELECT 1');
      return client;
    } catch {
      await client.end().catch(() => undefined);
    }
  }
  return undefined;
}

/** Waits at most this long between two tries for a dump slot. */
const SLOT_RETRY_MAX_MS = 2_000;

/**
 * Takes one of the source's dump slots (session advisory locks `(hashtext(key), slot)`), waiting with
 * backoff while all are held; held until the client ends.
 */
async function takeDumpSlot(
  client: pg.Client,
  admission: { key: string; slots: number; onWaiting?: () => void },
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let waited = false;
  for (let delay = 50; ; delay = Math.min(SLOT_RETRY_MAX_MS, delay * 2)) {
    for (let slot = 0; slot < admission.slots; slot++) {
      const r = await client.query<{ ok: boolean }>(
        'SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext($1), $2) AS ok',
        [`flux-ops:dumps:${admission.key}`, slot],
      );
      if (r.rows[0]?.ok) return slot;
    }
    if (!waited) {
      waited = true;
      admission.onWaiting?.();
    }
    if (signal?.aborted)
      throw new AppError('shutting_down', 'the dump was cancelled while it waited for a slot');
    if (Date.now() + delay > deadline) {
      throw new AppError(
        'timeout',
        `all ${admission.slots} dump slot(s) of ${admission.key} stayed taken (maxConcurrentDumps, shared by every process dumping from it)`,
        { retryAfterSeconds: 60 },
      );
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, delay);
      signal?.addEventListener(
        'abort',
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
    });
  }
}

/** Cancels whatever `pid` is running, from a second connection (best effort). */
async function cancelBackend(
  target: ReturnType<typeof parsePgUrl>,
  appName: string,
  pid: number,
): Promise<void> {
  let other: pg.Client | undefined;
  try {
    other = await connectPgClient(target, `${appName}-cancel`);
    await other.query('SELECT pg_cancel_backend($1)', [pid]);
  } catch {
    // The server may be gone (that may be why we are here); ending the client is all that is left.
  } finally {
    await other?.end().catch(() => undefined);
  }
}
