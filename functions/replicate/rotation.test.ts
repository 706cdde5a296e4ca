import { describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../shared/units.js';
import { fullRotationMs, type RetainedCopy, selectForRehash, shareBytes } from './rotation.js';

const DAY = 24 * HOUR_MS;
const policy = { everyMs: 7 * DAY, sweepIntervalMs: HOUR_MS };

function copies(n: number, sizeOf: (i: number) => number, provenAt: (i: number) => number): RetainedCopy[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `local:p/${String(i).padStart(4, '0')}`,
    sizeBytes: sizeOf(i),
    lastProvenMs: provenAt(i),
  }));
}

describe('rotation: which copies a sweep re-hashes', () => {
  it('is off with everyMs 0, and has nothing to do without copies', () => {
    expect(
      selectForRehash(
        copies(
          3,
          () => 10,
          () => 0,
        ),
        { ...policy, everyMs: 0 },
        DAY,
      ),
    ).toEqual([]);
    expect(selectForRehash([], policy, DAY)).toEqual([]);
  });

  it('takes the least recently proven first, about interval/period of the bytes', () => {
    const now = 30 * DAY;
    // 168 sweeps per period, 1,680 copies of 100 B: a share is 10 copies, all recently proven.
    const list = copies(
      1680,
      () => 100,
      (i) => now - DAY + i,
    );
    const picked = selectForRehash(list, policy, now);
    expect(picked.map((c) => c.id)).toEqual(list.slice(0, 10).map((c) => c.id));
    expect(shareBytes(168_000, policy)).toBe(1000);
  });

  it('takes at least one copy, however large', () => {
    const list = copies(
      2,
      (i) => (i === 0 ? 10_000_000 : 1),
      () => 0,
    );
    expect(selectForRehash(list, policy, 30 * DAY).map((c) => c.id)).toEqual([list[0]!.id]);
    // A small first copy does not let the next huge one wait: the one crossing the budget is read too.
    const small = copies(
      3,
      (i) => (i === 0 ? 1 : 10_000_000),
      () => 0,
    );
    expect(selectForRehash(small, policy, 30 * DAY)).toHaveLength(2);
  });

  it('catches up an overdue backlog at twice the share, never all at once', () => {
    const now = 100 * DAY;
    const list = copies(
      1680,
      () => 100,
      () => 0,
    ); // all overdue (a first start over an old store)
    expect(selectForRehash(list, policy, now)).toHaveLength(20);
  });

  it('over many sweeps every copy is proven at least once per period (mixed sizes, staggered ages)', () => {
    const sizes = (i: number) => ((i * 7919) % 97) * 1000 + 1;
    let list = copies(500, sizes, (i) => -((i * 104729) % (6 * DAY)));
    const lastProof = new Map(list.map((c) => [c.id, c.lastProvenMs]));
    let worstGap = 0;
    for (let now = 0; now < 28 * DAY; now += policy.sweepIntervalMs) {
      for (const c of selectForRehash(list, policy, now)) {
        worstGap = Math.max(worstGap, now - lastProof.get(c.id)!);
        lastProof.set(c.id, now);
      }
      list = list.map((c) => ({ ...c, lastProvenMs: lastProof.get(c.id)! }));
    }
    for (const c of list) worstGap = Math.max(worstGap, 28 * DAY - lastProof.get(c.id)!);
    expect(worstGap).toBeLessThanOrEqual(policy.everyMs);
    // …and the work was spread: no single sweep read more than twice its share.
    const total = list.reduce((n, c) => n + c.sizeBytes, 0);
    const biggest = Math.max(...list.map((c) => c.sizeBytes));
    const perSweep = selectForRehash(list, policy, 28 * DAY).reduce((n, c) => n + c.sizeBytes, 0);
    expect(perSweep).toBeLessThanOrEqual(2 * shareBytes(total, policy) + biggest);
  });

  it('says how long a full rotation takes at a rate', () => {
    expect(fullRotationMs(3_600_000, 1000)).toBe(HOUR_MS);
    expect(fullRotationMs(1, 0)).toBeUndefined();
  });
});
