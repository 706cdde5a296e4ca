// The migrate function's metric declarations (one place, so a dashboard author reads them together).
import { counter, DURATION_BUCKETS_S, gauge, histogram, type MetricsRegistry } from '../../shared/metrics.js';

export function migrateMetrics(metrics: MetricsRegistry) {
  return {
    outcomes: counter(metrics, 'flux_migrate_runs_total', 'Migrations by outcome and phase', [
      'outcome',
      'phase',
      'reason',
    ]),
    phaseSeconds: histogram(
      metrics,
      'flux_migrate_phase_duration_seconds',
      'Wall time of each migration phase',
      ['phase'],
      DURATION_BUCKETS_S,
    ),
    running: gauge(metrics, 'flux_migrate_running', 'Migrations running in this process'),
    lastSuccess: gauge(
      metrics,
      'flux_migrate_last_success_timestamp_seconds',
      'Completion time of the newest successful migration',
      ['project'],
    ),
  };
}

export type MigrateMetrics = ReturnType<typeof migrateMetrics>;
