// Fault points: named places in the work where a fault test needs a process to be, exactly (the manifest
// just landed, pg_dump just finished). A point listed in FLUX_TEST_FAULT_POINTS stops the whole process
// with SIGSTOP when reached, so the test sees the state on disk as the process left it and then kills it
// (or its database) right there; SIGCONT lets it go on. Listed nowhere in production: then a no-op.
import type { FaultPoint } from '../config.js';
import type { Logger } from '../log.js';

export type ReachFault = (point: FaultPoint) => void;

export function createFaultPoints(enabled: readonly FaultPoint[], log: Logger): ReachFault {
  if (enabled.length === 0) return () => undefined;
  const points = new Set(enabled);
  return function reachFault(point) {
    if (!points.has(point)) return;
    log.warn({ faultPoint: point }, 'fault point reached: stopping this process (FLUX_TEST_FAULT_POINTS)');
    // The signal is delivered before kill() returns: nothing after this line runs until SIGCONT.
    process.kill(process.pid, 'SIGSTOP');
  };
}
