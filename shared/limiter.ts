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
  const release = () => {
    active -= 1;
    const next = queue.shift();
    if (next) next();
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
      }
      active += 1;
      try {
        return await fn();
      } finally {
        release();
      }
    },
  };
}
