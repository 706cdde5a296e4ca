// The phases of a real migration as ordered lists, each entered through one recording, timing helper.
import path from 'node:path';
import { ensureDir } from '../../shared/atomic.js';
import { AppError } from '../../shared/errors.js';
import type { ChildPids } from '../../shared/kit/child-pids.js';
import { requestBackup } from '../../shared/kit/peer.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { runSnapshotDump, type SnapshotDumpResult } from '../../shared/pg/snapshot.js';
import {
  dropRestoreLogin,
  prepareTarget,
  type RestoreLogin,
  type RestoreRunner,
  readTargetCounts,
  restoreDump,
  type TargetChanges,
} from '../../shared/pg/target.js';
import type { Project } from '../../shared/registry.js';
import type { MigrateOptions } from './answer.js';
import { type Ends, whereOf } from './ends.js';
import type { MigrateMetrics } from './metrics.js';
import { compareWithSnapshot, describeMismatches, type Phase, totalRows } from './plan.js';
import {
  dumpAppNameOf,
  MIGRATE_APP_NAME,
  requireToolInfo,
  restoreAppNameOf,
  type Tools,
} from './preflight.js';
import { type RunRecord, type RunRecords, stateDirError } from './record.js';

const MIGRATE_RUNNER: RestoreRunner = {
  fn: 'migrate',
  failCode: 'migrate_failed',
  timeoutNote: 'the time left of FLUX_MIGRATE_TIMEOUT_MS',
};

/** What a successful run answers with, beside its identity and durations. */
export type RunResult = Record<string, unknown> & { tables: number; rows: number; sequences: number };

/** One run's state, shared by its phases. */
export interface RunContext {
  rt: Runtime;
  project: Project;
  options: MigrateOptions;
  ends: Ends;
  tools: Partial<Tools>;
  record: RunRecord;
  records: RunRecords;
  signal: AbortSignal;
  children: ChildPids;
  workDir: string;
  /** The pg_restore list file of this run, under workDir. */
  listFile: string;
  startedEventId?: string | undefined;
  /** Milliseconds left of FLUX_MIGRATE_TIMEOUT_MS, for the tools' own limits. */
  remaining(): number;
  /** What the run created in the target so far: what a failure rolls back. */
  changes: TargetChanges;
  dump?: SnapshotDumpResult;
  login?: RestoreLogin;
  /** Left by the last phase for the answer. */
  result?: RunResult;
}

export interface PhaseStep {
  phase: Phase;
  run(ctx: RunContext): Promise<void>;
}

/** Times the phases: each phase's wall time into `durations` and the phase histogram. */
export interface PhaseClock {
  readonly phase: Phase;
  readonly durations: Record<string, number>;
  /** Ends the current phase and starts `next`. */
  enter(next: Phase): void;
  /** Ends the current phase (the last one, or the one that failed). */
  close(): void;
}

export function createPhaseClock(phaseSeconds: MigrateMetrics['phaseSeconds']): PhaseClock {
  const durations: Record<string, number> = {};
  let phase: Phase = 'preflight';
  let phaseStart = performance.now();
  const close = () => {
    const seconds = (performance.now() - phaseStart) / 1000;
    durations[phase] = seconds;
    phaseSeconds.observe({ phase }, seconds);
    phaseStart = performance.now();
  };
  return {
    get phase() {
      return phase;
    },
    durations,
    enter(next) {
      close();
      phase = next;
    },
    close,
  };
}

/**
 * Enters a phase of the run: the clock moves on and the run record names the phase, saved before the
 * phase changes anything, so a crash at any instant leaves a record recovery can act on.
 */
export async function enterPhase(ctx: RunContext, clock: PhaseClock, phase: Phase): Promise<void> {
  clock.enter(phase);
  ctx.record.phase = phase;
  await ctx.records.save(ctx.record);
}

/**
 * Dump's own backup, asked of the dump function as any other process would (a signed
 * flux.backup.requested): catalogued, replicated and verified like any other backup.
 */
async function backupThroughDump(ctx: RunContext): Promise<void> {
  const { manifest } = await requestBackup(ctx.rt, ctx.project, {
    reason: 'migrate_dump_only',
    causedBy: ctx.startedEventId,
    signal: ctx.signal,
    timeoutMs: ctx.remaining(),
    onAccepted: async (backupId) => {
      ctx.record.backupId = backupId;
      await ctx.records.save(ctx.record);
    },
  });
  ctx.result = {
    backupId: manifest.backupId,
    tables: manifest.tables.length,
    rows: totalRows(manifest.tables),
    sequences: manifest.sequences.length,
    sha256: manifest.sha256,
    sizeBytes: manifest.sizeBytes,
  };
}

/** The tenant's schema in one snapshot of the source, into a temp file under workDir. */
async function dumpSnapshot(ctx: RunContext): Promise<void> {
  const { rt, ends, workDir } = ctx;
  await ensureDir(workDir).catch((error) => {
    throw stateDirError(error, workDir, 'creating the migration work directory');
  });
  ctx.dump = await runSnapshotDump({
    url: ends.sourceUrl,
    admission: ends.admission,
    scope: { kind: 'tenant_export', schema: ends.schema },
    // The tenant's grants travel with it to the dedicated database.
    includeAcl: true,
    pathEnv: rt.env.PATH,
    compression: rt.config.FLUX_DUMP_COMPRESSION,
    lockWaitTimeoutMs: rt.config.FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS,
    timeoutMs: ctx.remaining(),
    signal: ctx.signal,
    applicationName: dumpAppNameOf(ctx.record.runId),
    target: path.join(workDir, `${ctx.project.id}-${ctx.record.runId}.dump`),
    children: ctx.children,
    fsError: (error, file) => stateDirError(error, file, 'writing the migration dump under FLUX_STATE_DIR'),
  });
}

/** The target's schema, roles and a one-run restore login, each recorded as it is created. */
async function prepare(ctx: RunContext): Promise<void> {
  const { ends, record } = ctx;
  const prepared = await prepareTarget(
    ends.targetUrl,
    {
      schema: ends.schema,
      tenantRole: ends.tenantRole,
      policyRoles: dumpOf(ctx).facts.roles,
      restoreLogin: `flux_restore_${record.runId.toLowerCase()}`,
    },
    {
      appName: MIGRATE_APP_NAME,
      lockTimeoutMs: ctx.rt.config.FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS,
      record: (c) => ctx.records.save({ ...record, changes: c }),
    },
  );
  ctx.changes = prepared.changes;
  ctx.login = prepared.login;
  record.changes = ctx.changes;
}

async function restore(ctx: RunContext): Promise<void> {
  const { ends } = ctx;
  if (ctx.signal.aborted) throw new AppError('shutting_down', 'migrate is stopping');
  if (!ctx.login) throw new Error('the restore phase runs after prepare');
  await restoreDump({
    url: ends.targetUrl,
    login: ctx.login,
    tenantRole: ends.tenantRole,
    dumpFile: dumpOf(ctx).file.tmp,
    listFile: ctx.listFile,
    schema: ends.schema,
    pgRestore: requireToolInfo(ctx.tools, 'pg_restore'),
    pathEnv: ctx.rt.env.PATH,
    appName: restoreAppNameOf(ctx.record.runId),
    timeoutMs: ctx.remaining(),
    signal: ctx.signal,
    runner: MIGRATE_RUNNER,
  });
  // The login has done its one job; the tenant's objects stay, owned by the tenant role.
  await dropRestoreLogin(ends.targetUrl, ctx.changes, { appName: MIGRATE_APP_NAME });
  ctx.record.changes = ctx.changes;
}

/** The target's exact counts and sequences against the snapshot's. */
async function validate(ctx: RunContext): Promise<void> {
  const { ends } = ctx;
  const facts = dumpOf(ctx).facts;
  const actual = await readTargetCounts(ends.targetUrl, ends.schema, {
    appName: MIGRATE_APP_NAME,
    statementTimeoutMs: ctx.remaining(),
  });
  const mismatches = compareWithSnapshot(facts, actual);
  if (mismatches.length > 0) {
    throw new AppError(
      'migrate_failed',
      `validation: the target differs from the snapshot: ${describeMismatches(mismatches)}`,
      { details: { mismatches } },
    );
  }
  ctx.result = {
    tables: facts.tables.length,
    rows: totalRows(facts.tables),
    sequences: facts.sequences.length,
    snapshot: { id: facts.snapshotId, takenAt: facts.takenAt },
    counts: { tables: facts.tables, sequences: facts.sequences },
    created: ctx.changes,
    target: { ...whereOf(ends.targetUrl), schema: ends.schema },
  };
}

function dumpOf(ctx: RunContext): SnapshotDumpResult {
  if (!ctx.dump) throw new Error('this phase runs after the dump');
  return ctx.dump;
}

/** A dump-only run: the backup is dump's, the target is never touched. */
export const DUMP_ONLY_PHASES: readonly PhaseStep[] = [{ phase: 'dump', run: backupThroughDump }];

/** The whole move, in order. */
export const MIGRATION_PHASES: readonly PhaseStep[] = [
  { phase: 'dump', run: dumpSnapshot },
  { phase: 'prepare', run: prepare },
  { phase: 'restore', run: restore },
  { phase: 'validate', run: validate },
];
