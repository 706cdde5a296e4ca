// flux-ops events tail|replay: what each function emitted (GET /<fn>/events/recent?after=<id>, from its
// event log, so it outlives a restart), its dead letters (GET /<fn>/events/dead, POST /<fn>/events/replay)
// and sending logged events again (POST /<fn>/events/replay?since=<time>).
import { FUNCTION_NAMES, type FunctionName } from '../shared/config.js';
import { AppError } from '../shared/errors.js';
import { typeMatches } from '../shared/events/envelope.js';
import { bool, str, strs } from './args.js';
import { type Command, type Context, sleep } from './command.js';
import { ApiError } from './http.js';
import { humanBytes, println, table } from './output.js';

export interface TailEvent {
  id: string;
  type: string;
  source?: string;
  subject?: string;
  time?: string;
  data?: Record<string, unknown>;
}

export const FOLLOW_POLL_MS = 1_000;

function functionsOf(command: string, values: Context['values']): FunctionName[] {
  const named = strs(values, 'fn');
  for (const name of named) {
    if (!(FUNCTION_NAMES as readonly string[]).includes(name)) {
      throw new AppError('bad_request', `${command}: --fn must be one of ${FUNCTION_NAMES.join(', ')}`);
    }
  }
  return named.length > 0 ? (named as FunctionName[]) : [...FUNCTION_NAMES];
}

/** One line per event: time, type, subject and the one or two facts an operator looks for. */
export function eventLine(e: TailEvent): string {
  const d = e.data ?? {};
  const facts: string[] = [];
  if (typeof d.slug === 'string') facts.push(d.slug);
  if (typeof d.sizeBytes === 'number') facts.push(humanBytes(d.sizeBytes));
  if (typeof d.phase === 'string') facts.push(`phase=${d.phase}`);
  if (typeof d.reason === 'string') facts.push(`reason=${d.reason}`);
  if (typeof d.error === 'string') facts.push(d.error.replace(/\s+/g, ' ').slice(0, 160));
  return [e.time ?? '-', e.type, e.subject ?? '-', ...facts].join('  ');
}

/** Events of every function merged in time order (ids break ties, they are time-sortable too). */
export function mergeEvents(lists: ReadonlyArray<readonly TailEvent[]>): TailEvent[] {
  return lists.flat().sort((a, b) => (a.time ?? '').localeCompare(b.time ?? '') || a.id.localeCompare(b.id));
}

/** A function that is not deployed behind the front door (404/503) is skipped; auth and network errors end the command. */
function isSkippable(error: unknown): boolean {
  return error instanceof ApiError && (error.status === 404 || error.status === 502 || error.status === 503);
}

const tail: Command = {
  name: 'events tail',
  summary: 'print the events the functions emitted; --follow for new ones',
  help: `Usage: flux-ops events tail [--type <glob>]... [--fn <name>]... [-n <count>] [--follow]

Prints the most recent events each function emitted (GET /<fn>/events/recent, from each function's
event log under FLUX_STATE_DIR, so a restart loses none), oldest first; with --follow keeps printing new
ones until interrupted. --json prints one CloudEvent per line.

Flags:
  --type <glob>     only these types, e.g. 'flux.backup.*' (repeatable)
  --fn <name>       only these functions: ${FUNCTION_NAMES.join(', ')} (repeatable)
  -n, --lines <n>   how many past events to print first (default 20; 0 for none)
  -f, --follow      keep polling for new events`,
  options: {
    type: { type: 'string', multiple: true },
    fn: { type: 'string', multiple: true },
    lines: { type: 'string', short: 'n' },
    follow: { type: 'boolean', short: 'f' },
  },
  async run(ctx) {
    const client = ctx.client();
    const fns = functionsOf(this.name, ctx.values);
    const types = strs(ctx.values, 'type');
    const linesRaw = str(ctx.values, 'lines') ?? '20';
    if (!/^\d{1,6}$/.test(linesRaw)) throw new AppError('bad_request', `${this.name}: -n must be a count`);
    const lines = Number(linesRaw);
    const follow = bool(ctx.values, 'follow');
    const after = new Map<FunctionName, string>();
    const seen = new Set<string>();
    const warned = new Set<FunctionName>();

    async function poll(): Promise<TailEvent[]> {
      const lists = await Promise.all(
        fns.map(async (fn) => {
          try {
            const last = after.get(fn);
            const { body } = await client.json<{ events: TailEvent[] }>('GET', `/${fn}/events/recent`, {
              ...(last ? { query: { after: last } } : {}),
            });
            const events = body.events ?? [];
            const newest = events.at(-1);
            if (newest) after.set(fn, newest.id);
            warned.delete(fn);
            return events;
          } catch (error) {
            if (!isSkippable(error)) throw error;
            if (!warned.has(fn)) {
              println(ctx.io.err, `flux-ops: events of ${fn} unavailable: ${(error as Error).message}`);
              warned.add(fn);
            }
            return [];
          }
        }),
      );
      // A tail id that fell out of a function's recent buffer returns its whole buffer again: dedupe.
      const fresh = mergeEvents(lists).filter((e) => !seen.has(e.id));
      for (const e of fresh) seen.add(e.id);
      return fresh.filter((e) => types.length === 0 || typeMatches(e.type, types));
    }

    const print = (events: readonly TailEvent[]) => {
      for (const e of events) println(ctx.io.out, ctx.json ? JSON.stringify(e) : eventLine(e));
    };

    const first = await poll();
    print(lines === 0 ? [] : first.slice(-lines));
    if (!follow) return 0;
    for (;;) {
      try {
        await sleep(FOLLOW_POLL_MS, ctx.signal);
      } catch {
        return 0;
      }
      print(await poll());
    }
  },
};

interface DeadLetter {
  id: string;
  type: string;
  subject?: string;
  sink: string;
  attempts: number;
  lastStatus: number | null;
  lastError: string | null;
  deadAt?: string;
}

const DURATION_UNITS_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** --since as an ISO 8601 time: given as one (with a zone), or as a duration ago (30m, 2h, 1d). */
export function sinceTime(value: string, now: number = Date.now()): string {
  const ago = /^(\d{1,6})([smhd])$/.exec(value);
  if (ago) return new Date(now - Number(ago[1]) * DURATION_UNITS_MS[ago[2]!]!).toISOString();
  const at = /^\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:\d{2})$/.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(at)) {
    throw new AppError(
      'bad_request',
      'events replay: --since is a time with a zone (2026-12-01T10:00:00Z) or a duration ago (30m, 2h, 1d)',
    );
  }
  return new Date(at).toISOString();
}

async function replaySince(ctx: Context, fns: readonly FunctionName[], since: string): Promise<number> {
  const client = ctx.client();
  const replayed: Partial<Record<FunctionName, { events: number; deliveries: number }>> = {};
  for (const fn of fns) {
    try {
      const { body } = await client.json<{ replayed: number; events: number }>(
        'POST',
        `/${fn}/events/replay`,
        { query: { since } },
      );
      replayed[fn] = { events: body.events ?? 0, deliveries: body.replayed ?? 0 };
    } catch (error) {
      if (!isSkippable(error)) throw error;
      println(ctx.io.err, `flux-ops: events of ${fn} unavailable: ${(error as Error).message}`);
    }
  }
  if (ctx.json) {
    println(ctx.io.out, JSON.stringify({ since, replayed }, null, 2));
    return 0;
  }
  for (const [fn, r] of Object.entries(replayed)) {
    println(
      ctx.io.out,
      `${fn}: sent ${r.events} event${r.events === 1 ? '' : 's'} since ${since} again (${r.deliveries} deliver${r.deliveries === 1 ? 'y' : 'ies'})`,
    );
  }
  return 0;
}

const replay: Command = {
  name: 'events replay',
  summary: 'send dead letters, or every event since a time, again',
  help: `Usage: flux-ops events replay [--fn <name>] [--id <eventId>] [--dry-run]
       flux-ops events replay --since <time> [--fn <name>]

Lists the events whose delivery gave up (GET /<fn>/events/dead) and moves them back to the outbox
(POST /<fn>/events/replay), all of them or one event's. With --since, sends every event the functions
logged at or after that time again, to the sinks that take it now (receivers dedupe by webhook-id).

Exit codes: 0 replayed (or nothing to replay); 66 --id names no dead letter; others from the errors table.

Flags:
  --fn <name>       only this function: ${FUNCTION_NAMES.join(', ')}
  --id <eventId>    only this event's dead letters
  --since <time>    every logged event since: 2026-12-01T10:00:00Z, or a duration ago (30m, 2h, 1d)
  --dry-run         list dead letters, do not replay`,
  options: {
    fn: { type: 'string' },
    id: { type: 'string' },
    since: { type: 'string' },
    'dry-run': { type: 'boolean' },
  },
  async run(ctx) {
    const client = ctx.client();
    const fns = functionsOf(this.name, ctx.values);
    const id = str(ctx.values, 'id');
    const since = str(ctx.values, 'since');
    if (since !== undefined) {
      if (id !== undefined || bool(ctx.values, 'dry-run')) {
        throw new AppError(
          'bad_request',
          `${this.name}: --since sends logged events again; --id and --dry-run are for dead letters (see them with events tail)`,
        );
      }
      return replaySince(ctx, fns, sinceTime(since));
    }
    if (id !== undefined && !/^[A-Za-z0-9._:-]{1,128}$/.test(id)) {
      throw new AppError('bad_request', `${this.name}: --id is not an event id`);
    }
    const dead: Array<DeadLetter & { fn: FunctionName }> = [];
    for (const fn of fns) {
      try {
        const { body } = await client.json<{ deadLetters: DeadLetter[] }>('GET', `/${fn}/events/dead`);
        for (const d of body.deadLetters ?? []) if (id === undefined || d.id === id) dead.push({ ...d, fn });
      } catch (error) {
        if (!isSkippable(error)) throw error;
        println(ctx.io.err, `flux-ops: dead letters of ${fn} unavailable: ${(error as Error).message}`);
      }
    }
    if (id !== undefined && dead.length === 0) {
      throw new AppError(
        'not_found',
        `no dead letter of event ${id}${fns.length === 1 ? ` in ${fns[0]}` : ''}`,
      );
    }
    const replayed: Partial<Record<FunctionName, number>> = {};
    if (!bool(ctx.values, 'dry-run')) {
      for (const fn of new Set(dead.map((d) => d.fn))) {
        const { body } = await client.json<{ replayed: number }>('POST', `/${fn}/events/replay`, {
          ...(id !== undefined ? { query: { id } } : {}),
        });
        replayed[fn] = body.replayed ?? 0;
      }
    }
    if (ctx.json) {
      println(ctx.io.out, JSON.stringify({ deadLetters: dead, replayed }, null, 2));
      return 0;
    }
    if (dead.length === 0) {
      println(ctx.io.out, 'no dead letters');
      return 0;
    }
    println(
      ctx.io.out,
      table(dead, [
        { header: 'FN', value: (d) => d.fn },
        { header: 'EVENT', value: (d) => d.id },
        { header: 'TYPE', value: (d) => d.type },
        { header: 'SUBJECT', value: (d) => d.subject ?? '-' },
        { header: 'SINK', value: (d) => d.sink },
        { header: 'TRIES', value: (d) => String(d.attempts), right: true },
        {
          header: 'LAST ERROR',
          value: (d) =>
            [d.lastStatus ? `HTTP ${d.lastStatus}` : '', d.lastError ?? '']
              .filter(Boolean)
              .join(' ')
              .slice(0, 160),
        },
      ]),
    );
    for (const [fn, n] of Object.entries(replayed)) {
      println(ctx.io.out, `replayed ${n} dead letter${n === 1 ? '' : 's'} of ${fn}`);
    }
    return 0;
  },
};

export const EVENTS_COMMANDS: readonly Command[] = [tail, replay];
