// Pure rules of a restore: the request's shape, the names it creates (the restored database, the live
// copy set aside, the staging database), the stages of each mode and engine, and what a plan says.
// Plain functions over data, unit-tested beside this file.
import { z } from 'zod';
import type { Manifest } from '../../shared/catalog/records.js';
import type { Project } from '../../shared/registry.js';

export const RESTORE_MODES = ['new', 'in_place'] as const;
export type RestoreMode = (typeof RESTORE_MODES)[number];

/** Postgres truncates identifiers to 63 bytes (NAMEDATALEN - 1); ours never reach it silently. */
export const MAX_IDENTIFIER_BYTES = 63;
const IDENTIFIER_RE = /^[a-z_][a-z0-9_]*$/;
const ENV_REF_RE = /^env:[A-Za-z_][A-Za-z0-9_]*$/;

export const RestoreBodySchema = z
  .object({
    mode: z.enum(RESTORE_MODES).default('new'),
    source: z.enum(['local', 'offsite']).default('local'),
    /** Another server to restore into: only as `env:NAME`, so no connection string travels in a request. */
    targetUrl: z
      .string()
      .regex(
        ENV_REF_RE,
        'targetUrl must be env:NAME (the variable holding the URL, set in the restore process)',
      )
      .optional(),
    /** mode new: the name of the database to create (default `<base>_restored_<yyyymmddhhmm>`). */
    targetName: z
      .string()
      .max(MAX_IDENTIFIER_BYTES)
      .regex(IDENTIFIER_RE, 'targetName must be a plain lower-case identifier (a-z, 0-9, _)')
      .optional(),
    dryRun: z.boolean().default(false),
    yes: z.boolean().default(false),
    skipBackupCheck: z.boolean().default(false),
    /** in_place: send the drain signal with flux.restore.started (default true). */
    lockWrites: z.boolean().default(true),
  })
  .strict();
export type RestoreBody = z.output<typeof RestoreBodySchema>;

/** yyyymmddhhmm in UTC. */
export function stampOf(at: Date): string {
  return at.toISOString().replace(/[-:T]/g, '').slice(0, 12);
}

function fitName(base: string, suffix: string): string {
  const room = MAX_IDENTIFIER_BYTES - Buffer.byteLength(suffix);
  return `${Buffer.from(base)
    .subarray(0, room)
    .toString()
    .replace(/\uFFFD+$/, '')}${suffix}`;
}

/** The short, lower-case tag of a restore id used in the names it creates. */
export function tagOf(restoreId: string): string {
  return restoreId.slice(-8).toLowerCase();
}

/** mode new: the database created beside the live one. */
export function restoredNameOf(base: string, at: Date): string {
  return fitName(base, `_restored_${stampOf(at)}`);
}

/** in_place: the name the live copy is set aside under (a schema for v2, a database for v1). */
export function asideNameOf(live: string, restoreId: string): string {
  return fitName(live, `_prev_${tagOf(restoreId)}`);
}

/** in_place v1: the database the backup is restored and proven in before the switch. */
export function stagingNameOf(live: string, restoreId: string): string {
  return fitName(live, `_restoring_${tagOf(restoreId)}`);
}

export const STAGES = [
  'plan',
  'gate',
  'fetch',
  'safety_backup',
  'set_aside',
  'prepare',
  'restore',
  'validate',
  'switch',
  'done',
] as const;
export type Stage = (typeof STAGES)[number];

/** The stages a run passes, in order. */
export function stagesOf(mode: RestoreMode, engine: Project['engine']): Stage[] {
  if (mode === 'new') return ['plan', 'fetch', 'prepare', 'restore', 'validate', 'done'];
  return engine === 'v2_shared'
    ? ['plan', 'gate', 'fetch', 'safety_backup', 'set_aside', 'prepare', 'restore', 'validate', 'done']
    : ['plan', 'gate', 'fetch', 'safety_backup', 'prepare', 'restore', 'validate', 'switch', 'done'];
}

export interface PlanInput {
  mode: RestoreMode;
  engine: Project['engine'];
  slug: string;
  /** The live database (v1) or the cluster's database holding the schema (v2). */
  liveDatabase: string;
  schema?: string | undefined;
  /** The database a mode-new restore creates. */
  newDatabase?: string | undefined;
  aside?: string | undefined;
  staging?: string | undefined;
  keepPreviousHours: number;
  lockWrites: boolean;
}

/** What the run will do, in words an operator reads before saying yes. */
export function planSteps(input: PlanInput): string[] {
  const { mode, engine } = input;
  if (mode === 'new') {
    return [
      `create database ${input.newDatabase}${engine === 'v2_shared' ? ` holding schema ${input.schema}` : ''}`,
      'restore the backup into it as the tenant role (pg_restore --no-owner --role)',
      'prove it against the manifest: structure, every table’s rows, every sequence',
      'leave the live data untouched',
    ];
  }
  const keep =
    input.keepPreviousHours > 0
      ? `keep ${input.aside} for ${input.keepPreviousHours} h (FLUX_RESTORE_KEEP_PREVIOUS_HOURS), then drop it`
      : `drop ${input.aside} once the restore is proven (FLUX_RESTORE_KEEP_PREVIOUS_HOURS=0)`;
  const common = [
    'check the backup gate (artifact valid and restore-verified, the project fresh) unless skipBackupCheck',
    'read the backup and prove it against the manifest (sha256 while streaming for an offsite copy)',
    `take a safety backup of the live state through dump (it undoes this restore)`,
  ];
  const drain = input.lockWrites ? ' with the drain signal (lockWrites)' : '';
  if (engine === 'v2_shared') {
    return [
      ...common,
      `emit flux.restore.started${drain}`,
      `rename the live schema ${input.schema} to ${input.aside} (writes to the tenant fail from here)`,
      `restore schema ${input.schema} as the tenant role, carry the grants of ${input.aside} over`,
      'prove it against the manifest; on any failure drop it and rename the live schema back',
      keep,
    ];
  }
  return [
    ...common,
    `restore into database ${input.staging} as the database owner, prove it against the manifest`,
    `emit flux.restore.started${drain}`,
    `close ${input.liveDatabase} to connections, then rename ${input.liveDatabase} to ${input.aside} and ${input.staging} to ${input.liveDatabase} in one transaction`,
    keep,
  ];
}

/** The manifest's totals, for plans, receipts and events. */
export function totalsOf(manifest: Pick<Manifest, 'tables' | 'sequences' | 'sizeBytes'>) {
  return {
    tables: manifest.tables.length,
    rows: manifest.tables.reduce((n, t) => n + t.rows, 0),
    sequences: manifest.sequences.length,
    sizeBytes: manifest.sizeBytes,
  };
}
