// probe: synthetic HTTP(S) probes of every tenant API through the gateway (Host and SNI = the tenant
// host, explicit CA trust), blackbox_exporter metrics, transition events, on a jittered schedule and on
// demand.
import { z } from 'zod';
import { isSlug } from '../../shared/catalog/ids.js';
import { redactUrl } from '../../shared/config.js';
import { AppError } from '../../shared/errors.js';
import { createKit, readJson } from '../../shared/kit/app.js';
import { createLifecycle } from '../../shared/kit/lifecycle.js';
import type { FunctionApp, Runtime } from '../../shared/kit/runtime.js';
import { registryCheck, warningOutcome } from '../../shared/readiness.js';
import { createMonitor } from './monitor.js';
import { createProber, type Prober } from './prober.js';
import { createScheduler } from './scheduler.js';
import { type CaTrust, loadTrust } from './trust.js';

const RunBody = z.object({ slug: z.string().min(1).max(128).optional() }).loose();

export interface ProbeAppOptions {
  /** Read once by the process edge; loaded from NODE_EXTRA_CA_CERTS and FLUX_PROBE_CA_FILE if absent. */
  trust?: CaTrust;
  prober?: Prober;
}

export function createApp(rt: Runtime, options: ProbeAppOptions = {}): FunctionApp {
  const { config, registry, log } = rt;
  const trust = options.trust ?? loadTrust({ env: rt.env, caFile: config.FLUX_PROBE_CA_FILE });
  const prober = options.prober ?? createProber({ trust, timeoutMs: config.FLUX_PROBE_TIMEOUT_MS });
  const monitor = createMonitor(rt, prober);
  const scheduler = createScheduler({
    intervalMs: config.FLUX_PROBE_INTERVAL_MS,
    run: () => monitor.runAll(),
    log,
  });
  const gateway = config.FLUX_TENANT_PROBE_GATEWAY_URL;

  const kit = createKit({
    name: 'probe',
    config,
    log,
    metrics: rt.metrics,
    inbox: rt.inbox,
    outbox: rt.outbox,
    posture: { env: rt.env },
    checks: () => [
      {
        name: 'target',
        async run() {
          if (gateway) return { ok: true, detail: `gateway ${redactUrl(gateway)}` };
          if (config.FLUX_PROBE_FALLBACK_PUBLIC) return { ok: true, detail: 'public https://<apiHost>' };
          const fix =
            'set FLUX_TENANT_PROBE_GATEWAY_URL (or FLUX_PROBE_FALLBACK_PUBLIC=true to probe https://<apiHost>)';
          const tenants = monitor.targets().length;
          // Nothing to probe: probing is not in use, and that is no reason to keep the process unready.
          if (tenants === 0)
            return warningOutcome(
              'probe_target_missing',
              `FLUX_TENANT_PROBE_GATEWAY_URL is not set and no tenant has an apiHost, so nothing is probed; ${fix} before adding tenants`,
              { tenants },
            );
          return {
            ok: false,
            tenants,
            detail: `FLUX_TENANT_PROBE_GATEWAY_URL is not set and ${tenants} tenant(s) with an apiHost go unprobed: ${fix}`,
          };
        },
      },
      {
        name: 'trust',
        async run() {
          const parts = trust.sources.map((s) => `${s.name}${s.path ? `=${s.path}` : ''}: ${s.certificates}`);
          return { ok: true, detail: `CA certificates from ${parts.join(', ')}`, sources: trust.sources };
        },
      },
      registryCheck(registry, config.FLUX_PROJECTS_FILE, {
        count: () => monitor.targets().length,
        nouns: ['tenant with an apiHost', 'tenants with an apiHost'],
        field: 'tenants',
      }),
    ],
    handlers: {
      // A migrated tenant moved: probe it at once rather than at the next cycle.
      'flux.migrate.completed': async (event) => {
        const { projectId } = event.data;
        const project = registry.byId(projectId);
        if (!project) {
          throw new AppError(
            'not_found',
            `flux.migrate.completed names project ${projectId}, which is not in the registry (FLUX_PROJECTS_FILE)`,
          );
        }
        if (!project.apiHost) return { status: 202, body: { ignored: true, reason: 'no apiHost to probe' } };
        void monitor
          .runOne(project)
          .catch((error: unknown) =>
            log.warn({ err: error, slug: project.slug }, 'probe after migrate failed'),
          );
        return { status: 202, body: { probing: project.slug } };
      },
    },
  });
  const { app, requireScope } = kit;

  app.post('/probes/run', requireScope('probe'), async (c) => {
    const body = await readJson(c, RunBody, { emptyIsObject: true });
    const slug = body.slug ?? c.req.query('project');
    if (slug) {
      if (!isSlug(slug)) {
        const shown = JSON.stringify(slug.length > 64 ? `${slug.slice(0, 64)}…` : slug);
        throw new AppError(
          'invalid_id',
          `slug ${shown} is not a project slug (lowercase letters, digits, dashes)`,
        );
      }
      const project = registry.bySlug(slug);
      if (!project) throw new AppError('not_found', `no project with slug ${slug} in FLUX_PROJECTS_FILE`);
      return c.json({ results: [await monitor.runOne(project)] });
    }
    return c.json({ results: await monitor.runAll() });
  });

  app.get('/probes', requireScope('probe'), (c) => c.json(monitor.latest()));

  // Started in this order, stopped in reverse: the schedule and the probes in flight before the outbox that
  // carries their events, the catalog's cache last.
  const lifecycle = createLifecycle(log)
    .step('catalog cache', undefined, () => rt.catalog.flush())
    .step('inbox', () => rt.inbox.start())
    .step(
      'outbox',
      () => rt.outbox.start(),
      () => rt.outbox.stop(),
    )
    .step(
      'schedule',
      () => {
        if (config.FLUX_PROBE_INTERVAL_MS > 0 && !gateway && !config.FLUX_PROBE_FALLBACK_PUBLIC) {
          log.warn('FLUX_TENANT_PROBE_GATEWAY_URL is not set: scheduled probes are off until it is');
          return;
        }
        scheduler.start();
      },
      () => Promise.all([scheduler.stop(), monitor.stop()]),
    );

  return {
    name: 'probe',
    app,
    accepts: ['flux.migrate.completed'],
    start: () => lifecycle.start(),
    stop: () => lifecycle.stop(),
  };
}
