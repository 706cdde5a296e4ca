// The local sandbox: a throwaway cluster in a private temp directory, its own unix socket directory and
// random port, no TCP, crash-unsafe settings, removed afterwards. The server runs inside the boundary of
// boundary.ts (namespaces, chroot, a sandbox-only OS user, cgroup limits). initdb runs once per driver, into a
// template directory; every sandbox starts from a copy of it (a copy costs a fraction of initdb's CPU),
// and one spare sandbox is kept started and ready, so a verification waits for neither.
import { randomInt } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa, type ResultPromise } from 'execa';
import { STREAM_CHUNK_BYTES } from '../atomic.js';
import { AppError } from '../errors.js';
import type { Logger } from '../log.js';
import { requireTool, type ToolInfo, which } from '../tools.js';
import {
  createBoundary,
  type IsolationMode,
  type OsUser,
  SANDBOX_OS_USER,
  type Wrapped,
} from './boundary.js';
import {
  LOCAL_SANDBOX_PREFIX,
  type MarkerState,
  type PreparedDir,
  preparedDir,
  STAGING_PREFIX,
  writeMarker,
} from './local-marker.js';
import { reapLocalSandboxes } from './local-reaper.js';
import { createTail, shortCommand } from './output.js';
import { settingsArgs, throwawaySettings } from './settings.js';
import { createSparePool } from './spares.js';
import {
  type CreateSandboxOptions,
  type DriverStatus,
  type ExecOptions,
  type ExecResult,
  SANDBOX_SUPERUSER,
  type Sandbox,
  type SandboxDriver,
} from './types.js';
import { sandboxUnavailable } from './unavailable.js';

export const DRIVER_NAME = 'local' as const;

/** Readiness: postmaster.pid is re-read after this, doubling up to READY_POLL_MAX_MS (no process per poll). */
const READY_POLL_MIN_MS = 5;
const READY_POLL_MAX_MS = 50;
const STOP_WAIT_MS = 10_000;

const TOOLS = ['initdb', 'postgres', 'pg_restore', 'psql'] as const;

export interface LocalDriverOptions {
  /** PATH the Postgres server and client tools are found on (this process's PATH). */
  pathEnv: string | undefined;
  /** Parent of the sandbox directories (FLUX_VERIFY_LOCAL_DIR); the OS temp dir by default. */
  baseDir?: string | undefined;
  /** OS user the server runs as when this process is root (default flux-sandbox, created when missing). */
  osUser?: string | undefined;
  /** The boundary around the server (default namespaces; none only for development). */
  isolation?: IsolationMode;
  /** Memory limit of one sandbox (MiB, cgroups); default 1024. */
  memoryMb?: number;
  /** CPU limit of one sandbox (cgroups); default 2. */
  cpus?: number;
  maintenanceWorkMemMb?: number;
  /** Keep one sandbox started and ready (default true). */
  spare?: boolean;
  log?: Logger;
}

type Tools = Record<(typeof TOOLS)[number], ToolInfo>;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function lookupOsUser(name: string): Promise<OsUser | undefined> {
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

/** Servers of every local driver in this process: stopped if the process exits without closing them. */
const runningServers = new Set<ResultPromise>();
let isExitHookInstalled = false;

function stopOnExit(server: ResultPromise): void {
  if (!isExitHookInstalled) {
    isExitHookInstalled = true;
    process.on('exit', () => {
      for (const s of runningServers) s.kill('SIGQUIT');
    });
  }
  runningServers.add(server);
  void server.finally(() => runningServers.delete(server)).catch(() => undefined);
}

export function createLocalDriver(options: LocalDriverOptions): SandboxDriver {
  const baseDir = options.baseDir ?? os.tmpdir();
  const log = options.log;
  const memoryMb = options.memoryMb ?? 1024;
  const boundary = createBoundary({
    mode: options.isolation ?? 'namespaces',
    pathEnv: options.pathEnv,
    memoryMb,
    cpus: options.cpus ?? 2,
    log,
  });
  // Within the sandbox's memory limit: an index build must not be what runs the server out of it.
  const maintenanceWorkMemMb =
    options.maintenanceWorkMemMb ??
    Math.max(
      64,
      Math.min(1024, Math.floor(os.totalmem() / 2 ** 20 / 8), boundary.mode === 'none' ? 1024 : memoryMb / 4),
    );
  const useSpare = options.spare ?? true;
  /** The template's data directory, made by the first sandbox that needs it. */
  let template: Promise<PreparedDir> | undefined;
  let closed = false;
  // Aborted by close(): an initdb, copy or server start still running (a spare being prepared) is
  // killed rather than waited for, so a stop does not last as long as a start-up on a loaded machine.
  const closing = new AbortController();
  const live = new Set<LocalSandbox>();
  let osUserPromise: Promise<OsUser | undefined> | undefined;

  async function tools(): Promise<Tools> {
    // Settled in TOOLS order, so a PATH without any of them names the first (initdb) every time.
    const settled = await Promise.allSettled(TOOLS.map((t) => requireTool(t, options.pathEnv)));
    const missing = settled.find((r) => r.status === 'rejected');
    if (missing) throw missing.reason;
    const found = settled.map((r) => (r as PromiseFulfilledResult<ToolInfo>).value);
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

  /** Runs a tool as the server user in `cwd`; a failure is `sandbox_failed` with its stderr. */
  async function runAsServer(file: string, args: string[], cwd: string, what: string): Promise<void> {
    const [cmd, argv] = await asServerUser(file, args);
    const result = await execa(cmd, argv, {
      cwd,
      env: { PATH: options.pathEnv ?? '', LANG: 'C' },
      extendEnv: false,
      stdin: 'ignore',
      reject: false,
      cleanup: false,
      timeout: 120_000,
      cancelSignal: closing.signal,
      forceKillAfterDelay: 2_000,
    });
    if (result.isCanceled)
      throw new AppError('shutting_down', `${what} was cancelled: the driver is closing`);
    if (result.exitCode !== 0) {
      const user = await serverUser();
      throw sandboxUnavailable(
        'sandbox_failed',
        `${what} failed (exit ${result.exitCode}): ${String(result.stderr).trim().slice(-600)}` +
          (user && /permission denied/i.test(String(result.stderr))
            ? ` (the server runs as OS user ${user.name}: every directory above ${cwd} must be searchable by it, e.g. chmod 755 ${baseDir})`
            : ''),
      );
    }
  }

  /** A new private directory (marker first, so a reaper never mistakes it for an unowned one). */
  async function makeDir(state: MarkerState): Promise<PreparedDir> {
    const user = await serverUser();
    await mkdir(baseDir, { recursive: true });
    // Made under a staging name and renamed once its marker is in: a sandbox directory never exists
    // without one, so nobody (a reaper, a test) sees one whose owner is unknown.
    const staging = await mkdtemp(path.join(baseDir, STAGING_PREFIX));
    const dir = path.join(
      baseDir,
      `${LOCAL_SANDBOX_PREFIX}${path.basename(staging).slice(STAGING_PREFIX.length)}`,
    );
    try {
      await writeMarker(staging, {
        ownerPid: process.pid,
        state,
        createdAt: new Date().toISOString(),
        expiresAt: null,
      });
      await chmod(staging, 0o700);
      if (user) await chown(staging, user.uid, user.gid);
      await rename(staging, dir);
    } catch (error) {
      await rm(staging, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined);
      throw error;
    }
    return preparedDir(dir);
  }

  function initdbArgs(data: string): string[] {
    return [
      '--no-sync',
      '-D',
      data,
      '-U',
      SANDBOX_SUPERUSER,
      '--auth-local=trust',
      '--auth-host=reject',
      '-E',
      'UTF8',
      '--locale=C',
    ];
  }

  /** A new directory in `state`, filled by `fill`; removed again when that throws. */
  async function filledDir(
    state: MarkerState,
    fill: (prepared: PreparedDir) => Promise<void>,
  ): Promise<PreparedDir> {
    const prepared = await makeDir(state);
    try {
      await fill(prepared);
      return prepared;
    } catch (error) {
      await rm(prepared.dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined);
      throw error;
    }
  }

  function initdb(t: Tools, prepared: PreparedDir): Promise<void> {
    return runAsServer(t.initdb.path, initdbArgs(prepared.data), prepared.dir, 'initdb of the local sandbox');
  }

  /** The initialised data directory every sandbox of this driver is copied from (made once). */
  function templateDir(t: Tools): Promise<PreparedDir> {
    if (closed) return Promise.reject(new AppError('shutting_down', 'the local sandbox driver is closed'));
    template ??= filledDir('template', (prepared) => initdb(t, prepared));
    const made = template;
    made.catch(() => {
      if (template === made) template = undefined;
    });
    return made;
  }

  /** A sandbox directory with a data directory copied from the template (initdb when cp is missing). */
  async function prepareDir(t: Tools): Promise<PreparedDir> {
    const source = await templateDir(t);
    const user = await serverUser();
    return filledDir('spare', async (prepared) => {
      await mkdir(prepared.socket, { mode: 0o700 });
      await mkdir(prepared.input, { mode: 0o700 });
      if (user) await chown(prepared.socket, user.uid, user.gid);
      const cp = (await which('cp', options.pathEnv)) ?? (await which('cp', '/usr/bin:/bin'));
      // -a keeps the 0700 modes Postgres insists on; GNU cp >= 9 reflinks where the filesystem can.
      if (cp)
        await runAsServer(
          cp,
          ['-a', source.data, prepared.data],
          prepared.dir,
          'copying the sandbox template',
        );
      else await initdb(t, prepared);
    });
  }

  /** A started, ready sandbox (state spare until a verification claims it). */
  async function startSandbox(t: Tools, signal?: AbortSignal): Promise<LocalSandbox> {
    const prepared = await prepareDir(t);
    const sandbox = new LocalSandbox(prepared, t, options.pathEnv);
    live.add(sandbox);
    try {
      if (closed) throw new AppError('shutting_down', 'the local sandbox driver is closed');
      const serverArgs = [
        '-D',
        prepared.data,
        '-k',
        prepared.socket,
        '-p',
        String(sandbox.port),
        '-c',
        'listen_addresses=',
        ...settingsArgs(throwawaySettings(maintenanceWorkMemMb)),
      ];
      let wrapped: Wrapped;
      if (boundary.mode === 'none') {
        const [cmd, args] = await asServerUser(t.postgres.path, serverArgs);
        wrapped = { file: cmd, args, release: async () => undefined };
      } else {
        wrapped = await boundary.wrap(prepared.dir, await serverUser(), {
          file: t.postgres.path,
          args: serverArgs,
        });
      }
      await sandbox.start(wrapped, signal);
      return sandbox;
    } catch (error) {
      await sandbox.destroy();
      throw error;
    }
  }

  // close() aborts a spare being prepared: its server start through the pool's signal, its initdb and
  // copy through `closing`.
  const spares = createSparePool<LocalSandbox>({
    enabled: useSpare,
    create: async (signal) => startSandbox(await tools(), signal),
    destroy: (sandbox) => sandbox.destroy(),
    onError: (error, what) =>
      log?.warn(
        { err: error },
        what === 'prepare'
          ? 'could not prepare a spare local sandbox'
          : 'could not remove a spare local sandbox',
      ),
  });

  /** The spare (waiting for it if it is still starting: it started earlier than a new one would), or a new sandbox. */
  async function takeSandbox(t: Tools, signal: AbortSignal | undefined): Promise<LocalSandbox> {
    const state = spares.state();
    if (state === 'ready' || state === 'starting') {
      const taking = spares.take();
      // The next spare is prepared while this verification restores. One still starting is replaced when
      // it is up: two preparations at once would only slow each other down.
      if (state === 'ready') spares.refill();
      const sandbox = await taking;
      spares.refill();
      if (sandbox?.isRunning) return sandbox;
      if (sandbox) await sandbox.destroy();
    }
    // No spare, or another verification took the one being prepared: start one now rather than queue.
    try {
      return await startSandbox(t, signal);
    } finally {
      spares.refill();
    }
  }

  const driver: SandboxDriver = {
    name: DRIVER_NAME,

    async status(): Promise<DriverStatus> {
      try {
        const t = await tools();
        const user = await serverUser();
        if (user) await asServerUser(t.postgres.path, []);
        let isolation: string;
        try {
          isolation = await boundary.check(user);
        } catch (error) {
          return {
            driver: DRIVER_NAME,
            ok: false,
            reason: 'isolation_unavailable',
            detail: `local sandbox unavailable: ${(error as Error).message}`,
          };
        }
        spares.refill();
        return {
          driver: DRIVER_NAME,
          ok: true,
          detail:
            `local sandbox: postgres ${t.postgres.version}, pg_restore ${t.pg_restore.version} (${path.dirname(t.postgres.path)})` +
            `, under ${baseDir}; ${isolation}`,
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
      let t: Tools;
      try {
        t = await tools();
      } catch (error) {
        throw sandboxUnavailable('tools_missing', `local sandbox unavailable: ${(error as Error).message}`, {
          cause: error,
        });
      }
      const sandbox = await takeSandbox(t, createOptions.signal);
      try {
        if (createOptions.signal?.aborted) {
          throw createOptions.signal.reason ?? new AppError('shutting_down', 'cancelled');
        }
        await sandbox.claim(createOptions);
        return sandbox;
      } catch (error) {
        await sandbox.destroy();
        throw error;
      }
    },

    spareState: () => spares.state(),

    reap: (now = new Date()) =>
      reapLocalSandboxes({ baseDir, boundary, log }, new Set([...live].map((s) => s.id)), now),

    async close() {
      closed = true;
      closing.abort(new AppError('shutting_down', 'the local sandbox driver is closed'));
      await spares.close();
      await Promise.all([...live].map((s) => s.destroy()));
      live.clear();
      const made = await template?.catch(() => undefined);
      template = undefined;
      if (made) await rm(made.dir, { recursive: true, force: true, maxRetries: 3 });
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
    #serverPid: number | undefined;
    #release: (() => Promise<void>) | undefined;

    constructor(prepared: PreparedDir, t: Tools, pathEnv: string | undefined) {
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

    get isRunning(): boolean {
      return this.#server !== undefined && !this.#exited && this.#destroyed === undefined;
    }

    /** Hands the (running) sandbox to a verification: its marker now says whose and until when. */
    async claim(createOptions: CreateSandboxOptions): Promise<void> {
      await writeMarker(this.#prepared.dir, {
        ownerPid: process.pid,
        ...(this.#serverPid !== undefined ? { serverPid: this.#serverPid } : {}),
        state: 'active',
        createdAt: new Date().toISOString(),
        expiresAt: new Date(Date.now() + createOptions.ttlMs).toISOString(),
        projectId: createOptions.projectId,
        backupId: createOptions.backupId,
      });
    }

    async start(wrapped: Wrapped, signal: AbortSignal | undefined): Promise<void> {
      this.#release = wrapped.release;
      const server = execa(wrapped.file, wrapped.args, {
        cwd: this.#prepared.dir,
        env: { PATH: this.#pathEnv ?? '', LANG: 'C' },
        extendEnv: false,
        stdin: 'ignore',
        stdout: 'ignore',
        stderr: { file: this.#prepared.log },
        reject: false,
        // Not execa's cleanup: its signal-exit hook re-raises a SIGTERM that no other listener is left
        // for, cutting the process's graceful shutdown short. The exit hook below stops the server; the
        // reaper covers a SIGKILL of this process.
        cleanup: false,
      });
      this.#server = server;
      stopOnExit(server);
      if (server.pid !== undefined) {
        this.#serverPid = server.pid;
        await writeMarker(this.#prepared.dir, {
          ownerPid: process.pid,
          serverPid: server.pid,
          state: 'spare',
          createdAt: new Date().toISOString(),
          expiresAt: null,
        });
      }
      server.then(
        () => {
          this.#exited = true;
        },
        () => {
          this.#exited = true;
        },
      );
      // The postmaster marks postmaster.pid "ready" once it accepts connections (what pg_ctl -w waits
      // for): reading a file per poll is far cheaper than a psql per poll. One SELECT 1 confirms.
      const pidFile = path.join(this.#prepared.data, 'postmaster.pid');
      let delay = READY_POLL_MIN_MS;
      for (;;) {
        if (signal?.aborted) throw signal.reason ?? new AppError('shutting_down', 'cancelled');
        if (this.#exited) {
          const tail = (await readFile(this.#prepared.log, 'utf8').catch(() => '')).trim().slice(-800);
          throw sandboxUnavailable(
            'sandbox_failed',
            `the local sandbox server exited during start-up: ${tail || 'no log output'}`,
          );
        }
        const status = (await readFile(pidFile, 'utf8').catch(() => '')).split('\n')[7]?.trim();
        if (status === 'ready') {
          const probe = await this.exec(['psql', '-X', '-q', '-A', '-t', '-c', 'SELECT 1'], {
            ...(signal ? { signal } : {}),
          });
          if (probe.exitCode === 0 && probe.stdout.trim() === '1') return;
        }
        await sleep(delay);
        delay = Math.min(READY_POLL_MAX_MS, delay * 2);
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
          PGUSER: opts.user ?? SANDBOX_SUPERUSER,
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
        // A tool outlives this process only as long as its server (see stopOnExit).
        cleanup: false,
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
        ...(this.#exited ? { sandboxGone: true } : {}),
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
        await this.#release?.();
        await rm(this.#prepared.dir, { recursive: true, force: true, maxRetries: 3 });
        live.delete(this);
      })();
      return this.#destroyed;
    }
  }

  return driver;
}
