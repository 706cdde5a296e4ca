// Statistics for benchmark samples (median, min/max, percentiles) and the alternating run order that
// keeps a function and its baseline exposed to the same drift of a noisy machine.

export interface Summary {
  /** Number of samples. */
  n: number;
  median: number;
  min: number;
  max: number;
  p50: number;
  p99: number;
  /** The samples in the order they were measured. */
  samples: number[];
}

/**
 * The `p`-th percentile (0..100) by linear interpolation between closest ranks (numpy's default), so
 * p50 of an even count is the mean of the two middle samples, like the median.
 */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) throw new Error('percentile of no samples');
  if (!(p >= 0 && p <= 100)) throw new Error(`percentile must be within 0..100: ${p}`);
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  const low = sorted[lo]!;
  return low + (sorted[hi]! - low) * (rank - lo);
}

export function median(samples: readonly number[]): number {
  return percentile(samples, 50);
}

export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new Error('summary of no samples');
  return {
    n: samples.length,
    median: median(samples),
    min: Math.min(...samples),
    max: Math.max(...samples),
    p50: percentile(samples, 50),
    p99: percentile(samples, 99),
    samples: [...samples],
  };
}

/**
 * The order of `sides` in round `round` of an alternating comparison: rotated by one each round (A B,
 * B A, A B, … for two), so no side always follows another (a warm cache, a finished background task)
 * through the whole measurement.
 */
export function runOrder<K>(round: number, sides: readonly K[]): K[] {
  const shift = sides.length === 0 ? 0 : round % sides.length;
  return [...sides.slice(shift), ...sides.slice(0, shift)];
}

/**
 * Runs every side `rounds` times in alternating order (after `warmup` unrecorded rounds) and returns
 * what each call resolved to, per side, in measurement order.
 */
export async function alternate<K extends string>(
  rounds: number,
  sides: Record<K, () => Promise<number>>,
  options: { warmup?: number; before?: (side: K) => Promise<void> } = {},
): Promise<Record<K, number[]>> {
  const names = Object.keys(sides) as K[];
  const out = Object.fromEntries(names.map((k) => [k, [] as number[]])) as Record<K, number[]>;
  const warmup = options.warmup ?? 0;
  for (let round = 0; round < warmup + rounds; round++) {
    for (const side of runOrder(round, names)) {
      await options.before?.(side);
      const value = await sides[side]();
      if (round >= warmup) out[side].push(value);
    }
  }
  return out;
}

/** Ratio of two medians; undefined when the denominator is not a positive number. */
export function ratioOf(numerator: number, denominator: number): number | undefined {
  return denominator > 0 && Number.isFinite(numerator) ? numerator / denominator : undefined;
}
