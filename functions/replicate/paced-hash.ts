// Hashing at a bounded read rate: the re-hash of retained copies must not starve dumps, restores and
// copies of disk or network. One pacer per sweep, so the rate holds for local and offsite reads together.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ContentHash } from '../../shared/offsite/types.js';

export interface Pacer {
  /** Waits until `bytes` more may be read without passing the rate. */
  take(bytes: number, signal?: AbortSignal): Promise<void>;
  readonly bytes: number;
}

/** How long to wait, having read `totalBytes` in `elapsedMs`, so the read rate stays at `bytesPerSecond`. */
export function paceDelayMs(totalBytes: number, elapsedMs: number, bytesPerSecond: number): number {
  if (bytesPerSecond <= 0) return 0;
  return Math.max(0, (totalBytes / bytesPerSecond) * 1000 - elapsedMs);
}

export function createPacer(
  bytesPerSecond: number,
  now: () => number = performance.now.bind(performance),
): Pacer {
  const started = now();
  let total = 0;
  return {
    async take(bytes, signal) {
      total += bytes;
      const aheadMs = paceDelayMs(total, now() - started, bytesPerSecond);
      if (aheadMs > 1) await sleep(aheadMs, undefined, signal ? { signal } : {});
    },
    get bytes() {
      return total;
    },
  };
}

/** Reads `stream` to its end at the pacer's rate and hashes it. */
export async function pacedHash(stream: Readable, pacer: Pacer, signal?: AbortSignal): Promise<ContentHash> {
  const hash = createHash('sha256');
  let sizeBytes = 0;
  try {
    for await (const chunk of stream) {
      hash.update(chunk as Buffer);
      sizeBytes += (chunk as Buffer).length;
      await pacer.take((chunk as Buffer).length, signal);
    }
  } finally {
    stream.destroy();
  }
  return { sizeBytes, sha256: hash.digest('hex') };
}
