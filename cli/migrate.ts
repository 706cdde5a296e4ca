// flux-ops migrate: the pooled → dedicated move (POST /api/cli/v1/migrate), its dry-run plan, a typed
// confirmation on a terminal, and the phase while it runs.
import { AppError } from '../shared/errors.js';
import { bool, PROJECT_OPTIONS, projectRef } from './args.js';
import { type Command, POLL_MS, sleep } from './command.js';
import { preciseDuration, printJson, println, table } from './output.js';
import { createProgress } from './progress.js';
import { resolveProject } from './project.js';

interface Plan {
  ready?: boolean;
  problems?: Array<{ code: string; message: string }>;
  source?: {
    cluster?: string;
    host?: string;
    port?: number;
    database?: string;
    schema?: string;
    serverVersion?: string;
  };
  target?: Record<string, unknown>;
  tables?: Array<{ schema?: string; name: string; rows: number }>;
  rows?: number;
  sequences?: unknown[];
  steps?: unknown[];
  backupGate?: { passes?: boolean; skipped?: boolean; tier?: string; message?: string };
}

function stepText(step: unknown): string {
  if (typeof step === 'string') return step;
  if (step && typeof step === 'object') {
    const s = step as Record<string, unknown>;
    const title = s.title ?? s.name ?? s.step ?? s.phase;
    const detail = s.detail ?? s.description;
    if (typeof title === 'string') return typeof detail === 'string' ? `${title}: ${detail}` : title;
  }
  return JSON.stringify(step);
}

function describePlan(slug: string, plan: Plan): string {
  const lines = [`migrate plan for ${slug} (dry run): ${plan.ready ? 'READY' : 'NOT READY'}`];
  const s = plan.source;
  if (s) {
    lines.push(
      `  source     ${s.cluster ?? '?'} ${s.host ?? '?'}:${s.port ?? '?'}/${s.database ?? '?'} schema ${s.schema ?? '?'}` +
        `${s.serverVersion ? ` (PostgreSQL ${s.serverVersion})` : ''}`,
    );
  }
  if (plan.target) {
    const t = plan.target;
    const where = [t.host, t.port].filter((v) => v !== undefined).join(':');
    lines.push(
      `  target     ${where}${t.database ? `/${String(t.database)}` : ''}${t.serverVersion ? ` (PostgreSQL ${String(t.serverVersion)})` : ''}`,
    );
  }
  lines.push(
    `  data       ${plan.tables?.length ?? 0} tables, ${plan.rows ?? 0} rows, ${plan.sequences?.length ?? 0} sequences`,
  );
  if (plan.backupGate) {
    lines.push(
      `  backups    ${plan.backupGate.passes ? 'gate passes' : plan.backupGate.skipped ? 'gate skipped (--skip-backup-check)' : 'gate refuses'}${plan.backupGate.tier ? ` (${plan.backupGate.tier})` : ''}` +
        `${plan.backupGate.message ? `: ${plan.backupGate.message}` : ''}`,
    );
  }
  if (plan.steps?.length) {
    lines.push('  steps');
    for (const [i, step] of plan.steps.entries()) lines.push(`    ${i + 1}. ${stepText(step)}`);
  }
  if (plan.problems?.length) {
    lines.push('  problems');
    for (const p of plan.problems) lines.push(`    - ${p.code}: ${p.message}`);
  }
  return lines.join('\n');
}

const migrate: Command = {
  name: 'migrate',
  summary: 'move a pooled (v2 shared) project to its dedicated database',
  help: `Usage: flux-ops migrate -p <slug> [--hash <7hex>] [--dry-run] [--yes] [--dump-only] [--lock-writes]
                        [--skip-backup-check]

Moves the project's schema from the shared cluster into its dedicated database (POST /api/cli/v1/migrate):
preflight, backup gate (the newest backup must be restorable unless --skip-backup-check), a
snapshot-consistent dump, restore, validation, and rollback of the target on failure. Run --dry-run first.
Without --yes a terminal asks you to type the slug; elsewhere the server refuses.

Exit codes: 0 migrated (or the dry run is ready); 1 not ready, refused by a gate, or failed and rolled
back; others from the errors table.

Flags:
  -p, --project <slug>   the project
  --hash <7hex>          its hash (looked up from the slug when absent)
  --dry-run              preflight and plan only; nothing changes anywhere
  --yes                  confirm a real migration
  --dump-only            take the migration dump without restoring it
  --lock-writes          block tenant writes during the move
  --skip-backup-check    run even when the newest backup is not restore-verified`,
  options: {
    ...PROJECT_OPTIONS,
    'dry-run': { type: 'boolean' },
    yes: { type: 'boolean' },
    'dump-only': { type: 'boolean' },
    'lock-writes': { type: 'boolean' },
    'skip-backup-check': { type: 'boolean' },
  },
  async run(ctx) {
    const client = ctx.client();
    const ref = projectRef(this.name, ctx.values, true)!;
    const project = await resolveProject(client, ref, { needSlug: true });
    const dryRun = bool(ctx.values, 'dry-run');
    let yes = bool(ctx.values, 'yes');
    if (!dryRun && !yes && ctx.io.inIsTTY && !ctx.json) {
      const typed = await ctx.prompt(
        `Migrate ${project.slug} (${project.hash}) to its dedicated database? Type the slug to confirm: `,
      );
      if (typed?.trim() !== project.slug) {
        throw new AppError('precondition_failed', 'not confirmed; nothing was done');
      }
      yes = true;
    }
    // Refused here, in the CLI's own words: the server's refusal would name its JSON fields (yes, dryRun).
    if (!dryRun && !yes) {
      throw new AppError(
        'precondition_failed',
        `a real migration of ${project.slug} needs --yes (or a terminal, to type the slug); ` +
          `flux-ops migrate -p ${project.slug} --dry-run shows the plan first. Nothing was done`,
      );
    }
    const body = {
      slug: project.slug,
      hash: project.hash,
      dryRun,
      yes,
      dumpOnly: bool(ctx.values, 'dump-only'),
      lockWrites: bool(ctx.values, 'lock-writes'),
      skipBackupCheck: bool(ctx.values, 'skip-backup-check'),
    };
    const progress = createProgress({
      stream: ctx.io.err,
      isTTY: ctx.io.errIsTTY,
      enabled: !ctx.json && !dryRun,
      label: `migrate ${project.slug}`,
    });
    const started = Date.now();
    const watching = new AbortController();
    const watch = dryRun
      ? Promise.resolve()
      : (async () => {
          // No line until the server's run record says this run started: a refusal (a gate, a lock)
          // shows no progress for a migration that never began.
          while (!watching.signal.aborted) {
            await sleep(POLL_MS * 2, watching.signal).catch(() => undefined);
            if (watching.signal.aborted) break;
            try {
              const { body: b } = await client.json<{
                run?: { status?: string; phase?: string; startedAt?: string };
              }>('GET', `/api/cli/v1/migrate/${project.hash}`, { signal: watching.signal });
              const run = b.run;
              // The record may still be the previous run's until this one writes its own.
              if (run?.status === 'running' && Date.parse(run.startedAt ?? '') >= started - 5_000) {
                progress.update({ stage: run.phase ?? 'running' });
              }
            } catch {
              // Display only; the verdict is the POST's answer.
            }
          }
        })();
    if (!dryRun) {
      ctx.onInterrupt(
        `stopped waiting; the migration of ${project.slug} goes on on the server (it finishes or rolls back): ` +
          `check the migrate function's logs and flux.migrate.* events (flux-ops events tail --type 'flux.migrate.*')`,
      );
    }
    let answer: Record<string, unknown>;
    try {
      answer = (
        await client.json<Record<string, unknown>>('POST', '/api/cli/v1/migrate', {
          body,
          long: true,
          signal: ctx.signal,
        })
      ).body;
    } finally {
      watching.abort();
      await watch;
      progress.done();
      ctx.onInterrupt(undefined);
    }
    if (ctx.json) printJson(ctx.io, answer);
    if (dryRun) {
      const plan = answer as Plan;
      if (!ctx.json) println(ctx.io.out, describePlan(project.slug, plan));
      if (!plan.ready) {
        throw new AppError(
          'precondition_failed',
          `${project.slug} is not ready to migrate: ${plan.problems?.length ?? 0} problem(s) above`,
        );
      }
      return 0;
    }
    if (!ctx.json) {
      const tables = Array.isArray(answer.tables) ? answer.tables.length : answer.tables;
      const durations = (answer.durations ?? {}) as Record<string, number>;
      println(
        ctx.io.out,
        `migrated ${project.slug}${answer.dumpOnly ? ' (dump only)' : ''}: ` +
          `${typeof tables === 'number' ? `${tables} tables, ` : ''}${typeof answer.rows === 'number' ? `${answer.rows} rows` : ''}` +
          `${durations.total !== undefined ? ` in ${preciseDuration(durations.total * 1000)}` : ''}` +
          `${answer.runId ? ` (run ${String(answer.runId)})` : ''}`,
      );
      const phases = Object.entries(durations).filter(([k]) => k !== 'total');
      if (phases.length) {
        println(
          ctx.io.out,
          table(phases, [
            { header: 'PHASE', value: ([k]) => k },
            { header: 'TIME', value: ([, v]) => preciseDuration(v * 1000), right: true },
          ]),
        );
      }
    }
    return 0;
  },
};

export const MIGRATE_COMMANDS: readonly Command[] = [migrate];
