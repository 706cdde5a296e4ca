// Turning -p <slug> into the project's hash (GET /api/ops/v1/projects, the registry's list; --hash skips
// the lookup) and --latest into a backup id.
import type { ApiProject, ProjectsAnswer } from '../shared/api-types.js';
import { AppError } from '../shared/errors.js';
import type { BackupRef, ProjectRef } from './args.js';
import { type ApiClient, ApiError } from './http.js';

export interface ProjectStatus {
  id: string;
  slug: string;
  hash: string;
  engine?: string;
  tier: string;
  trustworthy?: boolean;
  message: string;
  next?: string;
  labels: { artifactValidated: boolean; restoreVerified: boolean; offsiteReplicated: boolean };
  backupId?: string;
  backup?: ApiBackup;
}

export interface ApiBackup {
  id: string;
  kind: string;
  status: string;
  sizeBytes: number | null;
  checksumSha256: string | null;
  createdAt: string;
  completedAt: string | null;
  localArtifactStatus?: string;
  /** Upstream's words (complete, artifact_valid, …); the `…Outcome` fields are ours. */
  offsiteStatus?: string;
  offsiteOutcome?: string;
  /** How the offsite copy is stored: age and the public keys whose identities open it, or null (plain). */
  offsiteEncryption?: { format: string; recipients: string[] } | null;
  artifactValidationStatus?: string;
  artifactValidationOutcome?: string;
  restoreVerificationStatus?: string;
  restoreVerificationOutcome?: string;
  restoreVerificationAt?: string | null;
  restoreVerificationError?: string | null;
  /** The copies proven restorable (each by its own verification), and each copy's verification. */
  verifiedCopies?: string[];
  copyVerifications?: Record<
    string,
    { status: string; finishedAt: string; error: string | null; proven: boolean } | null
  >;
  error?: string | null;
  /** While a backup runs: what the dump is doing and how many bytes it wrote. */
  progress?: { stage: string; bytes: number; startedAt?: string };
  [key: string]: unknown;
}

export interface ResolvedProject {
  slug: string;
  hash: string;
}

export async function fetchStatus(client: ApiClient): Promise<ProjectStatus[]> {
  const answer = await client.json<{ projects: ProjectStatus[] }>('GET', '/api/ops/v1/status');
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
