// A function's start and stop order, declared once: steps start in the order they are added and are
// released in reverse, so what starts last (the schedulers that make work) stops first and what starts
// first (the outbox that carries the events of everything else) stops last. A step that fails to start
// releases the steps already started before the error goes on.
import type { Logger } from '../log.js';

type Action = () => unknown;

export interface Lifecycle {
  /** Adds a step: `start` runs at start(), `stop` at stop(), in reverse order of the steps. */
  step(name: string, start: Action | undefined, stop?: Action): Lifecycle;
  start(): Promise<void>;
  /** Releases every started step, last first; a failing release is logged and the others still run. */
  stop(): Promise<void>;
}

export function createLifecycle(log: Logger): Lifecycle {
  const steps: { name: string; start?: Action | undefined; stop?: Action | undefined }[] = [];
  const releasers: { name: string; stop: Action }[] = [];

  async function release(): Promise<void> {
    for (let r = releasers.pop(); r; r = releasers.pop()) {
      try {
        await r.stop();
      } catch (error) {
        log.error({ err: error, step: r.name }, 'a step failed to stop; the others are still stopped');
      }
    }
  }

  const lifecycle: Lifecycle = {
    step(name, start, stop) {
      steps.push({ name, start, stop });
      return lifecycle;
    },
    async start() {
      for (const s of steps) {
        try {
          await s.start?.();
        } catch (error) {
          await release();
          throw error;
        }
        if (s.stop) releasers.push({ name: s.name, stop: s.stop });
      }
    },
    stop: release,
  };
  return lifecycle;
}
