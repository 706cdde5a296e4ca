// The catalog as metrics: per project the newest backup's and the newest restorable backup's timestamps,
// the trust tier and the freshness as state sets (1 for the current one, 0 for the others), the age
// against maxAge, the backup count and bytes; and fleet gauges. Computed from the files at start-up, in the
// background (the process listens at once, however long the history), and a scrape that comes before that
// first computation is done waits for it: a restarted process answers its first scrape with them before
// any new backup. Kept current after each
// backup, verification and replication this process hears of, and every FLUX_BACKUP_METRICS_REFRESH_MS.
// Only dump registers them (it writes the manifests): one scrape of the deployment holds each series once.
import type { Catalog } from '../../shared/catalog/catalog.js';
import { TRUST_TIERS, type TrustTier } from '../../shared/catalog/classifier.js';
import { FRESHNESS_STATES, type FreshnessState } from '../../shared/catalog/freshness.js';
import type { Config } from '../../shared/config.js';
import type { Logger } from '../../shared/log.js';
import { Gauge, type MetricsRegistry, metric } from '../../shared/metrics.js';
import type { Project, ProjectRegistry } from '../../shared/registry.js';
import { backupPolicyOf } from '../../shared/schedule.js';

interface ProjectFacts {
  slug: string;
  tier: TrustTier;
  freshness: FreshnessState;
  newestAt?: number;
  restorableAt?: number;
  ageSeconds: number | null;
  maxAgeSeconds: number;
  count: number;
  bytes: number;
  offsiteReplicated: boolean;
}

export interface TrustMetrics {
  /** Every project of the registry again (projects no longer in it lose their series). */
  refresh(): Promise<void>;
  /**
   * One project, after an event about it. `receipts`: only a receipt changed (a verification, a
   * replication), so its backup count and bytes are kept and its history is not read again.
   */
  refreshProject(projectId: string, changed?: 'backups' | 'receipts'): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export function createTrustMetrics(options: {
  catalog: Catalog;
  registry: ProjectRegistry;
  config: Pick<Config, 'FLUX_BACKUP_SCHEDULE' | 'FLUX_BACKUP_MAX_AGE' | 'FLUX_BACKUP_METRICS_REFRESH_MS'>;
  metrics: MetricsRegistry;
  log: Logger;
}): TrustMetrics {
  const { catalog, registry, config, log } = options;
  const m = options.metrics;
  // The first computation, started by start(): a scrape before it is done waits for it (prom-client
  // awaits each metric's collect), so no scrape reads the series absent or half-built after a restart.
  let first: Promise<void> | undefined;
  const gauge = (registry: MetricsRegistry, name: string, help: string, labelNames: string[] = []) =>
    metric(
      registry,
      name,
      (registers) =>
        new Gauge({
          name,
          help,
          labelNames,
          registers,
          async collect() {
            await first;
          },
        }),
    );
  const newest = gauge(
    m,
    'flux_backup_newest_timestamp_seconds',
    'Start time (data as of) of the newest complete backup',
    ['project'],
  );
  const restorable = gauge(
    m,
    'flux_backup_newest_restorable_timestamp_seconds',
    'Start time (data as of) of the newest restorable backup: complete, artifact valid, restore-verified',
    ['project'],
  );
  const tier = gauge(m, 'flux_backup_trust_tier', 'Trust tier of the newest backup (1: the current tier)', [
    'project',
    'tier',
  ]);
  const freshness = gauge(
    m,
    'flux_backup_freshness',
    'Freshness of the project (1: the current state): fresh, stale, never_verified',
    ['project', 'freshness'],
  );
  const age = gauge(
    m,
    'flux_backup_restorable_age_seconds',
    'Age of the newest restorable backup (absent when there is none)',
    ['project'],
  );
  const maxAge = gauge(m, 'flux_backup_max_age_seconds', 'The maxAge in force for the project', ['project']);
  const count = gauge(m, 'flux_backup_count', 'Complete backups in the local catalog', ['project']);
  const bytes = gauge(m, 'flux_backup_size_bytes', 'Bytes of the complete backups in the local catalog', [
    'project',
  ]);
  const offsite = gauge(
    m,
    'flux_backup_offsite_replicated',
    'The newest complete backup has a proven offsite copy (1) or not (0)',
    ['project'],
  );
  const fleetProjects = gauge(m, 'flux_backup_fleet_projects', 'Projects in the registry');
  const fleetFresh = gauge(m, 'flux_backup_fleet_fresh_ratio', 'Share of projects that are fresh (0 to 1)');
  const fleetRestorable = gauge(
    m,
    'flux_backup_fleet_restorable_ratio',
    'Share of projects whose newest backup is restorable (0 to 1)',
  );
  const refreshed = gauge(
    m,
    'flux_backup_metrics_refreshed_timestamp_seconds',
    'When the backup metrics were last computed from the catalog',
  );

  const known = new Map<string, ProjectFacts>();
  let timer: NodeJS.Timeout | undefined;
  let full: Promise<void> | undefined;

  /** The project's facts; with `kept` (its count and bytes still hold) its history is not listed. */
  async function factsOf(
    project: Project,
    kept?: Pick<ProjectFacts, 'count' | 'bytes'>,
  ): Promise<ProjectFacts> {
    const { maxAgeMs } = backupPolicyOf(project, config);
    const trust = await catalog.trust(project.id, project.slug, new Date(), { maxAgeMs });
    const complete = kept ? undefined : (await catalog.list(project.id)).filter((e) => e.manifest);
    const newestComplete = complete
      ? complete[0]?.manifest
      : (await catalog.newest(project.id, (e) => e.manifest !== undefined))?.manifest;
    const f = trust.freshness;
    return {
      slug: project.slug,
      tier: trust.tier,
      freshness: f.freshness,
      ...(newestComplete ? { newestAt: Date.parse(newestComplete.createdAt) / 1000 } : {}),
      ...(f.createdAt ? { restorableAt: Date.parse(f.createdAt) / 1000 } : {}),
      ageSeconds: f.ageSeconds,
      maxAgeSeconds: f.maxAgeSeconds,
      count: complete?.length ?? kept!.count,
      bytes: complete ? complete.reduce((n, e) => n + (e.manifest?.sizeBytes ?? 0), 0) : kept!.bytes,
      offsiteReplicated: trust.labels.offsiteReplicated,
    };
  }

  function write(p: ProjectFacts): void {
    const project = p.slug;
    for (const t of TRUST_TIERS) tier.set({ project, tier: t }, t === p.tier ? 1 : 0);
    for (const s of FRESHNESS_STATES) freshness.set({ project, freshness: s }, s === p.freshness ? 1 : 0);
    if (p.newestAt !== undefined) newest.set({ project }, p.newestAt);
    else newest.remove({ project });
    if (p.restorableAt !== undefined) restorable.set({ project }, p.restorableAt);
    else restorable.remove({ project });
    if (p.ageSeconds !== null) age.set({ project }, p.ageSeconds);
    else age.remove({ project });
    maxAge.set({ project }, p.maxAgeSeconds);
    count.set({ project }, p.count);
    bytes.set({ project }, p.bytes);
    offsite.set({ project }, p.offsiteReplicated ? 1 : 0);
  }

  function writeFleet(): void {
    const all = [...known.values()];
    fleetProjects.set(all.length);
    const share = (n: number) => (all.length === 0 ? 1 : n / all.length);
    fleetFresh.set(share(all.filter((p) => p.freshness === 'fresh').length));
    fleetRestorable.set(share(all.filter((p) => p.tier === 'restorable').length));
    refreshed.set(Date.now() / 1000);
  }

  async function refreshAll(): Promise<void> {
    const next = new Map<string, ProjectFacts>();
    for (const project of registry.list()) {
      try {
        next.set(project.id, await factsOf(project));
      } catch (error) {
        log.warn({ err: error, projectId: project.id }, 'backup metrics: could not read the catalog');
        const before = known.get(project.id);
        if (before) next.set(project.id, before);
      }
    }
    // Everything is computed first, then swapped in at once: a scrape never sees half a refresh.
    for (const g of [newest, restorable, tier, freshness, age, maxAge, count, bytes, offsite]) g.reset();
    known.clear();
    for (const [id, facts] of next) {
      known.set(id, facts);
      write(facts);
    }
    writeFleet();
  }

  return {
    refresh() {
      full ??= refreshAll().finally(() => {
        full = undefined;
      });
      return full;
    },
    async refreshProject(projectId, changed = 'backups') {
      const project = registry.byId(projectId);
      if (!project) return;
      const before = known.get(projectId);
      const facts = await factsOf(project, changed === 'receipts' ? before : undefined);
      known.set(projectId, facts);
      write(facts);
      writeFleet();
    },
    async start() {
      first = this.refresh().catch((error) =>
        log.error({ err: error }, 'backup metrics: first refresh failed'),
      );
      timer = setInterval(
        () =>
          void this.refresh().catch((error) => log.error({ err: error }, 'backup metrics: refresh failed')),
        config.FLUX_BACKUP_METRICS_REFRESH_MS,
      );
      timer.unref();
    },
    async stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      // No catalog read outlives the stop.
      await full?.catch(() => undefined);
    },
  };
}
