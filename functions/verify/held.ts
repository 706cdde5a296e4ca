// Held verifications: a backup event verify cannot queue yet (every slot busy, the queue full) is held here
// and answered 202, instead of being refused with a Retry-After that leaves the verifier idle while the
// sender waits and brings the event nearer the dead-letter limit with each refusal. Held requests are
// started in arrival order as soon as a verification settles. The hold is bounded (FLUX_VERIFY_HOLD_MAX;
// beyond it the event is refused as before) and kept in memory: what a stopped or crashed process held is
// still owed in the catalog, and the reconcile scan at the next start queues it.
import { isAppError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { MetricsRegistry } from '../../shared/metrics.js';
import { heldMetrics } from './metrics.js';
import type { Verifier, VerifyRequest, VerifySource } from './verifier.js';

export interface HeldVerifications {
  /**
   * Holds the request when there is room; answers its place in the hold (1 = next), or undefined when
   * the hold is full (the caller refuses). A request already held keeps its place.
   */
  hold(request: VerifyRequest): number | undefined;
  /** Whether the copy of the backup waits here (of either copy when no source is given). */
  has(projectId: string, backupId: string, source?: VerifySource): boolean;
  readonly size: number;
  /** Starts held requests while the verifier takes them; resolves when it stops taking them. */
  drain(): Promise<void>;
  /** Forgets everything held (a stopping process: the reconcile scan finds it again). */
  clear(): number;
}

export interface HeldOptions {
  verifier: Pick<Verifier, 'start'>;
  /** FLUX_VERIFY_HOLD_MAX: 0 holds nothing. */
  max: number;
  log: Logger;
  metrics: MetricsRegistry;
}

const keyOf = (projectId: string, backupId: string, source: VerifySource) =>
  `${projectId}/${backupId}/${source}`;

export function createHeldVerifications(options: HeldOptions): HeldVerifications {
  const { verifier, max, log } = options;
  const held = new Map<string, VerifyRequest>();
  const { queue, results } = heldMetrics(options.metrics);
  let draining: Promise<void> | undefined;
  // A verification settled while a drain was on its way out: drain once more, so no free slot is missed.
  let again = false;
  const show = () => queue.set({ state: 'held' }, held.size);

  async function drainOnce(): Promise<void> {
    for (const [key, request] of held) {
      try {
        await verifier.start(request);
      } catch (error) {
        // Still no room: it keeps its place at the front, and the next settled verification drains again.
        if (isAppError(error) && error.code === 'queue_full') return;
        if (isAppError(error) && error.code === 'shutting_down') return;
        held.delete(key);
        results.inc({ result: 'dropped' });
        // The event's own answer would have been this error: the backup is gone, incomplete, refused.
        log.warn(
          { err: error, projectId: request.projectId, backupId: request.backupId, source: request.source },
          'a held verification could not start; dropped',
        );
        show();
        continue;
      }
      held.delete(key);
      results.inc({ result: 'started' });
      show();
    }
  }

  return {
    hold(request) {
      const key = keyOf(request.projectId, request.backupId, request.source ?? 'local');
      if (held.has(key)) return [...held.keys()].indexOf(key) + 1;
      if (held.size >= max) {
        results.inc({ result: 'refused' });
        return undefined;
      }
      held.set(key, request);
      results.inc({ result: 'held' });
      show();
      return held.size;
    },
    has(projectId, backupId, source) {
      const copies: VerifySource[] = source ? [source] : ['local', 'offsite'];
      return copies.some((copy) => held.has(keyOf(projectId, backupId, copy)));
    },
    get size() {
      return held.size;
    },
    drain() {
      if (draining) {
        again = true;
        return draining;
      }
      draining = (async () => {
        do {
          again = false;
          await drainOnce();
        } while (again && held.size > 0);
      })().finally(() => {
        draining = undefined;
      });
      return draining;
    },
    clear() {
      const n = held.size;
      held.clear();
      show();
      return n;
    },
  };
}
