import { describe, expect, it } from 'vitest';
import { AppError } from './errors.js';
import { createLimiter } from './limiter.js';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

async function microtasks(n: number): Promise<void> {
  for (let i = 0; i < n; i += 1) await Promise.resolve();
}

describe('createLimiter', () => {
  // A caller that arrives in the microtasks between a release and the queued waiter's resumption must
  // queue behind that waiter, not take the slot beside it. Each arrival delay is tried so the window is
  // hit wherever it falls in the promise chain.
  it('hands a freed slot to the next waiter: a caller arriving just after a release never runs beside it', async () => {
    for (let delay = 0; delay <= 12; delay += 1) {
      const limiter = createLimiter({ concurrency: 1, queueMax: 10, name: 'test' });
      let running = 0;
      let maxRunning = 0;
      const order: string[] = [];
      const task = (name: string, hold: Promise<void>) => async () => {
        running += 1;
        maxRunning = Math.max(maxRunning, running);
        order.push(name);
        await hold;
        running -= 1;
      };
      const first = deferred();
      const a = limiter.run(task('a', first.promise));
      const b = limiter.run(task('b', microtasks(3)));
      await microtasks(2);
      first.resolve();
      await microtasks(delay);
      const c = limiter.run(task('c', microtasks(3)));
      await Promise.all([a, b, c]);
      expect({ delay, maxRunning }).toEqual({ delay, maxRunning: 1 });
      expect({ delay, order }).toEqual({ delay, order: ['a', 'b', 'c'] });
      expect(limiter.active).toBe(0);
      expect(limiter.waiting).toBe(0);
    }
  });

  it('runs up to the concurrency at once and refuses beyond the queue with queue_full', async () => {
    const limiter = createLimiter({ concurrency: 2, queueMax: 1, name: 'test' });
    const hold = deferred();
    const running = [limiter.run(() => hold.promise), limiter.run(() => hold.promise)];
    const queued = limiter.run(() => hold.promise);
    expect(limiter.active).toBe(2);
    expect(limiter.waiting).toBe(1);
    const refused = await limiter.run(async () => 'ran').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(AppError);
    expect((refused as AppError).code).toBe('queue_full');
    hold.resolve();
    await Promise.all([...running, queued]);
    expect(limiter.active).toBe(0);
  });

  it('a waiter cancelled while queued leaves the queue and the slot goes to the next one', async () => {
    const limiter = createLimiter({ concurrency: 1, queueMax: 10, name: 'test' });
    const hold = deferred();
    const a = limiter.run(() => hold.promise);
    const controller = new AbortController();
    const cancelled = limiter.run(async () => 'cancelled ran', controller.signal).catch((e: unknown) => e);
    const next = limiter.run(async () => 'next ran');
    controller.abort();
    expect(((await cancelled) as AppError).code).toBe('shutting_down');
    expect(limiter.waiting).toBe(1);
    hold.resolve();
    await a;
    expect(await next).toBe('next ran');
    expect(limiter.active).toBe(0);
  });

  it('a task that throws still frees its slot for the next waiter', async () => {
    const limiter = createLimiter({ concurrency: 1, queueMax: 10, name: 'test' });
    const failing = limiter.run(async () => {
      throw new Error('boom');
    });
    const next = limiter.run(async () => 'next ran');
    await expect(failing).rejects.toThrow('boom');
    expect(await next).toBe('next ran');
    expect(limiter.active).toBe(0);
  });

  it('acquire refuses at once when the queue is full, and a queued place given back leaves the queue', async () => {
    const limiter = createLimiter({ concurrency: 1, queueMax: 1, name: 'test' });
    const first = limiter.acquire();
    await first.ready;
    const queued = limiter.acquire();
    // Thrown synchronously: the caller can refuse before it records anything.
    expect(() => limiter.acquire()).toThrow(/1 running and 1 queued/);
    expect(limiter.waiting).toBe(1);
    queued.release();
    expect(limiter.waiting).toBe(0);
    const next = limiter.acquire();
    first.release();
    first.release(); // twice is once
    await next.ready;
    expect(limiter.active).toBe(1);
    next.release();
    expect(limiter.active).toBe(0);
  });
});
