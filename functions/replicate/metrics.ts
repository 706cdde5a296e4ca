// replicate's metric declarations, one group per module that updates them.
import { counter, DURATION_BUCKETS_S, gauge, histogram, type MetricsRegistry } from '../../shared/metrics.js';

/** The copies: outcomes, failures, bytes, lag and time of each copy, jobs by state. */
export function copyMetrics(registry: MetricsRegistry) {
  return {
    results: counter(registry, 'flux_replicate_results_total', 'Replication jobs by outcome', ['outcome']),
    failures: counter(registry, 'flux_replicate_failures_total', 'Replications given up, by reason', [
      'reason',
    ]),
    attemptsFailed: counter(
      registry,
      'flux_replicate_attempt_failures_total',
      'Failed copy attempts (retried or not), by reason',
      ['reason'],
    ),
    bytes: counter(registry, 'flux_replicate_bytes_total', 'Bytes written to the offsite store'),
    lag: histogram(
      registry,
      'flux_replicate_lag_seconds',
      'From the manifest arriving locally to the offsite copy proven',
      [],
      DURATION_BUCKETS_S,
    ),
    copySeconds: histogram(
      registry,
      'flux_replicate_copy_duration_seconds',
      'Copy and proof time of one backup',
      [],
      DURATION_BUCKETS_S,
    ),
    pendingGauge: gauge(registry, 'flux_replicate_jobs', 'Replication jobs by state', ['state']),
  };
}

/** The rotating re-hash's reads. */
export function rehashMetrics(registry: MetricsRegistry) {
  return {
    rehashBytes: counter(registry, 'flux_rehash_bytes_total', 'Bytes read by the rotating re-hash', [
      'place',
    ]),
  };
}

/** Offsite retention's removals. */
export function expiryMetrics(registry: MetricsRegistry) {
  return {
    expiredTotal: counter(
      registry,
      'flux_offsite_expired_total',
      'Offsite copies removed by offsite retention',
    ),
    expiryFailures: counter(
      registry,
      'flux_offsite_expiry_failures_total',
      'Offsite copies retention selected but could not remove',
    ),
  };
}

/** The reconcile scan: gaps found and when it last ran. */
export function reconcileMetrics(registry: MetricsRegistry) {
  return {
    gapGauge: gauge(
      registry,
      'flux_replicate_reconcile_gap',
      'Backups the last full reconcile found without a proven offsite copy (missed by watch and webhook)',
      ['gap'],
    ),
    gapTotal: counter(
      registry,
      'flux_replicate_reconcile_gaps_total',
      'Backups reconcile scans found without a proven offsite copy',
      ['gap'],
    ),
    lastReconcileGauge: gauge(
      registry,
      'flux_replicate_last_reconcile_timestamp_seconds',
      'When the last full reconcile finished',
    ),
  };
}

/** The upkeep sweep: copies re-hashed, what did not match, the rotation's oldest proof. */
export function upkeepMetrics(registry: MetricsRegistry) {
  return {
    rehashed: counter(
      registry,
      'flux_rehash_copies_total',
      'Retained copies re-hashed, by place and result',
      ['place', 'result'],
    ),
    invalidGauge: gauge(
      registry,
      'flux_rehash_invalid_copies',
      'Retained copies whose last re-hash did not match their manifest',
      ['place'],
    ),
    oldestGauge: gauge(
      registry,
      'flux_rehash_oldest_proof_age_seconds',
      'Age of the least recently proven retained copy (stays under FLUX_REHASH_EVERY_MS when the rotation keeps up)',
      ['place'],
    ),
    retainedGauge: gauge(
      registry,
      'flux_rehash_retained_bytes',
      'Bytes of retained copies the rotation covers',
      ['place'],
    ),
    lastSweepGauge: gauge(
      registry,
      'flux_rehash_last_sweep_timestamp_seconds',
      'When the last upkeep sweep finished',
    ),
  };
}
