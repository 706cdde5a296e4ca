// Offsite keys: the same relative names on every driver (`<projectId>/<backupId>.dump`), validated before
// any driver turns one into a path or a URL.
import { parseBackupId, parseProjectId } from '../catalog/ids.js';
import { SUFFIX } from '../catalog/layout.js';
import { AppError } from '../errors.js';

const SEGMENT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/;
const MAX_KEY_LENGTH = 1024;
const SHA256_RE = /^[0-9a-f]{64}$/;

/**
 * Throws unless `key` is relative, '/'-separated and made of plain segments. A segment never starts
 * with a dot, so `..`, hidden files and the drivers' temp files can never be named.
 */
export function assertKey(key: string): string {
  const segments = key.split('/');
  if (key.length === 0 || key.length > MAX_KEY_LENGTH || !segments.every((s) => SEGMENT_RE.test(s))) {
    throw new AppError(
      'invalid_id',
      `offsite key ${JSON.stringify(key.slice(0, 80))} is not a plain relative key`,
    );
  }
  return key;
}

/** A list prefix: `''`, a key, or a key-like string ending in '/'. */
export function assertPrefix(prefix: string): string {
  if (prefix === '') return prefix;
  assertKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
  return prefix;
}

export function assertSha256(value: string): string {
  if (!SHA256_RE.test(value))
    throw new AppError('bad_request', 'a sha256 must be 64 lowercase hex characters');
  return value;
}

export function dumpKeyOf(projectId: string, backupId: string): string {
  return `${parseProjectId(projectId)}/${parseBackupId(backupId)}${SUFFIX.dump}`;
}

export function manifestKeyOf(projectId: string, backupId: string): string {
  return `${parseProjectId(projectId)}/${parseBackupId(backupId)}${SUFFIX.manifest}`;
}
