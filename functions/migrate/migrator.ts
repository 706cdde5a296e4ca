// Pooled → dedicated migrations: the dry-run plan, and the real run in phases — preflight, backup gate,
// lease, started event, snapshot-consistent dump, target preparation, restore, validation — with a
// rollback that drops exactly what the run created in the target. The source is only ever read.
// A run record under FLUX_STATE_DIR lets a restarted process roll back a run a crash interrupted.
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, writeJsonAtomic } from '../../shared/atomic.js';
import { GATE_ARTIFACT_PROOF } from '../../shared/catalog/catalog.js';
import { destructiveGate } from '../../shared/catalog/freshness.js';
import { newBackupId } from '../../shared/catalog/ids.js';
import { AppError, ERROR_TABLE, errnoOf, fsWriteError, isAppError } from '../../shared/errors.js';
import { createChildPids } from '../../shared/kit/child-pids.js';
import { createJobRunner } from '../../shared/kit/jobs.js';
import { requestBackup } from '../../shared/kit/peer.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { parsePgUrl, pgError, withPgClient } from '../../shared/pg/conn.js';
import { takeSessionLease } from '../../shared/pg/lease.js';
import { runSnapshotDump } from '../../shared/pg/snapshot.js';
import {
  describeChanges,
  dropRestoreLogin,
  hasChanges,
  prepareTarget,
  type RestoreRunner,
  type RollbackResult,
  readTargetCounts,
  restoreDump,
  rollbackTarget,
  type TargetChanges,
} from '../../shared/pg/target.js';
import {
  clusterNameOf,
  dumpAdmissionOf,
  type Project,
  resolveUrl,
  sourceOf,
  tenantRoleOf,
} from '../../shared/registry.js';
import { backupPolicyOf } from '../../shared/schedule.js';
import { migrateMetrics } from './metrics.js';
import {
  compareWithSnapshot,
  describeMismatches,
  MIGRATE_TOOLS,
  type Phase,
  type Problem,
  planSteps,
  targetProblems,
} from './plan.js';
import {
  inspectSource,
  inspectTarget,
  MIGRATE_APP_NAME,
  requireMigrateTools,
  type SourceFacts,
  type Tools,
  toolSummary,
} from './preflight.js';

export interface MigrateOptions {
  dryRun: boolean;
  yes: boolean;
  dumpOnly: boolean;
  lockWrites: boolean;
  skipBackupCheck: boolean;
}

export interface MigrateAnswer {
  status: number;
  body: Record<string, unknown>;
}

export interface RunRecord {
  runId: string;
  projectId: string;
  slug: string;
  status: 'running' | 'completed' | 'failed';
  phase: Phase;
  dumpOnly: boolean;
  lockWrites: boolean;
  startedAt: string;
  updatedAt: string;
  pid: number;
  changes?: TargetChanges | undefined;
  backupId?: string | undefined;
  reason?: string | undefined;
  error?: string | undefined;
  rollback?: RollbackResult | undefined;
}

export interface Migrator {
  /** The dry run: preflight and plan, never gated, no side effect anywhere. */
  plan(project: Project, options: MigrateOptions): Promise<MigrateAnswer>;
  /** A real run: refusals throw (400/404/409/412/503); failures after the start answer `{ ok: false }`. */
  run(project: Project, options: MigrateOptions): Promise<MigrateAnswer>;
  lastRun(projectId: string): Promise<RunRecord | undefined>;
  recover(): Promise<void>;
  stop(): Promise<void>;
  readonly running: number;
}

interface Ends {
  sourceUrl: string;
  /** The source's dump slots, shared with every dump function dumping from it. */
  admission: { key: string; slots: number };
  cluster: string;
  schema: string;
  tenantRole: string;
  targetUrl: string;
}

interface Preflight {
  source: SourceFacts;
  target?: Awaited<ReturnType<typeof inspectTarget>>;
  targetError?: AppError;
  tools: Partial<Tools>;
  problems: Problem[];
}

/** Rewraps a refusal so its JSON body also says `ok: false` and the phase that refused. */
function refusal(phase: Phase | 'confirm' | 'lease', error: unknown): AppError {
  const e = isAppError(error)
    ? error
    : new AppError('internal', (error as Error)?.message ?? String(error), { cause: error });
  return new AppError(e.code, e.message, {
    cause: e.cause ?? e,
    details: { ok: false, phase, ...(e.details ?? {}) },
    ...(e.retryAfterSeconds !== undefined ? { retryAfterSeconds: e.retryAfterSeconds } : {}),
  });
}

function stateDirError(error: unknown, file: string, what: string): AppError {
  const errno = errnoOf(error);
  if (errno === 'EACCES' || errno === 'EPERM' || errno === 'EROFS') {
    return new AppError(
      'dir_not_writable',
      `${what}: cannot write ${file} (${errno}): FLUX_STATE_DIR must be writable by this process (uid ${process.getuid?.()}); chown it to uid 1001 and retry`,
      { cause: error },
    );
  }
  return fsWriteError(error, file, what);
}

const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);

/**
 * How long stop() waits for cancelled runs to clean up: a rollback of the target waits up to 30 s for its
 * locks, so this covers one; the process's shutdown watchdog stays the outer bound.
 */
const CANCEL_WAIT_MS = 60_000;

const MIGRATE_RUNNER: RestoreRunner = {
  fn: 'migrate',
  failCode: 'migrate_failed',
  timeoutNote: 'the time left of FLUX_MIGRATE_TIMEOUT_MS',
};

export function createMigrator(rt: Runtime): Migrator {
  const { config, log, catalog } = rt;
  const { outcomes, phaseSeconds, running: runningGauge, lastSuccess } = migrateMetrics(rt.metrics);
  // One run per project in this process, keyed by project id; stop() gives runs the grace period, then
  // cancels them (children killed, target rolled back) and waits for that clean-up.
  const jobs = createJobRunner({
    name: 'migrate',
    graceMs: config.FLUX_SHUTDOWN_GRACE_MS,
    cancelWaitMs: CANCEL_WAIT_MS,
  });
  const baseDir = path.join(config.FLUX_STATE_DIR, 'migrate');
  const runsDir = path.join(baseDir, 'runs');
  const workDir = path.join(baseDir, 'work');
  // pg_dump pids while they run (as dump records its own): one a kill -9 of this process left running is
  // killed at the next start, before recovery removes its temp dump.
  const children = createChildPids({ dir: path.join(config.FLUX_STATE_DIR, 'children', rt.name), log });

  function endsOf(project: Project): Ends {
    if (project.engine !== 'v2_shared') {
      throw new AppError(
        'unprocessable',
        `project ${project.slug} is ${project.engine}: migrate moves v2_shared (pooled) tenants to a dedicated database`,
      );
    }
    if (!project.dedicatedUrl) {
      throw new AppError(
        'unprocessable',
        `project ${project.slug} has no dedicatedUrl: add "dedicatedUrl": "env:NAME" to its entry in FLUX_PROJECTS_FILE, set NAME, and restart migrate`,
      );
    }
    const source = sourceOf(rt.registry, project, rt.env);
    return {
      sourceUrl: source.url,
      admission: dumpAdmissionOf(project, source),
      cluster: source.cluster?.name ?? '',
      schema: source.schema!,
      tenantRole: tenantRoleOf(project.id),
      targetUrl: resolveUrl(project.dedicatedUrl, rt.env, `project ${project.slug} dedicatedUrl`),
    };
  }

  async function preflight(
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
        lockTimeoutMs: config.FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS,
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

  /** The backup gate: a restorable newest backup and a fresh project (a restorable backup within maxAge). */
  async function gate(project: Project) {
    const { maxAgeMs } = backupPolicyOf(project, config);
    // The dumps the gate leans on are re-hashed in full now, not taken from the validation cache.
    const trust = await catalog.trust(project.id, project.slug, new Date(), {
      maxAgeMs,
      proof: GATE_ARTIFACT_PROOF,
    });
    const verdict = destructiveGate(trust, trust.freshness);
    const next = trust.tier === 'restorable' ? trust.freshness.next : (trust.next ?? trust.freshness.next);
    return {
      // Which cluster holds what the gate protects: the one a maintenance ticket would name.
      cluster: clusterNameOf(project),
      tier: trust.tier,
      freshness: trust.freshness.freshness,
      ageSeconds: trust.freshness.ageSeconds,
      maxAgeSeconds: trust.freshness.maxAgeSeconds,
      passes: verdict.passes,
      message: verdict.passes ? trust.message : verdict.message,
      ...(next ? { next } : {}),
      ...(trust.backupId ? { backupId: trust.backupId } : {}),
    };
  }

  function targetSummary(pf: Preflight, ends: Ends) {
    const t = pf.target;
    const where = parsePgUrl(ends.targetUrl);
    if (!t) {
      return {
        host: where.host,
        port: where.port,
        database: where.database,
        reachable: false,
        error: pf.targetError?.message,
      };
    }
    const installed = new Set(t.extensions.installed);
    const available = new Set(t.extensions.available);
    return {
      host: where.host,
      port: where.port,
      database: where.database,
      reachable: true,
      serverVersion: t.server.serverVersion,
      user: t.user,
      schema: { name: ends.schema, ...t.schema },
      roles: t.roles,
      authenticatorMemberships: t.memberships,
      auth: t.auth,
      extensions: (pf.source.inventory?.extensions ?? []).map((e) => ({
        name: e.name,
        sourceVersion: e.version,
        target: installed.has(e.name) ? 'installed' : available.has(e.name) ? 'available' : 'missing',
      })),
    };
  }

  async function cancelBackends(url: string, applicationName: string): Promise<void> {
    try {
      await withPgClient(url, MIGRATE_APP_NAME, (client) =>
        client.query(
          'SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()',
          [applicationName],
        ),
      );
    } catch (error) {
      log.warn({ err: error, applicationName }, 'could not cancel the queries of a cancelled migration');
    }
  }

  async function saveRecord(record: RunRecord): Promise<void> {
    const file = path.join(runsDir, `${record.projectId}.json`);
    try {
      await ensureDir(runsDir);
      await writeJsonAtomic(file, { ...record, updatedAt: new Date().toISOString() });
    } catch (error) {
      throw stateDirError(error, file, 'recording the migration run');
    }
  }

  async function readRecord(file: string): Promise<RunRecord | undefined> {
    try {
      return JSON.parse(await readFile(file, 'utf8')) as RunRecord;
    } catch {
      return undefined;
    }
  }

  /** Cross-process guard: a session advisory lock in the target, held for the whole run. */
  function lockTarget(url: string, project: Project): Promise<() => Promise<void>> {
    return takeSessionLease(url, `flux-ops-migrate:${project.id}`, {
      appName: `${MIGRATE_APP_NAME}-lease`,
      busy: `a migration of ${project.slug} into this dedicated database is running in another migrate process; wait for it to finish`,
      what: 'taking the migration lease in the target',
    });
  }

  async function planAnswer(project: Project, options: MigrateOptions): Promise<MigrateAnswer> {
    const ends = endsOf(project);
    const started = performance.now();
    const pf = await preflight(project, ends, {
      counts: true,
      dumpOnly: options.dumpOnly,
      timeoutMs: config.FLUX_MIGRATE_TIMEOUT_MS,
      inspectTarget: true,
    });
    const backupGate = options.skipBackupCheck
      ? { skipped: true, ...(await gate(project)) }
      : { skipped: false, ...(await gate(project)) };
    const tables = pf.source.counts?.tables ?? [];
    const sequences = pf.source.counts?.sequences ?? [];
    const problems: Array<{ code: string; message: string }> = options.dumpOnly ? [] : [...pf.problems];
    if (!options.dumpOnly && pf.targetError) {
      problems.unshift({ code: 'target_unreachable', message: pf.targetError.message });
    }
    if (!backupGate.passes && !options.skipBackupCheck) {
      problems.push({
        code: 'backup_gate',
        message: `${project.slug} on cluster ${backupGate.cluster}: ${backupGate.message}${backupGate.next ? `: run \`${backupGate.next}\`` : ''} (or pass skipBackupCheck)`,
      });
    }
    const source = parsePgUrl(ends.sourceUrl);
    return {
      status: 200,
      body: {
        ok: true,
        dryRun: true,
        ready: problems.length === 0,
        problems,
        project: { id: project.id, slug: project.slug, hash: project.hash },
        source: {
          cluster: ends.cluster,
          host: source.host,
          port: source.port,
          database: source.database,
          serverVersion: pf.source.server.serverVersion,
          schema: ends.schema,
        },
        target: targetSummary(pf, ends),
        tools: toolSummary(pf.tools),
        tables,
        rows: sum(tables.map((t) => t.rows)),
        sequences,
        extensions: pf.source.inventory?.extensions ?? [],
        roles: pf.source.inventory?.roles ?? [],
        backupGate,
        steps: planSteps({ dumpOnly: options.dumpOnly, lockWrites: options.lockWrites, schema: ends.schema }),
        seconds: (performance.now() - started) / 1000,
      },
    };
  }

  async function execute(
    project: Project,
    options: MigrateOptions,
    signal: AbortSignal,
  ): Promise<MigrateAnswer> {
    const t0 = performance.now();
    // The same deadline as the runner's timeout, for the tools' own time limits.
    const deadline = Date.now() + config.FLUX_MIGRATE_TIMEOUT_MS;
    const remaining = () => Math.max(1, deadline - Date.now());
    const durations: Record<string, number> = {};
    let phase: Phase = 'preflight';
    let phaseStart = performance.now();
    const enter = (next: Phase) => {
      const seconds = (performance.now() - phaseStart) / 1000;
      durations[phase] = seconds;
      phaseSeconds.observe({ phase }, seconds);
      phase = next;
      phaseStart = performance.now();
    };

    // Refusals: nothing has moved and nothing was touched; the answer is a plain 4xx/5xx error.
    let ends: Ends;
    let tools: Partial<Tools>;
    let releaseTarget: (() => Promise<void>) | undefined;
    try {
      ends = endsOf(project);
      const pf = await preflight(project, ends, {
        counts: false,
        dumpOnly: options.dumpOnly,
        timeoutMs: remaining(),
        // A dump-only run never touches the target, so it does not wait on it either.
        inspectTarget: !options.dumpOnly,
      });
      tools = pf.tools;
      if (!options.dumpOnly) {
        if (pf.targetError) throw pf.targetError;
        if (pf.problems.length > 0) {
          throw new AppError(
            'precondition_failed',
            `the target refuses this migration: ${pf.problems.map((p) => p.message).join('; ')}`,
            { details: { problems: pf.problems } },
          );
        }
      }
      enter('gate');
      if (!options.skipBackupCheck) {
        const g = await gate(project);
        if (!g.passes) {
          throw new AppError(
            'precondition_failed',
            `backup gate for ${project.slug} on cluster ${g.cluster}: ${g.message}; a migration needs a restorable newest backup younger than maxAge` +
              `${g.next ? `: run \`${g.next}\`` : ''}, or pass skipBackupCheck to override`,
            {
              details: {
                cluster: g.cluster,
                tier: g.tier,
                freshness: g.freshness,
                ageSeconds: g.ageSeconds,
                maxAgeSeconds: g.maxAgeSeconds,
                ...(g.next ? { next: g.next } : {}),
              },
            },
          );
        }
      }
    } catch (error) {
      const e = refusal(phase, error);
      outcomes.inc({ outcome: 'refused', phase, reason: e.code });
      throw e;
    }
    if (!options.dumpOnly) {
      try {
        releaseTarget = await lockTarget(ends.targetUrl, project);
      } catch (error) {
        const e = refusal('lease', error);
        outcomes.inc({ outcome: 'refused', phase: 'lease', reason: e.code });
        throw e;
      }
    }

    const runId = newBackupId();
    const subject = `${project.id}/${runId}`;
    const record: RunRecord = {
      runId,
      projectId: project.id,
      slug: project.slug,
      status: 'running',
      phase: 'dump',
      dumpOnly: options.dumpOnly,
      lockWrites: options.lockWrites,
      startedAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
      pid: process.pid,
    };
    const restoreAppName = `${MIGRATE_APP_NAME}-restore-${runId.toLowerCase()}`;
    const dumpAppName = `${MIGRATE_APP_NAME}-dump-${runId.toLowerCase()}`;
    // Stop and the deadline abort the run: children are killed by the signal, and this run's own queries on
    // the source (the snapshot's counting may wait on a lock) are cancelled so nothing lingers there.
    const onAbort = () => {
      void cancelBackends(ends.sourceUrl, dumpAppName);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    let changes: TargetChanges = { roles: [], memberships: [] };
    let dumpFile: { discard(): Promise<void> } | undefined;
    const listFile = path.join(workDir, `${project.id}-${runId}.list`);
    let startedEventId: string | undefined;
    try {
      enter('dump');
      await saveRecord(record);
      // The drain signal: the gateway stops writes for lockWrites before any data moves.
      const startedEvent = await rt.emit('flux.migrate.started', {
        subject,
        data: {
          projectId: project.id,
          slug: project.slug,
          lockWrites: options.lockWrites,
          dumpOnly: options.dumpOnly,
          runId,
        },
      });
      startedEventId = startedEvent.id;
      log.info({ projectId: project.id, runId, ...options }, 'migration started');

      if (options.dumpOnly) {
        // Dump's own backup, asked of the dump function as any other process would (a signed
        // flux.backup.requested): catalogued, replicated and verified like any other backup.
        const { manifest } = await requestBackup(rt, project, {
          reason: 'migrate_dump_only',
          causedBy: startedEvent.id,
          signal: signal,
          timeoutMs: remaining(),
          onAccepted: async (backupId) => {
            record.backupId = backupId;
            await saveRecord(record);
          },
        });
        enter('dump');
        const rows = sum(manifest.tables.map((t) => t.rows));
        return await succeed({
          backupId: manifest.backupId,
          tables: manifest.tables.length,
          rows,
          sequences: manifest.sequences.length,
          sha256: manifest.sha256,
          sizeBytes: manifest.sizeBytes,
        });
      }

      await ensureDir(workDir).catch((error) => {
        throw stateDirError(error, workDir, 'creating the migration work directory');
      });
      const dumpTarget = path.join(workDir, `${project.id}-${runId}.dump`);
      const dump = await runSnapshotDump({
        url: ends.sourceUrl,
        admission: ends.admission,
        scope: { kind: 'tenant_export', schema: ends.schema },
        // The tenant's grants travel with it to the dedicated database.
        includeAcl: true,
        pathEnv: rt.env.PATH,
        compression: config.FLUX_DUMP_COMPRESSION,
        lockWaitTimeoutMs: config.FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS,
        timeoutMs: remaining(),
        signal: signal,
        applicationName: dumpAppName,
        target: dumpTarget,
        children,
        fsError: (error, file) =>
          stateDirError(error, file, 'writing the migration dump under FLUX_STATE_DIR'),
      });
      dumpFile = dump.file;
      const facts = dump.facts;

      enter('prepare');
      record.phase = 'prepare';
      const prepared = await prepareTarget(
        ends.targetUrl,
        {
          schema: ends.schema,
          tenantRole: ends.tenantRole,
          policyRoles: facts.roles,
          restoreLogin: `flux_restore_${runId.toLowerCase()}`,
        },
        {
          appName: MIGRATE_APP_NAME,
          lockTimeoutMs: config.FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS,
          record: (c) => saveRecord({ ...record, changes: c }),
        },
      );
      changes = prepared.changes;
      record.changes = changes;

      enter('restore');
      record.phase = 'restore';
      await saveRecord(record);
      if (signal.aborted) throw new AppError('shutting_down', 'migrate is stopping');
      await restoreDump({
        url: ends.targetUrl,
        login: prepared.login,
        tenantRole: ends.tenantRole,
        dumpFile: dump.file.tmp,
        listFile,
        schema: ends.schema,
        pgRestore: requireToolInfo(tools, 'pg_restore'),
        pathEnv: rt.env.PATH,
        appName: restoreAppName,
        timeoutMs: remaining(),
        signal: signal,
        runner: MIGRATE_RUNNER,
      });

      // The login has done its one job; the tenant's objects stay, owned by the tenant role.
      await dropRestoreLogin(ends.targetUrl, changes, { appName: MIGRATE_APP_NAME });
      record.changes = changes;

      enter('validate');
      record.phase = 'validate';
      await saveRecord(record);
      const actual = await readTargetCounts(ends.targetUrl, ends.schema, {
        appName: MIGRATE_APP_NAME,
        statementTimeoutMs: remaining(),
      });
      const mismatches = compareWithSnapshot(facts, actual);
      if (mismatches.length > 0) {
        throw new AppError(
          'migrate_failed',
          `validation: the target differs from the snapshot: ${describeMismatches(mismatches)}`,
          { details: { mismatches } },
        );
      }
      enter('validate');
      return await succeed({
        tables: facts.tables.length,
        rows: sum(facts.tables.map((t) => t.rows)),
        sequences: facts.sequences.length,
        snapshot: { id: facts.snapshotId, takenAt: facts.takenAt },
        counts: { tables: facts.tables, sequences: facts.sequences },
        created: changes,
        target: { ...pickWhere(ends.targetUrl), schema: ends.schema },
      });
    } catch (error) {
      return await fail(error);
    } finally {
      signal.removeEventListener('abort', onAbort);
      await dumpFile?.discard().catch(() => undefined);
      await rm(listFile, { force: true }).catch(() => undefined);
      await releaseTarget?.();
    }

    async function succeed(
      result: Record<string, unknown> & { tables: number; rows: number; sequences: number },
    ) {
      durations.total = (performance.now() - t0) / 1000;
      record.status = 'completed';
      await saveRecord(record).catch((e) =>
        log.error({ err: e, runId }, 'could not record the completed run'),
      );
      outcomes.inc({ outcome: 'completed', phase, reason: 'ok' });
      lastSuccess.set({ project: project.slug }, Date.now() / 1000);
      log.info({ projectId: project.id, runId, durations, rows: result.rows }, 'migration completed');
      await rt.emit('flux.migrate.completed', {
        subject,
        causedBy: startedEventId,
        data: {
          projectId: project.id,
          slug: project.slug,
          tables: result.tables,
          rows: result.rows,
          sequences: result.sequences,
          runId,
          dumpOnly: options.dumpOnly,
          ...(typeof result.backupId === 'string' ? { backupId: result.backupId } : {}),
          durations,
        },
      });
      return {
        status: 200,
        body: {
          ok: true,
          runId,
          projectId: project.id,
          slug: project.slug,
          dumpOnly: options.dumpOnly,
          lockWrites: options.lockWrites,
          ...result,
          durations,
        },
      };
    }

    async function fail(error: unknown): Promise<MigrateAnswer> {
      const failedPhase = phase;
      enter(phase);
      let e = isAppError(error)
        ? error
        : new AppError('migrate_failed', (error as Error)?.message ?? String(error), { cause: error });
      if (e.code === 'internal') e = new AppError('migrate_failed', e.message, { cause: e });
      const reason: unknown = signal.reason;
      if (signal.aborted && isAppError(reason) && e !== reason) {
        e = new AppError(reason.code, `${reason.message} during the ${failedPhase} phase (${e.message})`, {
          cause: e,
        });
      }
      let rollback: RollbackResult | undefined;
      if (hasChanges(changes)) {
        const rbStart = performance.now();
        // The rollback gets its own time, not what is left of the run's: it must run after a timeout too.
        rollback = await rollbackTarget(ends.targetUrl, changes, {
          appName: MIGRATE_APP_NAME,
          restoreAppName,
          lockTimeoutMs: 30_000,
        });
        durations.rollback = (performance.now() - rbStart) / 1000;
        phaseSeconds.observe({ phase: 'rollback' }, durations.rollback);
      }
      durations.total = (performance.now() - t0) / 1000;
      const rolledBack = rollback ? rollback.ok : true;
      const message = rollback
        ? rollback.ok
          ? `${e.message}; the target was rolled back (dropped ${rollback.dropped.join(', ')}); the source was not modified`
          : `${e.message}; ROLLBACK INCOMPLETE, drop by hand: ${rollback.leftovers.map((l) => `${l.object} (${l.error})`).join('; ')}`
        : `${e.message}; the target was not touched and the source was not modified`;
      record.status = 'failed';
      record.phase = failedPhase;
      record.reason = e.code;
      record.error = message;
      record.rollback = rollback;
      await saveRecord(record).catch((err) => log.error({ err, runId }, 'could not record the failed run'));
      outcomes.inc({ outcome: 'failed', phase: failedPhase, reason: e.code });
      log.error(
        { projectId: project.id, runId, phase: failedPhase, code: e.code, err: e.message, rollback },
        'migration failed',
      );
      await rt.emit('flux.migrate.failed', {
        subject,
        causedBy: startedEventId,
        data: {
          projectId: project.id,
          slug: project.slug,
          phase: failedPhase,
          reason: e.code,
          error: message.slice(0, 4000),
          runId,
          rolledBack,
        },
      });
      return {
        status: ERROR_TABLE[e.code].status,
        body: {
          ok: false,
          phase: failedPhase,
          error: message,
          code: e.code,
          runId,
          rolledBack,
          ...(rollback ? { rollback } : {}),
          ...(e.details ?? {}),
          durations,
        },
      };
    }
  }

  return {
    get running() {
      return jobs.size;
    },

    async plan(project, options) {
      try {
        return await planAnswer(project, options);
      } catch (error) {
        outcomes.inc({
          outcome: 'refused',
          phase: 'preflight',
          reason: isAppError(error) ? error.code : 'internal',
        });
        throw refusal('preflight', error);
      }
    },

    async run(project, options) {
      if (!options.yes) {
        outcomes.inc({ outcome: 'refused', phase: 'confirm', reason: 'precondition_failed' });
        throw refusal(
          'confirm',
          new AppError(
            'precondition_failed',
            `a real migration of ${project.slug} needs "yes": true (flux migrate --yes); run with "dryRun": true first to see the plan. Nothing was done`,
          ),
        );
      }
      if (jobs.isStopping) {
        throw refusal('lease', new AppError('shutting_down', 'migrate is stopping; retry later'));
      }
      if (jobs.has(project.id)) {
        outcomes.inc({ outcome: 'refused', phase: 'lease', reason: 'conflict' });
        throw refusal(
          'lease',
          new AppError(
            'conflict',
            `a migration of ${project.slug} is already running; wait for it to finish`,
            {
              retryAfterSeconds: 60,
            },
          ),
        );
      }
      // The run's deadline is the runner's: it aborts the run's signal as stop() does, with its own reason.
      const work = jobs.run(project.id, (signal) => execute(project, options, signal), {
        timeoutMs: config.FLUX_MIGRATE_TIMEOUT_MS,
        timeoutError: () =>
          new AppError(
            'timeout',
            `the migration ran past FLUX_MIGRATE_TIMEOUT_MS (${config.FLUX_MIGRATE_TIMEOUT_MS} ms) and was cancelled`,
          ),
      });
      runningGauge.set(jobs.size);
      try {
        return await work;
      } finally {
        runningGauge.set(jobs.size);
      }
    },

    async lastRun(projectId) {
      return readRecord(path.join(runsDir, `${projectId}.json`));
    },

    async recover() {
      // First the pg_dumps a crashed predecessor left running (they would go on holding their snapshot on
      // the shared cluster), then the temp dumps of runs a crash interrupted; no run of this process exists yet.
      await children.reap();
      await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
      let names: string[];
      try {
        names = await readdir(runsDir);
      } catch {
        return;
      }
      for (const name of names.filter((n) => n.endsWith('.json'))) {
        const record = await readRecord(path.join(runsDir, name));
        if (record?.status !== 'running') continue;
        const project = rt.registry.byId(record.projectId);
        let rollback: RollbackResult | undefined;
        if (record.changes && hasChanges(record.changes)) {
          if (!project?.dedicatedUrl) {
            rollback = {
              ok: false,
              dropped: [],
              leftovers: [
                {
                  object: 'target',
                  error: `project ${record.slug} or its dedicatedUrl is gone from the registry; drop by hand: ${describeChanges(record.changes)}`,
                },
              ],
            };
          } else {
            try {
              rollback = await rollbackTarget(
                resolveUrl(project.dedicatedUrl, rt.env, `project ${project.slug} dedicatedUrl`),
                record.changes,
                {
                  appName: MIGRATE_APP_NAME,
                  restoreAppName: `${MIGRATE_APP_NAME}-restore-${record.runId.toLowerCase()}`,
                  lockTimeoutMs: 30_000,
                },
              );
            } catch (error) {
              rollback = {
                ok: false,
                dropped: [],
                leftovers: [{ object: 'target', error: (error as Error).message }],
              };
            }
          }
        }
        const error =
          'the migrate process stopped during this run (crash or kill); ' +
          (rollback
            ? rollback.ok
              ? `the target was rolled back at restart (dropped ${rollback.dropped.join(', ')})`
              : `ROLLBACK INCOMPLETE: ${rollback.leftovers.map((l) => `${l.object}: ${l.error}`).join('; ')}`
            : 'the target had not been touched');
        await saveRecord({ ...record, status: 'failed', reason: 'interrupted', error, rollback });
        log.warn(
          { projectId: record.projectId, runId: record.runId, rollback },
          'rolled back an interrupted migration',
        );
        await rt.emit('flux.migrate.failed', {
          subject: `${record.projectId}/${record.runId}`,
          data: {
            projectId: record.projectId,
            slug: record.slug,
            phase: record.phase,
            reason: 'interrupted',
            error: error.slice(0, 4000),
            runId: record.runId,
            rolledBack: rollback ? rollback.ok : true,
          },
        });
      }
    },

    async stop() {
      const left = await jobs.stop();
      if (left.length > 0) log.warn({ projects: left }, 'migrations still cleaning up after their cancel');
    },
  };
}

function requireToolInfo(tools: Partial<Tools>, name: keyof Tools) {
  const info = tools[name];
  if (!info) throw new AppError('tool_missing', `${name} is not on PATH of this process`);
  return info;
}

function pickWhere(url: string) {
  const t = parsePgUrl(url);
  return { host: t.host, port: t.port, database: t.database };
}
