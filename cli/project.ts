// Turning -p <slug> into the project's hash (GET /api/ops/v1/projects, the registry's list; --hash skips
// the lookup) and --latest into a backup id.
import type {
  ApiProject,
  BackupAnswer,
  ProjectsAnswer,
  StatusAnswer,
  StatusRow,
} from '../shared/api-types.js';
import { AppError } from '../shared/errors.js';
import type { BackupRef, ProjectRef } from './args.js';
import { type ApiClient, ApiError } from './http.js';

/**
 * A project of the status answer as the CLI reads it: the server's own row (StatusRow), whose later
 * fields (freshness, schedule, findings, …) a server from before them leaves out (`--check` answers
 * UNKNOWN without freshness).
 */
export type ProjectStatus = Pick<StatusRow, 'id' | 'slug' | 'hash' | 'tier' | 'message' | 'labels'> &
  Partial<Omit<StatusRow, 'id' | 'slug' | 'hash' | 'tier' | 'message' | 'labels'>>;

type BackupCore = 'id' | 'kind' | 'status' | 'sizeBytes' | 'checksumSha256' | 'createdAt' | 'completedAt';

/**
 * A backup row as the CLI reads it: the server's own (ApiBackup, BackupAnswer), whose later fields (the
 * `…Outcome` words, per-copy verifications, encryption) a server from before them leaves out.
 */
export type ApiBackup = Pick<BackupAnswer['backup'], BackupCore> &
  Partial<Omit<BackupAnswer['backup'], BackupCore>>;

export interface ResolvedProject {
  slug: string;
  hash: string;
}

export async function fetchStatus(client: ApiClient): Promise<ProjectStatus[]> {
  const answer = await client.json<{ projects: ProjectStatus[] } & Omit<StatusAnswer, 'projects'>>(
    'GET',
    '/api/ops/v1/status',
  );
  return answer.body.projects ?? [];
}

/**
 * The registry's projects from the cheap lookup (GET /api/ops/v1/projects); a deployment from before it
 * answers 404 there, and then the status list (which names slug and hash too) is read instead.
 */
export async function fetchProjects(client: ApiClient): Promise<Array<Pick<ApiProject, 'slug' | 'hash'>>> {
  try {
    const answer = await client.json<ProjectsAnswer>('GET', '/api/ops/v1/projects');
    return answer.body.projects ?? [];
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
    return fetchStatus(client);
  }
}

/**
 * The project's slug and hash. With --hash no lookup is made (the slug shown is the hash unless -p is
 * also given) unless `needSlug` demands the real slug.
 */
export async function resolveProject(
  client: ApiClient,
  ref: ProjectRef,
  options: { needSlug?: boolean } = {},
): Promise<ResolvedProject> {
  if (ref.hash && (ref.slug || !options.needSlug)) return { hash: ref.hash, slug: ref.slug ?? ref.hash };
  let projects: Array<Pick<ApiProject, 'slug' | 'hash'>>;
  try {
    projects = await fetchProjects(client);
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      throw new ApiError(
        `${error.message}; looking up a slug needs it (pass --hash <7hex> to skip the lookup)`,
        error.status,
        error.code,
        error.body,
      );
    }
    throw error;
  }
  const found = ref.hash
    ? projects.find((p) => p.hash === ref.hash)
    : projects.find((p) => p.slug === ref.slug);
  if (!found) {
    const known = projects.map((p) => p.slug).slice(0, 20);
    const what = ref.hash ? `hash ${ref.hash}` : `slug ${ref.slug}`;
    throw new AppError(
      'not_found',
      `no project with ${what} at ${client.endpoint.base} (${known.length ? `known: ${known.join(', ')}` : 'its registry lists no projects'}); check -p, or FLUX_API_BASE if this is the wrong deployment`,
    );
  }
  return { slug: found.slug, hash: found.hash };
}

export type BackupSource = 'local' | 'offsite';

/** The offsite list's answer: rows from the store's manifests, and the manifests it refused. */
export interface BackupList {
  backups: ApiBackup[];
  /** The project's freshness (the local list; absent from an older server and from the offsite list). */
  freshness?: StatusRow['freshness'];
  invalid?: Array<{ id: string; key: string; error: string }>;
  store?: string;
}

export async function fetchBackupList(
  client: ApiClient,
  project: ResolvedProject,
  source: BackupSource = 'local',
): Promise<BackupList> {
  const answer = await client.json<BackupList>('GET', `/api/cli/v1/projects/${project.hash}/backups`, {
    ...(source === 'offsite' ? { query: { source } } : {}),
  });
  return { ...answer.body, backups: answer.body.backups ?? [] };
}

export async function listBackups(
  client: ApiClient,
  project: ResolvedProject,
  source: BackupSource = 'local',
): Promise<ApiBackup[]> {
  return (await fetchBackupList(client, project, source)).backups;
}

/**
 * --id as given, or --latest: the newest completed backup (with its file present when `needFile`: the
 * local file, or with `source: 'offsite'` the offsite copy, picked from the store's own list, so a
 * fresh host whose local catalog is empty still finds it).
 */
export async function resolveBackup(
  client: ApiClient,
  project: ResolvedProject,
  ref: BackupRef,
  options: { needFile?: boolean; source?: BackupSource } = {},
): Promise<{ id: string; backup?: ApiBackup }> {
  if ('id' in ref) return { id: ref.id };
  const offsite = options.source === 'offsite';
  const backups = await listBackups(client, project, offsite ? 'offsite' : 'local');
  const hasFile = (b: ApiBackup) =>
    offsite ? b.offsiteStatus === 'complete' : b.localArtifactStatus !== 'missing';
  const newest = backups.find((b) => b.status === 'complete' && (!options.needFile || hasFile(b)));
  if (!newest) {
    const where = offsite ? ' in the offsite store' : '';
    const file = options.needFile ? (offsite ? ' with its offsite copy' : ' with its file present') : '';
    throw new AppError(
      'not_found',
      `project ${project.slug} has no completed backup${where}${file}; create one: flux-ops backup create -p ${project.slug}`,
    );
  }
  return { id: newest.id, backup: newest };
}
