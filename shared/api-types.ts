// Answers of the operator API that the CLI reads, typed once: the server builds them with these types and
// the CLI parses them with the same ones.

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
