// dump's metric declarations, one group per module that updates them (the trust series computed from the
// catalog, with their computation, are in trust-metrics.ts).
import { counter, DURATION_BUCKETS_S, gauge, histogram, type MetricsRegistry } from '../../shared/metrics.js';

/** The backups: outcomes, wall time, bytes, the newest good one, the per-cluster queue. */
export function dumpMetrics(metrics: MetricsRegistry) {
  return {
    outcomes: counter(metrics, 'flux_dump_backups_total', 'Backups by outcome', [
      'project',
      'kind',
      'outcome',
      'reason',
    ]),
    durations: histogram(
      metrics,
      'flux_dump_duration_seconds',
      'Backup wall time',
      ['kind'],
      DURATION_BUCKETS_S,
    ),
    bytes: counter(metrics, 'flux_dump_bytes_total', 'Bytes written by dumps', ['kind']),
    lastSuccess: gauge(
      metrics,
      'flux_dump_last_success_timestamp_seconds',
      'Completion time of the newest good backup',
      ['project'],
    ),
    queue: gauge(metrics, 'flux_dump_queue', 'Dumps running and waiting per cluster', ['cluster', 'state']),
  };
}

/** The cluster view: reachability, tenants, open placement findings. */
export function clusterMetrics(registry: MetricsRegistry) {
  return {
    reachableGauge: gauge(
      registry,
      'flux_cluster_reachable',
      'Whether the cluster answered its last look (1/0)',
      ['cluster'],
    ),
    tenantsGauge: gauge(registry, 'flux_cluster_tenants', 'Tenants the registry places on the cluster', [
      'cluster',
    ]),
    findingsGauge: gauge(
      registry,
      'flux_cluster_placement_findings',
      'Open placement findings per cluster and code',
      ['cluster', 'code'],
    ),
  };
}

/** Maintenance preflights by verdict. */
export function preflightMetrics(registry: MetricsRegistry) {
  return {
    runs: counter(registry, 'flux_cluster_preflights_total', 'Maintenance preflights by verdict', [
      'cluster',
      'verdict',
    ]),
  };
}

/** The catalog rebuilt from offsite. */
export function rebuildMetrics(registry: MetricsRegistry) {
  return {
    results: counter(
      registry,
      'flux_catalog_rebuild_manifests_total',
      'Offsite manifests a catalog rebuild looked at, by result',
      ['result'],
    ),
  };
}

/** The schedule: decisions, projects due, its last tick. */
export function scheduleMetrics(registry: MetricsRegistry) {
  return {
    decisions: counter(
      registry,
      'flux_schedule_decisions_total',
      'Scheduler decisions, each counted once per project and slot (started, satisfied, running, cluster_busy, catch_up_paced, failed)',
      ['decision'],
    ),
    dueGauge: gauge(
      registry,
      'flux_schedule_due_projects',
      'Projects whose scheduled backup is due but not started (waiting on a running backup, a cluster slot or catch-up pacing)',
    ),
    lastTick: gauge(
      registry,
      'flux_schedule_last_tick_timestamp_seconds',
      'When the scheduler last decided what is due',
    ),
  };
}
