// The local sandbox: a throwaway cluster made with `initdb --no-sync` in a private temp directory, its
// own unix socket directory and random port, no TCP, crash-unsafe settings, removed afterwards. One spare
// data directory is kept initialised in the background so a verification does not wait for initdb.
import { randomInt } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa, type ResultPromise } from 'execa';
import { STREAM_CHUNK_BYTES } from '../atomic.js';
import { AppError, errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import { requireTool, type ToolInfo, which } from '../tools.js';
import {
  type CreateSandboxOptions,
  createTail,
  type DriverStatus,
  type ExecOptions,
  type ExecResult,
  type Sandbox,
  type SandboxDriver,
  sandboxUnavailable,
  settingsArgs,
  shortCommand,
  throwawaySettings,
} from './types.js';

export const DRIVER_NAME = 'local' as const;

/** Prefix of every local sandbox directory (the reaper only ever touches these). */
export const LOCAL_SANDBOX_PREFIX = 'flux-verify-';
const MARKER = 'sandbox.json';
const SUPERUSER = 'postgres';
const READY_POLL_MS = 20;
const STOP_WAIT_MS = 10_000;
/** A directory without a marker younger than this may be one being created right now. */
const UNMARKED_GRACE_MS = 10 * 60_000;

const TOOLS = ['initdb', 'postgres', 'pg_restore', 'psql'] as const;

export interface LocalDriverOptions {
  /** PATH the Postgres server and client tools are found on (this process's PATH). */
  pathEnv: string | undefined;
  /** Parent of the sandbox directories (FLUX_VERIFY_LOCAL_DIR); the OS temp dir by default. */
  baseDir?: string | undefined;
  /** OS user the server runs as when this process is root (Postgres refuses root). */
  osUser?: string | undefined;
  maintenanceWorkMemMb?: number;
  /** Keep one initialised data directory ready (default true). */
  spare?: boolean;
  log?: Logger;
}

interface OsUser {
  name: string;
  uid: number;
  gid: number;
}

interface Marker {
  ownerPid: number;
  state: 'spare' | 'active';
  createdAt: string;
  expiresAt: string | null;
  projectId?: string;
  backupId?: string;
}

interface PreparedDir {
  dir: string;
  data: string;
  socket: string;
  input: string;
  log: string;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errnoOf(error) === 'EPERM';
  }
}

async function lookupOsUser(name: string): Promise<OsUser | undefined> {
  const [uid, gid] = await Promise.all([
    execa('id', ['-u', name], { reject: false }),
    execa('id', ['-g', name], { reject: false }),
  ]);
  if (uid.exitCode !== 0 || gid.exitCode !== 0) return undefined;
  return { name, uid: Number(String(uid.stdout).trim()), gid: Number(String(gid.stdout).trim()) };
}

export function createLocalDriver(options: LocalDriverOptions): SandboxDriver {
  const baseDir = options.baseDir ?? os.tmpdir();
  const log = options.log;
  const maintenanceWorkMemMb =
    options.maintenanceWorkMemMb ?? Math.max(64, Math.min(1024, Math.floor(os.totalmem() / 2 ** 20 / 8)));
  const useSpare = options.spare ?? true;
  let spare: Promise<PreparedDir | undefined> | undefined;
  /** Spare preparations in flight, and prepared spare directories not yet claimed by a sandbox. */
  const preparing = new Set<Promise<PreparedDir | undefined>>();
  const unclaimed = new Set<string>();
  let closed = false;
  const live = new Set<LocalSandbox>();
  let osUserPromise: Promise<OsUser | undefined> | undefined;

  async function tools(): Promise<Record<(typeof TOOLS)[number], ToolInfo>> {
    const found = await Promise.all(TOOLS.map((t) => requireTool(t, options.pathEnv)));
    const [initdb, postgres, pgRestore, psql] = found as [ToolInfo, ToolInfo, ToolInfo, ToolInfo];
    const majors = new Set(found.map((t) => t.major));
    if (majors.size > 1) {
      throw new AppError(
        'tool_version',
        `the local sandbox needs one PostgreSQL major for ${TOOLS.join(', ')} but PATH mixes ` +
          found.map((t) => `${t.name} ${t.version}`).join(', ') +
          ': put the bin directory of one major (e.g. /usr/lib/postgresql/<major>/bin) first on PATH',
      );
    }
    return { initdb, postgres, pg_restore: pgRestore, psql };
  }

  /** The unprivileged user the server runs as when we are root; undefined when we are not root. */
  function serverUser(): Promise<OsUser | undefined> {
    osUserPromise ??= (async () => {
      if (process.getuid?.() !== 0) return undefined;
      const candidates = options.osUser ? [options.osUser] : ['postgres', 'nobody'];
      for (const name of candidates) {
        const user = await lookupOsUser(name);
        if (user && user.uid !== 0) return user;
      }
      throw sandboxUnavailable(
        'tools_missing',
        options.osUser
          ? `FLUX_VERIFY_LOCAL_OS_USER=${options.osUser} is not an unprivileged OS user here; Postgres refuses to run as root`
          : 'this process runs as root and neither a "postgres" nor a "nobody" OS user exists to run the local sandbox as ' +
              '(Postgres refuses root): set FLUX_VERIFY_LOCAL_OS_USER, or run flux-ops as uid 1001 like the image does',
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

  async function writeMarker(dir: string, marker: Marker): Promise<void> {
    await writeFile(path.join(dir, MARKER), `${JSON.stringify(marker)}\n`, { mode: 0o600 });
  }

  async function prepareDir(): Promise<PreparedDir> {
    const t = await tools();
    const user = await serverUser();
    await mkdir(baseDir, { recursive: true });
    const dir = await mkdtemp(path.join(baseDir, LOCAL_SANDBOX_PREFIX));
    try {
      await writeMarker(dir, {
        ownerPid: process.pid,
        state: 'spare',
        createdAt: new Date().toISOString(),
        expiresAt: null,
      });
      const prepared: PreparedDir = {
        dir,
        data: path.join(dir, 'data'),
        socket: path.join(dir, 'sock'),
        input: path.join(dir, 'in'),
        log: path.join(dir, 'postgres.log'),
      };
      await mkdir(prepared.socket, { mode: 0o700 });
      await mkdir(prepared.input, { mode: 0o700 });
      await chmod(dir, 0o700);
      if (user) {
        await chown(dir, user.uid, user.gid);
        await chown(prepared.socket, user.uid, user.gid);
      }
      const [cmd, args] = await asServerUser(t.initdb.path, [
        '--no-sync',
        '-D',
        prepared.data,
        '-U',
        SUPERUSER,
        '--auth-local=trust',
        '--auth-host=reject',
        '-E',
        'UTF8',
        '--locale=C',
      ]);
      const result = await execa(cmd, args, {
        cwd: dir,
        env: { PATH: options.pathEnv ?? '', LANG: 'C' },
        extendEnv: false,
        stdin: 'ignore',
        reject: false,
        timeout: 120_000,
      });
      if (result.exitCode !== 0) {
        throw sandboxUnavailable(
          'sandbox_failed',
          `initdb of the local sandbox failed (exit ${result.exitCode}): ${String(result.stderr).trim().slice(-600)}` +
            (user && /permission denied/i.test(String(result.stderr))
              ? ` (the server runs as OS user ${user.name}: every directory above ${dir} must be searchable by it, e.g. chmod 755 ${baseDir})`
              : ''),
        );
      }
      return prepared;
    } catch (error) {
      await rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined);
      throw error;
    }
  }

  function refillSpare(): void {
    if (!useSpare || closed || spare) return;
    const pending = prepareDir().then(
      async (prepared) => {
        unclaimed.add(prepared.dir);
        if (closed) await discardSpares();
        return closed ? undefined : prepared;
      },
      (error) => {
        log?.warn({ err: error }, 'could not prepare a spare local sandbox');
        return undefined;
      },
    );
    spare = pending;
    preparing.add(pending);
    void pending.finally(() => preparing.delete(pending));
  }

  /** Removes every spare directory nobody claimed (on close). */
  async function discardSpares(): Promise<void> {
    for (const dir of [...unclaimed]) {
      unclaimed.delete(dir);
      await rm(dir, { recursive: true, force: true, maxRetries: 3 });
    }
  }

  async function takeDir(): Promise<PreparedDir> {
    const pending = spare;
    spare = undefined;
    const prepared = pending ? await pending : undefined;
    if (prepared) unclaimed.delete(prepared.dir);
    return prepared ?? prepareDir();
  }

  async function removeLeftover(dir: string): Promise<void> {
    const pidFile = path.join(dir, 'data', 'postmaster.pid');
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).split('\n')[0]);
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) {
      // Only a postmaster serving this very directory is signalled (pids get reused).
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(path.join(dir, 'data'))) {
        process.kill(pid, 'SIGQUIT');
        const deadline = Date.now() + STOP_WAIT_MS;
        while (pidAlive(pid) && Date.now() < deadline) await sleep(25);
        if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
      }
    }
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  }

  const driver: SandboxDriver = {
    name: DRIVER_NAME,

    async status(): Promise<DriverStatus> {
      try {
        const t = await tools();
        const user = await serverUser();
        if (user) await asServerUser(t.postgres.path, []);
        refillSpare();
        return {
          driver: DRIVER_NAME,
          ok: true,
          detail:
            `local sandbox: postgres ${t.postgres.version}, pg_restore ${t.pg_restore.version} (${path.dirname(t.postgres.path)})` +
            `${user ? `, server runs as OS user ${user.name}` : ''}, under ${baseDir}`,
          versions: {
            server: t.postgres.version,
            serverMajor: t.postgres.major,
            pgRestore: t.pg_restore.version,
            pgRestoreMajor: t.pg_restore.major,
          },
        };
      } catch (error) {
        return {
          driver: DRIVER_NAME,
          ok: false,
          reason: 'tools_missing',
          detail: `local sandbox unavailable: ${(error as Error).message}`,
        };
      }
    },

    async create(createOptions: CreateSandboxOptions): Promise<Sandbox> {
      if (closed) throw new AppError('shutting_down', 'the local sandbox driver is closed');
      let t: Awaited<ReturnType<typeof tools>>;
      try {
        t = await tools();
      } catch (error) {
        throw sandboxUnavailable('tools_missing', `local sandbox unavailable: ${(error as Error).message}`, {
          cause: error,
        });
      }
      const prepared = await takeDir();
      const sandbox = new LocalSandbox(prepared, t, options.pathEnv);
      live.add(sandbox);
      try {
        await writeMarker(prepared.dir, {
          ownerPid: process.pid,
          state: 'active',
          createdAt: new Date().toISOString(),
          expiresAt: new Date(Date.now() + createOptions.ttlMs).toISOString(),
          projectId: createOptions.projectId,
          backupId: createOptions.backupId,
        });
        const [cmd, args] = await asServerUser(t.postgres.path, [
          '-D',
          prepared.data,
          '-k',
          prepared.socket,
          '-p',
          String(sandbox.port),
          '-c',
          'listen_addresses=',
          ...settingsArgs(throwawaySettings(maintenanceWorkMemMb)),
        ]);
        await sandbox.start(cmd, args, createOptions.signal);
        return sandbox;
      } catch (error) {
        await sandbox.destroy();
        live.delete(sandbox);
        throw error;
      } finally {
        // The next verification's data directory is initialised while this one restores.
        refillSpare();
      }
    },

    async reap(now = new Date()) {
      let names: string[];
      try {
        names = await readdir(baseDir);
      } catch {
        return 0;
      }
      const ours = new Set([...live].map((s) => s.id));
      let removed = 0;
      for (const name of names) {
        if (!name.startsWith(LOCAL_SANDBOX_PREFIX)) continue;
        const dir = path.join(baseDir, name);
        if (ours.has(dir)) continue;
        let marker: Marker | undefined;
        try {
          marker = JSON.parse(await readFile(path.join(dir, MARKER), 'utf8')) as Marker;
        } catch {
          marker = undefined;
        }
        let stale: boolean;
        if (!marker) {
          const s = await stat(dir).catch(() => undefined);
          stale = s !== undefined && now.getTime() - s.mtimeMs > UNMARKED_GRACE_MS;
        } else if (marker.ownerPid === process.pid) {
          // Our own spare (pending or ready) is not a leftover; an active one we no longer track is.
          stale =
            marker.state === 'active' &&
            marker.expiresAt !== null &&
            Date.parse(marker.expiresAt) < now.getTime();
        } else {
          stale =
            !pidAlive(marker.ownerPid) ||
            (marker.expiresAt !== null && Date.parse(marker.expiresAt) < now.getTime());
        }
        if (!stale) continue;
        try {
          await removeLeftover(dir);
          removed += 1;
          log?.warn({ dir, backupId: marker?.backupId }, 'removed a leftover local sandbox');
        } catch (error) {
          log?.warn({ err: error, dir }, 'could not remove a leftover local sandbox');
        }
      }
      return removed;
    },

    async close() {
      closed = true;
      spare = undefined;
      await Promise.all([...preparing]);
      await discardSpares();
      await Promise.all([...live].map((s) => s.destroy()));
      live.clear();
    },
  };

  class LocalSandbox implements Sandbox {
    readonly driver = DRIVER_NAME;
    readonly id: string;
    readonly port = randomInt(20_000, 60_000);
    readonly versions;
    #prepared: PreparedDir;
    #pathEnv: string | undefined;
    #server: ResultPromise | undefined;
    #exited = false;
    #destroyed: Promise<void> | undefined;

    constructor(prepared: PreparedDir, t: Awaited<ReturnType<typeof tools>>, pathEnv: string | undefined) {
      this.id = prepared.dir;
      this.#prepared = prepared;
      this.#pathEnv = pathEnv;
      this.versions = {
        server: t.postgres.version,
        serverMajor: t.postgres.major,
        pgRestore: t.pg_restore.version,
        pgRestoreMajor: t.pg_restore.major,
      };
    }

    async start(cmd: string, args: string[], signal: AbortSignal | undefined): Promise<void> {
      const server = execa(cmd, args, {
        cwd: this.#prepared.dir,
        env: { PATH: this.#pathEnv ?? '', LANG: 'C' },
        extendEnv: false,
        stdin: 'ignore',
        stdout: 'ignore',
        stderr: { file: this.#prepared.log },
        reject: false,
        // execa kills the server if this process exits; the reaper covers a SIGKILL of this process.
        cleanup: true,
      });
      this.#server = server;
      server.then(
        () => {
          this.#exited = true;
        },
        () => {
          this.#exited = true;
        },
      );
      for (;;) {
        if (signal?.aborted) throw signal.reason ?? new AppError('shutting_down', 'cancelled');
        if (this.#exited) {
          const tail = (await readFile(this.#prepared.log, 'utf8').catch(() => '')).trim().slice(-800);
          throw sandboxUnavailable(
            'sandbox_failed',
            `the local sandbox server exited during start-up: ${tail || 'no log output'}`,
          );
        }
        const probe = await this.exec(['psql', '-X', '-q', '-A', '-t', '-c', 'SELECT 1'], {
          ...(signal ? { signal } : {}),
        });
        if (probe.exitCode === 0 && probe.stdout.trim() === '1') return;
        await sleep(READY_POLL_MS);
      }
    }

    async putFile(name: string, source: Readable, sizeBytes: number, opts: ExecOptions = {}) {
      if (!/^[A-Za-z0-9._-]{1,128}$/.test(name))
        throw new AppError('bad_request', `bad sandbox file name ${name}`);
      const target = path.join(this.#prepared.input, name);
      await pipeline(
        source,
        createWriteStream(target, { mode: 0o600, highWaterMark: STREAM_CHUNK_BYTES }),
        ...(opts.signal ? [{ signal: opts.signal }] : []),
      );
      const written = (await stat(target)).size;
      if (written !== sizeBytes) {
        throw new AppError(
          'artifact_invalid',
          `streamed ${written} B into the sandbox where ${sizeBytes} B were announced (the file changed while being read)`,
        );
      }
      return target;
    }

    async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
      const started = performance.now();
      const [tool, ...args] = argv;
      const file = tool ? await which(tool, this.#pathEnv) : undefined;
      if (!file) {
        return {
          command: shortCommand(argv),
          exitCode: 127,
          stdout: '',
          stderr: `${tool} not found on PATH`,
          seconds: 0,
          isCanceled: false,
          failed: true,
        };
      }
      const tail = createTail();
      const child = execa(file, args, {
        cwd: this.#prepared.dir,
        env: {
          PATH: this.#pathEnv ?? '',
          PGHOST: this.#prepared.socket,
          PGPORT: String(this.port),
          PGUSER: SUPERUSER,
          PGDATABASE: 'postgres',
          PGAPPNAME: 'flux-ops-verify',
          PGCONNECT_TIMEOUT: '10',
          LANG: 'C',
        },
        extendEnv: false,
        stdin: 'ignore',
        buffer: { stdout: true, stderr: false },
        maxBuffer: { stdout: 256 * 2 ** 20 },
        ...(opts.signal ? { cancelSignal: opts.signal } : {}),
        forceKillAfterDelay: 2_000,
        reject: false,
      });
      child.stderr?.on('data', (chunk: Buffer) => tail.push(chunk));
      const result = await child;
      const isCanceled = Boolean(result.isCanceled);
      const exitCode = isCanceled ? null : (result.exitCode ?? null);
      return {
        command: shortCommand(argv),
        exitCode,
        stdout: typeof result.stdout === 'string' ? result.stdout : '',
        stderr: tail.text(),
        seconds: (performance.now() - started) / 1000,
        isCanceled,
        failed: isCanceled || exitCode !== 0,
      };
    }

    destroy(): Promise<void> {
      this.#destroyed ??= (async () => {
        const server = this.#server;
        if (server && !this.#exited) {
          // Immediate shutdown: nothing in a throwaway cluster is worth a checkpoint.
          server.kill('SIGQUIT');
          const timer = setTimeout(() => server.kill('SIGKILL'), STOP_WAIT_MS);
          await server.catch(() => undefined);
          clearTimeout(timer);
        }
        await rm(this.#prepared.dir, { recursive: true, force: true, maxRetries: 3 });
        live.delete(this);
      })();
      return this.#destroyed;
    }
  }

  return driver;
}
