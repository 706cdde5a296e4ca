// Schemas of the catalog's files: the manifest (written by dump, last), the in-flight/failed state
// (dump), the offsite receipt and the re-hash finding (replicate) and the verify receipt (verify). One
// writer per file.
import { z } from 'zod';
import { RecordAuthSchema } from './record-auth.js';

const sha256 = z.string().regex(/^[0-9a-f]{64}$/);
const isoTime = z.string();

export const BACKUP_KINDS = ['project_db', 'tenant_export'] as const;

export const TableCountSchema = z.object({
  schema: z.string(),
  name: z.string(),
  rows: z.number().int().nonnegative(),
});
export const SequenceValueSchema = z.object({
  schema: z.string(),
  name: z.string(),
  lastValue: z.string().nullable(),
  isCalled: z.boolean(),
});

export const ManifestSchema = z.object({
  manifestVersion: z.literal(1),
  backupId: z.string(),
  projectId: z.uuid(),
  projectHash: z.string(),
  slug: z.string(),
  kind: z.enum(BACKUP_KINDS),
  format: z.literal('custom'),
  file: z.string(),
  sizeBytes: z.number().int().nonnegative(),
  sha256,
  createdAt: isoTime,
  completedAt: isoTime,
  source: z.object({
    engine: z.enum(['v1_dedicated', 'v2_shared']),
    cluster: z.string().optional(),
    host: z.string(),
    port: z.number().int(),
    database: z.string(),
    systemIdentifier: z.string(),
    serverVersion: z.string(),
    serverVersionNum: z.number().int(),
  }),
  pgDump: z.object({ version: z.string(), major: z.number().int(), flags: z.array(z.string()) }),
  snapshot: z.object({ id: z.string(), isolation: z.literal('repeatable read'), takenAt: isoTime }),
  schemas: z.array(z.string()),
  tables: z.array(TableCountSchema),
  sequences: z.array(SequenceValueSchema),
  extensions: z
    .array(z.object({ name: z.string(), version: z.string(), schema: z.string().optional() }))
    .default([]),
  roles: z.array(z.string()).default([]),
  causationId: z.string().optional(),
  /** HMAC-SHA256 tag over the rest (record-auth.ts), present when dump had FLUX_MANIFEST_SECRETS. */
  auth: RecordAuthSchema.optional(),
});
export type Manifest = z.infer<typeof ManifestSchema>;

export const BackupStateSchema = z.object({
  backupId: z.string(),
  projectId: z.uuid(),
  kind: z.enum(BACKUP_KINDS),
  status: z.enum(['running', 'failed']),
  createdAt: isoTime,
  updatedAt: isoTime,
  pid: z.number().int().optional(),
  reason: z.string().optional(),
  error: z.string().optional(),
});
export type BackupState = z.infer<typeof BackupStateSchema>;

export const OffsiteReceiptSchema = z.object({
  backupId: z.string(),
  projectId: z.uuid(),
  status: z.enum(['replicated', 'failed', 'conflict']),
  store: z.string(),
  key: z.string(),
  /** Hash of the destination, re-read after the copy; equals the manifest's when replicated. */
  contentSha256: sha256.optional(),
  sizeBytes: z.number().int().nonnegative().optional(),
  manifestSha256: sha256,
  attempts: z.number().int().nonnegative(),
  at: isoTime,
  lagSeconds: z.number().optional(),
  reason: z.string().optional(),
  error: z.string().optional(),
  /**
   * Set when the stored object is age-encrypted: `contentSha256`/`sizeBytes` are then the plaintext's
   * (proven equal to the manifest's while it was encrypted), these are the stored object's (proven by
   * re-reading it), and `recipients` are the public keys it was encrypted to (empty: not known, a copy
   * found encrypted and proven by decrypting it).
   */
  encryption: z
    .object({
      format: z.literal('age'),
      recipients: z.array(z.string()),
      storedSha256: sha256,
      storedSizeBytes: z.number().int().nonnegative(),
    })
    .optional(),
  /** HMAC-SHA256 tag over the rest (record-auth.ts), present when its writer had FLUX_MANIFEST_SECRETS. */
  auth: RecordAuthSchema.optional(),
});
export type OffsiteReceipt = z.infer<typeof OffsiteReceiptSchema>;

/**
 * replicate's rotating re-hash found the local dump not matching its manifest: what it read, and the
 * file's size and mtime at that moment. Every catalog takes it as the dump's hash while the file keeps
 * that size and mtime (a flipped byte keeps both, so no size+mtime cache would notice); replicate
 * removes it when a later re-hash matches again.
 */
export const RehashRecordSchema = z.object({
  backupId: z.string(),
  projectId: z.uuid(),
  manifestSha256: sha256,
  /** What the re-hash read. */
  foundSha256: sha256,
  sizeBytes: z.number().int().nonnegative(),
  mtimeMs: z.number(),
  at: isoTime,
  /** HMAC-SHA256 tag over the rest (record-auth.ts), present when its writer had FLUX_MANIFEST_SECRETS. */
  auth: RecordAuthSchema.optional(),
});
export type RehashRecord = z.infer<typeof RehashRecordSchema>;

export const RUNG_NAMES = [
  'artifact',
  'archive',
  'restore',
  'structure',
  'volume',
  'sequences',
  'integrity',
] as const;
export type RungName = (typeof RUNG_NAMES)[number];
export const RUNG_RESULTS = ['passed', 'failed', 'could_not_verify', 'not_applicable'] as const;
export type RungResult = (typeof RUNG_RESULTS)[number];

export const RungSchema = z.object({
  rung: z.enum(RUNG_NAMES),
  result: z.enum(RUNG_RESULTS),
  code: z.string(),
  message: z.string().optional(),
  seconds: z.number().nonnegative(),
  details: z.record(z.string(), z.unknown()).optional(),
});
export type Rung = z.infer<typeof RungSchema>;

export const VERIFY_OUTCOMES = ['restore_verified', 'restore_failed', 'unverifiable'] as const;
export type VerifyOutcome = (typeof VERIFY_OUTCOMES)[number];

export const VerifyReceiptSchema = z.object({
  backupId: z.string(),
  projectId: z.uuid(),
  status: z.enum(VERIFY_OUTCOMES),
  /** The manifest hash this verification was about. */
  sha256,
  source: z.enum(['local', 'offsite']).default('local'),
  driver: z.string(),
  image: z.string().optional(),
  versions: z.record(z.string(), z.string()).default({}),
  rungs: z.array(RungSchema),
  stages: z.record(z.string(), z.number()),
  startedAt: isoTime,
  finishedAt: isoTime,
  seconds: z.number(),
  reason: z.string().optional(),
  error: z.string().optional(),
  /** HMAC-SHA256 tag over the rest (record-auth.ts), present when its writer had FLUX_MANIFEST_SECRETS. */
  auth: RecordAuthSchema.optional(),
});
export type VerifyReceipt = z.infer<typeof VerifyReceiptSchema>;
