// The hold's own rules, over a verifier whose slots the test opens and closes: arrival order, a place
// kept, no slot missed when one frees during a drain, errors other than a full queue dropped.
import { describe, expect, it } from 'vitest';
import { AppError } from '../../shared/errors.js';
import { createLogger } from '../../shared/log.js';
import { createRegistry } from '../../shared/metrics.js';
import { createHeldVerifications } from './held.js';
import type { StartedVerification, VerifyRequest } from './verifier.js';

function slots(free: number) {
  const started: string[] = [];
  const gone = new Set<string>();
  return {
    started,
    gone,
    free,
    /** Runs as a refusal is answered: a verification settling at that very moment. */
    onRefuse: undefined as (() => void) | undefined,
    async start(request: VerifyRequest): Promise<StartedVerification> {
      await Promise.resolve();
      if (gone.has(request.backupId)) throw new AppError('not_found', `no backup ${request.backupId}`);
      if (this.free <= 0) {
        this.onRefuse?.();
        this.onRefuse = undefined;
        throw new AppError('queue_full', 'busy');
      }
      this.free--;
      started.push(request.backupId);
      return { backupId: request.backupId, joined: false, done: new Promise(() => undefined) };
    },
  };
}

const req = (backupId: string): VerifyRequest => ({ projectId: 'p', backupId, source: 'local' });
const quiet = createLogger('verify', { level: 'silent' });

describe('held verifications', () => {
  it('starts in arrival order as slots free, keeps a place, and refuses beyond its bound', async () => {
    const v = slots(0);
    const held = createHeldVerifications({ verifier: v, max: 3, log: quiet, metrics: createRegistry() });
    expect([held.hold(req('a')), held.hold(req('b')), held.hold(req('a')), held.hold(req('c'))]).toEqual([
      1, 2, 1, 3,
    ]);
    expect(held.hold(req('d'))).toBeUndefined();
    await held.drain();
    expect(v.started).toEqual([]);
    v.free = 2;
    await held.drain();
    expect(v.started).toEqual(['a', 'b']);
    expect(held.has('p', 'c')).toBe(true);
    expect(held.has('p', 'a')).toBe(false);
    expect(held.size).toBe(1);
  });

  it('a slot freed while a drain is on its way is not missed; a backup gone is dropped, not retried', async () => {
    const v = slots(0);
    const held = createHeldVerifications({ verifier: v, max: 10, log: quiet, metrics: createRegistry() });
    held.hold(req('gone'));
    held.hold(req('x'));
    held.hold(req('y'));
    v.gone.add('gone');
    let second: Promise<void> | undefined;
    // The drain meets the full queue at x, and just then a verification settles and frees two slots.
    v.onRefuse = () => {
      v.free = 2;
      second = held.drain();
    };
    const first = held.drain();
    await first;
    expect(second).toBe(first);
    expect(v.started).toEqual(['x', 'y']);
    expect(held.size).toBe(0);
  });

  it('clear forgets what is held (a stopping process leaves it to the start-up reconcile)', () => {
    const held = createHeldVerifications({
      verifier: slots(0),
      max: 10,
      log: quiet,
      metrics: createRegistry(),
    });
    held.hold(req('a'));
    expect(held.clear()).toBe(1);
    expect(held.size).toBe(0);
  });
});
