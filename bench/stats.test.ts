import { describe, expect, it } from 'vitest';
import { goalText, makeResult } from './report.js';
import { alternate, median, percentile, ratioOf, runOrder, summarize } from './stats.js';

describe('percentile and median', () => {
  it('interpolate between closest ranks', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(percentile([10, 20, 30, 40, 50], 0)).toBe(10);
    expect(percentile([10, 20, 30, 40, 50], 100)).toBe(50);
    expect(percentile([10, 20, 30, 40, 50], 25)).toBe(20);
    // 1..100: rank 0.99 * 99 = 98.01 -> between 99 and 100.
    const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(hundred, 99)).toBeCloseTo(99.01, 10);
    expect(percentile([7], 99)).toBe(7);
  });

  it('refuse what has no answer', () => {
    expect(() => median([])).toThrow(/no samples/);
    expect(() => percentile([1], 101)).toThrow(/0\.\.100/);
    expect(() => summarize([])).toThrow(/no samples/);
  });

  it('summarize keeps the samples in measured order, with min, max, p50, p99', () => {
    const s = summarize([5, 1, 9, 3]);
    expect(s).toMatchObject({ n: 4, median: 4, min: 1, max: 9, p50: 4, samples: [5, 1, 9, 3] });
    // sorted 1 3 5 9: rank 0.99 * 3 = 2.97 -> 5 + 0.97 * (9 - 5).
    expect(s.p99).toBeCloseTo(8.88, 10);
  });

  it('ratioOf is undefined without a positive denominator', () => {
    expect(ratioOf(3, 2)).toBe(1.5);
    expect(ratioOf(3, 0)).toBeUndefined();
    expect(ratioOf(Number.NaN, 2)).toBeUndefined();
  });
});

describe('alternating runs', () => {
  it('rotate the order every round, so no side always goes first', () => {
    expect(runOrder(0, ['a', 'b'])).toEqual(['a', 'b']);
    expect(runOrder(1, ['a', 'b'])).toEqual(['b', 'a']);
    expect(runOrder(4, ['a', 'b', 'c'])).toEqual(['b', 'c', 'a']);
  });

  it('record per side after the warm-up rounds', async () => {
    const calls: string[] = [];
    let tick = 0;
    const side = (name: string) => async () => {
      calls.push(name);
      return tick++;
    };
    const runs = await alternate(2, { fn: side('fn'), base: side('base') }, { warmup: 1 });
    expect(calls).toEqual(['fn', 'base', 'base', 'fn', 'fn', 'base']);
    expect(runs).toEqual({ fn: [3, 4], base: [2, 5] });
  });

  it('run the before hook ahead of every side, and outside its measurement', async () => {
    const calls: string[] = [];
    const runs = await alternate(
      1,
      {
        fn: async () => {
          calls.push('fn');
          return 1;
        },
        base: async () => {
          calls.push('base');
          return 2;
        },
      },
      {
        warmup: 1,
        before: async (next) => {
          calls.push(`settle:${next}`);
        },
      },
    );
    expect(calls).toEqual([
      'settle:fn',
      'fn',
      'settle:base',
      'base',
      'settle:base',
      'base',
      'settle:fn',
      'fn',
    ]);
    expect(runs).toEqual({ fn: [1], base: [2] });
  });
});

describe('goals', () => {
  const fn = summarize([1.0, 1.1, 1.2]);
  const baseline = { ...summarize([1.0, 1.0, 1.0]), label: 'raw tool' };

  it('a ratio goal passes or misses on the ratio of medians', () => {
    const pass = makeResult({
      id: 'x',
      group: 'dump',
      name: 'x',
      unit: 's',
      fn,
      baseline,
      goals: [{ of: 'ratio', op: '<=', value: 1.2 }],
    });
    expect(pass.ratio).toBeCloseTo(1.1, 10);
    expect(pass.pass).toBe(true);
    const miss = makeResult({
      id: 'x',
      group: 'dump',
      name: 'x',
      unit: 's',
      fn,
      baseline,
      goals: [{ of: 'ratio', op: '<=', value: 1.05 }],
    });
    expect(miss.pass).toBe(false);
  });

  it('a difference goal holds the function to what it adds above the baseline, in the unit', () => {
    const at = (value: number) =>
      makeResult({
        id: 'x',
        group: 'fleet',
        name: 'x',
        unit: 'ms',
        fn: summarize([130, 140, 150]),
        baseline: { ...summarize([95, 100, 105]), label: 'raw tool' },
        goals: [{ of: 'difference', op: '<=', value }],
      }).pass;
    expect(at(40)).toBe(true);
    expect(at(39)).toBe(false);
    const noBaseline = makeResult({
      id: 'x',
      group: 'fleet',
      name: 'x',
      unit: 'ms',
      fn,
      goals: [{ of: 'difference', op: '<=', value: 50 }],
    });
    expect(noBaseline.pass).toBe(false);
    expect(goalText({ of: 'difference', op: '<=', value: 50 }, 'ms')).toBe('added <= 50 ms');
  });

  it('every goal must hold; a goal on a missing number misses; no goal is neither', () => {
    const two = makeResult({
      id: 'x',
      group: 'dump',
      name: 'x',
      unit: 'MB',
      fn,
      peakRssMb: 120,
      goals: [
        { of: 'median', op: '<=', value: 2 },
        { of: 'peakRssMb', op: '<=', value: 100 },
      ],
    });
    expect(two.pass).toBe(false);
    const noBaseline = makeResult({
      id: 'x',
      group: 'dump',
      name: 'x',
      unit: 's',
      fn,
      goals: [{ of: 'ratio', op: '>=', value: 0.8 }],
    });
    expect(noBaseline.pass).toBe(false);
    expect(makeResult({ id: 'x', group: 'probe', name: 'x', unit: 's', fn }).pass).toBeNull();
  });
});
