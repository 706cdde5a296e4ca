// One real migration: refusals while nothing has moved, the phases in order, and the answer.
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { newBackupId } from '../../shared/catalog/ids.js';
import { AppError, ERROR_TABLE, isAppError } from '../../shared/errors.js';
import type { ChildPids } from '../../shared/kit/child-pids.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { withPgClient } from '../../shared/pg/conn.js';
import { hasChanges, type RollbackResult } from '../../shared/pg/target.js';
import type { Project } from '../../shared/registry.js';
import { type MigrateAnswer, type MigrateOptions, refusal } from './answer.js';
import { type Ends, endsOf } from './ends.js';
import { backupGate } from './gate.js';
import { lockTarget } from './lease.js';
import type { MigrateMetrics } from './metrics.js';
import {
  createPhaseClock,
  DUMP_ONLY_PHASES,
  enterPhase,
  MIGRATION_PHASES,
  type RunContext,
  type RunResult,
} from './phases.js';
import { dumpAppNameOf, MIGRATE_APP_NAME, runPreflight, type Tools } from './preflight.js';
import { announceFailure, failureMessage, type RunRecord, type RunRecords, rollBackRun } from './record.js';

export interface RunDeps {
  rt: Runtime;
  metrics: MigrateMetrics;
  records: RunRecords;
  children: ChildPids;
  workDir: string;
}

/** Refusals throw (the plain 4xx/5xx of `refusal`); a failure after the start answers `{ ok: false }`. */
export async function executeRun(
  deps: RunDeps,
  project: Project,
  options: MigrateOptions,
  signal: AbortSignal,
): Promise<MigrateAnswer> {
  const { rt, metrics, records } = deps;
  const { config, log } = rt;
  const t0 = performance.now();
  // The same deadline as the run's lease timeout, for the tools' own time limits.
  const deadline = Date.now() + config.FLUX_MIGRATE_TIMEOUT_MS;
  const remaining = () => Math.max(1, deadline - Date.now());
  const clock = createPhaseClock(metrics.phaseSeconds);
  const { durations } = clock;

  // Refusals: nothing has moved and nothing was touched; the answer is a plain 4xx/5xx error.
  let ends: Ends;
  let tools: Partial<Tools>;
  let releaseTarget: (() => Promise<void>) | undefined;
  try {
    ends = endsOf(rt, project);
    const pf = await runPreflight(rt, project, ends, {
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
    clock.enter('gate');
    if (!options.skipBackupCheck) await requireGate(rt, project);
  } catch (error) {
    const e = refusal(clock.phase, error);
    metrics.outcomes.inc({ outcome: 'refused', phase: clock.phase, reason: e.code });
    throw e;
  }
  if (!options.dumpOnly) {
    try {
      releaseTarget = await lockTarget(ends.targetUrl, project);
    } catch (error) {
      const e = refusal('lease', error);
      metrics.outcomes.inc({ outcome: 'refused', phase: 'lease', reason: e.code });
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
  // Stop and the deadline abort the run: children are killed by the signal, and this run's own queries on
  // the source (the snapshot's counting may wait on a lock) are cancelled so nothing lingers there.
  const onAbort = () => {
    void cancelBackends(rt, ends.sourceUrl, dumpAppNameOf(runId));
  };
  signal.addEventListener('abort', onAbort, { once: true });
  const ctx: RunContext = {
    rt,
    project,
    options,
    ends,
    tools,
    record,
    records,
    signal,
    children: deps.children,
    workDir: deps.workDir,
    listFile: path.join(deps.workDir, `${project.id}-${runId}.list`),
    remaining,
    changes: { roles: [], memberships: [] },
  };
  try {
    const phases = options.dumpOnly ? DUMP_ONLY_PHASES : MIGRATION_PHASES;
    for (const [i, step] of phases.entries()) {
      await enterPhase(ctx, clock, step.phase);
      if (i === 0) await announceStart();
      await step.run(ctx);
    }
    clock.close();
    if (!ctx.result) throw new Error('the last phase of a run leaves its result');
    return await succeed(ctx.result);
  } catch (error) {
    return await fail(error);
  } finally {
    signal.removeEventListener('abort', onAbort);
    await ctx.dump?.file.discard().catch(() => undefined);
    await rm(ctx.listFile, { force: true }).catch(() => undefined);
    await releaseTarget?.();
  }

  /** The drain signal: the gateway stops writes for lockWrites before any data moves. */
  async function announceStart(): Promise<void> {
    const started = await rt.emit('flux.migrate.started', {
      subject,
      data: {
        projectId: project.id,
        slug: project.slug,
        lockWrites: options.lockWrites,
        dumpOnly: options.dumpOnly,
        runId,
      },
    });
    ctx.startedEventId = started.id;
    log.info({ projectId: project.id, runId, ...options }, 'migration started');
  }

  async function succeed(result: RunResult): Promise<MigrateAnswer> {
    durations.total = (performance.now() - t0) / 1000;
    record.status = 'completed';
    await records
      .save(record)
      .catch((e) => log.error({ err: e, runId }, 'could not record the completed run'));
    metrics.outcomes.inc({ outcome: 'completed', phase: clock.phase, reason: 'ok' });
    metrics.lastSuccess.set({ project: project.slug }, Date.now() / 1000);
    log.info({ projectId: project.id, runId, durations, rows: result.rows }, 'migration completed');
    await rt.emit('flux.migrate.completed', {
      subject,
      causedBy: ctx.startedEventId,
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
    const failedPhase = clock.phase;
    clock.close();
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
    if (hasChanges(ctx.changes)) {
      const rbStart = performance.now();
      rollback = await rollBackRun(ends.targetUrl, runId, ctx.changes);
      durations.rollback = (performance.now() - rbStart) / 1000;
      metrics.phaseSeconds.observe({ phase: 'rollback' }, durations.rollback);
    }
    durations.total = (performance.now() - t0) / 1000;
    const { message, rolledBack } = failureMessage(e.message, rollback);
    record.status = 'failed';
    record.phase = failedPhase;
    record.reason = e.code;
    record.error = message;
    record.rollback = rollback;
    await records.save(record).catch((err) => log.error({ err, runId }, 'could not record the failed run'));
    metrics.outcomes.inc({ outcome: 'failed', phase: failedPhase, reason: e.code });
    log.error(
      { projectId: project.id, runId, phase: failedPhase, code: e.code, err: e.message, rollback },
      'migration failed',
    );
    await announceFailure(rt, record, rolledBack, ctx.startedEventId);
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

/** The backup gate, as a refusal: 412 naming the classifier's message and the next step. */
async function requireGate(rt: Pick<Runtime, 'config' | 'catalog'>, project: Project): Promise<void> {
  const g = await backupGate(rt, project);
  if (g.passes) return;
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

async function cancelBackends(rt: Pick<Runtime, 'log'>, url: string, applicationName: string): Promise<void> {
  try {
    await withPgClient(url, MIGRATE_APP_NAME, (client) =>
      client.query(
        'SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()',
        [applicationName],
      ),
    );
  } catch (error) {
    rt.log.warn({ err: error, applicationName }, 'could not cancel the queries of a cancelled migration');
  }
}
