// Prometheus metrics: one registry per process, shared by the functions it hosts, so the all-in-one
// process and a single-function process expose the same names.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry as MetricsRegistry } from 'prom-client';

/** The metrics registry (prom-client's); the project registry is ProjectRegistry in registry.ts. */
export { Counter, Gauge, Histogram, MetricsRegistry };

/**
 * Names outside the flux_ prefix on purpose: prom-client's process and Node defaults as prom-client names
 * them (stock Node dashboards), and probe's blackbox_exporter names (blackbox dashboards and alerts).
 * Every other metric of flux-ops starts with flux_ (a test holds every registered name to this).
 */
export const DEFAULT_METRIC_PREFIXES = ['process_', 'nodejs_'] as const;
export const BLACKBOX_METRIC_NAMES = [
  'probe_success',
  'probe_duration_seconds',
  'probe_http_status_code',
  'probe_ssl_earliest_cert_expiry',
  'probe_http_duration_seconds',
] as const;

export function createRegistry(options: { defaultMetrics?: boolean } = {}): MetricsRegistry {
  const registry = new MetricsRegistry();
  // No prefix: the defaults keep the names prom-client gives them (process_cpu_seconds_total, …).
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  return registry;
}

/**
 * Returns the metric registered under `name`, or registers the one `make` builds. Functions mounted
 * twice into one registry (tests, all-in-one) then share their metrics instead of throwing.
 */
export function metric<T>(
  registry: MetricsRegistry,
  name: string,
  make: (registers: MetricsRegistry[]) => T,
): T {
  const existing = registry.getSingleMetric(name);
  if (existing) return existing as unknown as T;
  return make([registry]);
}

export function counter(
  registry: MetricsRegistry,
  name: string,
  help: string,
  labelNames: string[] = [],
): Counter {
  return metric(registry, name, (registers) => new Counter({ name, help, labelNames, registers }));
}

export function gauge(
  registry: MetricsRegistry,
  name: string,
  help: string,
  labelNames: string[] = [],
): Gauge {
  return metric(registry, name, (registers) => new Gauge({ name, help, labelNames, registers }));
}

export function histogram(
  registry: MetricsRegistry,
  name: string,
  help: string,
  labelNames: string[] = [],
  buckets?: number[],
): Histogram {
  return metric(
    registry,
    name,
    (registers) => new Histogram({ name, help, labelNames, registers, ...(buckets ? { buckets } : {}) }),
  );
}

/** Seconds buckets from 10 ms to 6 h, for durations of dumps, copies, restores. */
export const DURATION_BUCKETS_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600];
