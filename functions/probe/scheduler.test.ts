import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../shared/log.js';
import { createScheduler, FIRST_CYCLE_MAX_DELAY_MS, JITTER_RATIO, nextDelayMs } from './scheduler.js';

describe('nextDelayMs', () => {
  it('jitters ±10 % around the interval', () => {
    expect(nextDelayMs(60_000, 0, false)).toBe(60_000 * (1 - JITTER_RATIO));
    expect(nextDelayMs(60_000, 0.5, false)).toBe(60_000);
    expect(nextDelayMs(60_000, 0.999999, false)).toBeLessThanOrEqual(60_000 * (1 + JITTER_RATIO));
    expect(nextDelayMs(60_000, 0.999999, false)).toBeGreaterThan(60_000);
  });

  it('spreads the first cycle over at most the interval or the first-cycle cap', () => {
    expect(nextDelayMs(60_000, 0, true)).toBe(0);
    expect(nextDelayMs(60_000, 0.999, true)).toBeLessThan(FIRST_CYCLE_MAX_DELAY_MS);
    expect(nextDelayMs(200, 0.999, true)).toBeLessThan(200);
  });
});

describe('createScheduler', () => {
  it('runs cycles one after another, never overlapping, and stops', async () => {
    let active = 0;
    let maxActive = 0;
    let cycles = 0;
    const scheduler = createScheduler({
      intervalMs: 20,
      log: silentLogger(),
      run: async () => {
        active += 1;
        maxActive = Math.max(maxActive, active);
        await new Promise((r) => setTimeout(r, 30));
        cycles += 1;
        active -= 1;
      },
    });
    scheduler.start();
    while (cycles < 3) await new Promise((r) => setTimeout(r, 10));
    await scheduler.stop();
    const after = cycles;
    await new Promise((r) => setTimeout(r, 80));
    expect(cycles).toBe(after);
    expect(maxActive).toBe(1);
    expect(scheduler.running).toBe(false);
  });

  it('does nothing with interval 0 (on demand only)', async () => {
    let cycles = 0;
    const scheduler = createScheduler({
      intervalMs: 0,
      log: silentLogger(),
      run: async () => {
        cycles += 1;
      },
    });
    scheduler.start();
    await new Promise((r) => setTimeout(r, 30));
    await scheduler.stop();
    expect(cycles).toBe(0);
  });

  it('keeps scheduling after a failed cycle', async () => {
    let cycles = 0;
    const scheduler = createScheduler({
      intervalMs: 10,
      log: silentLogger(),
      run: async () => {
        cycles += 1;
        throw new Error('boom');
      },
    });
    scheduler.start();
    while (cycles < 2) await new Promise((r) => setTimeout(r, 5));
    await scheduler.stop();
    expect(cycles).toBeGreaterThanOrEqual(2);
  });
});
