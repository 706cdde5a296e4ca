import { describe, expect, it } from 'vitest';
import { createLogger } from '../log.js';
import { createLifecycle } from './lifecycle.js';

const log = createLogger('test', { level: 'silent' });

describe('createLifecycle', () => {
  it('starts steps in order and releases them in reverse', async () => {
    const seen: string[] = [];
    const lc = createLifecycle(log)
      .step('catalog', undefined, () => seen.push('stop catalog'))
      .step(
        'outbox',
        () => seen.push('start outbox'),
        () => seen.push('stop outbox'),
      )
      .step(
        'worker',
        () => seen.push('start worker'),
        () => seen.push('stop worker'),
      )
      .step('check', () => seen.push('check'));
    await lc.start();
    await lc.stop();
    expect(seen).toEqual([
      'start outbox',
      'start worker',
      'check',
      'stop worker',
      'stop outbox',
      'stop catalog',
    ]);
    await lc.stop();
    expect(seen).toHaveLength(6);
  });

  it('releases what started when a later step fails, and rethrows', async () => {
    const seen: string[] = [];
    const lc = createLifecycle(log)
      .step(
        'outbox',
        () => seen.push('start outbox'),
        () => seen.push('stop outbox'),
      )
      .step(
        'keys',
        () => {
          throw new Error('no identity opens the newest copy');
        },
        () => seen.push('never started, never stopped'),
      )
      .step(
        'worker',
        () => seen.push('start worker'),
        () => seen.push('stop worker'),
      );
    await expect(lc.start()).rejects.toThrow('no identity');
    expect(seen).toEqual(['start outbox', 'stop outbox']);
  });

  it('goes on releasing when one release fails', async () => {
    const seen: string[] = [];
    const lc = createLifecycle(log)
      .step('outbox', undefined, () => seen.push('stop outbox'))
      .step('worker', undefined, () => {
        throw new Error('stuck');
      });
    await lc.start();
    await lc.stop();
    expect(seen).toEqual(['stop outbox']);
  });
});
