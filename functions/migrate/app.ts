// migrate: the CLI-compatible pooled → dedicated move (`POST /api/cli/v1/migrate`) and its readiness: the
// PostgreSQL client tools on PATH of *this* process with the majors the registered servers need.
import { z } from 'zod';
import { AppError, isAppError } from '../../shared/errors.js';
import { createKit, readJson } from '../../shared/kit/app.js';
import { createLifecycle } from '../../shared/kit/lifecycle.js';
import type { FunctionApp, Runtime } from '../../shared/kit/runtime.js';
import { type CheckOutcome, dirWritableCheck, foundTool, type ReadyCheck } from '../../shared/readiness.js';
import { requireProjectByHash, resolveUrl, tenantSchemaOf } from '../../shared/registry.js';
import type { ToolInfo } from '../../shared/tools.js';
import { createMigrator } from './migrator.js';
import { MIGRATE_TOOLS, type MigrateTool, toolVersionProblems } from './plan.js';
import { probeServer, requireMigrateTools } from './preflight.js';

const MigrateBody = z.strictObject({
  slug: z.string().min(1).max(63),
  hash: z.string().min(1).max(64),
  dryRun: z.boolean().default(false),
  yes: z.boolean().default(false),
  dumpOnly: z.boolean().default(false),
  lockWrites: z.boolean().default(false),
  skipBackupCheck: z.boolean().default(false),
  // The upstream flux CLI's other keys (it sends them all, with its defaults). flux-ops moves and validates
  // the data and never switches the control plane's catalog mode, so every run is "staged" in upstream's
  // sense: `staged` either way is accepted. It never touches the tenant's JWT secret nor drops the source.
  staged: z.boolean().optional(),
  preserveJwtSecret: z.boolean().optional(),
  newJwtSecret: z.boolean().optional(),
  noLockWrites: z.boolean().optional(),
  dropSourceAfter: z.boolean().optional(),
});
type MigrateBody = z.infer<typeof MigrateBody>;

/** What an upstream key asks for that flux-ops does not do, named with the key; none when all can be honoured. */
export function unsupportedMigrateKeys(body: MigrateBody): string[] {
  const out: string[] = [];
  if (body.newJwtSecret === true)
    out.push(
      "newJwtSecret: true (flux-ops never rotates the tenant's JWT secret: rotate it in the control plane)",
    );
  if (body.preserveJwtSecret === false)
    out.push("preserveJwtSecret: false (flux-ops always keeps the tenant's JWT secret as it is)");
  if (body.dropSourceAfter === true)
    out.push(
      'dropSourceAfter: true (flux-ops only ever reads the source: drop the pooled tenant by hand once the move is checked)',
    );
  if (body.noLockWrites === true && body.lockWrites)
    out.push('noLockWrites: true with lockWrites: true (say one of them)');
  return out;
}

/** Reachability results are reused this long, so a readiness probe every few seconds stays cheap. */
const REACHABILITY_TTL_MS = 30_000;
/** /readyz waits at most this long for server probes before answering with what it has. */
const READYZ_PROBE_WAIT_MS = 3_000;

type Reach = { ok: true; serverVersion: string; major: number } | { ok: false; error: string };

export function createApp(rt: Runtime): FunctionApp {
  const { config, registry } = rt;
  const migrator = createMigrator(rt);
  const reachCache = new Map<string, { at: number; result: Promise<Reach> }>();

  function reach(key: string, url: () => string, what: string): Promise<Reach> {
    const cached = reachCache.get(key);
    if (cached && Date.now() - cached.at < REACHABILITY_TTL_MS) return cached.result;
    const result = (async (): Promise<Reach> => {
      try {
        return { ok: true, ...(await probeServer(url(), what)) };
      } catch (error) {
        return { ok: false, error: isAppError(error) ? error.message : (error as Error).message };
      }
    })();
    reachCache.set(key, { at: Date.now(), result });
    return result;
  }

  /** Every migratable project's source cluster and dedicated target, probed (cached) for readiness. */
  function servers() {
    const sources = new Map<string, Promise<Reach>>();
    const targets = new Map<string, Promise<Reach>>();
    for (const project of registry.list()) {
      if (project.engine !== 'v2_shared' || !project.dedicatedUrl || !project.cluster) continue;
      const cluster = registry.cluster(project.cluster);
      if (cluster && !sources.has(cluster.name)) {
        sources.set(
          cluster.name,
          reach(
            `source:${cluster.name}`,
            () => resolveUrl(cluster.url, rt.env, `cluster ${cluster.name} url`),
            `cluster ${cluster.name}`,
          ),
        );
      }
      const dedicatedUrl = project.dedicatedUrl;
      targets.set(
        project.slug,
        reach(
          `target:${project.slug}`,
          () => resolveUrl(dedicatedUrl, rt.env, `project ${project.slug} dedicatedUrl`),
          `the dedicated database of ${project.slug}`,
        ),
      );
    }
    return { sources, targets };
  }

  async function settle(p: Promise<Reach>): Promise<Reach | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), READYZ_PROBE_WAIT_MS);
    });
    try {
      return await Promise.race([p, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  function readinessChecks(): ReadyCheck[] {
    const { sources, targets } = servers();
    const majors = (async () => {
      const max = async (m: Map<string, Promise<Reach>>) => {
        const results = await Promise.all([...m.values()].map(settle));
        const found = results.flatMap((r) => (r?.ok ? [r.major] : []));
        return found.length > 0 ? Math.max(...found) : undefined;
      };
      return { source: await max(sources), target: await max(targets) };
    })();
    // One lookup of all three tools per request, so pg_restore is checked against the pg_dump found.
    const tools = (async () => {
      const m = await majors;
      const found: Partial<Record<MigrateTool, ToolInfo>> = {};
      const errors: Partial<Record<MigrateTool, AppError>> = {};
      for (const tool of MIGRATE_TOOLS) {
        try {
          found[tool] = (await requireMigrateTools(rt.env.PATH, [tool], m))[tool];
        } catch (error) {
          errors[tool] = isAppError(error) ? error : new AppError('internal', (error as Error).message);
        }
      }
      for (const p of toolVersionProblems(found, m.source, m.target)) {
        errors[p.tool] ??= new AppError('tool_version', `migrate preflight: ${p.message}`);
      }
      return { found, errors };
    })();
    const toolCheck = (tool: MigrateTool): ReadyCheck => ({
      name: `tool:${tool}`,
      async run(): Promise<CheckOutcome> {
        const { found, errors } = await tools;
        const error = errors[tool];
        if (error) throw error;
        return foundTool(found[tool]!);
      },
    });
    const reachCheck = (name: string, p: Promise<Reach>): ReadyCheck => ({
      name,
      optional: true,
      async run(): Promise<CheckOutcome> {
        const r = await settle(p);
        if (!r) return { ok: false, detail: `no answer within ${READYZ_PROBE_WAIT_MS} ms (still probing)` };
        return r.ok
          ? { ok: true, detail: `reachable, PostgreSQL ${r.serverVersion}`, serverVersion: r.serverVersion }
          : { ok: false, detail: r.error };
      },
    });
    return [
      ...MIGRATE_TOOLS.map(toolCheck),
      dirWritableCheck(config.FLUX_STATE_DIR, 'FLUX_STATE_DIR'),
      {
        name: 'registry',
        async run() {
          const n = registry.list().filter((p) => p.engine === 'v2_shared' && p.dedicatedUrl).length;
          return {
            ok: true,
            detail: `${n} project${n === 1 ? '' : 's'} with a dedicatedUrl in ${config.FLUX_PROJECTS_FILE}`,
            projects: n,
          };
        },
      },
      ...[...sources].map(([name, p]) => reachCheck(`source:${name}`, p)),
      ...[...targets].map(([slug, p]) => reachCheck(`target:${slug}`, p)),
    ];
  }

  const kit = createKit({
    name: 'migrate',
    config,
    log: rt.log,
    metrics: rt.metrics,
    inbox: rt.inbox,
    outbox: rt.outbox,
    posture: { env: rt.env, registry: rt.registry },
    checks: readinessChecks,
    handlers: {},
  });
  const { app, requireScope } = kit;

  app.post('/api/cli/v1/migrate', requireScope('migrate'), async (c) => {
    const body = await readJson(c, MigrateBody);
    const unsupported = unsupportedMigrateKeys(body);
    if (unsupported.length > 0) {
      throw new AppError(
        'unprocessable',
        `flux-ops migrate cannot do what was asked: ${unsupported.join('; ')}`,
        {
          details: { keys: unsupported.map((u) => u.split(':')[0]) },
        },
      );
    }
    const project = requireProjectByHash(registry, body.hash);
    if (project.slug !== body.slug) {
      throw new AppError(
        'bad_request',
        `hash ${body.hash} is project ${project.slug}, not ${body.slug}: slug and hash must name the same project`,
      );
    }
    const options = {
      dryRun: body.dryRun,
      yes: body.yes,
      dumpOnly: body.dumpOnly,
      lockWrites: body.lockWrites,
      skipBackupCheck: body.skipBackupCheck,
    };
    const answer = options.dryRun
      ? await migrator.plan(project, options)
      : await migrator.run(project, options);
    return c.json(answer.body, answer.status as 200);
  });

  // What the upstream flux CLI asks before a migration: the project and its mode, in upstream's words.
  app.get('/api/cli/v1/projects/:hash', requireScope('migrate'), (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    return c.json({
      slug: project.slug,
      hash: project.hash,
      mode: project.engine,
      // A v1 database's PostgREST schema is the tenant's own configuration, not known here.
      ...(project.engine === 'v2_shared' ? { apiSchema: tenantSchemaOf(project.id) } : {}),
    });
  });

  app.get('/api/cli/v1/migrate/:hash', requireScope('migrate'), async (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    const run = await migrator.lastRun(project.id);
    if (!run) throw new AppError('not_found', `no migration of ${project.slug} is recorded`);
    return c.json({ run });
  });

  const lifecycle = createLifecycle(rt.log)
    .step('catalog', undefined, () => rt.catalog.flush())
    .step('inbox', () => rt.inbox.start())
    .step('recovery', () => migrator.recover())
    .step(
      'outbox',
      () => rt.outbox.start(),
      () => rt.outbox.stop(),
    );

  return {
    name: 'migrate',
    app,
    accepts: [],
    start: () => lifecycle.start(),
    async stop() {
      // Runs are started by requests, which the app answers whether or not start() ran, so they are
      // drained (finished, or cancelled and rolled back) before anything the lifecycle started stops.
      await migrator.stop();
      await lifecycle.stop();
    },
  };
}
