// The maintenance preflight of one cluster: before a pg_upgrade, a failover or a retirement, is every
// tenant on it restorable, fresh and replicated offsite, and is nothing out of place? Optionally a fresh
// backup of every tenant first (through the dump queue, so the cluster's concurrency holds), waiting for
// replicate and verify to judge it. The report is the record an operator attaches to the ticket.
import { setTimeout as sleep } from 'node:timers/promises';
import type { FreshnessState } from '../../shared/catalog/freshness.js';
import { AppError, isAppError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { type Project, tenantSchemaOf } from '../../shared/registry.js';
import { formatDuration } from '../../shared/schedule.js';
import type { ClusterViews, PlacementFinding } from './clusters.js';
import type { StartedBackup } from './dumper.js';
import { preflightMetrics } from './metrics.js';

export type PreflightVerdict = 'pass' | 'fail' | 'unknown';

export interface PreflightTenant {
  slug: string;
  hash: string;
  engine: Project['engine'];
  schema?: string;
  database?: string;
  tier: string;
  newestRestorableBackupId: string | null;
  offsiteKey: string | null;
  offsiteReplicated: boolean;
  freshness: FreshnessState;
  /** Age of the newest restorable backup, and the maxAge it was judged against. */
  ageSeconds: number | null;
  maxAgeSeconds: number;
  /** A backup this preflight took (--backup-now). */
  backupTaken?: string;
  verdict: 'pass' | 'fail';
  problems: string[];
}

export interface PreflightReport {
  cluster: string;
  kind: string;
  region: string | null;
  serverVersion: string | null;
  at: string;
  verdict: PreflightVerdict;
  /** The maxAge the request set for every tenant (null: each project's own). */
  maxAgeSeconds: number | null;
  backupNow: boolean;
  tenants: PreflightTenant[];
  findings: PlacementFinding[];
  /** Every reason the preflight did not pass, one line each. */
  problems: string[];
}

export interface PreflightOptions {
  /** What counts as fresh for every tenant; each project's own maxAge when unset. */
  maxAgeSeconds?: number;
  backupNow: boolean;
  /** How long --backup-now waits for the backups to be replicated and verified. */
  waitMs: number;
  signal?: AbortSignal;
}

const POLL_MS = 500;

/**
 * `startBackup` is dump's own entry point (the one its API, its scheduler and flux.backup.requested use),
 * so a preflight's backup is an ordinary backup in every record, event and metric.
 */
export function createPreflight(
  rt: Runtime,
  views: ClusterViews,
  startBackup: (project: Project) => Promise<StartedBackup>,
) {
  const { registry, catalog, log, metrics } = rt;

  const { runs } = preflightMetrics(metrics);
  /** A fresh backup of the project, then replicate's and verify's answers on it (or the wait ends). */
  async function backupAndWait(project: Project, deadline: number, signal?: AbortSignal): Promise<string> {
    let backupId: string;
    try {
      const started = await startBackup(project);
      backupId = started.backupId;
      await started.done;
    } catch (error) {
      if (isAppError(error) && error.code === 'conflict') {
        // A backup of this project is already running (a schedule, an operator): that one is as fresh.
        const running = (await catalog.list(project.id)).find(
          (e) => e.state?.status === 'running' && !e.manifest,
        );
        if (!running) throw error;
        backupId = running.backupId;
      } else throw error;
    }
    for (;;) {
      const entry = await catalog.get(project.id, backupId);
      if (entry && !entry.manifest && entry.state?.status !== 'running') {
        throw new AppError(
          'dependency_unavailable',
          `the backup ${backupId} of ${project.slug} failed: ${entry.state?.error ?? 'no manifest'}`,
        );
      }
      if (entry?.manifest && (entry.verify || entry.verifyOffsite) && entry.offsite) return backupId;
      if (Date.now() >= deadline) return backupId;
      await sleep(POLL_MS, undefined, signal ? { signal } : {});
    }
  }

  async function run(name: string, options: PreflightOptions): Promise<PreflightReport> {
    const info = views.info(name);
    const problems: string[] = [];
    const taken = new Map<string, string>();
    if (options.backupNow) {
      const deadline = Date.now() + options.waitMs;
      // All at once into the dump queue: the cluster's maxConcurrentDumps decides how many run.
      const results = await Promise.allSettled(
        info.projects.map(async (p) => [p.slug, await backupAndWait(p, deadline, options.signal)] as const),
      );
      for (const [i, r] of results.entries()) {
        if (r.status === 'fulfilled') taken.set(r.value[0], r.value[1]);
        else
          problems.push(
            `${info.projects[i]!.slug}: the fresh backup failed: ${(r.reason as Error)?.message ?? r.reason}`,
          );
      }
    }
    const all = await views.list();
    const view = all.find((v) => v.name === name)!;
    const unknown: string[] = [];
    if (!view.reachable) unknown.push(`cluster ${name} could not be asked (${view.error ?? 'no answer'})`);
    for (const other of all) {
      if (other.name !== name && !other.reachable) {
        unknown.push(
          `cluster ${other.name} could not be asked (${other.error ?? 'no answer'}), so whether ${name}'s tenants also live there is unknown`,
        );
      }
    }
    const tenants: PreflightTenant[] = [];
    for (const t of view.tenants) {
      const p = registry.bySlug(t.slug)!;
      const own: string[] = [];
      const maxAgeSeconds = options.maxAgeSeconds ?? t.maxAgeSeconds;
      const freshness: FreshnessState =
        t.ageSeconds === null ? 'never_verified' : t.ageSeconds < maxAgeSeconds ? 'fresh' : 'stale';
      if (t.tier !== 'restorable') own.push(`not restorable (${t.tier}): ${t.message}`);
      if (t.ageSeconds === null) {
        own.push(`no restore-verified backup: run flux-ops backup create -p ${t.slug}, then verify it`);
      } else if (freshness === 'stale') {
        own.push(
          `its newest restorable backup is ${formatDuration(t.ageSeconds * 1000)} old (maxAge ${formatDuration(maxAgeSeconds * 1000)}): run flux-ops backup create -p ${t.slug}`,
        );
      }
      if (t.newestRestorableBackupId && !t.offsiteReplicated) {
        own.push(`backup ${t.newestRestorableBackupId} is not replicated offsite`);
      }
      for (const f of view.findings.filter((f) => f.project === t.slug)) own.push(`${f.code}: ${f.message}`);
      tenants.push({
        slug: t.slug,
        hash: t.hash,
        engine: t.engine,
        ...(p.engine === 'v2_shared' ? { schema: tenantSchemaOf(p.id) } : {}),
        ...(t.database ? { database: t.database } : {}),
        tier: t.tier,
        newestRestorableBackupId: t.newestRestorableBackupId,
        offsiteKey: t.offsiteKey,
        offsiteReplicated: t.offsiteReplicated,
        freshness,
        ageSeconds: t.ageSeconds,
        maxAgeSeconds,
        ...(taken.has(t.slug) ? { backupTaken: taken.get(t.slug)! } : {}),
        verdict: own.length === 0 ? 'pass' : 'fail',
        problems: own,
      });
      for (const line of own) problems.push(`${t.slug}: ${line}`);
    }
    for (const f of view.findings.filter(
      (f) => !f.project || !view.tenants.some((t) => t.slug === f.project),
    )) {
      problems.push(`${f.code}: ${f.message}`);
    }
    problems.push(...unknown);
    const verdict: PreflightVerdict = unknown.length > 0 ? 'unknown' : problems.length > 0 ? 'fail' : 'pass';
    const report: PreflightReport = {
      cluster: name,
      kind: view.kind,
      region: view.region,
      serverVersion: view.serverVersion,
      at: new Date().toISOString(),
      verdict,
      maxAgeSeconds: options.maxAgeSeconds ?? null,
      backupNow: options.backupNow,
      tenants,
      findings: view.findings,
      problems,
    };
    runs.inc({ cluster: name, verdict });
    log.info(
      { cluster: name, verdict, tenants: tenants.length, problems: problems.length },
      'cluster preflight',
    );
    if (verdict === 'pass') {
      await rt.emit('flux.cluster.preflight_passed', {
        subject: name,
        data: { cluster: name, tenants: tenants.length, report },
      });
    } else {
      await rt.emit('flux.cluster.preflight_failed', {
        subject: name,
        data: { cluster: name, verdict, problems: problems.slice(0, 100), report },
      });
    }
    return report;
  }

  return { run };
}
