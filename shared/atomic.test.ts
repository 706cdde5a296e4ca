import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { streamToPendingFile } from './atomic.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'flux-ops-atomic-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('streamToPendingFile', () => {
  it('a stream that fails before its file is open leaves no temp file behind', async () => {
    // The temp file is created by an open that completes after the failure; the cleanup must wait for it.
    const failures: unknown[] = [];
    for (let i = 0; i < 100; i++) {
      const aborted = new AbortController();
      aborted.abort(new Error('stopped'));
      const source = Readable.from([Buffer.from('x')]);
      await streamToPendingFile(path.join(dir, `a${i}`), source, { signal: aborted.signal }).catch((error) =>
        failures.push(error),
      );
      await streamToPendingFile(
        path.join(dir, `b${i}`),
        new Readable({
          read() {
            this.destroy(new Error('source failed'));
          },
        }),
      ).catch((error) => failures.push(error));
      // A pause between tries lets a late open land where the next readdir sees it.
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    expect(failures).toHaveLength(200);
    // Any open still under way would land within this pause.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await readdir(dir)).toEqual([]);
  });

  it('a complete stream is held in a temp file until commit, then only the target exists', async () => {
    const target = path.join(dir, 'object');
    const pending = await streamToPendingFile(target, Readable.from([Buffer.from('hello')]));
    expect(pending.sizeBytes).toBe(5);
    expect(await readdir(dir)).toEqual([path.basename(pending.tmp)]);
    await pending.commit();
    expect(await readdir(dir)).toEqual(['object']);
    expect(await readFile(target, 'utf8')).toBe('hello');
  });
});
