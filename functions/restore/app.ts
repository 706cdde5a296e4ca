// restore: recover a catalogued backup into a real database — beside the live one (`new`) or in its place
// (`in_place`: gated, a safety backup first, proven against the manifest before it goes live, undoable) —
// from the local or the offsite copy; the CLI-compatible routes and the run's progress.
import { parseBackupId } from '../../shared/catalog/ids.js';
import { AppError, ERROR_TABLE } from '../../shared/errors.js';
import { createKit, readJson } from '../../shared/kit/app.js';
import { createLifecycle } from '../../shared/kit/lifecycle.js';
import type { FunctionApp, Runtime } from '../../shared/kit/runtime.js';
import { lazyOffsiteStore } from '../../shared/offsite/index.js';
import { dirWritableCheck, registryCheck, toolCheck } from '../../shared/readiness.js';
import { type Project, requireProjectByHash } from '../../shared/registry.js';
import { RestoreBodySchema } from './plan.js';
import { isRestoreId, type RestoreRecord } from './record.js';
import { createRestorer } from './restorer.js';

/** The run as the API shows it: everything in the record but what only recovery needs. */
function restoreView(project: Pick<Project, 'hash'>, record: RestoreRecord & { progress?: unknown }) {
  const { changes: _changes, ...rest } = record;
  return {
    id: record.restoreId,
    ...rest,
    seconds: Number(record.stages.reduce((n, s) => n + s.seconds, 0).toFixed(3)),
    location: `/api/cli/v1/projects/${project.hash}/restores/${record.restoreId}`,
    ...(record.created
      ? {
          connectionHint: `the restored copy is database ${record.created} on the target server (same credentials as the target URL)`,
        }
      : {}),
  };
}

export function createApp(rt: Runtime): FunctionApp {
  const { config, registry } = rt;
  const restorer = createRestorer(rt);
  const kit = createKit({
    name: 'restore',
    config,
    log: rt.log,
    metrics: rt.metrics,
    inbox: rt.inbox,
    outbox: rt.outbox,
    posture: { env: rt.env, registry: rt.registry },
    checks: () => [
      toolCheck('pg_restore', () => rt.env.PATH),
      dirWritableCheck(config.FLUX_STATE_DIR, 'FLUX_STATE_DIR'),
      dirWritableCheck(config.FLUX_BACKUPS_LOCAL_DIR, 'FLUX_BACKUPS_LOCAL_DIR'),
      registryCheck(registry, config.FLUX_PROJECTS_FILE),
    ],
    handlers: {},
  });
  const { app, requireScope } = kit;

  app.post('/api/cli/v1/projects/:hash/backups/:backupId/restore', requireScope('restore'), async (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    const backupId = parseBackupId(c.req.param('backupId'));
    const body = await readJson(c, RestoreBodySchema, { emptyIsObject: true });
    if (body.dryRun) return c.json(await restorer.plan(project, backupId, body));
    const started = await restorer.start(project, backupId, body);
    const view = restoreView(project, started.record);
    c.header('Location', view.location);
    if (/respond-async/i.test(c.req.header('prefer') ?? '')) {
      c.header('Preference-Applied', 'respond-async');
      return c.json({ ok: true, restore: view }, 202);
    }
    const final = await started.done;
    if (final.status === 'completed') return c.json({ ok: true, restore: restoreView(project, final) });
    const code = (final.reason ?? 'restore_failed') as keyof typeof ERROR_TABLE;
    const status = (ERROR_TABLE[code] ?? ERROR_TABLE.restore_failed).status;
    return c.json(
      { ok: false, error: final.error, code, restore: restoreView(project, final) },
      status as 500,
    );
  });

  app.get('/api/cli/v1/projects/:hash/restores/:restoreId', requireScope('restore'), async (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    const restoreId = c.req.param('restoreId');
    if (!isRestoreId(restoreId)) throw new AppError('invalid_id', 'a restore id is a ULID (26 characters)');
    const record = await restorer.get(restoreId);
    if (!record || record.projectId !== project.id)
      throw new AppError('not_found', `no restore ${restoreId} of project ${project.slug}`);
    return c.json({ restore: restoreView(project, record) });
  });

  app.post(
    '/api/cli/v1/projects/:hash/restores/:restoreId/drop-previous',
    requireScope('restore'),
    async (c) => {
      const project = requireProjectByHash(registry, c.req.param('hash'));
      const restoreId = c.req.param('restoreId');
      if (!isRestoreId(restoreId)) throw new AppError('invalid_id', 'a restore id is a ULID (26 characters)');
      const record = await restorer.dropPrevious(project, restoreId);
      return c.json({ ok: true, restore: restoreView(project, record) });
    },
  );

  const lifecycle = createLifecycle(rt.log)
    .step('catalog', undefined, () => rt.catalog.flush())
    // A wrong identity fails here, with the fix, not at the first restore from offsite.
    .step('age keys', () => rt.ageKeys.checkNewest(lazyOffsiteStore(rt.config), rt.log))
    .step('inbox', () => rt.inbox.start())
    .step(
      'outbox',
      () => rt.outbox.start(),
      () => rt.outbox.stop(),
    )
    // Recovery also starts the sweep of set-aside copies; restorer.stop() ends it.
    .step('recovery', () => restorer.recover());

  return {
    name: 'restore',
    app,
    accepts: [],
    start: () => lifecycle.start(),
    async stop() {
      // Runs are started by requests, which the app answers whether or not start() ran, so they are
      // drained (finished, or cancelled and put back) before anything the lifecycle started stops.
      await restorer.stop();
      await lifecycle.stop();
    },
  };
}
