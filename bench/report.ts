// Benchmark results: their shape, goal evaluation, the machine they ran on, the terminal table and
// bench/results.json (which bench/render.ts turns into the README's markdown table).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import { ratioOf, type Summary } from './stats.js';

export type Group = 'dump' | 'replicate' | 'verify' | 'restore' | 'probe' | 'events' | 'status' | 'fleet';

/**
 * A goal on one number of a result: its ratio to the baseline, its median, its peak RSS, or its difference
 * (fn median minus baseline median, in the result's unit: what the function adds to the raw tool).
 */
export interface Goal {
  of: 'ratio' | 'median' | 'peakRssMb' | 'difference';
  op: '<=' | '>=';
  value: number;
}

export interface Baseline extends Summary {
  /** What the baseline is, e.g. "pg_dump -Fc -Z1 -f". */
  label: string;
}

export interface BenchResult {
  id: string;
  group: Group;
  name: string;
  /** Unit of the medians: s, ms, MB/s, /s, MB. */
  unit: string;
  /** The function's measurement. */
  fn: Summary;
  baseline?: Baseline;
  /** fn median / baseline median (in the result's unit: a time ratio, or a throughput ratio). */
  ratio?: number;
  goals: Goal[];
  /** Every goal met; null when the result has no goal. */
  pass: boolean | null;
  /** Largest peak RSS of the function process while it was measured. */
  peakRssMb?: number;
  /** Anything else worth keeping: sizes, per-stage medians, the function's own timings. */
  details?: Record<string, unknown>;
  note?: string;
}

export type ResultInput = Omit<BenchResult, 'ratio' | 'pass' | 'goals'> & { goals?: Goal[] };

/** A goal as the table shows it; `unit` is the result's (a difference is in it). */
export function goalText(goal: Goal, unit = ''): string {
  const what = { ratio: 'ratio', peakRssMb: 'peak RSS', median: 'median', difference: 'added' }[goal.of];
  unit = goal.of === 'peakRssMb' ? ' MB' : goal.of === 'difference' && unit ? ` ${unit}` : '';
  return `${what} ${goal.op} ${goal.value}${unit}`;
}

function valueFor(result: Omit<BenchResult, 'pass'>, goal: Goal): number | undefined {
  if (goal.of === 'ratio') return result.ratio;
  if (goal.of === 'peakRssMb') return result.peakRssMb;
  if (goal.of === 'difference')
    return result.baseline ? result.fn.median - result.baseline.median : undefined;
  return result.fn.median;
}

/** Completes a result: the ratio to its baseline and whether every goal is met. */
export function makeResult(input: ResultInput): BenchResult {
  const goals = input.goals ?? [];
  const ratio = input.baseline ? ratioOf(input.fn.median, input.baseline.median) : undefined;
  const partial = { ...input, goals, ...(ratio !== undefined ? { ratio } : {}) };
  let pass: boolean | null = null;
  if (goals.length > 0) {
    pass = goals.every((goal) => {
      const value = valueFor(partial, goal);
      if (value === undefined || !Number.isFinite(value)) return false;
      return goal.op === '<=' ? value <= goal.value : value >= goal.value;
    });
  }
  return { ...partial, pass };
}

// ---------------------------------------------------------------------------------------------------------
// Machine

export interface Machine {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  postgres: string;
  docker: string | null;
  /** 1-minute load average when the run started and ended (a noisy machine shows here). */
  loadAverage: { start: number; end?: number };
}

function firstLine(cmd: string, args: string[]): string | null {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .trim()
      .split('\n')[0]!;
  } catch {
    return null;
  }
}

export function describeMachine(): Machine {
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m?.[1]) cpuModel = m[1].trim();
  } catch {
    // not Linux: os.cpus() it is
  }
  return {
    cpuModel,
    cores: os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: firstLine('pg_dump', ['--version']) ?? 'pg_dump not found',
    docker: firstLine('docker', ['version', '--format', '{{.Server.Version}}']),
    loadAverage: { start: os.loadavg()[0]! },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Output

export interface Report {
  version: 1;
  date: string;
  command: string;
  quick: boolean;
  seconds: number;
  machine: Machine;
  settings: Record<string, unknown>;
  notes: string[];
  results: BenchResult[];
}

/** Six significant digits are more than any of these measurements resolve. */
const rounded = (_key: string, value: unknown) =>
  typeof value === 'number' && !Number.isInteger(value) ? Number(value.toPrecision(6)) : value;

export async function writeReport(file: string, report: Report): Promise<void> {
  await writeFile(file, `${JSON.stringify(report, rounded, 2)}\n`);
}

/** A number with about three significant digits, without exponent notation. */
export function num(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return '–';
  const abs = Math.abs(value);
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  if (abs >= 0.01) return value.toFixed(3);
  return value.toPrecision(2);
}

export function withUnit(value: number | undefined, unit: string): string {
  return value === undefined ? '–' : `${num(value)} ${unit}`;
}

export function verdict(result: BenchResult): string {
  return result.pass === null ? '' : result.pass ? 'pass' : 'MISS';
}

/** Rows of the table both the terminal and the README show. */
export function tableRows(results: readonly BenchResult[]): string[][] {
  return results.map((r) => [
    r.name,
    withUnit(r.fn.median, r.unit),
    r.baseline ? `${withUnit(r.baseline.median, r.unit)} (${r.baseline.label})` : '–',
    r.ratio === undefined ? '–' : num(r.ratio),
    r.goals.map((goal) => goalText(goal, r.unit)).join(', ') || '–',
    verdict(r) || '–',
    `${num(r.fn.min)}–${num(r.fn.max)}${r.baseline ? ` / ${num(r.baseline.min)}–${num(r.baseline.max)}` : ''}` +
      (r.details?.latency ? ` (p99 ${num(r.fn.p99)})` : ''),
    r.peakRssMb === undefined ? '–' : `${num(r.peakRssMb)} MB`,
  ]);
}

export const TABLE_HEADER = [
  'benchmark',
  'function (median)',
  'baseline (median)',
  'ratio',
  'goal',
  'result',
  'min–max fn / base',
  'peak RSS',
];

/** A plain-text table for the terminal. */
export function terminalTable(results: readonly BenchResult[]): string {
  const rows = [TABLE_HEADER, ...tableRows(results)];
  const widths = TABLE_HEADER.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(rows[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n');
}

export function machineLine(machine: Machine): string {
  return (
    `${machine.cpuModel}, ${machine.cores} cores, ${machine.memoryGiB} GiB, ${machine.kernel}, ` +
    `Node ${machine.node}, ${machine.postgres}${machine.docker ? `, Docker ${machine.docker}` : ''}`
  );
}
