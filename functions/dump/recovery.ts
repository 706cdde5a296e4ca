// dump's start-up recovery: the pg_dumps a crashed predecessor left running are killed, the temp files of
// dump's own files removed, interrupted backups marked failed (and said so in an event), and the created
// events a crash left owed sent. It reads only what can need it: each project directory's names, and the
// backups that still have a state file; completed backups are never opened, so start-up cost does not
// grow with history.
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { type CatalogFile, parseCatalogName, tempFileTarget } from '../../shared/catalog/layout.js';
import type { ChildPids } from '../../shared/kit/child-pids.js';
import type { Runtime } from '../../shared/kit/runtime.js';
import { announceCreated } from './created-event.js';

/** The catalog files dump writes (and so the only ones whose temp files its recovery removes). */
const DUMP_WRITES: ReadonlySet<CatalogFile> = new Set(['dump', 'manifest', 'state']);

export async function recoverDumps(rt: Runtime, children: ChildPids): Promise<void> {
  const { catalog, log } = rt;
  // First the pg_dumps a crashed predecessor left running: they would go on writing (and holding their
  // snapshot on the source) while their temp files are removed below.
  await children.reap();
  for (const projectId of await catalog.listProjects()) {
    const dir = path.join(catalog.root, projectId);
    const owed: string[] = [];
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      // Only the temp files of dump's own files (dump, manifest, state): a receipt replicate or verify is
      // writing at this moment is theirs to finish or clean up.
      const target = tempFileTarget(name);
      if (target && DUMP_WRITES.has(target.file)) await rm(path.join(dir, name), { force: true });
      if (parseCatalogName(name)?.file === 'state') owed.push(parseCatalogName(name)!.backupId);
    }
    for (const backupId of owed) {
      const entry = await catalog.get(projectId, backupId);
      if (entry?.state?.status !== 'running') continue;
      if (entry.manifest) {
        // Complete, but the process died before its created event was durable: owed, sent now.
        await announceCreated(rt, entry.manifest, entry.manifest.causationId).then(
          () =>
            log.warn(
              { projectId, backupId },
              'sent the created event of a backup completed just before a crash',
            ),
          () => undefined,
        );
        continue;
      }
      await rm(entry.paths.dump, { force: true });
      const error =
        'the dump process stopped before the backup completed (crash or restart); the partial file was removed';
      await catalog.writeState({
        ...entry.state,
        status: 'failed',
        updatedAt: new Date().toISOString(),
        reason: 'interrupted',
        error,
      });
      log.warn({ projectId, backupId }, 'marked an interrupted backup failed');
      // Whoever waits for this backup's outcome (a scheduler, the CLI) hears it ended; the dead process
      // never could say so. Enqueued before the outbox starts, delivered once it does.
      const hash = rt.registry.byId(projectId)?.hash;
      await rt.emit('flux.backup.failed', {
        subject: `${projectId}/${backupId}`,
        data: { projectId, ...(hash ? { projectHash: hash } : {}), backupId, reason: 'interrupted', error },
      });
    }
  }
}
