// Progress of long work (create, verify, download, migrate): stage, bytes, bytes/s and elapsed time. On a
// terminal one line on stderr redraws in place; otherwise plain lines, on each stage change and
// periodically; with --json nothing at all.
import type { Writable } from 'node:stream';
import { humanBytes, humanDuration, humanRate } from './output.js';

/** Bytes per second over a sliding window of samples (the last few seconds, not the whole run). */
export class RateMeter {
  private readonly samples: Array<{ at: number; bytes: number }> = [];

  constructor(private readonly windowMs = 5_000) {}

  add(at: number, bytes: number): void {
    const last = this.samples.at(-1);
    // A counter that went backwards is a new run (e.g. a retried request): start over.
    if (last && bytes < last.bytes) this.samples.length = 0;
    this.samples.push({ at, bytes });
    while (this.samples.length > 2 && at - this.samples[1]!.at >= this.windowMs) this.samples.shift();
  }

  /** undefined until two samples are at least 1 ms apart. */
  rate(): number | undefined {
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (!first || !last || last.at - first.at <= 0) return undefined;
    return ((last.bytes - first.bytes) * 1000) / (last.at - first.at);
  }
}

export interface ProgressState {
  stage: string;
  bytes?: number | undefined;
  total?: number | undefined;
}

export function formatProgress(
  label: string,
  state: ProgressState,
  rate: number | undefined,
  elapsedMs: number,
): string {
  const parts = [`${label}: ${state.stage}`];
  if (state.bytes !== undefined) {
    let size = humanBytes(state.bytes);
    if (state.total !== undefined && state.total > 0) {
      const pct = Math.min(100, Math.floor((state.bytes / state.total) * 100));
      size += ` / ${humanBytes(state.total)} (${pct}%)`;
    }
    parts.push(size, humanRate(rate));
  }
  parts.push(humanDuration(elapsedMs));
  return parts.join('  ');
}

export interface ProgressOptions {
  stream: Writable;
  isTTY: boolean;
  /** false with --json: the reporter prints nothing. */
  enabled: boolean;
  label: string;
  now?: () => number;
  /** Non-TTY: a line at least this often while the stage stays the same. */
  intervalMs?: number;
  /** TTY: redraws at most this often (stage changes always redraw). */
  redrawMs?: number;
}

export interface Progress {
  update(state: ProgressState): void;
  /** A line of its own (the TTY line is cleared first, then redrawn by the next update). */
  note(line: string): void;
  /** Clears the TTY line; later updates are ignored. */
  done(): void;
  /** The last computed rate, for the final summary. */
  rate(): number | undefined;
}

const CLEAR_LINE = '\r\x1b[2K';
export const PLAIN_PROGRESS_INTERVAL_MS = 5_000;

export function createProgress(options: ProgressOptions): Progress {
  const now = options.now ?? Date.now;
  const started = now();
  const meter = new RateMeter();
  const intervalMs = options.intervalMs ?? PLAIN_PROGRESS_INTERVAL_MS;
  const redrawMs = options.redrawMs ?? 200;
  let lastStage: string | undefined;
  let lastPrinted = Number.NEGATIVE_INFINITY;
  let drawn = false;
  let finished = false;

  const clear = () => {
    if (drawn) options.stream.write(CLEAR_LINE);
    drawn = false;
  };

  return {
    update(state) {
      if (finished) return;
      const t = now();
      if (state.bytes !== undefined) meter.add(t, state.bytes);
      if (!options.enabled) return;
      const stageChanged = state.stage !== lastStage;
      const due = t - lastPrinted >= (options.isTTY ? redrawMs : intervalMs);
      if (!stageChanged && !due) return;
      lastStage = state.stage;
      lastPrinted = t;
      const line = formatProgress(options.label, state, meter.rate(), t - started);
      if (options.isTTY) {
        options.stream.write(`${CLEAR_LINE}${line}`);
        drawn = true;
      } else {
        options.stream.write(`${line}\n`);
      }
    },
    note(line) {
      if (!options.enabled) return;
      clear();
      options.stream.write(`${line}\n`);
      // The next update redraws even if its stage did not change.
      lastPrinted = Number.NEGATIVE_INFINITY;
    },
    done() {
      if (finished) return;
      finished = true;
      if (options.enabled) clear();
    },
    rate: () => meter.rate(),
  };
}
