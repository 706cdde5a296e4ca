// Asking another function of the deployment for work, as a separate process must: a signed event POSTed
// to its /events (the delivery the outbox makes, answered at once instead of queued), and the outcome read
// from the catalog the functions share. Used where a function needs a backup taken by dump and must wait
// for it (restore's safety backup, a dump-only migration).
import type { Manifest } from '../catalog/records.js';
import { AppError, type ErrorCode, isAppError } from '../errors.js';
import { CLOUDEVENTS_CONTENT_TYPE, createEvent } from '../events/envelope.js';
import { signWebhook } from '../events/signature.js';
import type { Project } from '../registry.js';
import { SECOND_MS } from '../units.js';
import type { Runtime } from './runtime.js';

/** How often the catalog is read while a requested backup runs. */
export const BACKUP_POLL_MS = 250;
const REQUEST_TIMEOUT_MS = 30 * SECOND_MS;

export interface BackupRequest {
  /** Why the backup is taken, recorded in the event (e.g. `pre_restore`). */
  reason: string;
  causedBy?: string | undefined;
  signal: AbortSignal;
  timeoutMs: number;
  /** Called once dump has accepted, with the new backup's id (so a run record can name it at once). */
  onAccepted?: (backupId: string) => Promise<void> | void;
}

export interface RequestedBackup {
  backupId: string;
  manifest: Manifest;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/**
 * Has dump take a backup of `project` (`flux.backup.requested` to dump's /events, signed with this
 * deployment's webhook secret) and waits until its manifest lands in the catalog. A refusal (dump busy,
 * stopping, unreachable), a failed backup and the deadline are errors that say which.
 */
export async function requestBackup(
  rt: Runtime,
  project: Pick<Project, 'id' | 'hash' | 'slug'>,
  request: BackupRequest,
): Promise<RequestedBackup> {
  const deadline = Date.now() + request.timeoutMs;
  const event = createEvent({
    type: 'flux.backup.requested',
    source: `/flux-ops/${rt.name}`,
    subject: project.id,
    data: { projectId: project.id, projectHash: project.hash, reason: request.reason },
    causedBy: request.causedBy,
  });
  const body = JSON.stringify(event);
  const url = `${rt.peerUrl('dump')}/events`;
  let response: Response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': CLOUDEVENTS_CONTENT_TYPE,
        ...signWebhook(rt.webhookSecrets, event.id, body),
      },
      body,
      signal: AbortSignal.any([request.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
    });
  } catch (error) {
    if (request.signal.aborted) throw abortError(request.signal, 'asking dump for the backup');
    throw new AppError(
      'dependency_unavailable',
      `dump did not answer at ${url} (${((error as Error).cause as Error)?.message ?? (error as Error).message}): ` +
        `start the dump function, or set FLUX_DUMP_URL to where it listens`,
      { cause: error },
    );
  }
  const answer = (await response.json().catch(() => ({}))) as {
    backupId?: unknown;
    error?: unknown;
    code?: unknown;
  };
  if (!response.ok || typeof answer.backupId !== 'string') {
    const said = typeof answer.error === 'string' ? answer.error : `HTTP ${response.status}`;
    const code: ErrorCode =
      response.status === 409 ? 'conflict' : response.status === 401 ? 'signature_invalid' : 'dump_failed';
    throw new AppError(
      code,
      response.status === 401
        ? `dump refused the signed request (${said}): give every function the same FLUX_WEBHOOK_SECRETS`
        : `dump did not take the backup: ${said}`,
      { details: { dumpStatus: response.status } },
    );
  }
  const backupId = answer.backupId;
  await request.onAccepted?.(backupId);
  for (;;) {
    if (request.signal.aborted) throw abortError(request.signal, `waiting for backup ${backupId}`);
    const entry = await rt.catalog.get(project.id, backupId);
    if (entry?.manifest) return { backupId, manifest: entry.manifest };
    if (entry?.state?.status === 'failed') {
      throw new AppError(
        'dump_failed',
        `backup ${backupId} of ${project.slug} failed: ${entry.state.error ?? entry.state.reason ?? 'no reason recorded'}`,
        { details: { backupId } },
      );
    }
    if (Date.now() >= deadline) {
      throw new AppError('timeout', `backup ${backupId} of ${project.slug} was not complete in time`, {
        details: { backupId },
      });
    }
    await sleep(BACKUP_POLL_MS, request.signal);
  }
}

function abortError(signal: AbortSignal, what: string): AppError {
  const reason: unknown = signal.reason;
  if (isAppError(reason)) return reason;
  return new AppError('shutting_down', `cancelled while ${what}`);
}
