// Finds and removes abandoned local sandboxes: directories whose marker names an owner process that died
// or an expiry that passed, and directories without a marker (or still under their staging name) older
// than a grace. A leftover's server is stopped before its directory and cgroups go.
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import { MINUTE_MS, SECOND_MS } from '../units.js';
import type { Boundary } from './boundary.js';
import { LOCAL_MARKER, LOCAL_SANDBOX_PREFIX, type LocalMarker, STAGING_PREFIX } from './local-marker.js';

/** A directory without a marker younger than this may be one being created right now. */
const UNMARKED_GRACE_MS = 10 * MINUTE_MS;
/** A leftover's server gets this long after SIGQUIT before it is killed. */
const LEFTOVER_STOP_WAIT_MS = 10 * SECOND_MS;

export interface LocalReaperOptions {
  /** Parent of the sandbox directories. */
  baseDir: string;
  boundary: Pick<Boundary, 'releaseLeftover'>;
  log?: Logger | undefined;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errnoOf(error) === 'EPERM';
  }
}

/** Whether a sandbox directory is a leftover at `now` (one of this process's own only when active and expired). */
function isStale(marker: LocalMarker | undefined, mtimeMs: number | undefined, now: Date): boolean {
  if (!marker) return mtimeMs !== undefined && now.getTime() - mtimeMs > UNMARKED_GRACE_MS;
  const isExpired = marker.expiresAt !== null && Date.parse(marker.expiresAt) < now.getTime();
  // Our own template and spares (ready or starting) are not leftovers; an active one we no longer track is.
  if (marker.ownerPid === process.pid) return marker.state === 'active' && isExpired;
  return !pidAlive(marker.ownerPid) || isExpired;
}

async function removeLeftover(dir: string, marker: LocalMarker | undefined): Promise<void> {
  // Inside the boundary the postmaster's pid is one of its own namespace: the wrapper's, recorded in
  // the marker, is the one to stop (its death ends the namespace). Without a boundary, postmaster.pid.
  const pidFile = path.join(dir, 'data', 'postmaster.pid');
  const pid = marker?.serverPid ?? Number((await readFile(pidFile, 'utf8').catch(() => '')).split('\n')[0]);
  if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) {
    // Only a postmaster serving this very directory is signalled (pids get reused).
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(path.join(dir, 'data'))) {
      process.kill(pid, 'SIGQUIT');
      const deadline = Date.now() + LEFTOVER_STOP_WAIT_MS;
      while (pidAlive(pid) && Date.now() < deadline) await sleep(25);
      if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    }
  }
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

/** Removes the leftovers under `baseDir` (never one of `ours`); returns how many sandboxes went. */
export async function reapLocalSandboxes(
  options: LocalReaperOptions,
  ours: ReadonlySet<string>,
  now: Date,
): Promise<number> {
  const { baseDir, boundary, log } = options;
  let names: string[];
  try {
    names = await readdir(baseDir);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const name of names) {
    const dir = path.join(baseDir, name);
    if (name.startsWith(STAGING_PREFIX)) {
      // A directory being made right now, or one a crash left before its rename.
      const s = await stat(dir).catch(() => undefined);
      if (s && now.getTime() - s.mtimeMs > UNMARKED_GRACE_MS)
        await rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined);
      continue;
    }
    if (!name.startsWith(LOCAL_SANDBOX_PREFIX)) continue;
    if (ours.has(dir)) continue;
    let marker: LocalMarker | undefined;
    try {
      marker = JSON.parse(await readFile(path.join(dir, LOCAL_MARKER), 'utf8')) as LocalMarker;
    } catch {
      marker = undefined;
    }
    const mtimeMs = marker ? undefined : (await stat(dir).catch(() => undefined))?.mtimeMs;
    if (!isStale(marker, mtimeMs, now)) continue;
    try {
      await removeLeftover(dir, marker);
      await boundary.releaseLeftover(name);
      // A dead process's template is its cache, not a sandbox: removed, not counted.
      if (marker?.state !== 'template') {
        removed += 1;
        log?.warn({ dir, backupId: marker?.backupId }, 'removed a leftover local sandbox');
      }
    } catch (error) {
      log?.warn({ err: error, dir }, 'could not remove a leftover local sandbox');
    }
  }
  return removed;
}
