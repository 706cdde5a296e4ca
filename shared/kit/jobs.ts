// A worker's jobs in flight: one slot per key (a second request joins or is refused by the caller), an
// AbortController per job, a stopping flag, an optional per-job deadline, and the drain every worker needs
// at SIGTERM: the grace period to finish, then abort, then a bounded wait for the cancelled work to clean up.
// dump, verify, replicate, migrate and restore each run their work through one of these.
import { setMaxListeners } from 'node:events';
import { AppError } from '../errors.js';

export interface JobRunnerOptions {
  /** The worker's name in messages ("verify is stopping; …"). */
  name: string;
  /** How long stop() lets running jobs finish before aborting them. */
  graceMs: number;
  /** How long stop() then waits for aborted jobs to clean up (kill children, remove temp files). */
  cancelWaitMs: number;
}

export interface JobOptions<V> {
  /** What the worker keeps about the job (what a joining request is answered with). */
  value?: V;
  /** Abort the job after this long, with `timeoutError()` as the reason. */
  timeoutMs?: number;
  timeoutError?: () => Error;
}

/** One claimed slot. Free it by tracking the job's work (the slot frees when that settles) or by release(). */
export interface JobSlot<V> {
  readonly key: string;
  readonly signal: AbortSignal;
  value: V | undefined;
  /** The slot lives until `work` settles; returns `work`. */
  track<P extends Promise<unknown>>(work: P): P;
  /** Frees the slot when no work was started (a refusal after the claim). */
  release(): void;
}

export interface JobRunner<V = undefined> {
  readonly size: number;
  readonly isStopping: boolean;
  /**
   * Aborted when stop() cancels the jobs: for work that is not one job's, such as a shared copier or a
   * scan that starts jobs.
   */
  readonly signal: AbortSignal;
  /** Aborted when stop() begins: wakes work that is only waiting (a retry's back-off) so it can give up. */
  readonly draining: AbortSignal;
  keys(): string[];
  has(key: string): boolean;
  value(key: string): V | undefined;
  /** Throws `shutting_down` once stop() has begun. */
  assertOpen(): void;
  /** Claims the slot for `key` (throws when stopping; the caller checks has() first to join or refuse). */
  claim(key: string, options?: JobOptions<V>): JobSlot<V>;
  /** Claims `key`, runs `work` with the job's signal, and frees the slot when it settles. */
  run<T>(key: string, work: (signal: AbortSignal) => Promise<T>, options?: JobOptions<V>): Promise<T>;
  /**
   * Stops taking jobs, drains (grace, abort, bounded wait) and returns the keys of jobs still running.
   * `graceMs` overrides the runner's own for this stop.
   */
  stop(options?: { graceMs?: number }): Promise<string[]>;
}

interface Slot<V> {
  controller: AbortController;
  settled: Promise<void>;
  free: () => void;
  value: V | undefined;
}

/** Resolves when `done` settles or after `ms`, whichever is first; leaves no timer behind. */
async function settledWithin(done: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const elapsed = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, ms));
  });
  try {
    await Promise.race([done.then(undefined, () => undefined), elapsed]);
  } finally {
    clearTimeout(timer);
  }
}

export function createJobRunner<V = undefined>(options: JobRunnerOptions): JobRunner<V> {
  const slots = new Map<string, Slot<V>>();
  const stopper = new AbortController();
  const drainer = new AbortController();
  // Every job listens on the runner's signals: thousands of listeners are expected in a large queue.
  setMaxListeners(0, stopper.signal, drainer.signal);
  let stopping = false;

  const allSettled = () => Promise.all([...slots.values()].map((s) => s.settled));

  function claim(key: string, jobOptions: JobOptions<V> = {}): JobSlot<V> {
    if (stopping) {
      throw new AppError('shutting_down', `${options.name} is stopping; retry against the new process`);
    }
    if (slots.has(key)) throw new Error(`job ${key} of ${options.name} is already running`);
    const controller = new AbortController();
    const onStop = () => controller.abort(stopper.signal.reason);
    stopper.signal.addEventListener('abort', onStop, { once: true });
    let timer: NodeJS.Timeout | undefined;
    if (jobOptions.timeoutMs !== undefined) {
      timer = setTimeout(
        () => controller.abort(jobOptions.timeoutError?.() ?? new AppError('timeout', `${key} timed out`)),
        jobOptions.timeoutMs,
      );
    }
    let free!: () => void;
    const settled = new Promise<void>((resolve) => {
      free = () => {
        clearTimeout(timer);
        stopper.signal.removeEventListener('abort', onStop);
        if (slots.get(key) === slot) slots.delete(key);
        resolve();
      };
    });
    const slot: Slot<V> = { controller, settled, free, value: jobOptions.value };
    slots.set(key, slot);
    let tracked = false;
    return {
      key,
      signal: controller.signal,
      get value() {
        return slot.value;
      },
      set value(value) {
        slot.value = value;
      },
      track(work) {
        if (tracked) throw new Error(`job ${key} of ${options.name} is tracked twice`);
        tracked = true;
        work.then(slot.free, slot.free);
        return work;
      },
      release() {
        if (!tracked) slot.free();
      },
    };
  }

  return {
    get size() {
      return slots.size;
    },
    get isStopping() {
      return stopping;
    },
    signal: stopper.signal,
    draining: drainer.signal,
    keys: () => [...slots.keys()],
    has: (key) => slots.has(key),
    value: (key) => slots.get(key)?.value,
    assertOpen() {
      if (stopping) {
        throw new AppError('shutting_down', `${options.name} is stopping; retry against the new process`);
      }
    },
    claim,
    run: async function run<T>(
      key: string,
      work: (signal: AbortSignal) => Promise<T>,
      jobOptions?: JobOptions<V>,
    ): Promise<T> {
      const slot = claim(key, jobOptions);
      let started: Promise<T>;
      try {
        started = work(slot.signal);
      } catch (error) {
        slot.release();
        throw error;
      }
      return slot.track(started);
    },
    async stop(stopOptions = {}) {
      stopping = true;
      drainer.abort(new AppError('shutting_down', `${options.name} is stopping`));
      await settledWithin(allSettled(), stopOptions.graceMs ?? options.graceMs);
      stopper.abort(new AppError('shutting_down', `${options.name} is stopping`));
      await settledWithin(allSettled(), options.cancelWaitMs);
      return [...slots.keys()];
    },
  };
}
