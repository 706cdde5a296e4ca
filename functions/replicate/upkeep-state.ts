// What replicate's upkeep remembers across restarts, under FLUX_STATE_DIR/replicate/upkeep.json (written
// atomically): when each retained copy was last proven by reading it, and what it knew of each backup
// while the backup was still local (creation time, hash, restore verification), which offsite retention
// needs once local retention has removed the local files.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ensureDir, writeJsonAtomic } from '../../shared/atomic.js';
import { errnoOf } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';

export const UPKEEP_STATE_FILE = path.join('replicate', 'upkeep.json');

const RESTORE = z.enum(['pending', 'restore_verified', 'restore_failed', 'unverifiable', 'skipped']);

const StateSchema = z.object({
  version: z.literal(1),
  /** By copy id (rotation.ts copyId). */
  copies: z.record(z.string(), z.object({ provenAt: z.number(), ok: z.boolean() })),
  /** By `<projectId>/<backupId>`. */
  backups: z.record(
    z.string(),
    z.object({
      createdAt: z.string(),
      sha256: z.string(),
      sizeBytes: z.number(),
      restore: RESTORE,
    }),
  ),
});
export type UpkeepState = z.infer<typeof StateSchema>;

export const emptyUpkeepState = (): UpkeepState => ({ version: 1, copies: {}, backups: {} });

export async function loadUpkeepState(stateDir: string, log: Logger): Promise<UpkeepState> {
  const file = path.join(stateDir, UPKEEP_STATE_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if (errnoOf(error) !== 'ENOENT') log.warn({ err: error, file }, 'could not read the upkeep state');
    return emptyUpkeepState();
  }
  try {
    return StateSchema.parse(JSON.parse(text));
  } catch {
    // Only a schedule is lost: every copy counts as proven when it was made, and the rotation goes on.
    log.warn({ file }, 'the upkeep state is unreadable; the rotation starts from the copies’ own dates');
    return emptyUpkeepState();
  }
}

export async function saveUpkeepState(stateDir: string, state: UpkeepState): Promise<void> {
  const file = path.join(stateDir, UPKEEP_STATE_FILE);
  await ensureDir(path.dirname(file));
  await writeJsonAtomic(file, state);
}
