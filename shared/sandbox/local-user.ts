// The OS user the local sandbox's server runs as when this process is root: a sandbox-only system user
// (created when missing) or the configured one, and the argv that drops to it.
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import type { Logger } from '../log.js';
import { which } from '../tools.js';
import { type OsUser, SANDBOX_OS_USER } from './boundary.js';
import { sandboxUnavailable } from './unavailable.js';

export async function lookupOsUser(name: string): Promise<OsUser | undefined> {
  const [uid, gid] = await Promise.all([
    execa('id', ['-u', name], { reject: false, cleanup: false }),
    execa('id', ['-g', name], { reject: false, cleanup: false }),
  ]);
  if (uid.exitCode !== 0 || gid.exitCode !== 0) return undefined;
  return { name, uid: Number(String(uid.stdout).trim()), gid: Number(String(gid.stdout).trim()) };
}

/** Creates the sandbox-only system user (no home, no shell); tolerates a concurrent creation. */
async function createSandboxUser(name: string): Promise<OsUser | undefined> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const existing = await lookupOsUser(name);
    if (existing) return existing;
    const created = await execa(
      'useradd',
      [
        '--system',
        '--user-group',
        '--no-create-home',
        '--home-dir',
        '/nonexistent',
        '--shell',
        '/usr/sbin/nologin',
        name,
      ],
      { reject: false, cleanup: false },
    ).catch(() => undefined);
    if (!created) return undefined;
    // 9: created meanwhile by someone else; 10: the passwd file is locked by a concurrent useradd.
    if (created.exitCode !== 0 && created.exitCode !== 9 && created.exitCode !== 10) return undefined;
    if (created.exitCode !== 0) await sleep(50 + attempt * 20);
  }
  return lookupOsUser(name);
}

export interface ServerUserOptions {
  /** FLUX_VERIFY_LOCAL_OS_USER: an existing user; the sandbox-only user (created) when absent. */
  osUser?: string | undefined;
  /** PATH setpriv / runuser are looked for on first. */
  pathEnv: string | undefined;
  log?: Logger | undefined;
}

export interface ServerUser {
  /** The user, asked once (undefined when this process is not root: a user namespace separates it). */
  user(): Promise<OsUser | undefined>;
  /** argv that runs `file` as that user (setpriv, else runuser) when we are root. */
  argv(file: string, args: string[]): Promise<[string, string[]]>;
}

export function createServerUser(options: ServerUserOptions): ServerUser {
  const log = options.log;
  let osUserPromise: Promise<OsUser | undefined> | undefined;

  /**
   * The sandbox-only OS user the server runs as when we are root (undefined when we are not: then a user
   * namespace separates it). Not `postgres`: other servers on the host trust that user on their sockets.
   */
  function serverUser(): Promise<OsUser | undefined> {
    osUserPromise ??= (async () => {
      if (process.getuid?.() !== 0) return undefined;
      const name = options.osUser ?? SANDBOX_OS_USER;
      const user = options.osUser ? await lookupOsUser(name) : await createSandboxUser(name);
      if (user && user.uid !== 0) {
        if (name === 'postgres') {
          log?.warn(
            'FLUX_VERIFY_LOCAL_OS_USER=postgres: other Postgres servers on this host may trust that OS user; use a sandbox-only user',
          );
        }
        return user;
      }
      throw sandboxUnavailable(
        'tools_missing',
        options.osUser
          ? `FLUX_VERIFY_LOCAL_OS_USER=${options.osUser} is not an unprivileged OS user here (Postgres refuses root): ` +
              `create it (useradd --system --no-create-home --shell /usr/sbin/nologin ${options.osUser}) or unset the variable`
          : `this process runs as root and could not create the sandbox-only OS user ${SANDBOX_OS_USER} (useradd missing?): ` +
              `create it (useradd --system --no-create-home --shell /usr/sbin/nologin ${SANDBOX_OS_USER}), or run flux-ops as uid 1001 like the image does`,
      );
    })();
    osUserPromise.catch(() => {
      osUserPromise = undefined;
    });
    return osUserPromise;
  }

  /** argv that runs `file` as the server user (setpriv, else runuser) when we are root. */
  async function asServerUser(file: string, args: string[]): Promise<[string, string[]]> {
    const user = await serverUser();
    if (!user) return [file, args];
    const setpriv = (await which('setpriv', options.pathEnv)) ?? (await which('setpriv', '/usr/bin:/bin'));
    if (setpriv) {
      return [
        setpriv,
        ['--reuid', String(user.uid), '--regid', String(user.gid), '--clear-groups', '--', file, ...args],
      ];
    }
    const runuser = (await which('runuser', options.pathEnv)) ?? (await which('runuser', '/usr/sbin:/sbin'));
    if (runuser) return [runuser, ['-u', user.name, '--', file, ...args]];
    throw sandboxUnavailable(
      'tools_missing',
      'this process runs as root and needs setpriv (util-linux) or runuser to start the local sandbox as an unprivileged user',
    );
  }

  return { user: serverUser, argv: asServerUser };
}
