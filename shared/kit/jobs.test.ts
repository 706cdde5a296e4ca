import { describe, expect, it } from 'vitest';
import { isAppError } from '../errors.js';
import { createJobRunner } from './jobs.js';

/** A job that runs until its signal aborts (then settles after `cleanupMs`), or until finish() is called. */
function controllable(cleanupMs = 0) {
  let finish!: () => void;
  const seen: { reason?: unknown } = {};
  const work = (signal: AbortSignal) =>
    new Promise<string>((resolve, reject) => {
      finish = () => resolve('finished');
      signal.addEventListener('abort', () => {
        seen.reason = signal.reason;
        setTimeout(() => reject(signal.reason), cleanupMs);
      });
    });
  return { work, finish: () => finish(), seen };
}

describe('createJobRunner', () => {
  it('holds one slot per key until the work settles, and keeps its value for joiners', async () => {
    const jobs = createJobRunner<{ id: string }>({ name: 'w', graceMs: 0, cancelWaitMs: 1000 });
    const job = controllable();
    const done = jobs.run('a', job.work, { value: { id: 'x' } });
    expect(jobs.has('a')).toBe(true);
    expect(jobs.value('a')).toEqual({ id: 'x' });
    expect(() => jobs.claim('a')).toThrow(/already running/);
    job.finish();
    await expect(done).resolves.toBe('finished');
    expect(jobs.has('a')).toBe(false);
    expect(jobs.size).toBe(0);
  });

  it('frees a claimed slot on release without work, and on a work that throws synchronously', async () => {
    const jobs = createJobRunner({ name: 'w', graceMs: 0, cancelWaitMs: 1000 });
    const slot = jobs.claim('a');
    expect(jobs.size).toBe(1);
    slot.release();
    expect(jobs.size).toBe(0);
    await expect(
      jobs.run('b', () => {
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(jobs.size).toBe(0);
  });

  it('lets running jobs finish within the grace period and refuses new ones while stopping', async () => {
    const jobs = createJobRunner({ name: 'verify', graceMs: 5_000, cancelWaitMs: 1000 });
    const job = controllable();
    const done = jobs.run('a', job.work);
    expect(jobs.draining.aborted).toBe(false);
    const stopped = jobs.stop();
    expect(jobs.isStopping).toBe(true);
    expect(jobs.draining.aborted).toBe(true);
    expect(jobs.signal.aborted).toBe(false);
    let refusal: unknown;
    try {
      jobs.assertOpen();
    } catch (error) {
      refusal = error;
    }
    expect(isAppError(refusal) && refusal.code).toBe('shutting_down');
    expect(() => jobs.claim('b')).toThrow(/verify is stopping; retry against the new process/);
    job.finish();
    await expect(done).resolves.toBe('finished');
    expect(await stopped).toEqual([]);
    expect(job.seen.reason).toBeUndefined();
  });

  it('aborts jobs past the grace period, waits for their clean-up, and names those that outlive it', async () => {
    // The wait after the abort ends when the cancelled work has cleaned up, long before its bound.
    const jobs = createJobRunner({ name: 'dump', graceMs: 20, cancelWaitMs: 60_000 });
    const quick = controllable(10);
    const quickDone = jobs.run('quick', quick.work).catch((e: unknown) => e);
    const shared = jobs.signal;
    const jobsShort = createJobRunner({ name: 'dump', graceMs: 0, cancelWaitMs: 30 });
    jobsShort.claim('forever').track(new Promise(() => undefined));
    expect(await jobsShort.stop()).toEqual(['forever']);
    const left = await jobs.stop();
    expect(left).toEqual([]);
    expect(shared.aborted).toBe(true);
    const reason = await quickDone;
    expect(isAppError(reason) && reason.code).toBe('shutting_down');
    expect(quick.seen.reason).toBe(reason);
    expect(jobs.has('quick')).toBe(false);
  });

  it('aborts a job past its own deadline with the given reason', async () => {
    const jobs = createJobRunner({ name: 'verify', graceMs: 0, cancelWaitMs: 1000 });
    const job = controllable();
    const outcome = await jobs
      .run('a', job.work, { timeoutMs: 10, timeoutError: () => new Error('ran longer than 10 ms') })
      .catch((e: Error) => e.message);
    expect(outcome).toBe('ran longer than 10 ms');
    expect(jobs.size).toBe(0);
  });
});
