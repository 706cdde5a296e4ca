// Human output of the CLI: aligned tables, binary sizes, rates, ages; and the stdout/stderr pair every
// command writes through (stdout for results, stderr for progress and errors).
import type { Writable } from 'node:stream';
import { KIB } from '../shared/units.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 0 B, 512 B, 1.5 KiB, 20.0 MiB, 3.21 GiB: three significant digits above bytes. */
export function humanBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return '-';
  let value = Math.max(0, bytes);
  let unit = 0;
  while (value >= KIB && unit < UNITS.length - 1) {
    value /= KIB;
    unit++;
  }
  if (unit === 0) return `${Math.round(value)} B`;
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

export function humanRate(bytesPerSecond: number | undefined): string {
  if (bytesPerSecond === undefined || !Number.isFinite(bytesPerSecond)) return '- B/s';
  return `${humanBytes(bytesPerSecond)}/s`;
}

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** 45s, 3m 05s, 2h 10m, 4d 3h: two units at most, for ages and durations. */
export function humanDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  const t = Math.max(0, Math.round(ms));
  if (t < MINUTE) return `${Math.floor(t / SECOND)}s`;
  if (t < HOUR)
    return `${Math.floor(t / MINUTE)}m ${String(Math.floor((t % MINUTE) / SECOND)).padStart(2, '0')}s`;
  if (t < DAY) return `${Math.floor(t / HOUR)}h ${String(Math.floor((t % HOUR) / MINUTE)).padStart(2, '0')}m`;
  return `${Math.floor(t / DAY)}d ${Math.floor((t % DAY) / HOUR)}h`;
}

/** Durations of finished work: 0.25s, 12.3s under a minute, then as humanDuration. */
export function preciseDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  const seconds = Math.max(0, ms) / 1000;
  if (seconds < 10) return `${seconds.toFixed(2)}s`;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  return humanDuration(ms);
}

/** How long ago `iso` was, e.g. "3m 05s ago"; "-" when absent or unparseable. */
export function humanAge(iso: string | null | undefined, now: Date = new Date()): string {
  if (!iso) return '-';
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return '-';
  return `${humanDuration(now.getTime() - at)} ago`;
}

export interface Column<T> {
  header: string;
  value(row: T): string;
  /** Right-align (numbers, sizes). */
  right?: boolean;
}

/** A plain-text table: header row, two spaces between columns, the last column not padded. */
export function table<T>(rows: readonly T[], columns: readonly Column<T>[]): string {
  const cells = rows.map((row) => columns.map((c) => oneLine(c.value(row))));
  const widths = columns.map((c, i) => Math.max(c.header.length, ...cells.map((r) => r[i]!.length)));
  const render = (values: string[]) =>
    values
      .map((v, i) => {
        const last = i === values.length - 1;
        if (columns[i]!.right) return v.padStart(widths[i]!);
        return last ? v : v.padEnd(widths[i]!);
      })
      .join('  ')
      .trimEnd();
  return [render(columns.map((c) => c.header)), ...cells.map(render)].join('\n');
}

function oneLine(value: string): string {
  return value.replace(/\s*\n\s*/g, ' ');
}

export const yesNo = (value: boolean | undefined): string => (value ? 'yes' : 'no');

/** Where a command writes: results to `out`, progress and diagnostics to `err`. */
export interface Io {
  out: Writable;
  err: Writable;
  /** stderr is a terminal: progress may redraw one line. */
  errIsTTY: boolean;
  /** stdin is a terminal: the CLI may ask for confirmation. */
  inIsTTY: boolean;
}

export function println(stream: Writable, text = ''): void {
  stream.write(`${text}\n`);
}

export function printJson(io: Io, value: unknown): void {
  println(io.out, JSON.stringify(value, null, 2));
}

/** Resolves once everything written so far to `stream` has been handed to the OS. */
export function flushed(stream: Writable): Promise<void> {
  return new Promise((resolve) => {
    if (stream.writableEnded || stream.destroyed) resolve();
    else stream.write('', () => resolve());
  });
}
