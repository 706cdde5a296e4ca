// Which process a pid is: alive or not, and the same one or a pid reused since, judged from /proc (its
// start time), the boot and the pid namespace a record of it was made in.
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { errnoOf } from '../errors.js';

export interface ProcessIdentity {
  pid: number;
  host: string;
  bootId: string | null;
  pidNamespace: string | null;
}

/** What this host knows of a pid now: undefined when no such process runs (or it is a zombie). */
export type PidLookup = (pid: number) => { startTicks: string | null } | undefined;

export function readOr<T>(read: () => T, fallback: T): T {
  try {
    return read();
  } catch {
    return fallback;
  }
}

/** Start time and state of a pid from /proc/<pid>/stat (the command may hold spaces and parentheses). */
export function procStat(pid: number): { state: string; startTicks: string } | undefined {
  const text = readOr(() => readFileSync(`/proc/${pid}/stat`, 'utf8'), '');
  if (!text) return undefined;
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // Fields after the command start at field 3 (state); starttime is field 22.
  return { state: fields[0] ?? '', startTicks: fields[19] ?? '' };
}

export const lookupPid: PidLookup = (pid) => {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if (errnoOf(error) !== 'EPERM') return undefined;
  }
  const s = procStat(pid);
  if (s && (s.state === 'Z' || s.state === 'X')) return undefined;
  return { startTicks: s?.startTicks ?? null };
};

export function currentIdentity(): ProcessIdentity {
  return {
    pid: process.pid,
    host: hostname(),
    bootId: readOr(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(), null),
    pidNamespace: readOr(() => readlinkSync('/proc/self/ns/pid'), null),
  };
}
