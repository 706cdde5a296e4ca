// Children that must not outlive their process (pg_dump): one small file per running child under
// FLUX_STATE_DIR, so the next start of the same function kills one that a kill -9 of its parent left
// running, and only if it is still that process (same boot, pid namespace and start time).
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, writeJsonAtomic } from '../atomic.js';
import { errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import { currentIdentity, lookupPid, type PidLookup, procStat } from './process-identity.js';

export interface ChildRecord {
  pid: number;
  tool: string;
  parentPid: number;
  bootId: string | null;
  pidNamespace: string | null;
  startTicks: string | null;
  startedAt: string;
}

export interface ChildPids {
  /** Remembers a started child (best effort: a failure is logged, never fails the work). */
  record(pid: number, tool: string): Promise<void>;
  /** Forgets a child that has exited. */
  forget(pid: number): Promise<void>;
  /**
   * Kills every recorded child that still runs, and forgets them all. Only the owner of this function's
   * lock calls it, at start, so every record is a dead predecessor's.
   */
  reap(): Promise<Array<{ pid: number; tool: string; killed: boolean }>>;
}

export function createChildPids(options: { dir: string; log?: Logger; lookup?: PidLookup }): ChildPids {
  const { dir, log } = options;
  const lookup = options.lookup ?? lookupPid;
  const fileOf = (pid: number) => path.join(dir, `${pid}.json`);
  return {
    async record(pid, tool) {
      const self = currentIdentity();
      const record: ChildRecord = {
        pid,
        tool,
        parentPid: self.pid,
        bootId: self.bootId,
        pidNamespace: self.pidNamespace,
        startTicks: procStat(pid)?.startTicks ?? null,
        startedAt: new Date().toISOString(),
      };
      await ensureDir(dir)
        .then(() => writeJsonAtomic(fileOf(pid), record))
        .catch((error: unknown) =>
          log?.warn(
            { err: error, pid, tool },
            'could not record a child process (a crash may leave it running)',
          ),
        );
    },
    async forget(pid) {
      await rm(fileOf(pid), { force: true }).catch(() => undefined);
    },
    async reap() {
      let names: string[];
      try {
        names = (await readdir(dir)).filter((n) => /^\d+\.json$/.test(n));
      } catch (error) {
        if (errnoOf(error) === 'ENOENT') return [];
        throw error;
      }
      const self = currentIdentity();
      const reaped: Array<{ pid: number; tool: string; killed: boolean }> = [];
      for (const name of names) {
        const file = path.join(dir, name);
        const record = await readFile(file, 'utf8')
          .then((raw) => JSON.parse(raw) as ChildRecord)
          .catch(() => undefined);
        if (record && typeof record.pid === 'number' && record.pid !== self.pid) {
          const now = lookup(record.pid);
          const isSameProcess =
            now !== undefined &&
            record.startTicks !== null &&
            now.startTicks === record.startTicks &&
            record.bootId === self.bootId &&
            record.pidNamespace === self.pidNamespace;
          if (isSameProcess) {
            try {
              process.kill(record.pid, 'SIGKILL');
            } catch {
              // Gone in the meantime.
            }
            log?.warn(
              { pid: record.pid, tool: record.tool, parentPid: record.parentPid },
              'killed a child a crashed process left running',
            );
          }
          reaped.push({ pid: record.pid, tool: record.tool, killed: isSameProcess });
        }
        await rm(file, { force: true });
      }
      return reaped;
    },
  };
}
