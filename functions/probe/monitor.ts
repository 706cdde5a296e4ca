// The probe's bookkeeping: which tenants are targets, probing them with bounded concurrency (one probe per
// tenant in flight; concurrent asks join it), the blackbox_exporter metrics, the latest result and state
// per tenant, and transition events.
import { setMaxListeners } from 'node:events';
import { AppError } from '../../shared/errors.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { createLimiter } from '../../shared/limiter.js';
import { type Project, resolveUrl } from '../../shared/registry.js';
import { mintProbeJwt } from './jwt.js';
import { probeMetrics } from './metrics.js';
import { PHASES, type Phase, type Prober, targetUrlOf } from './prober.js';
import {
  classifyError,
  type FailureReason,
  INITIAL_STATE,
  isHealthyStatus,
  nextState,
  type ProbeMode,
  type StatusRule,
  statusHint,
  type TenantState,
  type TenantStatus,
} from './rules.js';

export interface ProbeResult {
  slug: string;
  projectId: string;
  apiHost: string;
  engine: Project['engine'];
  /** The mode the request was sent in: deep only when a JWT went with it. */
  mode: ProbeMode;
  /** Origin the connection went to (gateway or public URL), without credentials. */
  target: string;
  sni: string | null;
  success: boolean;
  reason: FailureReason | null;
  hint: string | null;
  status: number | null;
  error: { code: string; message: string } | null;
  durationSeconds: number;
  phases: Record<Phase, number>;
  /** The phase that did not complete, for failures. */
  failedPhase: Phase | null;
  certExpiresAt: string | null;
  startedAt: string;
}

export interface TenantProbe extends ProbeResult {
  state: TenantStatus;
  consecutiveFailures: number;
  consecutiveSuccesses: number;
}

export interface CycleInfo {
  running: boolean;
  lastStartedAt: string | null;
  lastSeconds: number | null;
  lastTenants: number | null;
}

export interface Monitor {
  /** Every registry project with an apiHost. */
  targets(): Project[];
  runAll(): Promise<TenantProbe[]>;
  runOne(project: Project): Promise<TenantProbe>;
  latest(): { results: TenantProbe[]; notYetProbed: string[]; cycle: CycleInfo };
  /** Cancels queued and in-flight probes (their results are discarded). */
  stop(): Promise<void>;
}

/** The transport-facing part of a target URL: scheme, host and port, never userinfo or query. */
function originOf(url: URL): string {
  return `${url.protocol}//${url.host}`;
}

export function createMonitor(rt: Runtime, prober: Prober): Monitor {
  const { config, log, metrics, registry } = rt;
  const threshold = config.FLUX_PROBE_FAILURE_THRESHOLD;

  const { success, duration, statusCode, certExpiry, phaseSeconds, failures, cycleSeconds, cycleTenants } =
    probeMetrics(metrics);
  const limiter = createLimiter({
    concurrency: config.FLUX_PROBE_CONCURRENCY,
    queueMax: Number.MAX_SAFE_INTEGER,
    name: 'probes',
  });
  const states = new Map<string, TenantState>();
  const results = new Map<string, TenantProbe>();
  const inFlight = new Map<string, Promise<TenantProbe>>();
  const warnedSecret = new Set<string>();
  const controller = new AbortController();
  // Every queued and in-flight probe listens on this one signal (a 1,000-tenant cycle is 1,000 listeners).
  setMaxListeners(0, controller.signal);
  const cycle: CycleInfo = { running: false, lastStartedAt: null, lastSeconds: null, lastTenants: null };

  function targets(): Project[] {
    return registry.list().filter((p) => Boolean(p.apiHost));
  }

  /** The Authorization header of a deep probe, or none (shallow). */
  function authFor(project: Project): Record<string, string> | undefined {
    if (config.FLUX_PROBE_MODE !== 'deep') return undefined;
    let secret: string | undefined;
    try {
      secret = project.jwtSecret
        ? resolveUrl(project.jwtSecret, rt.env, `project ${project.slug} jwtSecret`)
        : undefined;
    } catch (error) {
      if (!warnedSecret.has(project.id))
        log.warn({ slug: project.slug, err: error }, 'deep probe unavailable');
      warnedSecret.add(project.id);
      return undefined;
    }
    if (!secret) {
      if (!warnedSecret.has(project.id)) {
        log.warn(
          { slug: project.slug },
          'FLUX_PROBE_MODE=deep but the project has no jwtSecret in FLUX_PROJECTS_FILE; probing it shallow',
        );
      }
      warnedSecret.add(project.id);
      return undefined;
    }
    return { authorization: `Bearer ${mintProbeJwt(secret)}` };
  }

  function record(result: ProbeResult): void {
    const l = { tenant: result.slug, host: result.apiHost };
    success.set(l, result.success ? 1 : 0);
    duration.set(l, result.durationSeconds);
    statusCode.set(l, result.status ?? 0);
    if (result.certExpiresAt) certExpiry.set(l, Date.parse(result.certExpiresAt) / 1000);
    else certExpiry.remove(l);
    for (const phase of PHASES) phaseSeconds.set({ ...l, phase }, result.phases[phase]);
    if (result.reason) failures.inc({ ...l, reason: result.reason });
  }

  async function probeOnce(project: Project): Promise<TenantProbe> {
    const apiHost = project.apiHost!;
    const url = targetUrlOf(apiHost, config.FLUX_TENANT_PROBE_GATEWAY_URL, config.FLUX_PROBE_FALLBACK_PUBLIC);
    if (!url) {
      throw new AppError(
        'dependency_unavailable',
        'FLUX_TENANT_PROBE_GATEWAY_URL is not set: point it at the gateway (e.g. https://gateway.internal) ' +
          'or set FLUX_PROBE_FALLBACK_PUBLIC=true to probe https://<apiHost>',
      );
    }
    const auth = authFor(project);
    const mode: ProbeMode = auth ? 'deep' : 'shallow';
    const startedAt = new Date();
    const raw = await limiter.run(
      () =>
        prober.probe({ url, host: apiHost, path: config.FLUX_PROBE_PATH, headers: auth }, controller.signal),
      controller.signal,
    );
    if (controller.signal.aborted)
      throw new AppError('shutting_down', 'probe cancelled: the process is stopping');

    const rule: StatusRule = { expected: config.FLUX_PROBE_EXPECTED_STATUS, engine: project.engine, mode };
    const target = originOf(url);
    let reason: FailureReason | null = null;
    let hint: string | null = null;
    if (raw.error) {
      ({ reason, hint } = classifyError({
        code: raw.error.code,
        message: raw.error.message,
        afterHeaders: raw.afterHeaders,
        host: apiHost,
        target,
        timeoutMs: config.FLUX_PROBE_TIMEOUT_MS,
        phase: raw.failedPhase ?? undefined,
      }));
    } else if (raw.status === null || !isHealthyStatus(raw.status, rule)) {
      reason = 'status';
      hint = statusHint(raw.status ?? 0, apiHost, rule);
    }
    const result: ProbeResult = {
      slug: project.slug,
      projectId: project.id,
      apiHost,
      engine: project.engine,
      mode,
      target,
      sni: raw.sni,
      success: reason === null,
      reason,
      hint,
      status: raw.status,
      error: raw.error,
      durationSeconds: raw.durationSeconds,
      phases: raw.phases,
      failedPhase: raw.failedPhase,
      certExpiresAt: raw.certExpiresAt?.toISOString() ?? null,
      startedAt: startedAt.toISOString(),
    };
    record(result);

    const before = states.get(project.id) ?? INITIAL_STATE;
    const { state, transition } = nextState(before, result.success, threshold, Date.now());
    states.set(project.id, state);
    const view: TenantProbe = {
      ...result,
      state: state.status,
      consecutiveFailures: state.consecutiveFailures,
      consecutiveSuccesses: state.consecutiveSuccesses,
    };
    results.set(project.id, view);
    log.debug(
      { slug: project.slug, success: result.success, reason, status: raw.status, state: state.status },
      'probed',
    );

    if (transition?.kind === 'failed') {
      log.warn(
        { slug: project.slug, apiHost, reason, hint, consecutive: transition.consecutive },
        'tenant down',
      );
      await rt.emit('flux.tenant.probe_failed', {
        subject: project.id,
        data: {
          projectId: project.id,
          slug: project.slug,
          apiHost,
          reason: reason ?? 'status',
          ...(raw.status !== null ? { status: raw.status } : {}),
          consecutive: transition.consecutive,
          ...(hint ? { hint } : {}),
        },
      });
    } else if (transition?.kind === 'recovered') {
      log.info({ slug: project.slug, apiHost, downSeconds: transition.downSeconds }, 'tenant recovered');
      await rt.emit('flux.tenant.probe_recovered', {
        subject: project.id,
        data: {
          projectId: project.id,
          slug: project.slug,
          apiHost,
          consecutive: transition.consecutive,
          ...(transition.downSeconds !== undefined ? { downSeconds: transition.downSeconds } : {}),
        },
      });
    }
    return view;
  }

  function runOne(project: Project): Promise<TenantProbe> {
    if (controller.signal.aborted) {
      return Promise.reject(new AppError('shutting_down', 'the probe function is stopping'));
    }
    if (!project.apiHost) {
      return Promise.reject(
        new AppError(
          'unprocessable',
          `project ${project.slug} has no apiHost in FLUX_PROJECTS_FILE to probe`,
        ),
      );
    }
    const running = inFlight.get(project.id);
    if (running) return running;
    const started = probeOnce(project).finally(() => inFlight.delete(project.id));
    inFlight.set(project.id, started);
    return started;
  }

  return {
    targets,
    runOne,
    async runAll() {
      const list = targets();
      const t0 = performance.now();
      cycle.running = true;
      cycle.lastStartedAt = new Date().toISOString();
      try {
        const settled = await Promise.allSettled(list.map((p) => runOne(p)));
        const rejected = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
        if (rejected) throw rejected.reason;
        return settled.map((s) => (s as PromiseFulfilledResult<TenantProbe>).value);
      } finally {
        cycle.running = false;
        cycle.lastSeconds = (performance.now() - t0) / 1000;
        cycle.lastTenants = list.length;
        cycleSeconds.set(cycle.lastSeconds);
        cycleTenants.set(list.length);
      }
    },
    latest() {
      const list = targets();
      return {
        results: list.flatMap((p) => results.get(p.id) ?? []),
        notYetProbed: list.filter((p) => !results.has(p.id)).map((p) => p.slug),
        cycle: { ...cycle },
      };
    },
    async stop() {
      controller.abort();
      await Promise.allSettled([...inFlight.values()]);
    },
  };
}
