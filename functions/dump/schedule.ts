// Dump's backup scheduler: every FLUX_BACKUP_SCHEDULE_TICK_MS it decides what is due (due.ts) and starts
// those backups itself.
//
// Why inside dump and not a `schedule` function emitting flux.backup.requested: the three rules a
// schedule must keep are facts only dump holds. "Never overlap a backup of the same project" is dump's
// lease; "respect maxConcurrentDumps" is dump's per-cluster limiter, whose load a separate process could
// only guess at (and an event it sent beyond it would be refused with 503 or queued blind); and "did this
// slot's backup happen" is dump's catalog, which it writes. A scheduler elsewhere would poll dump for all
// three and still race it. One process deciding and acting also means one owner of the state file
// (FLUX_STATE_DIR/schedule/dump.json, one writer) and no event in flight to lose across a restart. The
// scheduler still asks through dump's own entry point (dumper.start), exactly as the CLI's create and a
// peer's flux.backup.requested do, so a scheduled backup is an ordinary backup in every event and record.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ensureDir, writeJsonAtomic } from '../../shared/atomic.js';
import type { Catalog } from '../../shared/catalog/catalog.js';
import type { Config } from '../../shared/config.js';
import { isAppError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { MetricsRegistry } from '../../shared/metrics.js';
import type { Project, ProjectRegistry } from '../../shared/registry.js';
import { backupPolicyOf } from '../../shared/schedule.js';
import { type Decision, decide, type ProjectView, slotStateOf } from './due.js';
import type { Dumper, StartedBackup } from './dumper.js';
import { scheduleMetrics } from './metrics.js';

const StateSchema = z.object({
  version: z.literal(1),
  projects: z.record(
    z.string(),
    z.object({ slotAt: z.string(), startedAt: z.string(), backupId: z.string().optional() }),
  ),
});
type State = z.infer<typeof StateSchema>;

export interface SchedulerOptions {
  config: Pick<
    Config,
    | 'FLUX_STATE_DIR'
    | 'FLUX_BACKUP_SCHEDULE'
    | 'FLUX_BACKUP_MAX_AGE'
    | 'FLUX_BACKUP_SCHEDULE_TICK_MS'
    | 'FLUX_BACKUP_SCHEDULE_SPREAD_PERCENT'
    | 'FLUX_BACKUP_SCHEDULE_CATCHUP_PER_MINUTE'
  >;
  registry: ProjectRegistry;
  catalog: Pick<Catalog, 'newest'>;
  dumper: Pick<Dumper, 'isRunning' | 'load'>;
  /** Starts a backup the way every other caller does (and whatever the app hangs on its end). */
  startBackup: (project: Project, reason: string) => Promise<StartedBackup>;
  log: Logger;
  metrics: MetricsRegistry;
  now?: () => number;
}

export interface BackupScheduler {
  /** One decision round now (one at a time; a second call joins the running one). */
  tick(): Promise<Decision[]>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export function createBackupScheduler(options: SchedulerOptions): BackupScheduler {
  const { config, registry, catalog, dumper, log } = options;
  const now = options.now ?? Date.now;
  const file = path.join(config.FLUX_STATE_DIR, 'schedule', 'dump.json');
  const paceMs = 60_000 / config.FLUX_BACKUP_SCHEDULE_CATCHUP_PER_MINUTE;
  let state: State = { version: 1, projects: {} };
  let startedAtMs = now();
  // Catch-up pacing: one start may go every paceMs; the first at once.
  let nextCatchUpMs = 0;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<Decision[]> | undefined;
  // What was last said about each project's slot, so a decision that holds over many ticks is logged once.
  const said = new Map<string, string>();

  const { decisions, dueGauge, lastTick } = scheduleMetrics(options.metrics);
  async function loadState(): Promise<void> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      return;
    }
    try {
      state = StateSchema.parse(JSON.parse(text));
    } catch (error) {
      // The catalog still says which slots a backup satisfied; only starts that did not complete are lost.
      log.warn({ err: error, file }, 'scheduler state unreadable: starting from the catalog alone');
    }
  }

  async function saveState(): Promise<void> {
    await ensureDir(path.dirname(file));
    await writeJsonAtomic(file, state);
  }

  function note(project: Project, decision: Decision, extra: Record<string, unknown> = {}): void {
    if (decision.action === 'not_due') return;
    const what =
      decision.action === 'skip'
        ? decision.reason
        : decision.action === 'satisfied'
          ? 'satisfied'
          : String(extra.outcome ?? 'started');
    const key = `${decision.slotMs}:${what}`;
    if (said.get(project.id) === key) return;
    said.set(project.id, key);
    decisions.inc({ decision: what });
    const fields = {
      projectId: project.id,
      slug: project.slug,
      slotAt: new Date(decision.slotMs).toISOString(),
      decision: what,
      ...(decision.action === 'start' ? { catchUp: decision.catchUp } : {}),
      ...(decision.action === 'satisfied' ? { by: decision.by } : {}),
      ...extra,
    };
    const message =
      decision.action === 'start'
        ? 'scheduled backup'
        : decision.action === 'satisfied'
          ? 'scheduled backup not needed: the slot already has its backup'
          : 'scheduled backup due, waiting';
    if (what === 'failed') log.error(fields, message);
    else log.info(fields, message);
  }

  async function viewOf(project: Project, t: number, spread: number): Promise<ProjectView> {
    const { schedule } = backupPolicyOf(project, config);
    const last = state.projects[project.id];
    const view: ProjectView = {
      projectId: project.id,
      slug: project.slug,
      schedule,
      admission:
        project.engine === 'v2_shared'
          ? {
              key: `cluster:${project.cluster}`,
              slots: registry.cluster(project.cluster!)?.maxConcurrentDumps ?? 1,
            }
          : { key: `dedicated:${project.slug}`, slots: 1 },
      running: dumper.isRunning(project.id),
      ...(last ? { lastSlotMs: Date.parse(last.slotAt) } : {}),
    };
    // The catalog is read only for a slot the state file does not already cover.
    const slot = slotStateOf(view, t, spread);
    if (slot && !slot.satisfied) {
      const newest = await catalog.newest(project.id, (e) =>
        Boolean(e.manifest || e.state?.status === 'running'),
      );
      const createdAt = newest?.manifest?.createdAt ?? newest?.state?.createdAt;
      if (createdAt) view.newestMs = Date.parse(createdAt);
    }
    return view;
  }

  async function tickOnce(): Promise<Decision[]> {
    const t = now();
    const spread = config.FLUX_BACKUP_SCHEDULE_SPREAD_PERCENT;
    const projects = registry.list();
    const byId = new Map(projects.map((p) => [p.id, p]));
    const views: ProjectView[] = [];
    for (const project of projects) {
      try {
        views.push(await viewOf(project, t, spread));
      } catch (error) {
        log.warn({ err: error, projectId: project.id }, 'scheduler could not read the catalog of a project');
      }
    }
    const load = new Map<string, number>();
    for (const project of projects) {
      const key = project.engine === 'v2_shared' ? `cluster:${project.cluster}` : `dedicated:${project.slug}`;
      if (!load.has(key)) load.set(key, dumper.load(project));
    }
    const catchUpAllowance = t >= nextCatchUpMs ? 1 : 0;
    const result = decide(views, { nowMs: t, startedAtMs, spreadPercent: spread, load, catchUpAllowance });
    const starts = result.filter((d): d is Extract<Decision, { action: 'start' }> => d.action === 'start');
    // Recorded before the backups start: after a crash in between, the slot counts as taken (a missed
    // backup shows as stale freshness and alerts) rather than a restart starting it a second time.
    const previous = new Map(starts.map((d) => [d.projectId, state.projects[d.projectId]]));
    for (const d of starts) {
      state.projects[d.projectId] = {
        slotAt: new Date(d.slotMs).toISOString(),
        startedAt: new Date(t).toISOString(),
      };
    }
    if (starts.length > 0) await saveState();
    let changed = false;
    for (const d of starts) {
      const project = byId.get(d.projectId)!;
      if (d.catchUp) nextCatchUpMs = t + paceMs;
      try {
        const started = await options.startBackup(project, d.catchUp ? 'schedule_catch_up' : 'schedule');
        state.projects[d.projectId]!.backupId = started.backupId;
        changed = true;
        note(project, d, { backupId: started.backupId });
      } catch (error) {
        const code = isAppError(error) ? error.code : 'internal';
        if (code === 'conflict') {
          // A backup of it began in between (the CLI, a peer): that one is this slot's.
          note(project, { projectId: d.projectId, action: 'skip', slotMs: d.slotMs, reason: 'running' });
          continue;
        }
        if (code === 'queue_full' || code === 'shutting_down') {
          // Not taken: the slot stays due for a later tick.
          const before = previous.get(d.projectId);
          if (before) state.projects[d.projectId] = before;
          else delete state.projects[d.projectId];
          changed = true;
          note(project, { projectId: d.projectId, action: 'skip', slotMs: d.slotMs, reason: 'cluster_busy' });
          continue;
        }
        // Anything else would fail again at once: the next slot tries again (freshness alerts meanwhile).
        note(project, d, { outcome: 'failed', code, error: (error as Error).message });
      }
    }
    if (changed) await saveState();
    for (const d of result) {
      // A slot satisfied by the scheduler's own start was said when it started.
      if (d.action === 'skip' || (d.action === 'satisfied' && d.by === 'backup'))
        note(byId.get(d.projectId)!, d);
    }
    dueGauge.set(result.filter((d) => d.action === 'skip').length);
    lastTick.set(t / 1000);
    return result;
  }

  return {
    tick() {
      running ??= tickOnce().finally(() => {
        running = undefined;
      });
      return running;
    },
    async start() {
      await loadState();
      startedAtMs = now();
      const tickMs = config.FLUX_BACKUP_SCHEDULE_TICK_MS;
      const tickSafely = () =>
        void this.tick().catch((error) => log.error({ err: error }, 'scheduler tick failed'));
      timer = setInterval(tickSafely, tickMs);
      timer.unref();
      tickSafely();
    },
    async stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      await running?.catch(() => undefined);
    },
  };
}
