// Projects and clusters behind a small interface; the file form reads FLUX_PROJECTS_FILE. Connection
// URLs are literal or `env:NAME`, resolved at use so the file itself holds no secret.
import { readFileSync, type Stats, unwatchFile, watchFile } from 'node:fs';
import { z } from 'zod';
import {
  CLUSTER_NAME_RE,
  isProjectHash,
  isSlug,
  parseProjectHash,
  tenantRoleOf,
  tenantSchemaOf,
} from './catalog/ids.js';
import { AppError, errnoOf, isAppError } from './errors.js';
import type { Logger } from './log.js';
import { parseDuration, scheduleProblem } from './schedule.js';

const urlRef = z.string().min(1);

const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;

const ClusterSchema = z.object({
  name: z.string().regex(CLUSTER_NAME_RE, 'up to 64 letters, digits, dots, dashes and underscores'),
  url: urlRef,
  maxConcurrentDumps: z.number().int().min(1).max(64).default(2),
  /**
   * `shared`: a pooled cluster whose URL names the database holding the tenant schemas; `dedicated`: a
   * server holding v1 projects' own databases (its URL names any database on it, e.g. postgres). Unset
   * means shared.
   */
  kind: z.enum(['shared', 'dedicated']).optional(),
  region: z.string().min(1).max(64).optional(),
  /** Free labels an operator sorts clusters by (tier, provider, maintenance window…). */
  labels: z
    .record(z.string().regex(LABEL_KEY, 'label keys: letters, digits, . _ / -'), z.string().max(256))
    .optional(),
});

const ProjectSchema = z
  .object({
    id: z.uuid(),
    hash: z.string().refine(isProjectHash, '7 lowercase hex characters'),
    slug: z.string().refine(isSlug, 'lowercase letters, digits and dashes'),
    engine: z.enum(['v1_dedicated', 'v2_shared']),
    cluster: z.string().optional(),
    databaseUrl: urlRef.optional(),
    dedicatedUrl: urlRef.optional(),
    apiHost: z.string().min(1).max(253).optional(),
    /** HS256 secret for deep probes (literal or env:NAME). */
    jwtSecret: urlRef.optional(),
    retention: z
      .object({ keepCount: z.number().int().min(0), keepDays: z.number().int().min(0) })
      .partial()
      .optional(),
    /** Backup schedule: a duration (24h), a 5-field cron expression (UTC), or "off"; default FLUX_BACKUP_SCHEDULE. */
    schedule: z
      .string()
      .superRefine((v, ctx) => {
        const problem = scheduleProblem(v, true);
        if (problem) ctx.addIssue({ code: 'custom', message: problem });
      })
      .optional(),
    /** Older than this, the newest restorable backup is stale (a duration); default FLUX_BACKUP_MAX_AGE. */
    maxAge: z
      .string()
      .refine((v) => parseDuration(v) !== undefined, 'a duration like 26h, 90m or 2d (1s to 366d)')
      .optional(),
  })
  .superRefine((p, ctx) => {
    if (p.engine === 'v2_shared' && !p.cluster)
      ctx.addIssue({ code: 'custom', message: 'a v2_shared project names its "cluster"' });
    if (p.engine === 'v1_dedicated' && !p.databaseUrl) {
      ctx.addIssue({ code: 'custom', message: 'a v1_dedicated project has a "databaseUrl"' });
    }
  });

/** A project's v1 database URL reference as written, for comparing two projects' claims. */
function databaseRefKey(ref: string): string {
  return ref.trim().replace(/\/+$/, '');
}

const RegistryFileSchema = z.object({
  clusters: z.array(ClusterSchema).default([]),
  projects: z.array(ProjectSchema).default([]),
});

export type Cluster = z.infer<typeof ClusterSchema>;
export type Project = z.infer<typeof ProjectSchema>;

export interface ProjectRegistry {
  list(): Project[];
  byHash(hash: string): Project | undefined;
  byId(id: string): Project | undefined;
  bySlug(slug: string): Project | undefined;
  cluster(name: string): Cluster | undefined;
  clusters(): Cluster[];
  /** Where the registry came from and how its last reload went (a file registry; for /readyz). */
  status?(): RegistryStatus;
}

export interface RegistryStatus {
  file: string;
  projects: number;
  /** The file was missing when the registry in use was loaded (so it is empty). */
  missing: boolean;
  loadedAt: string;
  /** The last reload that was refused since, and why: the registry in use is the older one. */
  refused?: { at: string; reason: string; error: string };
}

export type ReloadOutcome = { ok: true; projects: number } | { ok: false; error: string };

/** A file registry that can be read again: on SIGHUP, and when the file changes. */
export interface ReloadableRegistry extends ProjectRegistry {
  /** Reads FLUX_PROJECTS_FILE again; a file that is missing or invalid keeps the registry in use. */
  reload(reason: string): ReloadOutcome;
  /** Polls the file every `intervalMs` and reloads when it changed; returns the stop function. */
  watch(intervalMs: number): () => void;
  status(): RegistryStatus;
}

/** Resolves `env:NAME` against `env`; errors name the variable, never a value. */
export function resolveUrl(ref: string, env: NodeJS.ProcessEnv, what: string): string {
  if (ref.startsWith('env:')) {
    const name = ref.slice(4);
    const value = env[name];
    if (!value) {
      throw new AppError(
        'dependency_unavailable',
        `${what} refers to env:${name}, which is not set in this process's environment; set it and restart`,
      );
    }
    return value;
  }
  return ref;
}

/** The database URL a project's data is dumped from, and the cluster that holds it. */
export function sourceOf(
  registry: ProjectRegistry,
  project: Project,
  env: NodeJS.ProcessEnv,
): { url: string; cluster?: Cluster; schema?: string } {
  if (project.engine === 'v1_dedicated') {
    return { url: resolveUrl(project.databaseUrl!, env, `project ${project.slug} databaseUrl`) };
  }
  const cluster = registry.cluster(project.cluster!);
  if (!cluster) {
    throw new AppError(
      'not_found',
      `project ${project.slug} names cluster "${project.cluster}", which the registry does not define`,
    );
  }
  return {
    url: resolveUrl(cluster.url, env, `cluster ${cluster.name} url`),
    cluster,
    schema: tenantSchemaOf(project.id),
  };
}

/**
 * Which dumps share a source's concurrency limit, and how many may run at once: a cluster's
 * `maxConcurrentDumps` for every tenant on it, one at a time for a dedicated database.
 */
export function dumpAdmissionOf(
  project: Pick<Project, 'slug'>,
  source: { cluster?: Cluster },
): { key: string; slots: number } {
  return source.cluster
    ? { key: `cluster:${source.cluster.name}`, slots: source.cluster.maxConcurrentDumps }
    : { key: `dedicated:${project.slug}`, slots: 1 };
}

/** A cluster as the cluster view and the preflight see it: declared in the registry, or derived. */
export interface ClusterInfo {
  name: string;
  kind: 'shared' | 'dedicated';
  /**
   * A v1 project that names no cluster is a cluster of its own, `dedicated:<slug>`, reached through the
   * project's databaseUrl (the colon keeps it apart from every declared name).
   */
  derived: boolean;
  region?: string;
  labels: Record<string, string>;
  /** The URL reference (literal or env:NAME) the cluster is reached through. */
  url: string;
  maxConcurrentDumps: number;
  projects: Project[];
}

/** The name of the cluster that holds a project: the one it names, or its derived dedicated one. */
export function clusterNameOf(project: Pick<Project, 'cluster' | 'slug'>): string {
  return project.cluster ?? `dedicated:${project.slug}`;
}

/** Every cluster the registry knows, declared ones first (in file order), then one per unplaced v1 project. */
export function clustersOf(registry: ProjectRegistry): ClusterInfo[] {
  const projects = registry.list();
  const declared: ClusterInfo[] = registry.clusters().map((c) => ({
    name: c.name,
    kind: c.kind ?? 'shared',
    derived: false,
    ...(c.region ? { region: c.region } : {}),
    labels: c.labels ?? {},
    url: c.url,
    maxConcurrentDumps: c.maxConcurrentDumps,
    projects: projects.filter((p) => p.cluster === c.name),
  }));
  const derived: ClusterInfo[] = projects
    .filter((p) => p.engine === 'v1_dedicated' && !p.cluster)
    .map((p) => ({
      name: clusterNameOf(p),
      kind: 'dedicated',
      derived: true,
      labels: {},
      url: p.databaseUrl!,
      maxConcurrentDumps: 1,
      projects: [p],
    }));
  return [...declared, ...derived];
}

export { tenantRoleOf, tenantSchemaOf };

export function createStaticRegistry(data: { clusters?: Cluster[]; projects?: Project[] }): ProjectRegistry {
  const parsed = RegistryFileSchema.parse(data);
  const projects = parsed.projects;
  const clusters = parsed.clusters;
  const duplicate = (key: 'id' | 'hash' | 'slug') => {
    const seen = new Set<string>();
    for (const p of projects) {
      if (seen.has(p[key]))
        throw new AppError('config_invalid', `registry: two projects share ${key} "${p[key]}"`);
      seen.add(p[key]);
    }
  };
  duplicate('id');
  duplicate('hash');
  duplicate('slug');
  const clusterNames = new Set<string>();
  for (const c of clusters) {
    if (clusterNames.has(c.name))
      throw new AppError('config_invalid', `registry: two clusters share the name "${c.name}"`);
    clusterNames.add(c.name);
  }
  // The v2 schema is derived from the id's first 12 hex digits: two projects sharing them would share a
  // schema, and one project's backup would then hold the other's data.
  const bySchema = new Map<string, Project>();
  const byDatabase = new Map<string, Project>();
  for (const p of projects) {
    const schema = tenantSchemaOf(p.id);
    const other = bySchema.get(schema);
    if (other) {
      throw new AppError(
        'config_invalid',
        `registry: projects ${other.slug} and ${p.slug} have ids that begin with the same 12 hex digits, so both map to schema ${schema}; give one of them another id`,
      );
    }
    bySchema.set(schema, p);
    if (p.engine === 'v1_dedicated' && p.databaseUrl) {
      const key = databaseRefKey(p.databaseUrl);
      const claimed = byDatabase.get(key);
      if (claimed) {
        // The reference is named only when it is env:NAME: a literal URL may carry a password.
        const what = key.startsWith('env:') ? `the same databaseUrl ${key}` : 'the same literal databaseUrl';
        throw new AppError(
          'config_invalid',
          `registry: v1 projects ${claimed.slug} and ${p.slug} claim ${what}; each v1 project has its own database`,
        );
      }
      byDatabase.set(key, p);
    }
    const cluster = p.cluster ? clusters.find((c) => c.name === p.cluster) : undefined;
    if (p.cluster && !cluster) {
      throw new AppError(
        'config_invalid',
        `registry: project ${p.slug} names unknown cluster "${p.cluster}"`,
      );
    }
    if (cluster && p.engine === 'v2_shared' && (cluster.kind ?? 'shared') !== 'shared') {
      throw new AppError(
        'config_invalid',
        `registry: v2_shared project ${p.slug} names cluster "${cluster.name}", which is a dedicated server; a pooled tenant lives on a shared cluster`,
      );
    }
    if (cluster && p.engine === 'v1_dedicated' && (cluster.kind ?? 'shared') !== 'dedicated') {
      throw new AppError(
        'config_invalid',
        `registry: v1_dedicated project ${p.slug} names cluster "${cluster.name}", which is a shared cluster; name the dedicated server that holds its database (kind "dedicated")`,
      );
    }
  }
  return {
    list: () => projects,
    byHash: (hash) => projects.find((p) => p.hash === hash),
    byId: (id) => projects.find((p) => p.id === id),
    bySlug: (slug) => projects.find((p) => p.slug === slug),
    cluster: (name) => clusters.find((c) => c.name === name),
    clusters: () => clusters,
  };
}

/** Reads and validates FLUX_PROJECTS_FILE; `missing` when it does not exist. Throws config_invalid. */
function readRegistryFile(file: string): { registry: ProjectRegistry; missing: boolean } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return { registry: createStaticRegistry({}), missing: true };
    throw new AppError('config_invalid', `FLUX_PROJECTS_FILE ${file}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new AppError('config_invalid', `FLUX_PROJECTS_FILE ${file} is not valid JSON`);
  }
  const result = RegistryFileSchema.safeParse(json);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new AppError('config_invalid', `FLUX_PROJECTS_FILE ${file} is invalid: ${problems}`);
  }
  return { registry: createStaticRegistry(result.data), missing: false };
}

/**
 * Loads FLUX_PROJECTS_FILE. A missing file is an empty registry (readyz says so) unless `required`; a
 * file that exists but is invalid is a startup error listing the problem.
 */
export function loadFileRegistry(file: string, options: { required?: boolean } = {}): ProjectRegistry {
  const { registry, missing } = readRegistryFile(file);
  if (missing && options.required)
    throw new AppError('config_invalid', `FLUX_PROJECTS_FILE ${file} does not exist`);
  return registry;
}

/**
 * FLUX_PROJECTS_FILE as a registry that reloads. The first load is as strict as loadFileRegistry; a
 * reload validates the new file first and, when it is missing or invalid, keeps the registry in use and
 * logs why (a typo in the file must not empty a running registry).
 */
export function createFileRegistry(file: string, options: { log: Logger }): ReloadableRegistry {
  let current = readRegistryFile(file);
  let loadedAt = new Date().toISOString();
  let refused: RegistryStatus['refused'];

  function reload(reason: string): ReloadOutcome {
    try {
      const next = readRegistryFile(file);
      if (next.missing) throw new AppError('config_invalid', `FLUX_PROJECTS_FILE ${file} does not exist`);
      current = next;
      loadedAt = new Date().toISOString();
      refused = undefined;
      const projects = current.registry.list().length;
      options.log.info({ file, reason, projects }, 'registry reloaded');
      return { ok: true, projects };
    } catch (error) {
      const message = isAppError(error) ? error.message : (error as Error).message;
      refused = { at: new Date().toISOString(), reason, error: message };
      options.log.error(
        { file, reason, error: message, projects: current.registry.list().length },
        'registry reload refused: the registry in use stays until the file is fixed',
      );
      return { ok: false, error: message };
    }
  }

  return {
    list: () => current.registry.list(),
    byHash: (hash) => current.registry.byHash(hash),
    byId: (id) => current.registry.byId(id),
    bySlug: (slug) => current.registry.bySlug(slug),
    cluster: (name) => current.registry.cluster(name),
    clusters: () => current.registry.clusters(),
    reload,
    watch(intervalMs) {
      if (intervalMs <= 0) return () => undefined;
      // Polling, not fs.watch: an editor or a config manager replaces the file by rename, which an
      // inode watch loses; stat polling sees the new file whatever wrote it.
      const onChange = (now: Stats, before: Stats) => {
        if (now.mtimeMs === before.mtimeMs && now.size === before.size && now.ino === before.ino) return;
        reload('file changed');
      };
      watchFile(file, { interval: intervalMs, persistent: false }, onChange);
      return () => unwatchFile(file, onChange);
    },
    status: () => ({
      file,
      projects: current.registry.list().length,
      missing: current.missing,
      loadedAt,
      ...(refused ? { refused } : {}),
    }),
  };
}

/** The project behind a CLI route's `:hash`, validated first; 404 names what to check. */
export function requireProjectByHash(registry: ProjectRegistry, hash: string): Project {
  const project = registry.byHash(parseProjectHash(hash));
  if (!project)
    throw new AppError('not_found', `no project with hash ${hash} in the registry (FLUX_PROJECTS_FILE)`);
  return project;
}
