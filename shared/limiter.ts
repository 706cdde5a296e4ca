// Bounded concurrency with a bounded queue: work beyond `concurrency` waits, work beyond the queue is
// refused at once (503 + Retry-After) instead of piling up.
import { AppError } from './errors.js';

export interface Limiter {
  run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T>;
  readonly active: number;
  readonly waiting: number;
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
  const release = () => {
    const next = queue.shift();
    if (next) next();
    else active -= 1;
  };
  return {
    get active() {
      return active;
    },
    get waiting() {
      return queue.length;
    },
    async run(fn, signal) {
      if (active >= options.concurrency) {
        if (queue.length >= options.queueMax) {
          throw new AppError(
            'queue_full',
            `${options.name}: ${active} running and ${queue.length} queued (the limit); retry later`,
            { retryAfterSeconds: options.retryAfterSeconds ?? 30 },
          );
        }
        await new Promise<void>((resolve, reject) => {
          const start = () => {
            signal?.removeEventListener('abort', onAbort);
            resolve();
          };
          const onAbort = () => {
            const i = queue.indexOf(start);
            if (i >= 0) queue.splice(i, 1);
            reject(new AppError('shutting_down', `${options.name}: cancelled while queued`));
          };
          signal?.addEventListener('abort', onAbort, { once: true });
          queue.push(start);
        });
        // The slot was handed over by release(), already counted in `active`.
      } else {
        active += 1;
      }
      try {
        return await fn();
      } finally {
        release();
      }
    },
  };
}
