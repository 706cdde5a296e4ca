// A backup's one `flux.backup.created` event: its fixed id, its data (all read from the manifest), and
// making it durable before the state file that marks it owed is removed.
import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import type { Manifest } from '../../shared/catalog/records.js';
import { AppError, isAppError } from '../../shared/errors.js';
import type { EventData } from '../../shared/events/envelope.js';
import type { Runtime } from '../../shared/kit/runtime.js';

/**
 * The id of a backup's one `flux.backup.created` event: the same every time it is sent (a crash between
 * its enqueue and the state file's removal sends it again), so receivers dedupe it by webhook-id.
 */
export function createdEventIdOf(projectId: string, backupId: string): string {
  const h = createHash('sha256').update(`flux.backup.created\n${projectId}/${backupId}`).digest('hex');
  return `evt_${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** What `flux.backup.created` says about a backup: all of it read from its manifest. */
export function createdDataOf(manifest: Manifest): EventData<'flux.backup.created'> {
  return {
    projectId: manifest.projectId,
    projectHash: manifest.projectHash,
    backupId: manifest.backupId,
    kind: manifest.kind,
    sizeBytes: manifest.sizeBytes,
    sha256: manifest.sha256,
    createdAt: manifest.createdAt,
    completedAt: manifest.completedAt,
    tables: manifest.tables.length,
    rows: manifest.tables.reduce((n, t) => n + t.rows, 0),
    sequences: manifest.sequences.length,
    serverVersion: manifest.source.serverVersion,
    slug: manifest.slug,
  };
}

/**
 * Makes `flux.backup.created` durable, then removes the backup's state file (the mark that the event is
 * still owed). Its id is fixed per backup, so one sent again after a crash is the same event to receivers.
 */
export async function announceCreated(
  rt: Pick<Runtime, 'emit' | 'log' | 'catalog'>,
  manifest: Manifest,
  causedBy: string | undefined,
): Promise<void> {
  const { log, catalog } = rt;
  const { projectId, backupId } = manifest;
  try {
    await rt.emit('flux.backup.created', {
      id: createdEventIdOf(projectId, backupId),
      required: true,
      subject: `${projectId}/${backupId}`,
      causedBy,
      data: createdDataOf(manifest),
    });
  } catch (error) {
    const cause = isAppError(error)
      ? error
      : new AppError('internal', (error as Error).message, { cause: error });
    log.error(
      { projectId, backupId, code: cause.code, err: cause.message },
      'backup complete, but its flux.backup.created event could not be made durable; it is sent at the next start',
    );
    throw new AppError(
      cause.code,
      `backup ${backupId} is complete, but receivers were not told: ${cause.message}. ` +
        'The event is sent when dump next starts; the backup itself is kept.',
      { cause, details: { ...cause.details, backupId, complete: true } },
    );
  }
  // Left behind, the mark only makes the next start send the same event (same id) once more.
  await rm(catalog.paths(projectId, backupId).state, { force: true }).catch((error) =>
    log.warn({ err: error, projectId, backupId }, 'could not remove the state file of a completed backup'),
  );
}
