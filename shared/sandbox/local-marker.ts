// A local sandbox directory: its name, its layout, and the marker in it saying whose it is and what it is
// for (the driver writes it, the reaper and the tests read it).
import { randomInt } from 'node:crypto';
import { rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** Prefix of every local sandbox directory (the reaper only ever touches these). */
export const LOCAL_SANDBOX_PREFIX = 'flux-verify-';
/** A sandbox directory while it is being made (before its marker is in). */
export const STAGING_PREFIX = `.${LOCAL_SANDBOX_PREFIX}`;
/** The file in each directory saying whose it is and what it is for. */
export const LOCAL_MARKER = 'sandbox.json';

/**
 * `template`: the initdb output sandboxes are copied from (never started); `spare`: a started sandbox no
 * verification holds yet; `active`: a verification's sandbox, with the expiry after which it is a leftover.
 */
export type MarkerState = 'template' | 'spare' | 'active';

export interface LocalMarker {
  ownerPid: number;
  /** The process that runs the server (its boundary's wrapper), once started. */
  serverPid?: number;
  state: MarkerState;
  createdAt: string;
  expiresAt: string | null;
  projectId?: string;
  backupId?: string;
}

/** The paths inside one sandbox directory. */
export interface PreparedDir {
  dir: string;
  data: string;
  socket: string;
  input: string;
  log: string;
}

export function preparedDir(dir: string): PreparedDir {
  return {
    dir,
    data: path.join(dir, 'data'),
    socket: path.join(dir, 'sock'),
    input: path.join(dir, 'in'),
    log: path.join(dir, 'postgres.log'),
  };
}

/** Rewritten in place by rename: a reaper (or anyone) reading it never sees half a marker. */
export async function writeMarker(dir: string, marker: LocalMarker): Promise<void> {
  const tmp = path.join(dir, `.${LOCAL_MARKER}.${process.pid}.${randomInt(1e9)}`);
  await writeFile(tmp, `${JSON.stringify(marker)}\n`, { mode: 0o600 });
  await rename(tmp, path.join(dir, LOCAL_MARKER));
}
