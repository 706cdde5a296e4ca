// The two ends of a migration, from the registry: the pooled source and the dedicated target.
import { AppError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { parsePgUrl } from '../../shared/pg/conn.js';
import { dumpAdmissionOf, type Project, resolveUrl, sourceOf, tenantRoleOf } from '../../shared/registry.js';

export interface Ends {
  sourceUrl: string;
  /** The source's dump slots, shared with every dump function dumping from it. */
  admission: { key: string; slots: number };
  cluster: string;
  schema: string;
  tenantRole: string;
  targetUrl: string;
}

/** The ends of `project`; refuses (422) a project that is not pooled or has no dedicatedUrl. */
export function endsOf(rt: Pick<Runtime, 'registry' | 'env'>, project: Project): Ends {
  if (project.engine !== 'v2_shared') {
    throw new AppError(
      'unprocessable',
      `project ${project.slug} is ${project.engine}: migrate moves v2_shared (pooled) tenants to a dedicated database`,
    );
  }
  if (!project.dedicatedUrl) {
    throw new AppError(
      'unprocessable',
      `project ${project.slug} has no dedicatedUrl: add "dedicatedUrl": "env:NAME" to its entry in FLUX_PROJECTS_FILE, set NAME, and restart migrate`,
    );
  }
  const source = sourceOf(rt.registry, project, rt.env);
  return {
    sourceUrl: source.url,
    admission: dumpAdmissionOf(project, source),
    cluster: source.cluster?.name ?? '',
    schema: source.schema!,
    tenantRole: tenantRoleOf(project.id),
    targetUrl: resolveUrl(project.dedicatedUrl, rt.env, `project ${project.slug} dedicatedUrl`),
  };
}

/** Where a URL points, without its credentials: what an answer may show. */
export function whereOf(url: string): { host: string; port: number; database: string } {
  const t = parsePgUrl(url);
  return { host: t.host, port: t.port, database: t.database };
}
