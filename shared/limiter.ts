// Bounded concurrency with a bounded queue: work beyond `concurrency` waits, work beyond the queue is
// refused at once (503 + Retry-After) instead of piling up.
import { AppError } from './errors.js';

export interface Limiter {
  run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T>;
  /**
   * Takes a place now: throws `queue_full` at once when there is none, so a caller can refuse work
   * before it records anything. `ready` resolves when the slot is this caller's; `release` gives it back
   * (or leaves the queue), once.
   */
  acquire(signal?: AbortSignal): Slot;
  readonly active: number;
  readonly waiting: number;
}

export interface Slot {
  ready: Promise<void>;
  release(): void;
}

export function createLimiter(options: {
  concurrency: number;
  queueMax: number;
  name: string;
  retryAfterSeconds?: number;
}): Limiter {
  let active = 0;
  const queue: Array<() => void> = [];
  // A freed slot passes straight to the next waiter (active stays as it is): were it released and
  // re-taken, a caller arriving in the microtasks before the waiter resumes would see a free slot and
  // run beside it.
  const handOn = () => {
    const next = queue.shift();
    if (next) next();
    else active -= 1;
  };
  function acquire(signal?: AbortSignal): Slot {
    if (active < options.concurrency) {
      active += 1;
      let released = false;
      return {
        ready: Promise.resolve(),
        release() {
          if (released) return;
          released = true;
          handOn();
        },
      };
    }
    if (queue.length >= options.queueMax) {
      throw new AppError(
        'queue_full',
        `${options.name}: ${active} running and ${queue.length} queued (the limit); retry later`,
        { retryAfterSeconds: options.retryAfterSeconds ?? 30 },
      );
    }
    let granted = false;
    let done = false;
    let start!: () => void;
    const leave = () => {
      const i = queue.indexOf(start);
      if (i >= 0) queue.splice(i, 1);
    };
    const ready = new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        leave();
        done = true;
        reject(new AppError('shutting_down', `${options.name}: cancelled while queued`));
      };
      start = () => {
        // The slot was handed over by handOn(), already counted in `active`.
        granted = true;
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      queue.push(start);
    });
    return {
      ready,
      release() {
        if (done) return;
        done = true;
        if (granted) handOn();
        else leave();
      },
    };
  }
  return {
    get active() {
      return active;
    },
    get waiting() {
      return queue.length;
    },
    acquire,
    async run(fn, signal) {
      const slot = acquire(signal);
      try {
        await slot.ready;
        return await fn();
      } finally {
        slot.release();
      }
    },
  };
}
