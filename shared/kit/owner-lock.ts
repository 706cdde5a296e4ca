// One owner per function per directory: a lock file per function name in FLUX_STATE_DIR and in the backup
// root, taken before a process touches either, so a second process of the same function (or a second
// all-in-one) refuses to start instead of recovering, sweeping or writing under the first one's feet.
import { randomBytes } from 'node:crypto';
import { readFileSync, unlinkSync } from 'node:fs';
import { link, mkdir, open, readFile, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir } from '../atomic.js';
import type { Config, FunctionName } from '../config.js';
import { AppError, errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import { SECOND_MS } from '../units.js';
import {
  currentIdentity,
  lookupPid,
  type PidLookup,
  type ProcessIdentity,
  procStat,
  readOr,
} from './process-identity.js';

/** How often a held lock's mtime is refreshed (the heartbeat another pid namespace judges it by). */
export const OWNER_HEARTBEAT_MS = 10 * SECOND_MS;
/** A lock whose holder this process cannot see (another host or pid namespace) is stale after this. */
export const OWNER_STALE_MS = 6 * OWNER_HEARTBEAT_MS;
/** A take-over guard older than this was left by a process that crashed while taking over. */
const TAKEOVER_GUARD_STALE_MS = 10 * SECOND_MS;

/**
 * Functions that never write FLUX_BACKUPS_LOCAL_DIR (compose mounts no backup volume into probe). Every
 * other function, a new one included, takes the backup root's lock as well as the state dir's.
 */
const WITHOUT_BACKUP_ROOT: ReadonlySet<FunctionName> = new Set(['probe']);

/** Who holds a lock: enough to tell, from the same or another process, whether that holder still runs. */
export interface OwnerRecord {
  fn: FunctionName;
  pid: number;
  host: string;
  /** /proc/sys/kernel/random/boot_id: a pid means the same process only within one boot… */
  bootId: string | null;
  /** …and one pid namespace (a container restart gets a new one, with the same hostname). */
  pidNamespace: string | null;
  /** Field 22 of /proc/<pid>/stat (clock ticks after boot): a reused pid has another start time. */
  startTicks: string | null;
  startedAt: string;
  nonce: string;
}

export type Verdict = { live: true; why: string } | { live: false; why: string };

/**
 * Whether the holder of a lock still runs. Same boot and pid namespace: the pid is checked directly (dead,
 * a zombie, or a different start time means stale). Same host name but another boot: the host rebooted.
 * Anything else (another host sharing the volume, another container): the holder's heartbeat decides.
 */
export function judgeHolder(
  holder: OwnerRecord | undefined,
  self: ProcessIdentity,
  lookup: PidLookup,
  ageMs: number,
): Verdict {
  if (!holder) {
    return ageMs > OWNER_STALE_MS
      ? { live: false, why: 'unreadable and not refreshed' }
      : { live: true, why: 'an unreadable lock file refreshed recently' };
  }
  const sameNamespace =
    holder.bootId !== null &&
    holder.bootId === self.bootId &&
    holder.pidNamespace !== null &&
    holder.pidNamespace === self.pidNamespace;
  if (sameNamespace) {
    const now = lookup(holder.pid);
    if (!now) return { live: false, why: `pid ${holder.pid} is not running` };
    if (holder.startTicks !== null && now.startTicks !== null && now.startTicks !== holder.startTicks)
      return { live: false, why: `pid ${holder.pid} is another process now` };
    return { live: true, why: 'running' };
  }
  if (
    holder.host === self.host &&
    holder.bootId !== null &&
    self.bootId !== null &&
    holder.bootId !== self.bootId
  )
    return { live: false, why: 'the host rebooted since' };
  return ageMs > OWNER_STALE_MS
    ? { live: false, why: `not refreshed for ${Math.round(ageMs / SECOND_MS)} s` }
    : { live: true, why: `refreshed ${Math.round(ageMs / SECOND_MS)} s ago` };
}

export function parseOwnerRecord(raw: string): OwnerRecord | undefined {
  try {
    const value = JSON.parse(raw) as Partial<OwnerRecord>;
    if (typeof value.pid !== 'number' || typeof value.host !== 'string' || typeof value.fn !== 'string')
      return undefined;
    return {
      fn: value.fn,
      pid: value.pid,
      host: value.host,
      bootId: value.bootId ?? null,
      pidNamespace: value.pidNamespace ?? null,
      startTicks: value.startTicks ?? null,
      startedAt: value.startedAt ?? '',
      nonce: value.nonce ?? '',
    };
  } catch {
    return undefined;
  }
}

export interface OwnerLockTarget {
  fn: FunctionName;
  /** The variable the directory comes from (the refusal names it). */
  variable: 'FLUX_STATE_DIR' | 'FLUX_BACKUPS_LOCAL_DIR';
  dir: string;
  file: string;
}

/**
 * The locks a process running `fns` takes. The backup root's lock lives in the root itself, not in the
 * state dir keyed by its path: two processes with different state dirs on one root are refused too, and
 * a root mounted at different paths (containers) is still one root. Its dot-name is no project id, so the
 * catalog, the dump recovery, the replicate watcher and reconcile (which read only UUID names) skip it.
 */
export function ownerLockTargets(config: Config, fns: readonly FunctionName[]): OwnerLockTarget[] {
  return fns.flatMap((fn): OwnerLockTarget[] => [
    {
      fn,
      variable: 'FLUX_STATE_DIR',
      dir: config.FLUX_STATE_DIR,
      file: path.join(config.FLUX_STATE_DIR, 'owners', `${fn}.lock`),
    },
    ...(WITHOUT_BACKUP_ROOT.has(fn)
      ? []
      : [
          {
            fn,
            variable: 'FLUX_BACKUPS_LOCAL_DIR' as const,
            dir: config.FLUX_BACKUPS_LOCAL_DIR,
            file: path.join(config.FLUX_BACKUPS_LOCAL_DIR, `.flux-owner-${fn}.lock`),
          },
        ]),
  ]);
}

export interface OwnerLocks {
  readonly files: readonly string[];
  /** Removes the lock files this process still holds (idempotent; also runs on process exit). */
  release(): void;
}

export interface AcquireOptions {
  log?: Logger;
  identity?: ProcessIdentity;
  lookup?: PidLookup;
  /** Refresh the held locks' mtime every OWNER_HEARTBEAT_MS (off in unit tests). */
  heartbeat?: boolean;
  /** Remove the held locks when the process exits (off in unit tests). */
  releaseOnExit?: boolean;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function writeDurable(file: string, data: string): Promise<void> {
  const handle = await open(file, 'wx', 0o644);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readHolder(file: string): Promise<{ raw: string; ageMs: number } | undefined> {
  try {
    const [raw, s] = await Promise.all([readFile(file, 'utf8'), stat(file)]);
    return { raw, ageMs: Date.now() - s.mtimeMs };
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return undefined;
    throw error;
  }
}

/**
 * Removes a stale lock, but only the one that was judged: under an O_EXCL guard, and only if it still
 * holds the same bytes. Without the guard, a second newcomer that judged the same stale file could remove
 * the lock the first newcomer has just taken. False when another process is taking over right now.
 */
async function removeStale(file: string, judged: string): Promise<boolean> {
  const guard = `${file}.takeover`;
  try {
    await (await open(guard, 'wx', 0o644)).close();
  } catch (error) {
    if (errnoOf(error) !== 'EEXIST') throw error;
    const age = Date.now() - ((await stat(guard).catch(() => undefined))?.mtimeMs ?? Date.now());
    if (age > TAKEOVER_GUARD_STALE_MS) await rm(guard, { force: true });
    return false;
  }
  try {
    const now = await readFile(file, 'utf8').catch(() => undefined);
    if (now === judged) await rm(file, { force: true });
    return true;
  } finally {
    await rm(guard, { force: true });
  }
}

function refusal(target: OwnerLockTarget, holder: OwnerRecord | undefined, verdict: Verdict): AppError {
  const who = holder
    ? `${holder.fn} process pid ${holder.pid} on host ${holder.host}${holder.startedAt ? ` (since ${holder.startedAt})` : ''}`
    : 'a process that left an unreadable lock';
  const crashed =
    verdict.why === 'running'
      ? 'a crashed holder is detected and taken over at the next start'
      : `if that process is gone, its lock is taken over once it is ${OWNER_STALE_MS / SECOND_MS} s old, or remove ${target.file}`;
  return new AppError(
    'conflict',
    `${target.variable}=${target.dir} is in use by ${who}; lock ${target.file}: stop that process, or give this ` +
      `one its own ${target.variable} (${crashed})`,
    { details: { lock: target.file, holder } },
  );
}

function notWritable(target: OwnerLockTarget, error: unknown): AppError {
  return new AppError(
    'dir_not_writable',
    `${target.variable}=${target.dir} is not writable by this process (uid ${process.getuid?.() ?? '?'}, ` +
      `${errnoOf(error) ?? String(error)} on ${target.file}): chown it to the uid the process runs as (1001 in the image), then start again`,
    { cause: error },
  );
}

async function acquireOne(
  target: OwnerLockTarget,
  self: ProcessIdentity,
  lookup: PidLookup,
): Promise<OwnerRecord> {
  const dir = path.dirname(target.file);
  await mkdir(dir, { recursive: true });
  const record: OwnerRecord = {
    fn: target.fn,
    pid: self.pid,
    host: self.host,
    bootId: self.bootId,
    pidNamespace: self.pidNamespace,
    startTicks: procStat(self.pid)?.startTicks ?? null,
    startedAt: new Date().toISOString(),
    nonce: randomBytes(8).toString('hex'),
  };
  // A lock file, not flock(2) (Node has none, and a file names its holder): written whole, then link()ed
  // into place, which fails when the name exists (O_EXCL semantics), so a reader never sees half a lock.
  const tmp = `${target.file}.${self.pid}.${record.nonce}.new`;
  await writeDurable(tmp, `${JSON.stringify(record)}\n`);
  try {
    for (let attempt = 0; attempt < 20; attempt += 1) {
      try {
        await link(tmp, target.file);
        await fsyncDir(dir);
        return record;
      } catch (error) {
        if (errnoOf(error) !== 'EEXIST') throw error;
      }
      const held = await readHolder(target.file);
      if (!held) continue;
      const holder = parseOwnerRecord(held.raw);
      const verdict = judgeHolder(holder, self, lookup, held.ageMs);
      if (verdict.live) throw refusal(target, holder, verdict);
      if (!(await removeStale(target.file, held.raw))) await sleep(50);
    }
    throw new AppError('conflict', `could not take ${target.file}: other processes keep taking it over`);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Whether a failure to write the lock means this process cannot write that directory at all. */
const CANNOT_WRITE = new Set(['EACCES', 'EPERM', 'EROFS', 'ENOSPC', 'EDQUOT']);

/**
 * Takes every lock of `fns` or none: the first one held by a live process stops start-up with one line
 * naming the directory, the holder and what to do. A stale one (its holder crashed) is taken over. A
 * backup root this process cannot write is left unlocked with a warning: such a process writes nothing
 * there either (its /readyz says why), so it cannot be the second writer.
 */
export async function acquireOwnerLocks(
  config: Config,
  fns: readonly FunctionName[],
  options: AcquireOptions = {},
): Promise<OwnerLocks> {
  const self = options.identity ?? currentIdentity();
  const lookup = options.lookup ?? lookupPid;
  const held: Array<{ file: string; nonce: string }> = [];
  let released = false;
  let timer: NodeJS.Timeout | undefined;
  const release = () => {
    if (released) return;
    released = true;
    clearInterval(timer);
    process.off('exit', release);
    for (const { file, nonce } of held.reverse()) {
      // Only our own lock: a holder that took it over after a missed heartbeat keeps its lock.
      const mine = readOr(() => parseOwnerRecord(readFileSync(file, 'utf8'))?.nonce === nonce, false);
      if (mine) readOr(() => unlinkSync(file), undefined);
    }
  };
  try {
    for (const target of ownerLockTargets(config, fns)) {
      try {
        held.push({ file: target.file, nonce: (await acquireOne(target, self, lookup)).nonce });
      } catch (error) {
        const errno = errnoOf(error);
        if (errno === undefined || !CANNOT_WRITE.has(errno)) throw error;
        if (target.variable === 'FLUX_STATE_DIR') throw notWritable(target, error);
        options.log?.warn(
          { fn: target.fn, dir: target.dir, errno },
          'backup root not writable: its owner lock is not held (nothing is written there until it is fixed)',
        );
      }
    }
  } catch (error) {
    release();
    throw error;
  }
  if (options.heartbeat ?? true) {
    let lost = false;
    timer = setInterval(() => {
      const now = new Date();
      for (const { file } of held) {
        utimes(file, now, now).catch((error: unknown) => {
          if (lost) return;
          lost = true;
          options.log?.error({ err: error, file }, 'owner lock could not be refreshed');
        });
      }
    }, OWNER_HEARTBEAT_MS);
    timer.unref();
  }
  if (options.releaseOnExit ?? true) process.on('exit', release);
  return { files: held.map((h) => h.file), release };
}
