import { describe, expect, it } from 'vitest';
import { createSparePool, type SparePoolOptions } from './spares.js';

interface Fake {
  id: number;
}

/** Lets every settled promise's callbacks run (a macrotask after them). */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A pool over fake sandboxes whose preparations the test settles one by one. */
function harness(overrides: Partial<SparePoolOptions<Fake>> = {}) {
  const preparations: Array<ReturnType<typeof deferred<Fake>> & { signal: AbortSignal }> = [];
  const destroyed: number[] = [];
  const errors: string[] = [];
  const nextDestroy: Array<() => void> = [];
  let clock = 1_000_000;
  const pool = createSparePool<Fake>({
    enabled: true,
    create(signal) {
      const d = deferred<Fake>();
      preparations.push({ ...d, signal });
      return d.promise;
    },
    async destroy(sandbox) {
      destroyed.push(sandbox.id);
      nextDestroy.shift()?.();
    },
    onError: (error, what) => errors.push(`${what}: ${(error as Error).message}`),
    now: () => clock,
    retryMs: 30_000,
    ...overrides,
  });
  return {
    pool,
    preparations,
    destroyed,
    errors,
    /** Resolves once the next destroy() call has been made. */
    destroyCalled: () => new Promise<void>((resolve) => nextDestroy.push(resolve)),
    advance: (ms: number) => {
      clock += ms;
    },
  };
}

describe('createSparePool', () => {
  it('is off when disabled: refill prepares nothing, take hands out nothing', async () => {
    const h = harness({ enabled: false });
    h.pool.refill();
    expect(h.pool.state()).toBe('off');
    expect(h.preparations).toHaveLength(0);
    expect(await h.pool.take()).toBeUndefined();
  });

  it('prepares one spare at a time, hands it out once, and is empty from take() on', async () => {
    const h = harness();
    expect(h.pool.state()).toBe('none');
    h.pool.refill();
    h.pool.refill();
    expect(h.pool.state()).toBe('starting');
    expect(h.preparations).toHaveLength(1);
    h.preparations[0]!.resolve({ id: 1 });
    await flush();
    expect(h.pool.state()).toBe('ready');
    h.pool.refill();
    expect(h.preparations).toHaveLength(1);
    const taking = h.pool.take();
    expect(h.pool.state()).toBe('none');
    expect(await taking).toEqual({ id: 1 });
    expect(await h.pool.take()).toBeUndefined();
    // A refill right after take() prepares the next one.
    h.pool.refill();
    expect(h.preparations).toHaveLength(2);
    expect(h.destroyed).toEqual([]);
  });

  it('a spare still starting is waited for by the one who takes it', async () => {
    const h = harness();
    h.pool.refill();
    const taking = h.pool.take();
    expect(h.pool.state()).toBe('none');
    h.preparations[0]!.resolve({ id: 7 });
    expect(await taking).toEqual({ id: 7 });
    expect(h.pool.state()).toBe('none');
  });

  it('after a failed preparation, refills pause for the retry time, then prepare again', async () => {
    const h = harness();
    h.pool.refill();
    const taking = h.pool.take();
    h.preparations[0]!.reject(new Error('initdb failed'));
    expect(await taking).toBeUndefined();
    expect(h.errors).toEqual(['prepare: initdb failed']);
    expect(h.pool.state()).toBe('none');
    h.pool.refill();
    h.advance(29_999);
    h.pool.refill();
    expect(h.preparations).toHaveLength(1);
    h.advance(1);
    h.pool.refill();
    expect(h.preparations).toHaveLength(2);
    expect(h.pool.state()).toBe('starting');
  });

  it('prepares only while there is room', async () => {
    let room = false;
    const h = harness({ hasRoom: () => room });
    h.pool.refill();
    expect(h.preparations).toHaveLength(0);
    expect(h.pool.state()).toBe('none');
    room = true;
    h.pool.refill();
    expect(h.preparations).toHaveLength(1);
  });

  it('replaces a spare nobody took after the refresh time, and not one that was taken', async () => {
    const h = harness({ refreshMs: 5 });
    h.pool.refill();
    const replaced = h.destroyCalled();
    h.preparations[0]!.resolve({ id: 1 });
    await replaced;
    expect(h.destroyed).toEqual([1]);
    expect(h.preparations).toHaveLength(2);
    expect(h.pool.state()).toBe('starting');
    h.preparations[1]!.resolve({ id: 2 });
    expect(await h.pool.take()).toEqual({ id: 2 });
    // Taken: its timer is gone. A third spare is prepared and taken while starting; neither is removed
    // by a timer, which close() would otherwise have to wait for.
    h.pool.refill();
    const starting = h.pool.take();
    h.preparations[2]!.resolve({ id: 3 });
    expect(await starting).toEqual({ id: 3 });
    await h.pool.close();
    expect(h.destroyed).toEqual([1]);
  });

  it('discard() removes in the background and close() waits for it; a failed removal is reported', async () => {
    const gate = deferred<void>();
    let removed = false;
    const h = harness({
      async destroy(sandbox) {
        await gate.promise;
        removed = true;
        if (sandbox.id === 2) throw new Error('engine gone');
      },
    });
    h.pool.discard({ id: 1 });
    h.pool.discard({ id: 2 });
    const closing = h.pool.close();
    let closed = false;
    void closing.then(() => {
      closed = true;
    });
    await flush();
    expect(closed).toBe(false);
    gate.resolve();
    await closing;
    expect(removed).toBe(true);
    expect(h.errors).toEqual(['remove: engine gone']);
  });

  it('close() aborts a preparation, waits for it, and removes what it still made', async () => {
    const h = harness();
    h.pool.refill();
    const prep = h.preparations[0]!;
    expect(prep.signal.aborted).toBe(false);
    let closed = false;
    const closing = h.pool.close().then(() => {
      closed = true;
    });
    expect(prep.signal.aborted).toBe(true);
    await flush();
    expect(closed).toBe(false);
    // A preparation that finishes anyway is removed, not left running.
    prep.resolve({ id: 9 });
    await closing;
    expect(h.destroyed).toEqual([9]);
    expect(h.pool.state()).toBe('none');
    h.pool.refill();
    expect(h.preparations).toHaveLength(1);
    expect(await h.pool.take()).toBeUndefined();
  });

  it('close() removes a ready spare and reports no failure of an aborted preparation', async () => {
    const ready = harness();
    ready.pool.refill();
    ready.preparations[0]!.resolve({ id: 4 });
    await flush();
    await ready.pool.close();
    expect(ready.destroyed).toEqual([4]);

    const aborted = harness();
    aborted.pool.refill();
    const closing = aborted.pool.close();
    aborted.preparations[0]!.reject(aborted.preparations[0]!.signal.reason);
    await closing;
    expect(aborted.destroyed).toEqual([]);
    expect(aborted.errors).toEqual([]);
  });
});
