// The maintenance preflight of one cluster: before a pg_upgrade, a failover or a retirement, is every
// tenant on it restorable, fresh and replicated offsite, and is nothing out of place? Optionally a fresh
// backup of every tenant first (through the dump queue, so the cluster's concurrency holds), waiting for
// replicate and verify to judge it. The report is the record an operator attaches to the ticket.
import { labelsOf } from '../../shared/catalog/classifier.js';
import { AppError, isAppError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { counter } from '../../shared/metrics.js';
import { type Project, tenantSchemaOf } from '../../shared/registry.js';
import type { ClusterViews, PlacementFinding } from './clusters.js';
import type { Dumper } from './dumper.js';

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
  /** Age of the newest restorable backup. */
  ageSeconds: number | null;
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
  maxAgeSeconds: number;
  backupNow: boolean;
  tenants: PreflightTenant[];
  findings: PlacementFinding[];
  /** Every reason the preflight did not pass, one line each. */
  problems: string[];
}

export interface PreflightOptions {
  maxAgeSeconds: number;
  backupNow: boolean;
  /** How long --backup-now waits for the backups to be replicated and verified. */
  waitMs: number;
  signal?: AbortSignal;
}

const POLL_MS = 500;

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `90s`, `45m`, `26h`, `7d` → seconds; undefined for anything else. */
export function parseAgeSeconds(text: string): number | undefined {
  const m = /^(\d{1,6})(s|m|h|d)$/.exec(text.trim());
  if (!m) return undefined;
  const unit = { s: 1, m: 60, h: 3600, d: 86_400 }[m[2] as 's' | 'm' | 'h' | 'd'];
  const seconds = Number(m[1]) * unit;
  return seconds > 0 ? seconds : undefined;
}

export function createPreflight(rt: Runtime, views: ClusterViews, dumper: Dumper) {
  const { registry, catalog, log, metrics } = rt;
  const runs = counter(metrics, 'flux_cluster_preflights_total', 'Maintenance preflights by verdict', [
    'cluster',
    'verdict',
  ]);

  /** A fresh backup of the project, then replicate's and verify's answers on it (or the wait ends). */
  async function backupAndWait(project: Project, deadline: number, signal?: AbortSignal): Promise<string> {
    let backupId: string;
    try {
      const started = await dumper.start(project, { causedBy: undefined });
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
      if (entry?.manifest && entry.verify && entry.offsite) return backupId;
      if (Date.now() >= deadline) return backupId;
      await sleep(POLL_MS, signal);
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
    const now = Date.now();
    const tenants: PreflightTenant[] = [];
    for (const t of view.tenants) {
      const p = registry.bySlug(t.slug)!;
      const own: string[] = [];
      let offsiteReplicated = false;
      if (t.newestRestorableBackupId) {
        const entry = await catalog.get(p.id, t.newestRestorableBackupId);
        if (entry)
          offsiteReplicated = labelsOf(
            catalog.facts(entry, await catalog.checkArtifact(entry)),
          ).offsiteReplicated;
      }
      const ageSeconds = t.newestRestorableAt
        ? Math.max(0, Math.round((now - Date.parse(t.newestRestorableAt)) / 1000))
        : null;
      if (t.tier !== 'restorable') own.push(`not restorable (${t.tier}): ${t.message}`);
      if (ageSeconds === null) own.push('no restore-verified backup');
      else if (ageSeconds > options.maxAgeSeconds)
        own.push(
          `its newest restorable backup is ${formatAge(ageSeconds)} old (max ${formatAge(options.maxAgeSeconds)}): run flux-ops backup create -p ${t.slug}`,
        );
      if (t.newestRestorableBackupId && !offsiteReplicated)
        own.push(`backup ${t.newestRestorableBackupId} is not replicated offsite`);
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
        offsiteReplicated,
        ageSeconds,
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
      maxAgeSeconds: options.maxAgeSeconds,
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

export function formatAge(seconds: number): string {
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 2 * 3600) return `${Math.round(seconds / 60)}m`;
  if (seconds < 2 * 86_400) return `${(seconds / 3600).toFixed(1)}h`;
  return `${(seconds / 86_400).toFixed(1)}d`;
}
