// dump: pg_dump backups of a project into the catalog, the CLI-compatible backups API (create, list,
// show, download; list and download also from the offsite copy), the status room (status/: every
// project's trust and the page that shows it), and the catalog rebuilt from the offsite store's
// manifests (dump is the manifests' one writer).
import path from 'node:path';
import { Readable } from 'node:stream';
import { z } from 'zod';
import type { BackupAnswer, BackupStartedAnswer } from '../../shared/api-types.js';
import { GATE_ARTIFACT_PROOF, rejectionOf } from '../../shared/catalog/catalog.js';
import { upstreamFreshnessOf } from '../../shared/catalog/freshness.js';
import {
  parseBackupId,
  parseClusterName,
  parseProjectHash,
  parseProjectId,
} from '../../shared/catalog/ids.js';
import type { CatalogEntry } from '../../shared/catalog/read-model.js';
import type { Manifest } from '../../shared/catalog/records.js';
import { AppError, isAppError } from '../../shared/errors.js';
import { createKit, readJson } from '../../shared/kit/app.js';
import { requireScopeOf } from '../../shared/kit/auth.js';
import { createLifecycle } from '../../shared/kit/lifecycle.js';
import { type PatientOptions, patientJson } from '../../shared/kit/patient.js';
import type { FunctionApp, Runtime } from '../../shared/kit/runtime.js';
import { checkedStream, openArtifact } from '../../shared/offsite/artifact.js';
import { dirWritableCheck, registryCheck, toolCheck } from '../../shared/readiness.js';
import { type Project, requireProjectByHash } from '../../shared/registry.js';
import { backupPolicyOf, parseDuration } from '../../shared/schedule.js';
import { createClusterViews } from './clusters.js';
import { createDumper, type StartedBackup } from './dumper.js';
import { listOffsite, manifestCheckFor } from './offsite-catalog.js';
import { downloadFromOffsite, lazyOffsiteStore, parseArtifactSource } from './offsite-source.js';
import { createPreflight } from './preflight.js';
import { createCatalogRebuilder } from './rebuild.js';
import { createBackupScheduler } from './schedule.js';
import { registerStatusApi } from './status/api.js';
import { createTrustMetrics } from './trust-metrics.js';

const CreateBody = z.object({ kind: z.enum(['project_db', 'tenant_export']).optional() }).loose();
const PreflightBody = z.object({
  backupNow: z.boolean().optional(),
  /** A duration such as `26h`, `90m`, `7d` for every tenant; each project's own maxAge when absent. */
  maxAge: z.string().max(32).optional(),
  /** How long backupNow waits for replicate and verify, in seconds. */
  waitSeconds: z.number().int().min(1).max(86_400).optional(),
});
const PREFLIGHT_WAIT_SECONDS = 3600;
const RebuildBody = z.object({
  from: z.literal('offsite'),
  projectHash: z.string().optional(),
  allowUnsigned: z.boolean().optional(),
});

export function createApp(rt: Runtime, patience: PatientOptions = {}): FunctionApp {
  const dumper = createDumper(rt);
  const { catalog, registry, config } = rt;
  const clusterViews = createClusterViews(rt, (name) => dumper.queueOf(name));
  const preflight = createPreflight(rt, clusterViews, (project) => startBackup(project));
  const offsiteStore = lazyOffsiteStore(config);
  const rebuilder = createCatalogRebuilder({
    catalog,
    store: offsiteStore,
    log: rt.log,
    metrics: rt.metrics,
    secrets: config.FLUX_MANIFEST_SECRETS,
  });

  const trustMetrics = createTrustMetrics({
    catalog,
    registry,
    config,
    metrics: rt.metrics,
    log: rt.log,
  });
  /** Every backup dump takes starts here: the metrics follow its end, whatever it was. */
  async function startBackup(project: Project, options: { causedBy?: string } = {}): Promise<StartedBackup> {
    const started = await dumper.start(project, options);
    void started.done
      .catch(() => undefined)
      .then(() => trustMetrics.refreshProject(project.id))
      .catch((error) => rt.log.warn({ err: error, projectId: project.id }, 'backup metrics: refresh failed'));
    return started;
  }
  const scheduler = createBackupScheduler({
    config,
    registry,
    catalog,
    dumper,
    startBackup: (project) => startBackup(project),
    log: rt.log,
    metrics: rt.metrics,
  });
  // Verify and replicate write their receipts before they emit: the event is the moment to recompute
  // (a receipt changes no backup count or size: the project's history is not read again).
  const refreshOn = async (event: { data: { projectId: string } }) => {
    await trustMetrics.refreshProject(parseProjectId(event.data.projectId), 'receipts');
    return { status: 202 as const, body: { metrics: 'refreshed' } };
  };

  const kit = createKit({
    name: 'dump',
    config,
    log: rt.log,
    metrics: rt.metrics,
    inbox: rt.inbox,
    outbox: rt.outbox,
    posture: { env: rt.env, registry: rt.registry },
    checks: () => [
      toolCheck('pg_dump', () => rt.env.PATH),
      dirWritableCheck(config.FLUX_BACKUPS_LOCAL_DIR, 'FLUX_BACKUPS_LOCAL_DIR'),
      registryCheck(registry, config.FLUX_PROJECTS_FILE),
    ],
    handlers: {
      'flux.backup.requested': async (event) => {
        const { data } = event;
        const project = data.projectId
          ? registry.byId(parseProjectId(data.projectId))
          : data.projectHash
            ? registry.byHash(parseProjectHash(data.projectHash))
            : undefined;
        if (!project)
          throw new AppError(
            'not_found',
            'flux.backup.requested names no project in the registry (projectId or projectHash)',
          );
        const started = await startBackup(project, { causedBy: event.id });
        return { status: 202, body: { backupId: started.backupId } };
      },
      'flux.backup.verified': refreshOn,
      'flux.backup.verify_failed': refreshOn,
      'flux.backup.unverifiable': refreshOn,
      'flux.backup.replicated': refreshOn,
      'flux.backup.replication_failed': refreshOn,
    },
  });
  const { app, requireScope } = kit;

  app.post('/api/cli/v1/projects/:hash/backups', requireScope('backups:write'), async (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    const body = await readJson(c, CreateBody, { emptyIsObject: true });
    const expected = project.engine === 'v2_shared' ? 'tenant_export' : 'project_db';
    if (body.kind && body.kind !== expected) {
      throw new AppError(
        'bad_request',
        `project ${project.slug} is ${project.engine}: its backups are ${expected}`,
      );
    }
    const started = await startBackup(project);
    const location = `/api/cli/v1/projects/${project.hash}/backups/${started.backupId}`;
    if (/respond-async/i.test(c.req.header('prefer') ?? '')) {
      c.header('Location', location);
      c.header('Preference-Applied', 'respond-async');
      return c.json(
        { backup: { id: started.backupId, status: 'running' }, location } satisfies BackupStartedAnswer,
        202,
      );
    }
    // Upstream's answer: 200 with { backup }; a dump that runs long still answers a client that waits.
    c.header('Location', location);
    c.header('Cache-Control', 'private, no-store');
    return patientJson(
      c,
      started.done.then(({ backup }) => ({ status: 200, body: { backup } })),
      {
        ...patience,
        onLateError: (error) =>
          rt.log.warn(
            { err: error, backupId: started.backupId },
            "backup failed after the answer's headers went out",
          ),
      },
    );
  });

  app.get('/api/cli/v1/projects/:hash/backups', requireScope('backups:read'), async (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    if (parseArtifactSource(c.req.query('source')) === 'offsite') {
      return c.json(await listOffsite(catalog, offsiteStore(), project.id, config.FLUX_MANIFEST_SECRETS));
    }
    // Paged only when asked (?limit=N, then ?before=<the answer's nextBefore>): the upstream CLI reads
    // every row of one answer, as its own control plane gives them.
    const paging = pageOf(c.req.query('limit'), c.req.query('before'));
    const page = paging
      ? await catalog.page(project.id, paging)
      : { entries: await catalog.list(project.id), next: null };
    const { entries } = page;
    const hasBackups = paging
      ? entries.length > 0 || (await catalog.newest(project.id, () => true)) !== undefined
      : entries.length > 0;
    const backups = [];
    for (const entry of entries) backups.push(catalog.toApi(entry, await catalog.checkArtifact(entry)));
    const { maxAgeMs } = backupPolicyOf(project, config);
    const { freshness } = await catalog.trust(project.id, project.slug, new Date(), { maxAgeMs });
    const retention = {
      retentionCount: project.retention?.keepCount ?? config.FLUX_RETENTION_KEEP_COUNT,
      retentionDays: project.retention?.keepDays ?? config.FLUX_RETENTION_KEEP_DAYS,
    };
    // Upstream's list: every artifact was checked against the disk (size, and the SHA-256 when the file
    // changed since its last hash) just now, and the root the rows' relative paths are under.
    c.header('Cache-Control', 'private, no-store');
    if (paging && page.next) {
      const next = new URL(c.req.url);
      next.searchParams.set('before', page.next);
      c.header('Link', `<${next.pathname}${next.search}>; rel="next"`);
    }
    return c.json({
      backups,
      ...(paging ? { nextBefore: page.next } : {}),
      backupVolumeAbsoluteRoot: path.resolve(config.FLUX_BACKUPS_LOCAL_DIR),
      reconciledAt: new Date().toISOString(),
      freshness,
      // The block the upstream flux CLI reads, in its words.
      platformMinimumBackupFreshness: upstreamFreshnessOf(freshness, retention, hasBackups),
    });
  });

  app.get('/api/cli/v1/projects/:hash/backups/:backupId', requireScope('backups:read'), async (c) => {
    const project = requireProjectByHash(registry, c.req.param('hash'));
    const entry = await catalog.get(project.id, parseBackupId(c.req.param('backupId')));
    if (!entry)
      throw new AppError('not_found', `no backup ${c.req.param('backupId')} for project ${project.slug}`);
    const backup = catalog.toApi(entry, await catalog.checkArtifact(entry));
    const progress = dumper.progress(entry.backupId);
    return c.json({
      backup: progress && backup.status === 'running' ? { ...backup, progress } : backup,
    } satisfies BackupAnswer);
  });

  app.get(
    '/api/cli/v1/projects/:hash/backups/:backupId/download',
    requireScope('backups:read'),
    async (c) => {
      const project = requireProjectByHash(registry, c.req.param('hash'));
      const backupId = parseBackupId(c.req.param('backupId'));
      const entry = await catalog.get(project.id, backupId);
      if (parseArtifactSource(c.req.query('source')) === 'offsite') {
        const store = offsiteStore();
        // An untagged stored manifest vouches for nothing unless FLUX_MANIFEST_ALLOW_UNSIGNED says so.
        const check = manifestCheckFor(config.FLUX_MANIFEST_SECRETS, {
          allowUnsigned: config.FLUX_MANIFEST_ALLOW_UNSIGNED,
        });
        return downloadFromOffsite(c, {
          store,
          project,
          backupId,
          manifest: entry?.manifest,
          check,
          identities: rt.ageKeys.identities(),
        });
      }
      const rejected = rejectionOf(entry, 'served');
      if (rejected) throw rejected;
      if (!entry?.manifest)
        throw new AppError('not_found', `no complete backup ${backupId} for project ${project.slug}`);
      const m = entry.manifest;
      // A dump known not to match (its size, a cached hash, replicate's re-hash finding) is refused up front.
      const known = await catalog.checkArtifact(entry);
      if (known.status === 'missing')
        throw new AppError('not_found', `the dump file of backup ${backupId} is missing locally`);
      if (known.status !== 'valid') {
        throw new AppError(
          'artifact_invalid',
          `the local dump of backup ${backupId} does not match its manifest (${known.error ?? known.status}); not served: download the offsite copy (?source=offsite) or take a new backup`,
          { details: { source: 'local', reason: 'artifact_invalid' } },
        );
      }
      const artifact = await openArtifact(entry as CatalogEntry & { manifest: Manifest }, 'local');
      if (!artifact)
        throw new AppError('not_found', `the dump file of backup ${backupId} is missing locally`);
      // Hashed while it streams: bytes that differ from the manifest end the transfer without a clean end
      // of body, so no client takes a corrupt file for a complete one.
      const stream = checkedStream(await artifact.open(), artifact.expected, `local dump ${backupId}`);
      stream.once('error', (error) => {
        const code = isAppError(error) ? error.code : undefined;
        rt.log.warn({ projectId: project.id, backupId, code }, `download cut short: ${error.message}`);
        // The bytes no longer match: hashed again in full, so the lists say so and the next download is
        // refused up front instead of cut short again.
        if (code === 'artifact_invalid')
          void catalog
            .checkArtifact(entry, GATE_ARTIFACT_PROOF)
            .catch((err) =>
              rt.log.warn({ err, backupId }, 'could not re-hash the dump after a cut download'),
            );
      });
      c.header('Content-Type', 'application/octet-stream');
      c.header('Content-Length', String(m.sizeBytes));
      c.header('Content-Disposition', `attachment; filename="${project.slug}-${backupId}.dump"`);
      c.header('X-Flux-Checksum-Sha256', m.sha256);
      c.header('Repr-Digest', `sha-256=:${Buffer.from(m.sha256, 'hex').toString('base64')}:`);
      return c.body(Readable.toWeb(stream) as ReadableStream, 200);
    },
  );

  // backups:write, not admin: the rebuild only adds manifests of the deployment's own backups (the same kind
  // of catalog write as creating a backup), never replaces or removes one and copies no dump.
  app.post('/api/ops/v1/catalog/rebuild', requireScope('backups:write'), async (c) => {
    const body = await readJson(c, RebuildBody);
    const projectIds = body.projectHash ? [requireProjectByHash(registry, body.projectHash).id] : undefined;
    return c.json(
      await rebuilder.rebuild({
        ...(projectIds ? { projectIds } : {}),
        ...(body.allowUnsigned ? { allowUnsigned: true } : {}),
      }),
    );
  });

  registerStatusApi(kit, rt);

  app.get('/api/ops/v1/clusters', requireScope('backups:read'), async (c) =>
    c.json({ clusters: await clusterViews.list() }),
  );

  app.get('/api/ops/v1/clusters/:name', requireScope('backups:read'), async (c) =>
    c.json({ cluster: await clusterViews.show(parseClusterName(c.req.param('name'))) }),
  );

  // Judging needs backups:read; a preflight that takes backups first needs backups:write.
  app.post('/api/ops/v1/clusters/:name/preflight', requireScope('backups:read'), async (c) => {
    const body = await readJson(c, PreflightBody, { emptyIsObject: true });
    const name = parseClusterName(c.req.param('name'));
    clusterViews.info(name);
    const maxAgeMs = body.maxAge === undefined ? undefined : parseDuration(body.maxAge);
    if (body.maxAge !== undefined && maxAgeMs === undefined) {
      throw new AppError(
        'bad_request',
        `maxAge "${body.maxAge.slice(0, 32)}" is not a duration such as 26h, 90m or 7d`,
      );
    }
    if (body.backupNow) requireScopeOf(c.get('token')!, 'backups:write');
    // --backup-now waits for dumps, replicate and verify: a client that waits synchronously still gets it.
    const work = preflight.run(name, {
      ...(maxAgeMs !== undefined ? { maxAgeSeconds: Math.round(maxAgeMs / 1000) } : {}),
      backupNow: body.backupNow === true,
      waitMs: (body.waitSeconds ?? PREFLIGHT_WAIT_SECONDS) * 1000,
      signal: c.req.raw.signal,
    });
    return patientJson(
      c,
      work.then((report) => ({ status: 200, body: { report } })),
      {
        ...patience,
        onLateError: (error) =>
          rt.log.warn({ err: error, cluster: name }, "preflight failed after the answer's headers went out"),
      },
    );
  });

  // Started in this order, stopped in reverse: the schedule and the metrics before the dumps they start
  // and count, the dumps before the outbox that carries their last events, the catalog's cache last.
  const lifecycle = createLifecycle(rt.log)
    .step('catalog cache', undefined, () => rt.catalog.flush())
    // A wrong identity fails here, with the fix, not at the first offsite download.
    .step('age identity', () => rt.ageKeys.checkNewest(offsiteStore, rt.log))
    .step('inbox', () => rt.inbox.start())
    // Recovery's events are enqueued before the outbox starts and delivered once it does.
    .step('recovery', () => dumper.recover())
    .step(
      'outbox',
      () => rt.outbox.start(),
      () => rt.outbox.stop(),
    )
    .step('dumps', undefined, () => dumper.stop())
    .step(
      'trust metrics',
      () => trustMetrics.start(),
      () => trustMetrics.stop(),
    )
    .step(
      'schedule',
      () => scheduler.start(),
      () => scheduler.stop(),
    )
    .step('catalog rebuild', () => {
      if (!config.FLUX_CATALOG_REBUILD_AT_START) return;
      // In the background: a slow or unreachable store must not hold the process's start.
      void rebuilder
        .rebuild({ onlyEmpty: true })
        .catch((error) => rt.log.error({ err: error }, 'start-up catalog rebuild from offsite failed'));
    });

  return {
    name: 'dump',
    app,
    accepts: [
      'flux.backup.requested',
      'flux.backup.verified',
      'flux.backup.verify_failed',
      'flux.backup.unverifiable',
      'flux.backup.replicated',
      'flux.backup.replication_failed',
    ],
    start: () => lifecycle.start(),
    stop: () => lifecycle.stop(),
  };
}

/** Most backups one page of the list holds (?limit). */
export const PAGE_LIMIT_MAX = 1000;

/** The list's paging from its query, or undefined for the whole list; a malformed one is a 400. */
function pageOf(limit: string | undefined, before: string | undefined) {
  if (limit === undefined) {
    if (before !== undefined) throw new AppError('bad_request', 'before= pages a list: give limit= with it');
    return undefined;
  }
  const n = Number(limit);
  if (!/^\d+$/.test(limit) || n < 1 || n > PAGE_LIMIT_MAX)
    throw new AppError(
      'bad_request',
      `limit must be a whole number from 1 to ${PAGE_LIMIT_MAX}, not ${JSON.stringify(limit.slice(0, 40))}`,
    );
  return { limit: n, before: before === undefined ? undefined : parseBackupId(before) };
}
