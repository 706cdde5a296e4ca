// The run record of a restore under FLUX_STATE_DIR/restore/runs: written (atomically) before each step
// that changes a server, so a start after a crash knows what to finish or put back; and the receipt beside
// the backup (`<backupId>.restore.<restoreId>.json`) that says what was restored where, and how fast.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ensureDir, writeJsonAtomic } from '../../shared/atomic.js';
import { projectDir } from '../../shared/catalog/layout.js';
import { type Authenticity, authenticateRecord, tagRecord } from '../../shared/catalog/record-auth.js';
import { RungSchema } from '../../shared/catalog/records.js';
import { errnoOf, fsWriteError } from '../../shared/errors.js';
import { RESTORE_MODES, STAGES } from './plan.js';

const TargetChangesSchema = z.object({
  schema: z.string().optional(),
  authUsage: z.string().optional(),
  restoreLogin: z.string().optional(),
  authSchema: z.boolean().optional(),
  authUid: z.boolean().optional(),
  roles: z.array(z.string()),
  memberships: z.array(z.object({ role: z.string(), member: z.string() })),
});

export const RestoreRecordSchema = z.object({
  restoreId: z.string(),
  projectId: z.uuid(),
  slug: z.string(),
  backupId: z.string(),
  mode: z.enum(RESTORE_MODES),
  source: z.enum(['local', 'offsite']),
  engine: z.enum(['v1_dedicated', 'v2_shared']),
  status: z.enum(['running', 'completed', 'failed']),
  stage: z.enum(STAGES),
  startedAt: z.string(),
  updatedAt: z.string(),
  /** Where: `registry` (the project's own server) or the `env:NAME` of targetUrl. Never the URL. */
  targetRef: z.string(),
  /** The database the run works in (v2: the cluster's; v1 new: the created one). */
  database: z.string(),
  schema: z.string().optional(),
  /** mode new: the database this run creates (dropped on failure). */
  created: z.string().optional(),
  /** in_place v1: the staging database (dropped on failure). */
  staging: z.string().optional(),
  /** in_place: the live copy's name once set aside; put back on failure. */
  aside: z.string().optional(),
  /** What prepare created inside the database (roles, the restore login, schema auth). */
  changes: TargetChangesSchema.optional(),
  safetyBackupId: z.string().optional(),
  /** in_place, completed: the set-aside copy and when it is dropped. */
  previous: z
    .object({ kind: z.enum(['schema', 'database']), name: z.string(), dropAfter: z.string() })
    .optional(),
  previousDroppedAt: z.string().optional(),
  stages: z.array(z.object({ stage: z.enum(STAGES), seconds: z.number() })),
  rungs: z.array(RungSchema).optional(),
  /** in_place: seconds the tenant could not write (set aside → proven, or closed → switched). */
  writeUnavailableSeconds: z.number().optional(),
  bytes: z.number().optional(),
  reason: z.string().optional(),
  error: z.string().optional(),
  rolledBack: z.boolean().optional(),
});
export type RestoreRecord = z.infer<typeof RestoreRecordSchema>;

export interface RecordStore {
  save(record: RestoreRecord): Promise<void>;
  read(restoreId: string): Promise<RestoreRecord | undefined>;
  list(): Promise<RestoreRecord[]>;
}

const RESTORE_ID_RE = /^[0-9A-HJKMNP-TV-Z]{26}$/;

export function isRestoreId(value: string): boolean {
  return RESTORE_ID_RE.test(value);
}

export function createRecordStore(dir: string): RecordStore {
  const fileOf = (restoreId: string) => path.join(dir, `${restoreId}.json`);
  async function read(file: string): Promise<RestoreRecord | undefined> {
    try {
      const parsed = RestoreRecordSchema.safeParse(JSON.parse(await readFile(file, 'utf8')));
      return parsed.success ? parsed.data : undefined;
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return undefined;
      return undefined;
    }
  }
  return {
    async save(record) {
      record.updatedAt = new Date().toISOString();
      try {
        await ensureDir(dir);
        await writeJsonAtomic(fileOf(record.restoreId), record);
      } catch (error) {
        throw fsWriteError(error, dir, 'writing the restore run record under FLUX_STATE_DIR');
      }
    },
    async read(restoreId) {
      if (!isRestoreId(restoreId)) return undefined;
      return read(fileOf(restoreId));
    },
    async list() {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch {
        return [];
      }
      const out: RestoreRecord[] = [];
      for (const name of names.filter((n) => n.endsWith('.json') && !n.startsWith('.'))) {
        const record = await read(path.join(dir, name));
        if (record) out.push(record);
      }
      return out.sort((a, b) => b.restoreId.localeCompare(a.restoreId));
    },
  };
}

/** `<root>/<projectId>/<backupId>.restore.<restoreId>.json`: restore is the one writer of these. */
export function receiptPathOf(
  root: string,
  record: Pick<RestoreRecord, 'projectId' | 'backupId' | 'restoreId'>,
) {
  return path.join(projectDir(root, record.projectId), `${record.backupId}.restore.${record.restoreId}.json`);
}

/** Whether a restore receipt read back is the one restore wrote (record-auth.ts, FLUX_MANIFEST_SECRETS). */
export function authenticateRestoreReceipt(receipt: object, secrets: readonly string[]): Authenticity {
  return authenticateRecord('restore-receipt', undefined, receipt, secrets);
}

/** The receipt beside the backup, tagged under the first of `secrets` (FLUX_MANIFEST_SECRETS) when set. */
export async function writeReceipt(
  root: string,
  record: RestoreRecord,
  secrets: readonly string[] = [],
): Promise<string> {
  const file = receiptPathOf(root, record);
  try {
    await ensureDir(path.dirname(file));
    await writeJsonAtomic(file, tagRecord('restore-receipt', undefined, receiptOf(record), secrets));
  } catch (error) {
    throw fsWriteError(error, root, 'writing the restore receipt beside the backup');
  }
  return file;
}

function receiptOf(record: RestoreRecord) {
  return {
    receiptVersion: 1,
    restoreId: record.restoreId,
    projectId: record.projectId,
    slug: record.slug,
    backupId: record.backupId,
    mode: record.mode,
    source: record.source,
    status: record.status,
    startedAt: record.startedAt,
    finishedAt: record.updatedAt,
    target: {
      ref: record.targetRef,
      database: record.created ?? record.database,
      ...(record.schema ? { schema: record.schema } : {}),
    },
    seconds: record.stages.reduce((n, s) => n + s.seconds, 0),
    stages: record.stages,
    rungs: record.rungs ?? [],
    ...(record.safetyBackupId ? { safetyBackupId: record.safetyBackupId } : {}),
    ...(record.previous ? { previous: record.previous } : {}),
    ...(record.writeUnavailableSeconds !== undefined
      ? { writeUnavailableSeconds: record.writeUnavailableSeconds }
      : {}),
    ...(record.error ? { error: record.error, reason: record.reason, rolledBack: record.rolledBack } : {}),
  };
}
