// The local sandbox's boundary. A restored archive is tenant code; if it ever ran with server privileges, what
// it could reach is bounded here: the server runs in its own mount, network, pid, IPC and UTS namespaces,
// pivoted into a root that holds only the system's read-only directories and its own sandbox directory
// (no /tmp, /run, home, backup root, state directory, Docker socket or other server's socket), with no
// network interface but a downed loopback, as a sandbox-only OS user, under a memory and CPU limit (cgroups)
// where cgroups are writable. flux-ops reaches the server through the socket in the sandbox directory.
import { chown, mkdir, mkdtemp, readFile, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import { which } from '../tools.js';
import { sandboxUnavailable } from './unavailable.js';

export const ISOLATION_MODES = ['namespaces', 'none'] as const;
export type IsolationMode = (typeof ISOLATION_MODES)[number];

/** The OS user created (as root) for the local sandbox when none is configured: it owns nothing else. */
export const SANDBOX_OS_USER = 'flux-sandbox';
/** The empty directory in each sandbox directory that becomes the server's root. */
export const BOUNDARY_ROOT = 'root';
/** Prefix of the cgroups made for sandboxes (the reaper removes leftovers by it). */
const CGROUP_PREFIX = 'flux-verify-';
const CGROUP_V2 = '/sys/fs/cgroup';
const CGROUP_V1 = { memory: '/sys/fs/cgroup/memory', cpu: '/sys/fs/cgroup/cpu' } as const;
const CPU_PERIOD_US = 100_000;
/** System directories bound read-only into the sandbox root (symlinks, as on merged-/usr systems, are copied). */
const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32', '/etc'];

/**
 * Runs as PID 1 of the new pid namespace (root there): joins the cgroups, builds the root, starts the server
 * as the sandbox user and waits. When flux-ops stops the wrapper, unshare's --kill-child kills this shell,
 * and with PID 1 gone the kernel kills everything in the namespace: nothing started inside outlives it.
 * Arguments: sandbox dir, mode (root|userns), uid, gid, cgroup.procs files (":"-separated or "-"),
 * extra read-only dirs (":"-separated or "-"), then the server's argv.
 */
const SCRIPT = `set -eu
dir=$1 mode=$2 uid=$3 gid=$4 cgroups=$5 extra=$6
shift 6
if [ "$cgroups" != - ]; then
  old=$IFS; IFS=:
  for f in $cgroups; do echo 0 > "$f"; done
  IFS=$old
fi
root=$dir/${BOUNDARY_ROOT}
mount --make-rprivate /
mount -t tmpfs -o mode=0755,nosuid,nodev flux-sandbox "$root"
mkdir -p "$root/proc" "$root/dev" "$root/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for n in null zero full random urandom; do : > "$root/dev/$n"; mount --bind "/dev/$n" "$root/dev/$n"; done
mkdir "$root/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
# After the tmpfs mounts: an extra directory under /tmp must not be hidden by them.
dirs="${SYSTEM_DIRS.join(' ')}"
if [ "$extra" != - ]; then dirs="$dirs $(printf %s "$extra" | tr : ' ')"; fi
for d in $dirs; do
  [ -e "$d" ] || continue
  [ -e "$root$d" ] && continue
  if [ -L "$d" ]; then ln -s "$(readlink "$d")" "$root$d"; continue; fi
  mkdir -p "$root$d"
  mount --rbind "$d" "$root$d"
  # Read-only where the kernel allows it (a user namespace cannot remount what the host locked); the
  # sandbox user cannot write there either way.
  mount -o remount,bind,ro "$root$d" 2>/dev/null || :
done
mkdir -p "$root$dir" "$root/.old"
mount --bind "$dir" "$root$dir"
# pivot_root, not chroot: the old root is detached, so there is no path back to it, and a nested user
# namespace (refused inside a chroot) can still drop to the unprivileged uid.
cd "$root"
pivot_root . .old
umount -l /.old
rmdir /.old
cd /
if [ "$mode" = root ]; then
  setpriv --reuid "$uid" --regid "$gid" --clear-groups --no-new-privs -- "$@" &
else
  unshare --user --map-user="$uid" --map-group="$gid" -- "$@" &
fi
wait $!
`;

export interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

export interface BoundaryOptions {
  mode: IsolationMode;
  /** PATH the tools are found on. */
  pathEnv: string | undefined;
  /** Memory limit of one sandbox (MiB). */
  memoryMb: number;
  /** CPU limit of one sandbox (CPUs). */
  cpus: number;
  log?: Logger | undefined;
}

/** What a started server is wrapped in, and what to release after it ended. */
export interface Wrapped {
  file: string;
  args: string[];
  /** Removes the sandbox's cgroups (after the server ended). */
  release(): Promise<void>;
}

export interface Boundary {
  readonly mode: IsolationMode;
  /** Checks once that the boundary can be set up here (and says what is in force); throws `unverifiable`. */
  check(user: OsUser | undefined): Promise<string>;
  /** The argv starting `server` inside the boundary of sandbox directory `dir`. */
  wrap(dir: string, user: OsUser | undefined, server: { file: string; args: string[] }): Promise<Wrapped>;
  /** Removes the cgroups of a leftover sandbox directory's name. */
  releaseLeftover(dirName: string): Promise<void>;
}

type CgroupKind = { version: 2 } | { version: 1 } | undefined;

/** A sandbox directory's cgroup name (without the prefix): the directory's random part. */
const cgroupNameOf = (dirName: string) => dirName.replace(/^flux-verify-/, '');

async function isDir(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined))?.isDirectory() ?? false;
}

/** Which cgroup hierarchy a root process can make sandbox groups in (memory and cpu both), if any. */
async function cgroupKind(): Promise<CgroupKind> {
  if (process.getuid?.() !== 0) return undefined;
  const controllers = await readFile(path.join(CGROUP_V2, 'cgroup.controllers'), 'utf8').catch(
    () => undefined,
  );
  if (controllers !== undefined) {
    const names = controllers.trim().split(/\s+/);
    if (names.includes('memory') && names.includes('cpu')) return { version: 2 };
  }
  if ((await isDir(CGROUP_V1.memory)) && (await isDir(CGROUP_V1.cpu))) return { version: 1 };
  return undefined;
}

export function createBoundary(options: BoundaryOptions): Boundary {
  const log = options.log;
  let checked: Promise<string> | undefined;
  let kindPromise: Promise<CgroupKind> | undefined;
  const kind = () => {
    kindPromise ??= cgroupKind();
    return kindPromise;
  };

  /** Makes the sandbox's cgroups with their limits; the procs files the wrapper joins. */
  async function makeCgroups(name: string): Promise<{ procs: string[]; dirs: string[] }> {
    const k = await kind();
    if (!k) return { procs: [], dirs: [] };
    const memory = String(options.memoryMb * 2 ** 20);
    const quota = String(Math.max(1000, Math.round(options.cpus * CPU_PERIOD_US)));
    try {
      if (k.version === 2) {
        // The controllers must be enabled for children of the root group (a no-op when they are).
        await writeFile(path.join(CGROUP_V2, 'cgroup.subtree_control'), '+memory +cpu').catch(
          () => undefined,
        );
        const dir = path.join(CGROUP_V2, `${CGROUP_PREFIX}${name}`);
        await mkdir(dir, { recursive: true });
        await writeFile(path.join(dir, 'memory.max'), memory);
        await writeFile(path.join(dir, 'memory.swap.max'), '0').catch(() => undefined);
        await writeFile(path.join(dir, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`);
        return { procs: [path.join(dir, 'cgroup.procs')], dirs: [dir] };
      }
      const mem = path.join(CGROUP_V1.memory, `${CGROUP_PREFIX}${name}`);
      const cpu = path.join(CGROUP_V1.cpu, `${CGROUP_PREFIX}${name}`);
      await mkdir(mem, { recursive: true });
      await mkdir(cpu, { recursive: true });
      await writeFile(path.join(mem, 'memory.limit_in_bytes'), memory);
      await writeFile(path.join(mem, 'memory.memsw.limit_in_bytes'), memory).catch(() => undefined);
      await writeFile(path.join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
      await writeFile(path.join(cpu, 'cpu.cfs_quota_us'), quota);
      return { procs: [path.join(mem, 'cgroup.procs'), path.join(cpu, 'cgroup.procs')], dirs: [mem, cpu] };
    } catch (error) {
      // Not writable after all (a read-only cgroupfs in a container): no limit rather than no sandbox.
      log?.warn(
        { err: error },
        'could not create a cgroup for the local sandbox; it runs without memory/CPU limits',
      );
      kindPromise = Promise.resolve(undefined);
      return { procs: [], dirs: [] };
    }
  }

  async function removeCgroups(dirs: readonly string[]): Promise<void> {
    for (const dir of dirs) {
      // A group empties a moment after its last process is reaped.
      for (let attempt = 0; attempt < 20; attempt++) {
        try {
          await rmdir(dir);
          break;
        } catch (error) {
          const code = errnoOf(error);
          if (code === 'ENOENT') break;
          if (code !== 'EBUSY' || attempt === 19) {
            log?.warn({ err: error, dir }, 'could not remove a local sandbox cgroup');
            break;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
  }

  function cgroupDirsOf(dirName: string, k: CgroupKind): string[] {
    if (!k) return [];
    const name = `${CGROUP_PREFIX}${cgroupNameOf(dirName)}`;
    return k.version === 2
      ? [path.join(CGROUP_V2, name)]
      : [path.join(CGROUP_V1.memory, name), path.join(CGROUP_V1.cpu, name)];
  }

  /**
   * Read-only directories the server needs beyond the system ones, when it is installed outside them: its
   * bin directory, and the share and lib directories beside it. Never the whole prefix: it may hold
   * anything (a checkout, the backup roots).
   */
  async function extraDirs(file: string): Promise<string[]> {
    const bin = path.dirname(file);
    if (SYSTEM_DIRS.some((d) => bin === d || bin.startsWith(`${d}/`))) return [];
    const prefix = path.dirname(bin);
    const beside = [path.join(prefix, 'share'), path.join(prefix, 'lib')];
    return [bin, ...(await Promise.all(beside.map(async (d) => ((await isDir(d)) ? [d] : [])))).flat()];
  }

  async function wrapperArgv(
    dir: string,
    user: OsUser | undefined,
    server: { file: string; args: string[] },
    cgroupProcs: readonly string[],
  ): Promise<{ file: string; args: string[] }> {
    const unshare = (await which('unshare', options.pathEnv)) ?? (await which('unshare', '/usr/bin:/bin'));
    const sh = (await which('sh', options.pathEnv)) ?? (await which('sh', '/usr/bin:/bin'));
    if (!unshare || !sh) {
      throw sandboxUnavailable(
        'isolation_unavailable',
        'the local sandbox boundary needs unshare (util-linux) and sh on PATH; install util-linux, or set FLUX_VERIFY_DRIVER=docker',
      );
    }
    const asRoot = process.getuid?.() === 0;
    const uid = user?.uid ?? process.getuid?.() ?? 0;
    const gid = user?.gid ?? process.getgid?.() ?? 0;
    const extra = await extraDirs(server.file);
    return {
      file: unshare,
      args: [
        ...(asRoot ? [] : ['--user', '--map-root-user']),
        '--mount',
        '--net',
        '--pid',
        '--ipc',
        '--uts',
        '--fork',
        '--kill-child',
        '--',
        sh,
        '-c',
        SCRIPT,
        'flux-sandbox',
        dir,
        asRoot ? 'root' : 'userns',
        String(uid),
        String(gid),
        cgroupProcs.length > 0 ? cgroupProcs.join(':') : '-',
        extra.length > 0 ? extra.join(':') : '-',
        server.file,
        ...server.args,
      ],
    };
  }

  async function describe(user: OsUser | undefined): Promise<string> {
    if (options.mode === 'none') {
      return `isolation: none (FLUX_VERIFY_LOCAL_ISOLATION=none)${user ? `, OS user ${user.name}` : ''}`;
    }
    const k = await kind();
    const limits = k
      ? `cgroup v${k.version} limits ${options.memoryMb} MiB, ${options.cpus} CPU`
      : 'no memory/CPU limit (cgroups are not writable by this process)';
    const who = user
      ? `OS user ${user.name} (uid ${user.uid})`
      : `this process's uid ${process.getuid?.()} in a user namespace`;
    return `isolation: namespaces (mount, net, pid, ipc, uts) + pivot_root, ${who}, ${limits}`;
  }

  return {
    mode: options.mode,

    check(user) {
      if (options.mode === 'none') return describe(user);
      checked ??= (async () => {
        // One real boundary around `true`: namespaces, mounts and the user switch all have to work here.
        const dir = await mkdtemp(path.join(os.tmpdir(), 'flux-verify-check-'));
        try {
          await mkdir(path.join(dir, BOUNDARY_ROOT));
          if (user) await chown(dir, user.uid, user.gid);
          const t = (await which('true', options.pathEnv)) ?? '/bin/true';
          const argv = await wrapperArgv(dir, user, { file: t, args: [] }, []);
          const result = await execa(argv.file, argv.args, {
            reject: false,
            stdin: 'ignore',
            timeout: 30_000,
            cleanup: false,
            extendEnv: false,
            env: { PATH: options.pathEnv ?? '/usr/bin:/bin', LANG: 'C' },
          });
          if (result.exitCode !== 0) {
            throw sandboxUnavailable(
              'isolation_unavailable',
              `the local sandbox boundary cannot be set up here (${String(result.stderr).trim().slice(-300) || `exit ${result.exitCode}`}): ` +
                (process.getuid?.() === 0
                  ? 'root needs mount namespaces (CAP_SYS_ADMIN; inside a container, use the docker sandbox)'
                  : 'an unprivileged process needs user namespaces (kernel.unprivileged_userns_clone=1, and no seccomp profile refusing them)') +
                '; or set FLUX_VERIFY_DRIVER=docker; FLUX_VERIFY_LOCAL_ISOLATION=none runs the server without a boundary (development only)',
            );
          }
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
        return describe(user);
      })();
      const made = checked;
      made.catch(() => {
        if (checked === made) checked = undefined;
      });
      return made;
    },

    async wrap(dir, user, server) {
      if (options.mode === 'none') return { ...server, release: async () => undefined };
      await mkdir(path.join(dir, BOUNDARY_ROOT), { recursive: true });
      const groups = await makeCgroups(cgroupNameOf(path.basename(dir)));
      try {
        const argv = await wrapperArgv(dir, user, server, groups.procs);
        return { ...argv, release: () => removeCgroups(groups.dirs) };
      } catch (error) {
        await removeCgroups(groups.dirs);
        throw error;
      }
    },

    async releaseLeftover(dirName) {
      if (options.mode === 'none') return;
      await removeCgroups(cgroupDirsOf(dirName, await kind()));
    },
  };
}
