// flux-ops backup restore: recover a backup into a real database (POST …/backups/:id/restore), beside the
// live one by default or in its place with --in-place --yes; the run is started asynchronously and
// followed by its record (stage, bytes, bytes/s), so no client time limit cuts a long restore short.
import { AppError, ERROR_TABLE, type ErrorCode } from '../shared/errors.js';
import { BACKUP_OPTIONS, backupRef, bool, PROJECT_OPTIONS, projectRef, str } from './args.js';
import { type Command, POLL_MS, sleep } from './command.js';
import { preciseDuration, printJson, println, table } from './output.js';
import { createProgress } from './progress.js';
import { listBackups, resolveBackup, resolveProject } from './project.js';

interface RestoreView {
  id: string;
  status: 'running' | 'completed' | 'failed';
  stage: string;
  mode: string;
  backupId: string;
  seconds?: number;
  created?: string;
  aside?: string;
  previous?: { name: string; dropAfter: string };
  safetyBackupId?: string;
  writeUnavailableSeconds?: number;
  connectionHint?: string;
  error?: string;
  reason?: string;
  rolledBack?: boolean;
  stages?: Array<{ stage: string; seconds: number }>;
  rungs?: Array<{ rung: string; result: string; code: string; message?: string }>;
  progress?: { stage: string; bytes: number; totalBytes: number };
}

interface Plan {
  plan?: Record<string, unknown> & { steps?: string[]; backup?: Record<string, unknown> };
  problems?: Array<{ code: string; message: string }>;
  ok?: boolean;
}

function describePlan(slug: string, answer: Plan): string {
  const p = answer.plan ?? {};
  const b = (p.backup ?? {}) as Record<string, unknown>;
  const t = (p.target ?? {}) as Record<string, unknown>;
  const lines = [`restore plan for ${slug} (dry run): ${answer.ok ? 'READY' : 'NOT READY'}`];
  lines.push(
    `  backup     ${String(b.id)} (${String(b.tier)}, ${Math.round(Number(b.ageSeconds ?? 0) / 3600)} h old, ${String(b.tables)} tables, ${String(b.rows)} rows)`,
  );
  lines.push(
    `  target     ${String(t.host)}:${String(t.port)}/${String(t.database)}${t.serverVersion ? ` (PostgreSQL ${String(t.serverVersion)})` : ''}`,
  );
  const archive = p.archive as Record<string, unknown> | null | undefined;
  if (archive)
    lines.push(
      `  archive    ${String(archive.format)} by pg_dump ${String(archive.pgDump)}, read by pg_restore ${String(archive.pgRestore)}`,
    );
  for (const [i, step] of (p.steps ?? []).entries()) lines.push(`    ${i + 1}. ${step}`);
  for (const problem of answer.problems ?? []) lines.push(`  problem    ${problem.code}: ${problem.message}`);
  return lines.join('\n');
}

const restore: Command = {
  name: 'backup restore',
  summary: 'restore a backup into a real database (beside the live one, or in place)',
  help: `Usage: flux-ops backup restore -p <slug> (--id <backupId> | --latest) [--in-place --yes]
                              [--source local|offsite] [--target-url env:NAME] [--target-name <db>]
                              [--skip-backup-check] [--dry-run]

Restores the backup and proves the result against the backup's manifest (every table's rows, every
sequence, the structure). Without --in-place it creates a new database beside the live one and touches
nothing live. With --in-place --yes it replaces the live data: the backup must be restore-verified (unless
--skip-backup-check), a safety backup of the live state is taken first (restore it to undo), and the live
copy is set aside, not dropped, until FLUX_RESTORE_KEEP_PREVIOUS_HOURS have passed.

Exit codes: 0 restored and proven; 1 refused by a gate, or failed with the live copy put back; others from
the errors table.

Flags:
  -p, --project <slug>     the project
  --hash <7hex>            its hash (looked up from the slug when absent)
  --id <backupId>          the backup
  --latest                 the newest completed backup (--in-place: the newest restore-verified one)
  --in-place               replace the live data (needs --yes)
  --yes                    confirm an in-place restore
  --source <where>         local (default) or offsite: which copy to read
  --target-url env:NAME    another server (mode new only), as the variable holding its URL on the server
  --target-name <db>       the database a restore beside the live one creates
  --skip-backup-check      restore in place even when the backup is not restore-verified
  --dry-run                the plan only; nothing is touched
  --yes-i-know-this-can-overwrite-data   upstream flux's name for --yes`,
  options: {
    ...PROJECT_OPTIONS,
    ...BACKUP_OPTIONS,
    'in-place': { type: 'boolean' },
    yes: { type: 'boolean' },
    'yes-i-know-this-can-overwrite-data': { type: 'boolean' },
    source: { type: 'string' },
    'target-url': { type: 'string' },
    'target-name': { type: 'string' },
    'skip-backup-check': { type: 'boolean' },
    'dry-run': { type: 'boolean' },
  },
  async run(ctx) {
    const client = ctx.client();
    const ref = backupRef(this.name, ctx.values);
    const inPlace = bool(ctx.values, 'in-place');
    const source = str(ctx.values, 'source');
    if (source !== undefined && source !== 'local' && source !== 'offsite')
      throw new AppError('bad_request', `${this.name}: --source must be local or offsite`);
    const project = await resolveProject(client, projectRef(this.name, ctx.values, true)!);
    let id: string;
    if ('latest' in ref && inPlace) {
      const newest = (await listBackups(client, project)).find(
        (b) => b.status === 'complete' && b.restoreVerificationStatus === 'restore_verified',
      );
      if (!newest && !bool(ctx.values, 'skip-backup-check')) {
        throw new AppError(
          'precondition_failed',
          `project ${project.slug} has no restore-verified backup to restore in place: flux-ops backup verify -p ${project.slug} --latest`,
        );
      }
      id = newest?.id ?? (await resolveBackup(client, project, ref)).id;
    } else id = (await resolveBackup(client, project, ref)).id;
    const body = {
      mode: inPlace ? 'in_place' : 'new',
      ...(source ? { source } : {}),
      ...(str(ctx.values, 'target-url') ? { targetUrl: str(ctx.values, 'target-url') } : {}),
      ...(str(ctx.values, 'target-name') ? { targetName: str(ctx.values, 'target-name') } : {}),
      dryRun: bool(ctx.values, 'dry-run'),
      yes: bool(ctx.values, 'yes') || bool(ctx.values, 'yes-i-know-this-can-overwrite-data'),
      skipBackupCheck: bool(ctx.values, 'skip-backup-check'),
    };
    const at = `/api/cli/v1/projects/${project.hash}/backups/${id}/restore`;
    if (body.dryRun) {
      const { body: plan } = await client.json<Plan>('POST', at, { body });
      if (ctx.json) printJson(ctx.io, plan);
      else println(ctx.io.out, describePlan(project.slug, plan));
      if (!plan.ok)
        throw new AppError(
          'precondition_failed',
          `the restore of ${project.slug} is not ready: see the problems above`,
        );
      return 0;
    }
    const started = await client.json<{ restore: RestoreView }>('POST', at, {
      body,
      headers: { prefer: 'respond-async' },
      signal: ctx.signal,
    });
    const restoreId = started.body.restore.id;
    const progress = createProgress({
      stream: ctx.io.err,
      isTTY: ctx.io.errIsTTY,
      enabled: !ctx.json,
      label: `restore ${id}`,
    });
    progress.note(`restoring backup ${id} of ${project.slug} (${body.mode}), run ${restoreId}`);
    ctx.onInterrupt(
      `stopped waiting; restore ${restoreId} goes on on the server (it completes or puts the live copy back): ` +
        `flux-ops events tail --type 'flux.restore.*'`,
    );
    let view = started.body.restore;
    try {
      while (view.status === 'running') {
        await sleep(POLL_MS, ctx.signal);
        view = (
          await client.json<{ restore: RestoreView }>(
            'GET',
            `/api/cli/v1/projects/${project.hash}/restores/${restoreId}`,
            { signal: ctx.signal },
          )
        ).body.restore;
        const p = view.progress;
        progress.update({
          stage: p?.stage ?? view.stage,
          ...(p && (p.stage === 'fetch' || p.bytes > 0) ? { bytes: p.bytes, total: p.totalBytes } : {}),
        });
      }
    } finally {
      progress.done();
      ctx.onInterrupt(undefined);
    }
    if (ctx.json) printJson(ctx.io, { ok: view.status === 'completed', restore: view });
    else {
      println(
        ctx.io.out,
        view.status === 'completed'
          ? `restored backup ${id} of ${project.slug} (${view.mode}) in ${preciseDuration((view.seconds ?? 0) * 1000)}` +
              `${view.created ? `: database ${view.created}` : ''}` +
              `${view.previous ? `; the previous copy is kept as ${view.previous.name} until ${view.previous.dropAfter}` : ''}` +
              `${view.safetyBackupId ? `; undo: flux-ops backup restore -p ${project.slug} --id ${view.safetyBackupId} --in-place --yes --skip-backup-check` : ''}`
          : `restore of backup ${id} of ${project.slug} failed in stage ${view.stage}: ${view.error ?? view.reason}`,
      );
      if (view.rungs?.length) {
        println(
          ctx.io.out,
          table(view.rungs, [
            { header: 'RUNG', value: (r) => r.rung },
            { header: 'RESULT', value: (r) => r.result },
            { header: 'FINDING', value: (r) => (r.message ? `${r.code}: ${r.message}` : r.code) },
          ]),
        );
      }
    }
    if (view.status !== 'completed') {
      const code = (view.reason && view.reason in ERROR_TABLE ? view.reason : 'restore_failed') as ErrorCode;
      throw new AppError(code, `restore ${restoreId} failed: ${view.error ?? view.reason}`, {
        details: { reported: true },
      });
    }
    return 0;
  },
};

const dropPrevious: Command = {
  name: 'backup drop-previous',
  summary: 'drop the copy an in-place restore set aside, before its hours are up',
  help: `Usage: flux-ops backup drop-previous -p <slug> --restore <restoreId>

An in-place restore keeps the copy it replaced (a schema or database named …_prev_<tag>) for
FLUX_RESTORE_KEEP_PREVIOUS_HOURS, then drops it. This drops it now
(POST /api/cli/v1/projects/:hash/restores/:restoreId/drop-previous). It cannot be undone: the safety backup
the restore took is then the way back.

Flags:
  -p, --project <slug>   the project
  --hash <7hex>          its hash (looked up from the slug when absent)
  --restore <restoreId>  the in-place restore whose previous copy to drop`,
  options: { ...PROJECT_OPTIONS, restore: { type: 'string' } },
  async run(ctx) {
    const client = ctx.client();
    const restoreId = str(ctx.values, 'restore');
    if (!restoreId || !/^[0-9A-HJKMNP-TV-Z]{26}$/.test(restoreId))
      throw new AppError('bad_request', `${this.name}: --restore <restoreId> (a ULID) is required`);
    const project = await resolveProject(client, projectRef(this.name, ctx.values, true)!);
    const { body } = await client.json<{ restore: RestoreView & { previousDroppedAt?: string } }>(
      'POST',
      `/api/cli/v1/projects/${project.hash}/restores/${restoreId}/drop-previous`,
      { body: {}, signal: ctx.signal },
    );
    if (ctx.json) printJson(ctx.io, body);
    else
      println(
        ctx.io.out,
        `dropped ${body.restore.previous?.name ?? 'the previous copy'} of ${project.slug} (restore ${restoreId})`,
      );
    return 0;
  },
};

export const RESTORE_COMMANDS: readonly Command[] = [restore, dropPrevious];
