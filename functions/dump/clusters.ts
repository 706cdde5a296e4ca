// The clusters the registry knows, as an operator planning maintenance on one sees them: each cluster's
// server, the tenants it holds with their trust, the dump queue, and the placement findings (a tenant
// missing where the registry says it lives, its schema also on another cluster, a tenant-shaped schema no
// project claims). Findings are kept under FLUX_STATE_DIR so an event is sent when one appears or clears,
// not on every look.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, writeJsonAtomic } from '../../shared/atomic.js';
import { labelsOf, type Trust } from '../../shared/catalog/classifier.js';
import type { FreshnessState } from '../../shared/catalog/freshness.js';
import { factsOf } from '../../shared/catalog/read-model.js';
import { AppError, isAppError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { parsePgUrl, pgError, SQLSTATE, withPgClient } from '../../shared/pg/conn.js';
import {
  type ClusterInfo,
  clusterNameOf,
  clustersOf,
  type Project,
  resolveUrl,
  tenantSchemaOf,
} from '../../shared/registry.js';
import { backupPolicyOf } from '../../shared/schedule.js';
import { clusterMetrics } from './metrics.js';

/** Stable codes of what the placement check finds. */
export const PLACEMENT_CODES = {
  /** The tenant's schema (v2) or database (v1) is not on the cluster the registry names. */
  missing: 'tenant_missing',
  /** The tenant's schema is also on another known cluster (after a migration: which copy is live?). */
  elsewhere: 'tenant_on_other_cluster',
  /** A `t_<12hex>_api` schema that no project of the registry claims. */
  orphan: 'orphan_schema',
} as const;
export type PlacementCode = (typeof PLACEMENT_CODES)[keyof typeof PLACEMENT_CODES];

export interface PlacementFinding {
  code: PlacementCode;
  cluster: string;
  project?: string;
  schema?: string;
  database?: string;
  message: string;
}

/** What one look at a cluster's server found. */
export interface ClusterProbe {
  reachable: boolean;
  serverVersion?: string;
  /** Why the server could not be asked (never the URL or its password). */
  error?: string;
  /** Tenant-shaped schemas in the database the URL names (shared clusters). */
  schemas?: string[];
  /** Databases on the server (declared dedicated servers). */
  databases?: string[];
}

export interface ClusterTenant {
  slug: string;
  hash: string;
  engine: Project['engine'];
  schema?: string;
  database?: string;
  tier: Trust['tier'];
  trustworthy: boolean;
  message: string;
  freshness: FreshnessState;
  /** Age of the newest restorable backup (null when there is none), against the project's maxAge. */
  ageSeconds: number | null;
  maxAgeSeconds: number;
  newestBackupId: string | null;
  newestRestorableBackupId: string | null;
  newestRestorableAt: string | null;
  /** The offsite copy of the newest restorable backup, and whether replicate proved it. */
  offsiteKey: string | null;
  offsiteReplicated: boolean;
}

export interface ClusterView {
  name: string;
  kind: ClusterInfo['kind'];
  derived: boolean;
  region: string | null;
  labels: Record<string, string>;
  reachable: boolean;
  serverVersion: string | null;
  error: string | null;
  maxConcurrentDumps: number;
  dumps: { running: number; waiting: number };
  tenants: ClusterTenant[];
  findings: PlacementFinding[];
}

const TENANT_SCHEMA = /^t_[0-9a-f]{12}_api$/;
const CLUSTER_APP_NAME = 'flux-ops-clusters';

/** The v1 database a project's URL names (undefined when the reference cannot be resolved here). */
function databaseOf(project: Project, env: NodeJS.ProcessEnv): string | undefined {
  try {
    return parsePgUrl(resolveUrl(project.databaseUrl!, env, `project ${project.slug} databaseUrl`)).database;
  } catch {
    return undefined;
  }
}

/** One connection to the cluster: its version, and the tenant schemas or databases it holds. */
export async function probeCluster(cluster: ClusterInfo, env: NodeJS.ProcessEnv): Promise<ClusterProbe> {
  let url: string;
  try {
    url = resolveUrl(cluster.url, env, `cluster ${cluster.name} url`);
  } catch (error) {
    return { reachable: false, error: (error as Error).message };
  }
  try {
    return await withPgClient(
      url,
      CLUSTER_APP_NAME,
      async (client) => {
        const version = await client.query<{ v: string }>("SELECT current_setting('server_version') AS v");
        const probe: ClusterProbe = { reachable: true, serverVersion: version.rows[0]!.v };
        if (cluster.kind === 'shared') {
          const r = await client.query<{ nspname: string }>(
            "SELECT nspname FROM pg_namespace WHERE nspname ~ '^t_[0-9a-f]{12}_api$' ORDER BY 1",
          );
          probe.schemas = r.rows.map((row) => row.nspname);
        } else if (!cluster.derived) {
          const r = await client.query<{ datname: string }>(
            'SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1',
          );
          probe.databases = r.rows.map((row) => row.datname);
        }
        return probe;
      },
      `connecting to cluster ${cluster.name}`,
    );
  } catch (error) {
    const e = pgError(error, `connecting to cluster ${cluster.name}`);
    // A derived cluster is reached through the project's own database: the server answered that it
    // does not exist, which is a placement finding on a reachable server.
    // withPgClient translates a failed connect into an AppError; the server's SQLSTATE is its cause's.
    const cause = isAppError(error) ? error.cause : error;
    const code = (cause as { code?: string } | undefined)?.code ?? '';
    if (cluster.derived && code === SQLSTATE.invalidCatalogName) {
      return { reachable: true, databases: [] };
    }
    return { reachable: false, error: e.message };
  }
}

/**
 * The placement findings over every cluster probed (pure): each tenant where the registry says, its
 * schema nowhere else, no tenant-shaped schema unclaimed. A cluster that could not be asked yields no
 * finding (the view says it is unreachable; nothing about it is known).
 */
export function placementFindings(
  clusters: readonly ClusterInfo[],
  probes: ReadonlyMap<string, ClusterProbe>,
  projects: readonly Project[],
  env: NodeJS.ProcessEnv,
): PlacementFinding[] {
  const findings: PlacementFinding[] = [];
  const bySchema = new Map(projects.map((p) => [tenantSchemaOf(p.id), p]));
  for (const cluster of clusters) {
    const probe = probes.get(cluster.name);
    if (!probe?.reachable) continue;
    for (const p of cluster.projects) {
      if (p.engine === 'v2_shared') {
        const schema = tenantSchemaOf(p.id);
        if (!probe.schemas?.includes(schema)) {
          findings.push({
            code: PLACEMENT_CODES.missing,
            cluster: cluster.name,
            project: p.slug,
            schema,
            message: `project ${p.slug}: schema ${schema} is not on cluster ${cluster.name}, where the registry places it`,
          });
        }
      } else {
        // A derived cluster was reached through the project's own database (`databases` is set only when
        // the server said it does not exist); a declared server lists its databases.
        const database = databaseOf(p, env);
        const present = cluster.derived
          ? probe.databases === undefined
          : database !== undefined && (probe.databases ?? []).includes(database);
        if (!present) {
          findings.push({
            code: PLACEMENT_CODES.missing,
            cluster: cluster.name,
            project: p.slug,
            ...(database ? { database } : {}),
            message: `project ${p.slug}: database ${database ?? '(its databaseUrl)'} is not on ${cluster.name}, where the registry places it`,
          });
        }
      }
    }
    if (cluster.kind !== 'shared') continue;
    for (const schema of probe.schemas ?? []) {
      if (!TENANT_SCHEMA.test(schema)) continue;
      const owner = bySchema.get(schema);
      if (!owner) {
        findings.push({
          code: PLACEMENT_CODES.orphan,
          cluster: cluster.name,
          schema,
          message: `cluster ${cluster.name}: schema ${schema} looks like a tenant's but no project of the registry claims it`,
        });
        continue;
      }
      if (owner.engine === 'v2_shared' && clusterNameOf(owner) === cluster.name) continue;
      findings.push({
        code: PLACEMENT_CODES.elsewhere,
        cluster: cluster.name,
        project: owner.slug,
        schema,
        message:
          owner.engine === 'v2_shared'
            ? `project ${owner.slug}: schema ${schema} is on ${cluster.name} as well as on ${clusterNameOf(owner)}, where the registry places it; decide which copy is live and drop the other`
            : `project ${owner.slug} is v1 dedicated on ${clusterNameOf(owner)}, but its pooled schema ${schema} is still on ${cluster.name} (left by a migration?); confirm the dedicated copy is live and drop the schema`,
      });
    }
  }
  return findings;
}

const findingKey = (f: PlacementFinding) =>
  `${f.cluster}|${f.code}|${f.project ?? ''}|${f.schema ?? f.database ?? ''}`;

export interface ClusterViews {
  list(): Promise<ClusterView[]>;
  /** One cluster; 404 when the registry knows no such name. */
  show(name: string): Promise<ClusterView>;
  /** The tenants' trust rows of one cluster without asking its server (for the preflight). */
  info(name: string): ClusterInfo;
}

export function createClusterViews(
  rt: Runtime,
  queueOf: (cluster: string) => { running: number; waiting: number },
): ClusterViews {
  const { registry, catalog, env, log, metrics } = rt;
  const stateFile = path.join(rt.config.FLUX_STATE_DIR, 'clusters', 'findings.json');

  const { reachableGauge, tenantsGauge, findingsGauge } = clusterMetrics(metrics); // One look at a time: two concurrent looks would both see a finding as new.
  let looking: Promise<unknown> = Promise.resolve();

  async function knownFindings(): Promise<Map<string, PlacementFinding>> {
    try {
      const list = JSON.parse(await readFile(stateFile, 'utf8')) as PlacementFinding[];
      return new Map(list.map((f) => [findingKey(f), f]));
    } catch {
      return new Map();
    }
  }

  /** Records the findings of the clusters looked at; events for the ones that appeared or cleared. */
  async function record(
    looked: readonly ClusterInfo[],
    probes: Map<string, ClusterProbe>,
    found: PlacementFinding[],
  ) {
    const before = await knownFindings();
    const judged = new Set(looked.filter((c) => probes.get(c.name)?.reachable).map((c) => c.name));
    const after = new Map([...before].filter(([, f]) => !judged.has(f.cluster)));
    for (const f of found) after.set(findingKey(f), f);
    for (const [key, f] of after) {
      if (before.has(key)) continue;
      log.warn({ cluster: f.cluster, code: f.code, project: f.project, schema: f.schema }, f.message);
      await rt.emit('flux.cluster.placement_finding', { subject: f.cluster, data: { ...f, state: 'open' } });
    }
    for (const [key, f] of before) {
      if (after.has(key)) continue;
      log.info({ cluster: f.cluster, code: f.code, project: f.project }, 'placement finding cleared');
      await rt.emit('flux.cluster.placement_finding', {
        subject: f.cluster,
        data: { ...f, state: 'cleared' },
      });
    }
    for (const c of looked) {
      if (!judged.has(c.name)) continue;
      for (const code of Object.values(PLACEMENT_CODES)) {
        findingsGauge.set(
          { cluster: c.name, code },
          found.filter((f) => f.cluster === c.name && f.code === code).length,
        );
      }
    }
    try {
      await ensureDir(path.dirname(stateFile));
      await writeJsonAtomic(stateFile, [...after.values()]);
    } catch (error) {
      log.error({ err: error }, 'could not record placement findings under FLUX_STATE_DIR');
    }
  }

  async function tenantRow(p: Project): Promise<ClusterTenant> {
    const trust = await catalog.trust(p.id, p.slug, new Date(), backupPolicyOf(p, rt.config));
    const { freshness } = trust;
    // The newest restorable backup's offsite copy: what a restore after losing the cluster would use.
    let offsite: { key: string | null; replicated: boolean } = { key: null, replicated: false };
    const restorable = freshness.backupId ? await catalog.get(p.id, freshness.backupId) : undefined;
    if (restorable) {
      const artifact = await catalog.checkArtifact(restorable);
      offsite = {
        key: catalog.toApi(restorable, artifact).offsiteKey,
        replicated: labelsOf(factsOf(restorable, artifact)).offsiteReplicated,
      };
    }
    return {
      slug: p.slug,
      hash: p.hash,
      engine: p.engine,
      ...(p.engine === 'v2_shared' ? { schema: tenantSchemaOf(p.id) } : {}),
      ...(p.engine === 'v1_dedicated' ? { database: databaseOf(p, env) ?? '(unresolved)' } : {}),
      tier: trust.tier,
      trustworthy: trust.trustworthy,
      message: trust.message,
      freshness: freshness.freshness,
      ageSeconds: freshness.ageSeconds,
      maxAgeSeconds: freshness.maxAgeSeconds,
      newestBackupId: trust.backupId ?? null,
      newestRestorableBackupId: freshness.backupId ?? null,
      newestRestorableAt: freshness.createdAt ?? null,
      offsiteKey: offsite.key,
      offsiteReplicated: offsite.replicated,
    };
  }

  async function look(only?: string): Promise<ClusterView[]> {
    const all = clustersOf(registry);
    const wanted = only ? all.filter((c) => c.name === only) : all;
    // Placement is judged against every known cluster (a schema elsewhere is found only by looking
    // there too), so every cluster is probed even for one cluster's view.
    const probes = new Map(
      await Promise.all(all.map(async (c) => [c.name, await probeCluster(c, env)] as const)),
    );
    const found = placementFindings(all, probes, registry.list(), env);
    const run = looking.then(() => record(all, probes, found));
    looking = run.catch(() => undefined);
    await run;
    const views: ClusterView[] = [];
    for (const c of wanted) {
      const probe = probes.get(c.name)!;
      reachableGauge.set({ cluster: c.name }, probe.reachable ? 1 : 0);
      tenantsGauge.set({ cluster: c.name }, c.projects.length);
      const tenants: ClusterTenant[] = [];
      for (const p of c.projects) tenants.push(await tenantRow(p));
      views.push({
        name: c.name,
        kind: c.kind,
        derived: c.derived,
        region: c.region ?? null,
        labels: c.labels,
        reachable: probe.reachable,
        serverVersion: probe.serverVersion ?? null,
        error: probe.error ?? null,
        maxConcurrentDumps: c.maxConcurrentDumps,
        // A dedicated server's databases are dumped one at a time each (their own slot), a shared
        // cluster's tenants share its maxConcurrentDumps.
        dumps:
          c.kind === 'shared'
            ? queueOf(c.name)
            : c.projects
                .map((p) => queueOf(`dedicated:${p.slug}`))
                .reduce((t, q) => ({ running: t.running + q.running, waiting: t.waiting + q.waiting }), {
                  running: 0,
                  waiting: 0,
                }),
        tenants,
        findings: found.filter(
          (f) => f.cluster === c.name || (f.project && c.projects.some((p) => p.slug === f.project)),
        ),
      });
    }
    return views;
  }

  function info(name: string): ClusterInfo {
    const cluster = clustersOf(registry).find((c) => c.name === name);
    if (!cluster) {
      const known = clustersOf(registry).map((c) => c.name);
      throw new AppError(
        'not_found',
        `no cluster "${name.slice(0, 80)}" in the registry${known.length ? `; known: ${known.slice(0, 20).join(', ')}` : ' (it defines none)'}`,
      );
    }
    return cluster;
  }

  return {
    list: () => look(),
    async show(name) {
      info(name);
      return (await look(name))[0]!;
    },
    info,
  };
}
