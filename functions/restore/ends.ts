// Where a restore reads from and writes to: the project's own server (its v2 cluster or v1 database) and
// the target (the same server, or `targetUrl` given as env:NAME), resolved from the registry and the
// environment. No URL is ever recorded; a run record names `registry` or the env:NAME it came from.
import { VARS } from '../../shared/config.js';
import { AppError } from '../../shared/errors.js';
import { parsePgUrl } from '../../shared/pg/conn.js';
import {
  type Project,
  type ProjectRegistry,
  resolveUrl,
  sourceOf,
  tenantRoleOf,
} from '../../shared/registry.js';

export interface Ends {
  engine: Project['engine'];
  /** The project's own server: the v2 cluster's URL or the v1 database URL. */
  serverUrl: string;
  /** v1: the live database; v2: the cluster's database holding the tenant schemas. */
  liveDatabase: string;
  /** v2: the tenant schema. */
  schema?: string | undefined;
  cluster?: string | undefined;
  /** Where the restore goes (a server URL; mode new creates its database there). */
  targetUrl: string;
  /** `registry`, or the `env:NAME` the target URL was read from. */
  targetRef: string;
  tenantRole: string;
}

export function endsOf(
  registry: ProjectRegistry,
  project: Project,
  env: NodeJS.ProcessEnv,
  targetRef: string | undefined,
): Ends {
  const source = sourceOf(registry, project, env);
  const ref = targetRef ?? 'registry';
  const targetUrl = ref === 'registry' ? source.url : targetUrlOf(ref, env, project.slug);
  return {
    engine: project.engine,
    serverUrl: source.url,
    liveDatabase: parsePgUrl(source.url).database,
    schema: source.schema,
    cluster: source.cluster?.name,
    targetUrl,
    targetRef: ref,
    tenantRole: tenantRoleOf(project.id),
  };
}

/**
 * A request names a variable of this process, so it must not be able to read one that is not a URL: our
 * own configuration (tokens, secrets) is refused by name, and a value that is not a postgres:// URL is
 * refused without a word of it.
 */
function targetUrlOf(ref: string, env: NodeJS.ProcessEnv, slug: string): string {
  const name = ref.slice('env:'.length);
  if (Object.hasOwn(VARS, name)) {
    throw new AppError(
      'bad_request',
      `targetUrl ${ref} names a flux-ops setting, not a database URL: put the target's URL in a variable of its own`,
    );
  }
  const url = resolveUrl(ref, env, `targetUrl of the restore of ${slug}`);
  try {
    parsePgUrl(url);
  } catch {
    throw new AppError(
      'bad_request',
      `targetUrl ${ref} does not hold a valid postgres:// URL (value not shown)`,
    );
  }
  return url;
}

/** An in-place restore replaces the live copy on the project's own server, never somewhere else. */
export function requireOwnServer(ends: Ends, slug: string): void {
  if (ends.targetRef !== 'registry') {
    throw new AppError(
      'unprocessable',
      `an in-place restore of ${slug} replaces the live copy on its own server; targetUrl is for "mode": "new" only`,
    );
  }
}

/** Where the restore actually runs, for plans and answers: never credentials. */
export function whereOf(url: string): { host: string; port: number; database: string } {
  const t = parsePgUrl(url);
  return { host: t.host, port: t.port, database: t.database };
}
