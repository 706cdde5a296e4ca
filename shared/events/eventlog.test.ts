import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../log.js';
import { type CloudEvent, createEvent } from './envelope.js';
import { createEventLog, SEGMENTS_PER_LOG } from './eventlog.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'flux-eventlog-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const event = (n: number, now = new Date(Date.UTC(2026, 11, 1, 10, 0, n))): CloudEvent =>
  createEvent({
    type: 'flux.backup.failed',
    source: '/flux-ops/dump',
    data: {
      projectId: '550e8400-e29b-41d4-a716-446655440000',
      backupId: '01JDZ0000000000000000000AA',
      reason: 'test',
      error: `event ${n}`,
    },
    now,
  });

async function bytesOnDisk(): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) total += (await stat(path.join(dir, name))).size;
  return total;
}

describe('createEventLog', () => {
  it('keeps events across instances (a restart) in order, in segment files', async () => {
    const first = createEventLog({ dir, maxEvents: 100, maxBytes: 1024 * 1024, log: silentLogger() });
    const written = [event(1), event(2), event(3)];
    for (const e of written) await first.append(e);
    const second = createEventLog({ dir, maxEvents: 100, maxBytes: 1024 * 1024, log: silentLogger() });
    expect((await second.events()).map((e) => e.id)).toEqual(written.map((e) => e.id));
    await second.append(event(4));
    const third = createEventLog({ dir, maxEvents: 100, maxBytes: 1024 * 1024, log: silentLogger() });
    expect(await third.events()).toHaveLength(4);
    expect((await readdir(dir)).every((n) => /^\d{12}\.json$/.test(n))).toBe(true);
  });

  it('is bounded by count: the oldest segments go, the newest events stay', async () => {
    const log = createEventLog({ dir, maxEvents: 50, maxBytes: 64 * 1024 * 1024, log: silentLogger() });
    const all = Array.from({ length: 200 }, (_, i) => event(i));
    for (const e of all) await log.append(e);
    const kept = await log.events();
    expect(kept.length).toBeLessThanOrEqual(50);
    expect(kept.length).toBeGreaterThanOrEqual(50 - 50 / SEGMENTS_PER_LOG);
    expect(kept.map((e) => e.id)).toEqual(all.slice(-kept.length).map((e) => e.id));
    expect((await readdir(dir)).length).toBeLessThanOrEqual(SEGMENTS_PER_LOG + 1);
  });

  it('is bounded by bytes on disk', async () => {
    const maxBytes = 32 * 1024;
    const log = createEventLog({ dir, maxEvents: 1_000_000, maxBytes, log: silentLogger() });
    for (let i = 0; i < 300; i += 1) await log.append(event(i));
    expect(await bytesOnDisk()).toBeLessThanOrEqual(maxBytes);
    const kept = await log.events();
    expect(kept.length).toBeGreaterThan(40);
    expect(kept.length).toBeLessThan(300);
    expect(kept.at(-1)?.data).toMatchObject({ error: 'event 299' });
  });

  it('since(t) returns the events of time t and later', async () => {
    const log = createEventLog({ dir, maxEvents: 100, maxBytes: 1024 * 1024, log: silentLogger() });
    const written = [event(1), event(2), event(3)];
    for (const e of written) await log.append(e);
    expect((await log.since(Date.parse(written[1]!.time))).map((e) => e.id)).toEqual(
      written.slice(1).map((e) => e.id),
    );
    expect(await log.since(Date.parse(written[2]!.time) + 1)).toEqual([]);
  });

  it('concurrent appends all land; a segment on disk is always whole JSON', async () => {
    const log = createEventLog({ dir, maxEvents: 1000, maxBytes: 1024 * 1024, log: silentLogger() });
    await Promise.all(Array.from({ length: 40 }, (_, i) => log.append(event(i))));
    expect(await log.events()).toHaveLength(40);
    for (const name of await readdir(dir)) JSON.parse(await readFile(path.join(dir, name), 'utf8'));
  });

  it('an unreadable segment is left in place and never overwritten; appends go on after it', async () => {
    const first = createEventLog({ dir, maxEvents: 100, maxBytes: 1024 * 1024, log: silentLogger() });
    await first.append(event(1));
    const [name] = await readdir(dir);
    await writeFile(path.join(dir, name!), '{"events": [');
    const second = createEventLog({ dir, maxEvents: 100, maxBytes: 1024 * 1024, log: silentLogger() });
    await second.append(event(2));
    expect(await readFile(path.join(dir, name!), 'utf8')).toBe('{"events": [');
    expect((await second.events()).map((e) => e.data)).toEqual([
      expect.objectContaining({ error: 'event 2' }),
    ]);
  });
});
