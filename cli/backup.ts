// flux-ops backup create|list|download|verify|status: the upstream flux CLI's backup commands, plus the
// trust table.
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { streamToPendingFile } from '../shared/atomic.js';
import { AppError, errnoOf } from '../shared/errors.js';
import { formatDuration, parseDuration } from '../shared/schedule.js';
import { BACKUP_OPTIONS, backupRef, bool, PROJECT_OPTIONS, projectRef, str } from './args.js';
import { type Command, POLL_MS, sleep } from './command.js';
import { ApiError, headerOf } from './http.js';
import {
  humanAge,
  humanBytes,
  humanRate,
  preciseDuration,
  printJson,
  println,
  table,
  yesNo,
} from './output.js';
import { createProgress } from './progress.js';
import {
  type ApiBackup,
  type BackupSource,
  fetchBackupList,
  fetchStatus,
  type ProjectStatus,
  resolveBackup,
  resolveProject,
} from './project.js';

const backupsPath = (hash: string) => `/api/cli/v1/projects/${hash}/backups`;

/** --source local|offsite (undefined when not given). */
export function sourceOf(command: string, values: Parameters<typeof str>[0]): BackupSource | undefined {
  const source = str(values, 'source');
  if (source !== undefined && source !== 'local' && source !== 'offsite') {
    throw new AppError('bad_request', `${command}: --source must be local or offsite`);
  }
  return source;
}

// Our words (with `unverifiable`, `missing`, `conflict`) when the server gives them, else upstream's.
// A pass names the copies it proves (each copy carries its own verification).
const restoreOf = (b: ApiBackup) => {
  const word = b.restoreVerificationOutcome ?? b.restoreVerificationStatus ?? '-';
  const copies = b.verifiedCopies ?? [];
  return word === 'restore_verified' && copies.length > 0 ? `${word} (${copies.join('+')})` : word;
};
/** One row per copy that has a verification of the current content: its outcome, when, and why not. */
function copyRows(b: ApiBackup): Array<[string, string]> {
  return Object.entries(b.copyVerifications ?? {}).flatMap(
    ([copy, v]): Array<[string, string]> =>
      v
        ? [
            [
              `${copy} copy`,
              `${v.status}${v.proven ? ' (proven)' : v.status === 'restore_verified' ? ' (the copy no longer matches)' : ''}, ${v.finishedAt}${v.error ? `: ${v.error}` : ''}`,
            ],
          ]
        : [],
  );
}
const artifactOf = (b: ApiBackup) => b.artifactValidationOutcome ?? b.artifactValidationStatus ?? '-';
const offsiteOf = (b: ApiBackup) => b.offsiteOutcome ?? b.offsiteStatus ?? '-';

export function describeBackup(
  b: ApiBackup,
  slug: string,
  extra: Array<[string, string]> = [],
  now = new Date(),
): string {
  const rows: Array<[string, string]> = [
    ['kind', b.kind],
    ['size', b.sizeBytes === null ? '-' : `${humanBytes(b.sizeBytes)} (${b.sizeBytes} bytes)`],
    ['sha256', b.checksumSha256 ?? '-'],
    ['created', `${b.createdAt} (${humanAge(b.createdAt, now)})`],
    ['completed', b.completedAt ?? '-'],
    ['artifact', artifactOf(b)],
    ['restore', restoreOf(b)],
    ...copyRows(b),
    ['offsite', offsiteOf(b)],
  ];
  const sealed = b.offsiteEncryption;
  if (sealed) {
    rows.push([
      'encrypted',
      sealed.recipients.length > 0
        ? `${sealed.format} to ${sealed.recipients.join(', ')}`
        : `${sealed.format} (recipients not recorded: proven by decrypting it)`,
    ]);
  }
  if (b.error) rows.push(['error', b.error]);
  if (b.restoreVerificationError) rows.push(['verify error', b.restoreVerificationError]);
  rows.push(...extra);
  const width = Math.max(...rows.map(([k]) => k.length));
  return [
    `backup ${b.id} of ${slug}: ${b.status}`,
    ...rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`),
  ].join('\n');
}

const create: Command = {
  name: 'backup create',
  summary: 'back up a project now and wait for it (stage, bytes, bytes/s)',
  help: `Usage: flux-ops backup create -p <slug> [--hash <7hex>]

Starts a backup (POST /api/cli/v1/projects/:hash/backups, Prefer: respond-async) and follows it until it
completes, showing the dump's stage, bytes written and bytes/s on stderr. Interrupting stops watching; the
backup goes on on the server.

Exit codes: 0 completed; 1 the backup failed; others from the errors table (e.g. 75 one already running).

Flags:
  -p, --project <slug>  the project
  --hash <7hex>         the project's hash (skips the slug lookup)`,
  options: PROJECT_OPTIONS,
  async run(ctx) {
    const client = ctx.client();
    const project = await resolveProject(client, projectRef(this.name, ctx.values, true)!);
    const progress = createProgress({
      stream: ctx.io.err,
      isTTY: ctx.io.errIsTTY,
      enabled: !ctx.json,
      label: `backup of ${project.slug}`,
    });
    const started = Date.now();
    const answer = await client.json<{ backup: ApiBackup; location?: string }>(
      'POST',
      backupsPath(project.hash),
      {
        headers: { prefer: 'respond-async' },
        long: true,
      },
    );
    let backup = answer.body.backup;
    if (backup.status === 'running') {
      progress.note(`backup ${backup.id} of ${project.slug} started`);
      ctx.onInterrupt(
        `stopped watching; backup ${backup.id} goes on on the server: flux-ops backup list -p ${project.slug}`,
      );
      const at = `${backupsPath(project.hash)}/${backup.id}`;
      while (backup.status === 'running') {
        progress.update({ stage: backup.progress?.stage ?? 'running', bytes: backup.progress?.bytes });
        await sleep(POLL_MS, ctx.signal);
        backup = (await client.json<{ backup: ApiBackup }>('GET', at)).body.backup;
      }
      ctx.onInterrupt(undefined);
    }
    const rate = progress.rate();
    progress.done();
    const seconds = (Date.now() - started) / 1000;
    if (ctx.json) printJson(ctx.io, { backup });
    else {
      const average = backup.sizeBytes ? backup.sizeBytes / Math.max(seconds, 0.001) : rate;
      const took: Array<[string, string]> =
        backup.status === 'complete'
          ? [['took', `${preciseDuration(seconds * 1000)} (${humanRate(average)})`]]
          : [];
      println(ctx.io.out, describeBackup(backup, project.slug, took));
    }
    if (backup.status !== 'complete') {
      throw new AppError(
        'dump_failed',
        `backup ${backup.id} of ${project.slug} failed: ${backup.error ?? 'no reason given'}`,
      );
    }
    return 0;
  },
};

const list: Command = {
  name: 'backup list',
  summary: "list a project's backups, newest first",
  help: `Usage: flux-ops backup list -p <slug> [--hash <7hex>] [--source local|offsite]

With --source offsite the list is read from the offsite store's manifests, not the local catalog (a fresh
host whose local catalog is empty): ARTIFACT is the local copy (missing when there is none), OFFSITE what
the store holds. Manifests the store holds but that were refused (not a manifest, another backup's) are
named on stderr.

Flags:
  -p, --project <slug>  the project
  --hash <7hex>         the project's hash (skips the slug lookup)
  --source <where>      local (default) or offsite`,
  options: { ...PROJECT_OPTIONS, source: { type: 'string' } },
  async run(ctx) {
    const client = ctx.client();
    const source = sourceOf(this.name, ctx.values) ?? 'local';
    const project = await resolveProject(client, projectRef(this.name, ctx.values, true)!);
    const answer = await fetchBackupList(client, project, source);
    const { backups } = answer;
    const fresh = answer.freshness;
    if (ctx.json) {
      printJson(ctx.io, source === 'offsite' ? answer : { backups, ...(fresh ? { freshness: fresh } : {}) });
      return 0;
    }
    for (const refused of answer.invalid ?? []) {
      println(ctx.io.err, `flux-ops: refused offsite manifest of backup ${refused.id}: ${refused.error}`);
    }
    if (backups.length === 0) {
      println(
        ctx.io.out,
        source === 'offsite'
          ? `no backups of ${project.slug} in the offsite store ${answer.store ?? ''}`.trimEnd()
          : `no backups of ${project.slug}; create one: flux-ops backup create -p ${project.slug}`,
      );
      return 0;
    }
    if (source === 'offsite')
      println(ctx.io.err, `backups of ${project.slug} in ${answer.store ?? 'the offsite store'}:`);
    const now = new Date();
    println(
      ctx.io.out,
      table(backups, [
        { header: 'ID', value: (b) => b.id },
        { header: 'CREATED', value: (b) => humanAge(b.createdAt, now) },
        { header: 'STATUS', value: (b) => b.status },
        { header: 'SIZE', value: (b) => humanBytes(b.sizeBytes), right: true },
        { header: 'ARTIFACT', value: artifactOf },
        { header: 'RESTORE', value: restoreOf },
        { header: 'OFFSITE', value: offsiteOf },
      ]),
    );
    if (fresh) {
      println(
        ctx.io.out,
        `freshness: ${fresh.freshness} (${fresh.message})${fresh.freshness !== 'fresh' && fresh.next ? `; next: ${fresh.next}` : ''}`,
      );
    }
    return 0;
  },
};

/** Where the download lands: -o as a file, -o as an existing directory, or <slug>-<id>.dump here. */
async function targetOf(output: string | undefined, slug: string, id: string): Promise<string> {
  const name = `${slug}-${id}.dump`;
  if (output === undefined) return path.resolve(name);
  const resolved = path.resolve(output);
  const s = await stat(resolved).catch(() => undefined);
  return s?.isDirectory() ? path.join(resolved, name) : resolved;
}

const download: Command = {
  name: 'backup download',
  summary: 'download a backup, checking its SHA-256',
  help: `Usage: flux-ops backup download -p <slug> (--id <backupId> | --latest) [-o <file>] [--force]
                              [--source local|offsite]

Streams the dump to a temporary file beside <file> with progress, checks its SHA-256 against the
X-Flux-Checksum-Sha256 header, and only then renames it into place. On a mismatch the temporary file is
deleted and the exit code is 1. Without -o the file is ./<slug>-<backupId>.dump; -o may name a directory.
With --source offsite the bytes come from the offsite copy (the server cuts a copy that is not the
manifest's short), and --latest is the newest backup the offsite store holds, so it works on a fresh host
whose local catalog is empty.

Flags:
  -p, --project <slug>  the project
  --hash <7hex>         the project's hash (skips the slug lookup)
  --id <backupId>       the backup
  --latest              the newest completed backup
  -o, --output <file>   where to write it
  --force               replace <file> if it exists
  --source <where>      local (default) or offsite: which copy to download`,
  options: {
    ...PROJECT_OPTIONS,
    ...BACKUP_OPTIONS,
    output: { type: 'string', short: 'o' },
    force: { type: 'boolean' },
    source: { type: 'string' },
  },
  async run(ctx) {
    const client = ctx.client();
    const ref = backupRef(this.name, ctx.values);
    const source = sourceOf(this.name, ctx.values);
    const project = await resolveProject(client, projectRef(this.name, ctx.values, true)!);
    const { id } = await resolveBackup(client, project, ref, {
      needFile: true,
      ...(source ? { source } : {}),
    });
    const target = await targetOf(str(ctx.values, 'output'), project.slug, id);
    if (!bool(ctx.values, 'force') && (await stat(target).catch(() => undefined))) {
      throw new AppError('bad_request', `${target} exists; pass --force to replace it`);
    }
    const at = `${backupsPath(project.hash)}/${id}`;
    const answer = await client.stream(`${at}/download${source ? `?source=${source}` : ''}`, {
      signal: ctx.signal,
    });
    const total = Number(headerOf(answer.headers, 'content-length') ?? Number.NaN);
    let expected = headerOf(answer.headers, 'x-flux-checksum-sha256')?.toLowerCase();
    const progress = createProgress({
      stream: ctx.io.err,
      isTTY: ctx.io.errIsTTY,
      enabled: !ctx.json,
      label: `download ${id}`,
    });
    const started = Date.now();
    let received = 0;
    const onProgress = (bytes: number) => {
      received = bytes;
      progress.update({ stage: 'downloading', bytes, total: Number.isFinite(total) ? total : undefined });
    };
    progress.update({ stage: 'downloading', bytes: 0, total: Number.isFinite(total) ? total : undefined });
    let pending: Awaited<ReturnType<typeof streamToPendingFile>>;
    try {
      pending = await streamToPendingFile(target, answer.body, { signal: ctx.signal, onProgress });
    } catch (error) {
      progress.done();
      if (ctx.signal.aborted) throw error;
      const errno = errnoOf(error);
      if (
        errno === 'EACCES' ||
        errno === 'EPERM' ||
        errno === 'EROFS' ||
        errno === 'ENOENT' ||
        errno === 'ENOSPC'
      ) {
        throw new AppError(
          errno === 'ENOSPC' ? 'disk_full' : 'dir_not_writable',
          `cannot write ${target} (${errno}); nothing was left behind. Choose another -o or free space`,
          { cause: error },
        );
      }
      throw new AppError(
        'dependency_unavailable',
        `the download of backup ${id} broke off after ${humanBytes(received)} (${(error as Error).message}); the partial file was removed, retry`,
        { cause: error },
      );
    }
    progress.done();
    try {
      if (!expected && source !== 'offsite') {
        // An older or foreign server without the header: fall back to the checksum its catalog records.
        const { backup } = (await client.json<{ backup: ApiBackup }>('GET', at)).body;
        expected = backup.checksumSha256 ?? undefined;
      }
      if (!expected) {
        throw new AppError(
          'artifact_invalid',
          `the server gave no SHA-256 for backup ${id}, so the download cannot be checked; the temporary file was removed`,
        );
      }
      if (Number.isFinite(total) && pending.sizeBytes !== total) {
        throw new AppError(
          'artifact_invalid',
          `backup ${id}: received ${pending.sizeBytes} bytes but the server announced ${total}; the temporary file was removed, retry`,
        );
      }
      if (pending.sha256 !== expected) {
        throw new AppError(
          'artifact_invalid',
          `checksum mismatch for backup ${id}: the server says sha256 ${expected} but the bytes received hash to ${pending.sha256}; ` +
            `the temporary file was removed. Retry; if it repeats, the server's copy is damaged: flux-ops backup verify -p ${project.slug} --id ${id}`,
        );
      }
      await pending.commit();
    } catch (error) {
      await pending.discard();
      throw error;
    }
    const seconds = (Date.now() - started) / 1000;
    if (ctx.json) {
      printJson(ctx.io, {
        ok: true,
        backupId: id,
        source: source ?? 'local',
        path: target,
        sizeBytes: pending.sizeBytes,
        sha256: pending.sha256,
        seconds,
      });
    } else {
      println(
        ctx.io.out,
        `downloaded backup ${id} of ${project.slug}${source === 'offsite' ? ' (offsite copy)' : ''} to ${target}: ${humanBytes(pending.sizeBytes)} in ` +
          `${preciseDuration(seconds * 1000)} (${humanRate(pending.sizeBytes / Math.max(seconds, 0.001))}), sha256 ${pending.sha256} verified`,
      );
    }
    return 0;
  },
};

interface Rung {
  rung: string;
  result: string;
  code: string;
  message?: string;
}

function rungTable(rungs: readonly Rung[]): string {
  return table(rungs, [
    { header: 'RUNG', value: (r) => r.rung },
    { header: 'RESULT', value: (r) => r.result },
    { header: 'CODE', value: (r) => r.code },
    { header: 'MESSAGE', value: (r) => (r.message ?? '').slice(0, 200) },
  ]);
}

const verify: Command = {
  name: 'backup verify',
  summary: 'restore a backup into a disposable Postgres and check it',
  help: `Usage: flux-ops backup verify -p <slug> (--id <backupId> | --latest) [--source local|offsite]

Restores the backup into a disposable Postgres and checks it rung by rung against what the dump recorded
(POST /api/cli/v1/projects/:hash/backups/:backupId/verify), showing progress while it runs.

Exit codes: 0 restore-verified; 1 verification failed; 2 could not verify (no sandbox, image missing…:
never a pass); others from the errors table.

Flags:
  -p, --project <slug>  the project
  --hash <7hex>         the project's hash (skips the slug lookup)
  --id <backupId>       the backup
  --latest              the newest completed backup
  --source <where>      local (default) or offsite: which copy to restore`,
  options: { ...PROJECT_OPTIONS, ...BACKUP_OPTIONS, source: { type: 'string' } },
  async run(ctx) {
    const client = ctx.client();
    const ref = backupRef(this.name, ctx.values);
    const source = sourceOf(this.name, ctx.values);
    const project = await resolveProject(client, projectRef(this.name, ctx.values, true)!);
    const { id } = await resolveBackup(client, project, ref);
    const at = `${backupsPath(project.hash)}/${id}/verify`;
    const progress = createProgress({
      stream: ctx.io.err,
      isTTY: ctx.io.errIsTTY,
      enabled: !ctx.json,
      label: `verify ${id}`,
    });
    progress.note(`verifying backup ${id} of ${project.slug}${source ? ` (${source} copy)` : ''}`);
    ctx.onInterrupt(
      `stopped waiting; the verification of ${id} goes on on the server: flux-ops backup list -p ${project.slug}`,
    );
    // The verdict comes from the synchronous call; a side loop polls the status for the display only.
    const watching = new AbortController();
    const watch = (async () => {
      progress.update({ stage: 'starting' });
      while (!watching.signal.aborted) {
        await sleep(POLL_MS * 2, watching.signal).catch(() => undefined);
        if (watching.signal.aborted) break;
        try {
          const { body } = await client.json<{
            running?: boolean;
            progress?: { stage?: string; bytes?: number };
          }>('GET', at, { signal: watching.signal });
          progress.update({
            stage: body.progress?.stage ?? (body.running ? 'restoring and checking' : 'waiting'),
            bytes: body.progress?.bytes,
          });
        } catch {
          // The display is best effort: the verdict is the POST's answer.
        }
      }
    })();
    let body: { restoreVerificationStatus?: string; driver?: string; seconds?: number; rungs?: Rung[] };
    try {
      body = (
        await client.json<typeof body>('POST', at, {
          long: true,
          signal: ctx.signal,
          ...(source ? { query: { source } } : {}),
        })
      ).body;
    } catch (error) {
      if (error instanceof ApiError && !ctx.json && Array.isArray(error.body.rungs)) {
        progress.done();
        println(ctx.io.out, rungTable(error.body.rungs as Rung[]));
      }
      throw error;
    } finally {
      watching.abort();
      await watch;
      progress.done();
      ctx.onInterrupt(undefined);
    }
    if (ctx.json) printJson(ctx.io, body);
    else {
      println(
        ctx.io.out,
        `backup ${id} of ${project.slug}: restore-verified` +
          `${body.seconds !== undefined ? ` in ${preciseDuration(body.seconds * 1000)}` : ''}${body.driver ? ` (${body.driver} sandbox)` : ''}`,
      );
      if (body.rungs?.length) println(ctx.io.out, rungTable(body.rungs));
      // Each copy carries its own verification: say which one this proved.
      println(ctx.io.out, `copy verified: ${source ?? 'local'}`);
    }
    return 0;
  },
};

function nextStep(p: ProjectStatus): string {
  return p.next ? `${p.message}; next: ${p.next}` : p.message;
}

const freshnessOfRow = (p: ProjectStatus) => p.freshness?.freshness ?? '-';
const ageOfRow = (p: ProjectStatus) =>
  p.freshness
    ? `${p.freshness.ageSeconds === null ? '-' : formatDuration(p.freshness.ageSeconds * 1000)} / ${formatDuration(p.freshness.maxAgeSeconds * 1000)}`
    : '-';

/**
 * What --check makes of the projects, as a monitoring plugin does (Nagios/Icinga/Sensu exit codes):
 *   0 OK        every project restorable (newest backup) and fresh (a restorable backup within maxAge);
 *   1 WARNING   every project fresh, but the newest backup of some is not restorable yet (still in the
 *               pipeline, not verified, could not be verified, artifact pending): an older proven copy
 *               within maxAge still covers it;
 *   2 CRITICAL  some project is stale (its newest restorable backup is older than maxAge), has never had
 *               a restorable backup, or its newest backup failed restore verification;
 *   3 UNKNOWN   the state could not be read (server unreachable, refused, an older server without
 *               freshness, no projects registered): never taken for OK.
 */
export interface CheckOutcome {
  code: 0 | 1 | 2 | 3;
  status: 'OK' | 'WARNING' | 'CRITICAL' | 'UNKNOWN';
  summary: string;
  /** One line per project that is not OK. */
  details: string[];
  perfdata: string;
}

const STATUS_OF = ['OK', 'WARNING', 'CRITICAL', 'UNKNOWN'] as const;

export function checkProjects(projects: readonly ProjectStatus[], maxAgeMs?: number): CheckOutcome {
  const unknown = (summary: string): CheckOutcome => ({
    code: 3,
    status: 'UNKNOWN',
    summary,
    details: [],
    perfdata: '',
  });
  if (projects.length === 0)
    return unknown('no projects registered (FLUX_PROJECTS_FILE on the server lists none)');
  if (projects.some((p) => !p.freshness))
    return unknown('the server gives no freshness (an older flux-ops): upgrade it to check freshness');
  let stale = 0;
  let never = 0;
  let failed = 0;
  let notRestorable = 0;
  let oldest = 0;
  const details: string[] = [];
  let code: 0 | 1 | 2 = 0;
  for (const p of projects) {
    const f = p.freshness!;
    const limitS = maxAgeMs === undefined ? f.maxAgeSeconds : Math.round(maxAgeMs / 1000);
    const state =
      f.ageSeconds === null ? 'never_verified' : f.ageSeconds < limitS ? 'fresh' : ('stale' as const);
    if (f.ageSeconds !== null) oldest = Math.max(oldest, f.ageSeconds);
    const age = f.ageSeconds === null ? 'no restorable backup' : `${formatDuration(f.ageSeconds * 1000)} old`;
    const limit = formatDuration(limitS * 1000);
    if (state !== 'fresh' || p.tier === 'restore_failed') {
      code = 2;
      if (state === 'stale') stale++;
      if (state === 'never_verified') never++;
      if (p.tier === 'restore_failed') failed++;
      const next = f.next ?? p.next;
      details.push(
        `CRITICAL ${p.slug}: ${state}, tier ${p.tier} (${age}, maxAge ${limit})${next ? `; next: ${next}` : ''}`,
      );
    } else if (p.tier !== 'restorable') {
      if (code === 0) code = 1;
      notRestorable++;
      details.push(`WARNING ${p.slug}: fresh (${age}) but the newest backup is ${p.tier}: ${nextStep(p)}`);
    }
  }
  const total = projects.length;
  const good = total - details.length;
  const parts = [`${good} of ${total} project${total === 1 ? '' : 's'} restorable and fresh`];
  if (stale) parts.push(`${stale} stale`);
  if (never) parts.push(`${never} never verified`);
  if (failed) parts.push(`${failed} restore failed`);
  if (notRestorable) parts.push(`${notRestorable} newest backup not restorable yet`);
  const limit = maxAgeMs === undefined ? '' : `;;${Math.round(maxAgeMs / 1000)}`;
  const perfdata = [
    `projects=${total}`,
    `fresh=${total - stale - never}`,
    `restorable=${projects.filter((p) => p.tier === 'restorable').length}`,
    `stale=${stale}`,
    `never_verified=${never}`,
    `oldest_restorable_age=${oldest}s${limit}`,
  ].join(' ');
  return { code, status: STATUS_OF[code], summary: parts.join(', '), details, perfdata };
}

const status: Command = {
  name: 'backup status',
  summary: 'trust table: tier, freshness and the three labels of each project’s newest backup',
  help: `Usage: flux-ops backup status [-p <slug>] [--check [--max-age <duration>] [--nagios]]

For each project (or one), the newest backup's trust: its tier, and whether its artifact is validated,
its restore verified and its offsite copy replicated, its age, the project's freshness (its newest
restorable backup against its maxAge) and the next command to run. Only "restorable" is trustworthy;
migrate and an in-place restore also need "fresh".

With --check it exits like a monitoring plugin, after one summary line:
  0 OK        every project restorable and fresh
  1 WARNING   every project fresh, but some newest backup is not restorable yet (an older one covers it)
  2 CRITICAL  a project stale, never restorable, or its newest backup failed restore verification
  3 UNKNOWN   the state could not be read (server unreachable, refused, no projects)
Without --check the exit code is 0 whatever the table says.

Flags:
  -p, --project <slug>    only this project
  --hash <7hex>           only the project with this hash
  --check                 exit 0/1/2/3 as above, summary line first
  --max-age <duration>    with --check: judge every project against this maxAge (e.g. 26h) instead of its own
  --nagios                with --check: the Nagios plugin format (BACKUP OK - … | perfdata)`,
  options: {
    ...PROJECT_OPTIONS,
    check: { type: 'boolean' },
    'max-age': { type: 'string' },
    nagios: { type: 'boolean' },
  },
  async run(ctx) {
    const check = bool(ctx.values, 'check');
    const nagios = bool(ctx.values, 'nagios');
    const maxAgeText = str(ctx.values, 'max-age');
    if (!check && (nagios || maxAgeText !== undefined)) {
      throw new AppError('bad_request', `${this.name}: --max-age and --nagios go with --check`);
    }
    const maxAgeMs = maxAgeText === undefined ? undefined : parseDuration(maxAgeText);
    if (maxAgeText !== undefined && maxAgeMs === undefined) {
      throw new AppError(
        'bad_request',
        `${this.name}: --max-age ${JSON.stringify(maxAgeText.slice(0, 32))} is not a duration like 26h, 90m or 2d`,
      );
    }
    const ref = projectRef(this.name, ctx.values, false);
    let projects: ProjectStatus[];
    try {
      projects = await fetchStatus(ctx.client());
      if (ref) {
        projects = projects.filter((p) => (ref.hash ? p.hash === ref.hash : p.slug === ref.slug));
        if (projects.length === 0) {
          throw new AppError(
            'not_found',
            `no project ${ref.slug ?? ref.hash} at ${ctx.client().endpoint.base}; flux-ops backup status lists them all`,
          );
        }
      }
    } catch (error) {
      if (!check) throw error;
      // A check that cannot read the state says UNKNOWN, never an error code a monitor would misread.
      const outcome: CheckOutcome = {
        code: 3,
        status: 'UNKNOWN',
        summary: `could not read the backup status: ${(error as Error).message}`,
        details: [],
        perfdata: '',
      };
      printCheck(ctx, outcome, nagios, []);
      return outcome.code;
    }
    if (check) {
      const outcome = checkProjects(projects, maxAgeMs);
      printCheck(ctx, outcome, nagios, projects);
      return outcome.code;
    }
    if (ctx.json) {
      printJson(ctx.io, { projects });
      return 0;
    }
    if (projects.length === 0) {
      println(ctx.io.out, 'no projects registered (FLUX_PROJECTS_FILE on the server lists none)');
      return 0;
    }
    printStatusTable(ctx, projects);
    return 0;
  },
};

function printStatusTable(ctx: Parameters<Command['run']>[0], projects: readonly ProjectStatus[]): void {
  const now = new Date();
  println(
    ctx.io.out,
    table(projects, [
      { header: 'PROJECT', value: (p) => p.slug },
      { header: 'TIER', value: (p) => p.tier },
      { header: 'FRESHNESS', value: freshnessOfRow },
      { header: 'AGE/MAX', value: ageOfRow },
      { header: 'VALIDATED', value: (p) => yesNo(p.labels?.artifactValidated) },
      { header: 'RESTORE-VERIFIED', value: (p) => yesNo(p.labels?.restoreVerified) },
      { header: 'REPLICATED', value: (p) => yesNo(p.labels?.offsiteReplicated) },
      {
        header: 'NEWEST',
        value: (p) => (p.backup ? humanAge(p.backup.completedAt ?? p.backup.createdAt, now) : '-'),
      },
      { header: 'MESSAGE / NEXT', value: nextStep },
    ]),
  );
}

function printCheck(
  ctx: Parameters<Command['run']>[0],
  outcome: CheckOutcome,
  nagios: boolean,
  projects: readonly ProjectStatus[],
): void {
  if (ctx.json) {
    printJson(ctx.io, { check: outcome, projects });
    return;
  }
  if (nagios) {
    // Nagios plugin output: status line with perfdata after '|', then the long text.
    const first = `BACKUP ${outcome.status} - ${outcome.summary}${outcome.perfdata ? ` | ${outcome.perfdata}` : ''}`;
    println(ctx.io.out, [first, ...outcome.details].join('\n'));
    return;
  }
  println(ctx.io.out, `${outcome.status}: ${outcome.summary}`);
  for (const line of outcome.details) println(ctx.io.out, `  ${line}`);
  if (projects.length > 0) printStatusTable(ctx, projects);
}

export const BACKUP_COMMANDS: readonly Command[] = [create, list, download, verify, status];
