// Id validation: every id is checked against its exact form before any path is built from it.
import { monotonicFactory } from 'ulid';
import { AppError } from '../errors.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ULID_RE = /^[0-9A-HJKMNP-TV-Z]{26}$/;
const HASH_RE = /^[0-9a-f]{7}$/;
const SLUG_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export const isUuid = (value: string): boolean => UUID_RE.test(value);
export const isUlid = (value: string): boolean => ULID_RE.test(value);
export const isBackupId = (value: string): boolean => isUuid(value) || isUlid(value);
export const isProjectHash = (value: string): boolean => HASH_RE.test(value);
export const isSlug = (value: string): boolean => SLUG_RE.test(value);

function shown(value: unknown): string {
  const s = typeof value === 'string' ? value : String(value);
  return JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}…` : s);
}

export function parseProjectId(value: unknown): string {
  if (typeof value === 'string' && isUuid(value)) return value;
  throw new AppError('invalid_id', `projectId ${shown(value)} is not a lowercase UUID`);
}

export function parseBackupId(value: unknown): string {
  if (typeof value === 'string' && isBackupId(value)) return value;
  throw new AppError('invalid_id', `backupId ${shown(value)} is not a ULID or lowercase UUID`);
}

/** What a declared cluster may be called; a v1 project's own cluster is `dedicated:<slug>`. */
export const CLUSTER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function parseClusterName(value: unknown): string {
  if (typeof value === 'string') {
    const own = value.startsWith('dedicated:') ? value.slice('dedicated:'.length) : undefined;
    if (own === undefined ? CLUSTER_NAME_RE.test(value) : CLUSTER_NAME_RE.test(own)) return value;
  }
  throw new AppError(
    'invalid_id',
    `cluster name ${shown(value)} is not a cluster name (letters, digits, . _ -; dedicated:<slug> for a v1 project's own)`,
  );
}

export function parseProjectHash(value: unknown): string {
  if (typeof value === 'string' && isProjectHash(value)) return value;
  throw new AppError('invalid_id', `project hash ${shown(value)} is not 7 lowercase hex characters`);
}

const nextUlid = monotonicFactory();

/** New backup ids are ULIDs: sortable by creation time, so "newest" needs no clock comparison. */
export function newBackupId(now: number = Date.now()): string {
  return nextUlid(now);
}

/** `t_` + first 12 hex of the project UUID without dashes + `_api`. */
export function shortIdOf(projectId: string): string {
  return parseProjectId(projectId).replaceAll('-', '').slice(0, 12);
}

export function tenantSchemaOf(projectId: string): string {
  return `t_${shortIdOf(projectId)}_api`;
}

export function tenantRoleOf(projectId: string): string {
  return `t_${shortIdOf(projectId)}_role`;
}
