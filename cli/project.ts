// Turning -p <slug> into the project's hash (GET /api/ops/v1/status lists slug and hash; --hash skips
// the lookup) and --latest into a backup id.
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
  offsiteStatus?: string;
  artifactValidationStatus?: string;
  restoreVerificationStatus?: string;
  restoreVerificationOutcome?: string;
  restoreVerificationAt?: string | null;
  restoreVerificationError?: string | null;
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
 * The project's slug and hash. With --hash no lookup is made (the slug shown is the hash unless -p is
 * also given) unless `needSlug` demands the real slug.
 */
export async function resolveProject(
  client: ApiClient,
  ref: ProjectRef,
  options: { needSlug?: boolean } = {},
): Promise<ResolvedProject> {
  if (ref.hash && (ref.slug || !options.needSlug)) return { hash: ref.hash, slug: ref.slug ?? ref.hash };
  let projects: ProjectStatus[];
  try {
    projects = await fetchStatus(client);
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

export async function listBackups(client: ApiClient, project: ResolvedProject): Promise<ApiBackup[]> {
  const answer = await client.json<{ backups: ApiBackup[] }>(
    'GET',
    `/api/cli/v1/projects/${project.hash}/backups`,
  );
  return answer.body.backups ?? [];
}

/** --id as given, or --latest: the newest completed backup (with its file present when `needFile`). */
export async function resolveBackup(
  client: ApiClient,
  project: ResolvedProject,
  ref: BackupRef,
  options: { needFile?: boolean } = {},
): Promise<{ id: string; backup?: ApiBackup }> {
  if ('id' in ref) return { id: ref.id };
  const backups = await listBackups(client, project);
  const newest = backups.find(
    (b) => b.status === 'completed' && (!options.needFile || b.localArtifactStatus !== 'missing'),
  );
  if (!newest) {
    throw new AppError(
      'not_found',
      `project ${project.slug} has no completed backup${options.needFile ? ' with its file present' : ''}; create one: flux-ops backup create -p ${project.slug}`,
    );
  }
  return { id: newest.id, backup: newest };
}
