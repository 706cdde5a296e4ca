import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createPacer, paceDelayMs, pacedHash } from './paced-hash.js';

describe('paced hashing', () => {
  it('waits exactly as long as the rate needs, never when behind it or unthrottled', () => {
    // 32 MiB/s: 64 MiB read in 1 s is 1 s ahead of the rate.
    expect(paceDelayMs(64 * 1024 * 1024, 1000, 32 * 1024 * 1024)).toBe(1000);
    expect(paceDelayMs(1000, 5000, 1000)).toBe(0);
    expect(paceDelayMs(10 ** 12, 0, 0)).toBe(0);
  });

  it('hashes the whole stream and counts what it read', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    const pacer = createPacer(0);
    const chunks = [bytes.subarray(0, 1_000_000), bytes.subarray(1_000_000)];
    const found = await pacedHash(Readable.from(chunks), pacer);
    expect(found).toEqual({
      sizeBytes: bytes.length,
      sha256: createHash('sha256').update(bytes).digest('hex'),
    });
    expect(pacer.bytes).toBe(bytes.length);
  });

  it('a stop cancels a paced wait', async () => {
    const controller = new AbortController();
    // 1 B/s: a 10 kB chunk would wait hours; the abort ends it at once.
    const pacer = createPacer(1, () => 0);
    const waiting = pacer.take(10_000, controller.signal);
    controller.abort(new Error('stopping'));
    await expect(waiting).rejects.toThrow();
  });
});
