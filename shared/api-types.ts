// Answers of the operator API that the CLI reads, typed once: the server builds them with these types and
// the CLI parses them with the same ones.
import type { ApiBackup, ProjectTrust } from './catalog/read-model.js';

/** One project of the registry: what turns a slug into the hash the CLI routes use. */
export interface ApiProject {
  id: string;
  slug: string;
  hash: string;
  engine: 'v1_dedicated' | 'v2_shared';
}

/** GET /api/ops/v1/projects: the registry's projects, read from the registry alone (no catalog reads). */
export interface ProjectsAnswer {
  projects: ApiProject[];
}

/** A backup row of the CLI-compatible API (list, show, create), built by the read model. */
export type { ApiBackup } from './catalog/read-model.js';

/** What dump is doing for a backup that is still running. */
export interface BackupProgress {
  stage: 'queued' | 'dumping' | 'finishing';
  bytes: number;
  startedAt: string;
}

/** GET …/backups/:id (and a create that waited): the row, with its progress while it runs. */
export interface BackupAnswer {
  backup: ApiBackup & { progress?: BackupProgress };
}

/** POST …/backups with `Prefer: respond-async`: the started backup, and where to poll it. */
export interface BackupStartedAnswer {
  backup: Pick<ApiBackup, 'id'> & { status: 'running' };
  location: string;
}

/** One project of GET /api/ops/v1/status: the registry's facts, its schedule and its trust. */
export interface StatusRow extends ApiProject, ProjectTrust {
  /** The backup schedule's text (`daily 03:00`), or null when the project has none. */
  schedule: string | null;
}

/** GET /api/ops/v1/status: every project of the registry. */
export interface StatusAnswer {
  projects: StatusRow[];
}
