// What is due: the pure rules of dump's backup scheduler. Each project's schedule gives windows (a
// duration: fixed periods from the epoch; cron: from one firing to the next); the project's backup is
// due at its own fixed offset into each window (a hash of its id, over FLUX_BACKUP_SCHEDULE_SPREAD_PERCENT
// of the window), so a thousand tenants of a daily schedule are spread over the day, not dumped at 00:00.
// A slot is satisfied by a backup created at or after it (scheduled or not) or by the scheduler having
// started one for it already (the state file); what is due is started longest-without-a-backup first, never beside a
// running backup of the same project, never beyond its cluster's maxConcurrentDumps, and slots missed
// while dump was not running are caught up at a bounded pace.
import { createHash } from 'node:crypto';
import type { Schedule } from '../../shared/schedule.js';

/** The project's fixed place in every window, in [0, 1): the first 32 bits of SHA-256 of its id. */
export function offsetFraction(projectId: string): number {
  return createHash('sha256').update(projectId).digest().readUInt32BE(0) / 2 ** 32;
}

export interface Slot {
  /** The latest time at or before now at which the project's backup was due. */
  dueMs: number;
  /** The one after it. */
  nextDueMs: number;
}

/** The project's latest due time at or before `nowMs` and the next one; undefined when there is none. */
export function slotAt(
  schedule: Schedule,
  projectId: string,
  nowMs: number,
  spreadPercent: number,
): Slot | undefined {
  const share = (offsetFraction(projectId) * Math.min(100, Math.max(0, spreadPercent))) / 100;
  if (schedule.kind === 'every') {
    const period = schedule.everyMs;
    const offset = Math.floor(share * period);
    const k = Math.floor((nowMs - offset) / period);
    const dueMs = k * period + offset;
    return { dueMs, nextDueMs: dueMs + period };
  }
  const cron = schedule.cron;
  const at = (ms: number) => new Date(ms);
  const [f0, fm1] = cron.previousRuns(2, at(nowMs));
  const f1 = cron.nextRun(at(nowMs));
  if (!f0 || !f1) return undefined;
  const dueIn = (from: Date, to: Date) =>
    from.getTime() + Math.floor(share * (to.getTime() - from.getTime()));
  const due0 = dueIn(f0, f1);
  if (due0 <= nowMs) {
    const f2 = cron.nextRun(f1);
    return { dueMs: due0, nextDueMs: f2 ? dueIn(f1, f2) : f1.getTime() };
  }
  if (!fm1) return undefined;
  return { dueMs: dueIn(fm1, f0), nextDueMs: due0 };
}

export interface ProjectView {
  projectId: string;
  slug: string;
  schedule?: Schedule | undefined;
  /** The concurrency group its dumps share (a cluster, or its own dedicated database) and its size. */
  admission: { key: string; slots: number };
  /** A backup of the project is running now (dump's lease). */
  running: boolean;
  /** createdAt of its newest backup that is complete or still running (a failed one satisfies nothing). */
  newestMs?: number | undefined;
  /** The latest slot the scheduler already started a backup for (the state file). */
  lastSlotMs?: number | undefined;
}

export type SkipReason = 'running' | 'cluster_busy' | 'catch_up_paced';

export type Decision =
  | { projectId: string; action: 'start'; slotMs: number; catchUp: boolean }
  | { projectId: string; action: 'skip'; slotMs: number; reason: SkipReason }
  | { projectId: string; action: 'satisfied'; slotMs: number; by: 'backup' | 'scheduler' }
  | { projectId: string; action: 'not_due'; nextMs?: number };

export interface TickInput {
  nowMs: number;
  /** When this scheduler started: slots before it were missed (downtime, first start) and are caught up. */
  startedAtMs: number;
  spreadPercent: number;
  /** Dumps running or queued per admission key right now. */
  load: ReadonlyMap<string, number>;
  /** Catch-up starts allowed in this tick. */
  catchUpAllowance: number;
}

/** The slot the project is in now and whether it is satisfied; undefined without a schedule. */
export function slotStateOf(
  view: ProjectView,
  nowMs: number,
  spreadPercent: number,
): { slot: Slot; satisfied?: 'backup' | 'scheduler' } | undefined {
  if (!view.schedule) return undefined;
  const slot = slotAt(view.schedule, view.projectId, nowMs, spreadPercent);
  if (!slot) return undefined;
  if (view.lastSlotMs !== undefined && view.lastSlotMs >= slot.dueMs) return { slot, satisfied: 'scheduler' };
  if (view.newestMs !== undefined && view.newestMs >= slot.dueMs) return { slot, satisfied: 'backup' };
  return { slot };
}

/** One tick's decisions, one per project: what starts now (longest without a backup first) and why the rest wait. */
export function decide(views: readonly ProjectView[], input: TickInput): Decision[] {
  const decisions: Decision[] = [];
  const due: Array<{ view: ProjectView; slotMs: number }> = [];
  for (const view of views) {
    const state = slotStateOf(view, input.nowMs, input.spreadPercent);
    if (!state) decisions.push({ projectId: view.projectId, action: 'not_due' });
    else if (state.satisfied) {
      decisions.push({
        projectId: view.projectId,
        action: 'satisfied',
        slotMs: state.slot.dueMs,
        by: state.satisfied,
      });
    } else due.push({ view, slotMs: state.slot.dueMs });
  }
  // The project longest without a backup first (never backed up before all), then the older slot: a
  // project kept waiting by a busy cluster keeps its place even as its window rolls over.
  const newest = (v: ProjectView) => v.newestMs ?? Number.NEGATIVE_INFINITY;
  due.sort(
    (a, b) =>
      newest(a.view) - newest(b.view) ||
      a.slotMs - b.slotMs ||
      a.view.projectId.localeCompare(b.view.projectId),
  );
  const load = new Map(input.load);
  let allowance = input.catchUpAllowance;
  for (const { view, slotMs } of due) {
    const skip = (reason: SkipReason) =>
      decisions.push({ projectId: view.projectId, action: 'skip', slotMs, reason });
    if (view.running) {
      skip('running');
      continue;
    }
    const used = load.get(view.admission.key) ?? 0;
    if (used >= view.admission.slots) {
      skip('cluster_busy');
      continue;
    }
    const catchUp = slotMs < input.startedAtMs;
    if (catchUp && allowance < 1) {
      skip('catch_up_paced');
      continue;
    }
    if (catchUp) allowance -= 1;
    load.set(view.admission.key, used + 1);
    decisions.push({ projectId: view.projectId, action: 'start', slotMs, catchUp });
  }
  return decisions;
}
