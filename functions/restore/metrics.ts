// The restore function's metric declarations (one place, so a dashboard author reads them together).
import { counter, DURATION_BUCKETS_S, gauge, histogram, type MetricsRegistry } from '../../shared/metrics.js';

export function restoreMetrics(metrics: MetricsRegistry) {
  return {
    runs: counter(metrics, 'flux_restore_runs_total', 'Restores by mode, outcome and bounded reason', [
      'mode',
      'outcome',
      'reason',
    ]),
    stageSeconds: histogram(
      metrics,
      'flux_restore_stage_duration_seconds',
      'Wall time of each restore stage',
      ['stage', 'mode'],
      DURATION_BUCKETS_S,
    ),
    bytes: counter(metrics, 'flux_restore_bytes_total', 'Backup bytes read for restores', ['source']),
    rungs: counter(metrics, 'flux_restore_validation_rungs_total', 'Validation rungs on restored targets', [
      'rung',
      'result',
    ]),
    running: gauge(metrics, 'flux_restore_running', 'Restores running in this process'),
    unavailable: gauge(
      metrics,
      'flux_restore_write_unavailable_seconds',
      'Seconds the newest in-place restore kept the tenant from writing',
      ['project'],
    ),
    lastSuccess: gauge(
      metrics,
      'flux_restore_last_success_timestamp_seconds',
      'Completion time of the newest successful restore',
      ['project'],
    ),
    previousDropped: counter(
      metrics,
      'flux_restore_previous_dropped_total',
      'Set-aside copies dropped after an in-place restore',
      ['reason'],
    ),
  };
}

export type RestoreMetrics = ReturnType<typeof restoreMetrics>;
