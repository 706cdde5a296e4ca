// Where each catalog file lives. Paths are only built from validated ids and are checked to stay under
// their root, so no request can name a file outside the backup roots.
import path from 'node:path';
import { TEMP_PREFIX } from '../atomic.js';
import { AppError } from '../errors.js';
import { parseBackupId, parseProjectId } from './ids.js';

export const SUFFIX = {
  dump: '.dump',
  manifest: '.manifest.json',
  offsite: '.offsite.json',
  verify: '.verify.json',
  /** verify's receipt for the offsite copy (each copy carries its own verification). */
  verifyOffsite: '.verify-offsite.json',
  state: '.state.json',
  /** The rotating re-hash's finding about the local dump (replicate, only while it does not match). */
  rehash: '.rehash.json',
} as const;
export type CatalogFile = keyof typeof SUFFIX;

export interface BackupPaths {
  dir: string;
  dump: string;
  manifest: string;
  offsite: string;
  verify: string;
  verifyOffsite: string;
  state: string;
  rehash: string;
}

function inside(root: string, candidate: string): string {
  const resolvedRoot = path.resolve(root);
  const resolved = path.resolve(candidate);
  if (resolved !== resolvedRoot && !resolved.startsWith(resolvedRoot + path.sep)) {
    throw new AppError('invalid_id', 'path escapes the backup root');
  }
  return resolved;
}

export function projectDir(root: string, projectId: string): string {
  return inside(root, path.join(root, parseProjectId(projectId)));
}

export function backupPaths(root: string, projectId: string, backupId: string): BackupPaths {
  const dir = projectDir(root, projectId);
  const id = parseBackupId(backupId);
  const at = (suffix: string) => inside(root, path.join(dir, `${id}${suffix}`));
  return {
    dir,
    dump: at(SUFFIX.dump),
    manifest: at(SUFFIX.manifest),
    offsite: at(SUFFIX.offsite),
    verify: at(SUFFIX.verify),
    verifyOffsite: at(SUFFIX.verifyOffsite),
    state: at(SUFFIX.state),
    rehash: at(SUFFIX.rehash),
  };
}

/**
 * The catalog file a temp file (`.tmp-<name>.<random>`, shared/atomic.ts) was going to become, if it is
 * one; its writer is the writer of that file (one writer per file).
 */
export function tempFileTarget(name: string): { backupId: string; file: CatalogFile } | undefined {
  if (!name.startsWith(TEMP_PREFIX)) return undefined;
  const rest = name.slice(TEMP_PREFIX.length);
  const dot = rest.lastIndexOf('.');
  return dot > 0 ? parseCatalogName(rest.slice(0, dot)) : undefined;
}

/** Splits a catalog file name into its backup id and kind; undefined for anything else (temp files too). */
export function parseCatalogName(name: string): { backupId: string; file: CatalogFile } | undefined {
  for (const [file, suffix] of Object.entries(SUFFIX) as Array<[CatalogFile, string]>) {
    if (name.endsWith(suffix)) {
      const id = name.slice(0, -suffix.length);
      try {
        return { backupId: parseBackupId(id), file };
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}
