// The router's metric declarations: what it forwarded, what it could not reach, and how long upstreams took.
import { counter, DURATION_BUCKETS_S, histogram, type MetricsRegistry } from '../../shared/metrics.js';

/** Per function forwarded to. */
export function routerMetrics(registry: MetricsRegistry) {
  return {
    requests: counter(registry, 'flux_router_requests_total', 'Requests forwarded by function and status', [
      'fn',
      'status',
    ]),
    unavailable: counter(
      registry,
      'flux_router_upstream_unavailable_total',
      'Requests answered 502 because the function could not be reached',
      ['fn'],
    ),
    durations: histogram(
      registry,
      'flux_router_upstream_response_seconds',
      'Time until the function answered with headers',
      ['fn'],
      DURATION_BUCKETS_S,
    ),
  };
}
