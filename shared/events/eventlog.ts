// The event log: every event a function emitted, persisted under FLUX_STATE_DIR so `flux-ops events tail`
// shows them after a restart and `events replay --since` can send them again. Bounded on disk: events go
// into small segment files, each rewritten atomically as it grows (shared/atomic.ts); the oldest segments
// are removed once the log holds more than its count or byte limit.
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, fsyncDir, TEMP_PREFIX, writeFileAtomic } from '../atomic.js';
import { errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import type { CloudEvent } from './envelope.js';

export interface EventLogOptions {
  dir: string;
  /** FLUX_EVENT_LOG_MAX_EVENTS: the log keeps at most this many events (whole segments are dropped). */
  maxEvents: number;
  /** FLUX_EVENT_LOG_MAX_BYTES: and at most this many bytes of segment files. */
  maxBytes: number;
  log: Logger;
}

export interface EventLog {
  append(event: CloudEvent): Promise<void>;
  /** Every event held, oldest first. */
  events(): Promise<readonly CloudEvent[]>;
  /** Events whose `time` is at or after `sinceMs`, oldest first. */
  since(sinceMs: number): Promise<CloudEvent[]>;
}

/** A segment holds a tenth of the log, so dropping the oldest keeps at least nine tenths of the limit. */
export const SEGMENTS_PER_LOG = 10;
const SEGMENT_NAME = /^(\d{12})\.json$/;

interface Segment {
  seq: number;
  events: CloudEvent[];
  bytes: number;
}

const segmentFile = (dir: string, seq: number) => path.join(dir, `${String(seq).padStart(12, '0')}.json`);
const segmentText = (events: readonly CloudEvent[]) => `${JSON.stringify({ events })}\n`;
const sizeOf = (events: readonly CloudEvent[]) => Buffer.byteLength(segmentText(events));

export function createEventLog(options: EventLogOptions): EventLog {
  const segmentEvents = Math.max(1, Math.ceil(options.maxEvents / SEGMENTS_PER_LOG));
  const segmentBytes = Math.max(1024, Math.floor(options.maxBytes / SEGMENTS_PER_LOG));
  let segments: Segment[] | undefined;
  let loading: Promise<Segment[]> | undefined;
  // Appends are written one after another: each rewrites the newest segment.
  let tail: Promise<void> = Promise.resolve();

  async function load(): Promise<Segment[]> {
    if (segments) return segments;
    loading ??= (async () => {
      await ensureDir(options.dir);
      const names = (await readdir(options.dir)).filter((n) => SEGMENT_NAME.test(n)).sort();
      const out: Segment[] = [];
      for (const name of names) {
        const seq = Number(SEGMENT_NAME.exec(name)![1]);
        try {
          const parsed = JSON.parse(await readFile(path.join(options.dir, name), 'utf8')) as {
            events?: CloudEvent[];
          };
          const events = Array.isArray(parsed.events) ? parsed.events : [];
          out.push({ seq, events, bytes: sizeOf(events) });
        } catch (error) {
          if (errnoOf(error) === 'ENOENT') continue;
          options.log.error({ file: name, err: error }, 'event log: unreadable segment left in place');
          // Later appends go to a new segment after it, so the unreadable one is never overwritten.
          out.push({ seq, events: [], bytes: Number.POSITIVE_INFINITY });
        }
      }
      // Temp files of an append this process's predecessor did not finish (one writer per directory).
      for (const name of await readdir(options.dir)) {
        if (name.startsWith(TEMP_PREFIX)) await rm(path.join(options.dir, name), { force: true });
      }
      segments = out;
      return out;
    })();
    return loading;
  }

  async function prune(all: Segment[]): Promise<void> {
    let count = all.reduce((n, s) => n + s.events.length, 0);
    let bytes = all.reduce((n, s) => n + (Number.isFinite(s.bytes) ? s.bytes : 0), 0);
    let removed = false;
    while (all.length > 1 && (count > options.maxEvents || bytes > options.maxBytes)) {
      const oldest = all.shift()!;
      count -= oldest.events.length;
      bytes -= Number.isFinite(oldest.bytes) ? oldest.bytes : 0;
      await rm(segmentFile(options.dir, oldest.seq), { force: true });
      removed = true;
    }
    if (removed) await fsyncDir(options.dir);
  }

  async function write(event: CloudEvent): Promise<void> {
    const all = await load();
    let current = all.at(-1);
    const eventBytes = sizeOf([event]);
    if (!current || current.events.length >= segmentEvents || current.bytes + eventBytes > segmentBytes) {
      current = { seq: (current?.seq ?? 0) + 1, events: [], bytes: 0 };
      all.push(current);
    }
    const events = [...current.events, event];
    await writeFileAtomic(segmentFile(options.dir, current.seq), segmentText(events));
    current.events = events;
    current.bytes = sizeOf(events);
    await prune(all);
  }

  return {
    append(event) {
      const done = tail.then(() => write(event));
      tail = done.catch(() => undefined);
      return done;
    },
    async events() {
      await tail;
      return (await load()).flatMap((s) => s.events);
    },
    async since(sinceMs) {
      await tail;
      return (await load()).flatMap((s) => s.events).filter((e) => Date.parse(e.time) >= sinceMs);
    },
  };
}
