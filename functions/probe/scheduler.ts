// The probe cycle's timer: jittered so many probe processes (and restarts) do not hit the gateway in
// lockstep, never overlapping (the next cycle is armed when the previous one ends), 0 = on demand only.
import type { Logger } from '../../shared/log.js';

/** ±10 % around the interval between cycles. */
export const JITTER_RATIO = 0.1;
/** The first cycle starts within this (or the interval, if shorter) after start-up. */
export const FIRST_CYCLE_MAX_DELAY_MS = 10_000;

/** Delay before the next cycle; `random` in [0, 1). */
export function nextDelayMs(intervalMs: number, random: number, isFirst: boolean): number {
  if (isFirst) return Math.floor(random * Math.min(intervalMs, FIRST_CYCLE_MAX_DELAY_MS));
  return Math.round(intervalMs * (1 - JITTER_RATIO + 2 * JITTER_RATIO * random));
}

export interface Scheduler {
  start(): void;
  /** Disarms the timer and waits for a running cycle to end. */
  stop(): Promise<void>;
  readonly running: boolean;
}

export function createScheduler(options: {
  intervalMs: number;
  run: () => Promise<unknown>;
  log: Logger;
  random?: () => number;
}): Scheduler {
  const random = options.random ?? Math.random;
  let timer: NodeJS.Timeout | undefined;
  let current: Promise<void> | undefined;
  let stopped = true;

  const arm = (isFirst: boolean) => {
    if (stopped) return;
    timer = setTimeout(tick, nextDelayMs(options.intervalMs, random(), isFirst));
    timer.unref();
  };

  function tick() {
    timer = undefined;
    current = options
      .run()
      .then(
        () => undefined,
        (error: unknown) => options.log.error({ err: error }, 'probe cycle failed'),
      )
      .finally(() => {
        current = undefined;
        arm(false);
      });
  }

  return {
    start() {
      if (options.intervalMs <= 0 || !stopped) return;
      stopped = false;
      arm(true);
    },
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = undefined;
      await current;
    },
    get running() {
      return current !== undefined;
    },
  };
}
