// probe's metric declarations: blackbox_exporter's names (stock dashboards and alerts) and its own cycle.
import { counter, gauge, type MetricsRegistry } from '../../shared/metrics.js';

/** blackbox_exporter labels its probe series by target; ours are the tenant and the host probed. */
const LABELS = ['tenant', 'host'];

/** The prober's series, per tenant and host, and the cycle's. */
export function probeMetrics(registry: MetricsRegistry) {
  return {
    success: gauge(registry, 'probe_success', 'Whether the probe succeeded', LABELS),
    duration: gauge(registry, 'probe_duration_seconds', 'How long the probe took', LABELS),
    statusCode: gauge(
      registry,
      'probe_http_status_code',
      'Response HTTP status code (0 without a response)',
      LABELS,
    ),
    certExpiry: gauge(
      registry,
      'probe_ssl_earliest_cert_expiry',
      'Earliest notAfter of the presented certificate chain, unix seconds',
      LABELS,
    ),
    phaseSeconds: gauge(registry, 'probe_http_duration_seconds', 'Duration of each HTTP request phase', [
      ...LABELS,
      'phase',
    ]),
    failures: counter(registry, 'flux_probe_failures_total', 'Failed probes by bounded reason', [
      ...LABELS,
      'reason',
    ]),
    cycleSeconds: gauge(registry, 'flux_probe_cycle_duration_seconds', 'Wall time of the last full cycle'),
    cycleTenants: gauge(registry, 'flux_probe_cycle_tenants', 'Tenants probed in the last full cycle'),
  };
}
