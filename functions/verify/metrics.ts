// Verify's metric declarations, one place: outcomes, stage and total durations, rungs, the queue, the
// reaper, and whether a spare sandbox is ready.
import {
  counter,
  DURATION_BUCKETS_S,
  Gauge,
  gauge,
  histogram,
  type MetricsRegistry,
  metric,
} from '../../shared/metrics.js';
import type { SandboxDriver } from '../../shared/sandbox/types.js';

export function verifyMetrics(metrics: MetricsRegistry, drivers: readonly SandboxDriver[]) {
  // Read at scrape time: 1 while a started sandbox waits for the next verification (it then skips the
  // sandbox start), 0 while one is being prepared or none is kept.
  metric(
    metrics,
    'flux_verify_spare_ready',
    (registers) =>
      new Gauge({
        name: 'flux_verify_spare_ready',
        help: 'A started sandbox is ready for the next verification (1) or not (0), per driver',
        labelNames: ['driver'],
        registers,
        collect() {
          for (const driver of drivers) {
            if (driver.spareState() !== 'off')
              this.set({ driver: driver.name }, driver.spareState() === 'ready' ? 1 : 0);
          }
        },
      }),
  );
  return {
    outcomes: counter(metrics, 'flux_verify_verifications_total', 'Verifications by outcome and reason', [
      'outcome',
      'reason',
      'driver',
    ]),
    stageSeconds: histogram(
      metrics,
      'flux_verify_stage_duration_seconds',
      'Duration of each verification stage (sandbox, prepare, transfer, archive, restore, checks, teardown)',
      ['stage', 'driver'],
      DURATION_BUCKETS_S,
    ),
    totalSeconds: histogram(
      metrics,
      'flux_verify_duration_seconds',
      'Verification wall time from sandbox start to teardown (measured RTO)',
      ['driver', 'outcome'],
      DURATION_BUCKETS_S,
    ),
    rungResults: counter(metrics, 'flux_verify_rungs_total', 'Rung results by finding code', [
      'rung',
      'result',
      'code',
    ]),
    lastVerified: gauge(
      metrics,
      'flux_verify_last_verified_timestamp_seconds',
      'Finish time of the newest restore-verified backup',
      ['project'],
    ),
    queue: queueGauge(metrics),
    reaped: counter(
      metrics,
      'flux_verify_leftovers_removed_total',
      'Leftover sandboxes removed by the reaper',
      ['driver'],
    ),
  };
}

export type VerifyMetrics = ReturnType<typeof verifyMetrics>;

const queueGauge = (metrics: MetricsRegistry) =>
  gauge(metrics, 'flux_verify_queue', 'Verifications running, waiting for a slot, and held', ['state']);

/** The hold of backup events verify could not queue yet (held.ts). */
export function heldMetrics(metrics: MetricsRegistry) {
  return {
    queue: queueGauge(metrics),
    results: counter(
      metrics,
      'flux_verify_held_total',
      'Backup events held for a verification slot, by what became of them (held, started, dropped, refused)',
      ['result'],
    ),
  };
}
