// The words of a backup policy, parsed where they enter (config, registry): a duration ("90s", "26h",
// "1h30m", "7d") and a schedule (a duration, or a 5-field cron expression read in UTC), plus each
// project's effective policy: its registry fields over FLUX_BACKUP_SCHEDULE and FLUX_BACKUP_MAX_AGE.
import { Cron } from 'croner';

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const DURATION_RE = /^(?:\d{1,6}[smhd])+$/;
const PART_RE = /(\d{1,6})([smhd])/g;

/** Shortest schedule interval and maxAge (a schedule of a few seconds is for tests and demos). */
export const MIN_POLICY_MS = UNIT_MS.s;
/** Longest: a year and a day. */
export const MAX_POLICY_MS = 366 * UNIT_MS.d;

/** Milliseconds of "26h", "1h30m", "7d"; undefined when the text is not such a duration or out of bounds. */
export function parseDuration(text: string): number | undefined {
  const t = text.trim();
  if (!DURATION_RE.test(t)) return undefined;
  let ms = 0;
  for (const [, n, unit] of t.matchAll(PART_RE)) ms += Number(n) * UNIT_MS[unit as keyof typeof UNIT_MS];
  return ms >= MIN_POLICY_MS && ms <= MAX_POLICY_MS ? ms : undefined;
}

/** "26h", "1d 2h", "45m", "30s": the largest two units, for messages. */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const parts: string[] = [];
  if (d) parts.push(`${d}d`);
  if (h) parts.push(`${h}h`);
  if (m) parts.push(`${m}m`);
  if (sec || parts.length === 0) parts.push(`${sec}s`);
  return parts.slice(0, 2).join(' ');
}

export type Schedule =
  | { kind: 'every'; text: string; everyMs: number }
  | { kind: 'cron'; text: string; cron: Cron };

const parsed = new Map<string, Schedule>();

/** A schedule from its text; throws an Error saying what is accepted. Parsed once per text. */
export function parseSchedule(text: string): Schedule {
  const t = text.trim();
  const known = parsed.get(t);
  if (known) return known;
  let schedule: Schedule;
  const everyMs = parseDuration(t);
  if (everyMs !== undefined) schedule = { kind: 'every', text: t, everyMs };
  else if (t.split(/\s+/).length === 5) {
    let cron: Cron;
    try {
      // No callback: croner only computes times, it starts no timer.
      cron = new Cron(t, { mode: '5-part', timezone: 'UTC' });
    } catch (error) {
      throw new Error(`"${t.slice(0, 64)}" is not a valid cron expression: ${(error as Error).message}`);
    }
    if (!cron.nextRun(new Date())) throw new Error(`the cron expression "${t}" never runs`);
    schedule = { kind: 'cron', text: t, cron };
  } else {
    throw new Error(
      `"${t.slice(0, 64)}" is neither a duration (e.g. 24h, 90m, 1d, between 1s and 366d) nor a 5-field cron expression (e.g. "0 2 * * *", UTC)`,
    );
  }
  if (parsed.size > 1000) parsed.clear();
  parsed.set(t, schedule);
  return schedule;
}

/** Why `text` is not a schedule, or undefined when it is one ("off" is accepted where `allowOff`). */
export function scheduleProblem(text: string, allowOff = false): string | undefined {
  if (allowOff && text.trim() === 'off') return undefined;
  try {
    parseSchedule(text);
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

export interface PolicyFields {
  /** A duration, a 5-field cron expression, or "off" (no schedule even when FLUX_BACKUP_SCHEDULE is set). */
  schedule?: string | undefined;
  maxAge?: string | undefined;
}

export interface PolicyDefaults {
  FLUX_BACKUP_SCHEDULE?: string | undefined;
  FLUX_BACKUP_MAX_AGE: string;
}

export interface BackupPolicy {
  /** Undefined: no scheduled backups of this project. */
  schedule?: Schedule;
  maxAgeMs: number;
}

/** The schedule and maxAge in force for a project: its own fields first, then the deployment's defaults. */
export function backupPolicyOf(project: PolicyFields, defaults: PolicyDefaults): BackupPolicy {
  const scheduleText = project.schedule ?? defaults.FLUX_BACKUP_SCHEDULE;
  const maxAgeMs = parseDuration(project.maxAge ?? defaults.FLUX_BACKUP_MAX_AGE) ?? DEFAULT_MAX_AGE_MS;
  return scheduleText && scheduleText.trim() !== 'off'
    ? { schedule: parseSchedule(scheduleText), maxAgeMs }
    : { maxAgeMs };
}

/** A day of backups plus two hours of slack: a daily schedule whose backup ran late is still fresh. */
export const DEFAULT_MAX_AGE = '26h';
export const DEFAULT_MAX_AGE_MS = 26 * UNIT_MS.h;
