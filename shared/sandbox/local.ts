// The local sandbox: a throwaway cluster in a private temp directory, its own unix socket directory and
// random port, no TCP, crash-unsafe settings, removed afterwards. The server runs inside the boundary of
// boundary.ts (namespaces, chroot, a sandbox-only OS user, cgroup limits). initdb runs once per driver, into a
// template directory; every sandbox starts from a copy of it (a copy costs a fraction of initdb's CPU),
// and one spare sandbox is kept started and ready, so a verification waits for neither. The started
// server itself is local-sandbox.ts; the leftovers' reaper local-reaper.ts; its OS user local-user.ts.
import { chmod, chown, mkdir, mkdtemp, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { AppError } from '../errors.js';
import type { Logger } from '../log.js';
import { requireTool, type ToolInfo, which } from '../tools.js';
import { abortable, linkSignals } from './abort.js';
import { createBoundary, type IsolationMode, type Wrapped } from './boundary.js';
import {
  LOCAL_SANDBOX_PREFIX,
  type MarkerState,
  type PreparedDir,
  preparedDir,
  STAGING_PREFIX,
  writeMarker,
} from './local-marker.js';
import { reapLocalSandboxes } from './local-reaper.js';
import { LocalSandbox } from './local-sandbox.js';
import { createServerUser } from './local-user.js';
import { settingsArgs, throwawaySettings } from './settings.js';
import { createSparePool } from './spares.js';
import {
  type CreateSandboxOptions,
  type DriverStatus,
  SANDBOX_SUPERUSER,
  type Sandbox,
  type SandboxDriver,
  type SandboxVersions,
} from './types.js';
import { sandboxUnavailable } from './unavailable.js';

export const DRIVER_NAME = 'local' as const;

// No psql: SQL goes over the in-process session (local-session.ts).
const TOOLS = ['initdb', 'postgres', 'pg_restore'] as const;

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

/** A local sandbox's versions are those of the tools on PATH (one major, checked by tools()). */
function versionsOf(t: Tools): SandboxVersions {
  return {
    server: t.postgres.version,
    serverMajor: t.postgres.major,
    pgRestore: t.pg_restore.version,
    pgRestoreMajor: t.pg_restore.major,
  };
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
  /** Sandboxes being prepared (for a verification or as the spare): close() waits for them. */
  const preparing = new Set<Promise<void>>();
  // Aborted by close(): an initdb, copy or server start still running (a spare being prepared) is
  // killed rather than waited for, so a stop does not last as long as a start-up on a loaded machine.
  const closing = new AbortController();
  const live = new Set<LocalSandbox>();

  async function tools(): Promise<Tools> {
    // Settled in TOOLS order, so a PATH without any of them names the first (initdb) every time.
    const settled = await Promise.allSettled(TOOLS.map((t) => requireTool(t, options.pathEnv)));
    const missing = settled.find((r) => r.status === 'rejected');
    if (missing) throw missing.reason;
    const found = settled.map((r) => (r as PromiseFulfilledResult<ToolInfo>).value);
    const [initdb, postgres, pgRestore] = found as [ToolInfo, ToolInfo, ToolInfo];
    const majors = new Set(found.map((t) => t.major));
    if (majors.size > 1) {
      throw new AppError(
        'tool_version',
        `the local sandbox needs one PostgreSQL major for ${TOOLS.join(', ')} but PATH mixes ` +
          found.map((t) => `${t.name} ${t.version}`).join(', ') +
          ': put the bin directory of one major (e.g. /usr/lib/postgresql/<major>/bin) first on PATH',
      );
    }
    return { initdb, postgres, pg_restore: pgRestore };
  }

  const { user: serverUser, argv: asServerUser } = createServerUser({
    osUser: options.osUser,
    pathEnv: options.pathEnv,
    log,
  });

  /** Runs a tool as the server user in `cwd`; a failure is `sandbox_failed` with its stderr. */
  async function runAsServer(
    file: string,
    args: string[],
    cwd: string,
    what: string,
    signal: AbortSignal = closing.signal,
    input?: string,
  ): Promise<void> {
    const [cmd, argv] = await asServerUser(file, args);
    const result = await execa(cmd, argv, {
      cwd,
      env: { PATH: options.pathEnv ?? '', LANG: 'C' },
      extendEnv: false,
      ...(input === undefined ? { stdin: 'ignore' as const } : { input }),
      reject: false,
      cleanup: false,
      timeout: 120_000,
      cancelSignal: signal,
      forceKillAfterDelay: 2_000,
    });
    if (result.isCanceled) {
      if (closing.signal.aborted)
        throw new AppError('shutting_down', `${what} was cancelled: the driver is closing`);
      throw signal.reason ?? new AppError('shutting_down', `${what} was cancelled`);
    }
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
      // 1 MB WAL segments: a copy of the template carries 5 MB of WAL instead of 17 MB.
      '--wal-segsize=1',
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

  function initdb(t: Tools, prepared: PreparedDir, signal?: AbortSignal): Promise<void> {
    return runAsServer(
      t.initdb.path,
      initdbArgs(prepared.data),
      prepared.dir,
      'initdb of the local sandbox',
      signal,
    );
  }

  /**
   * Drops the template databases from an initialised data directory, in single-user mode (no server, no
   * socket): a verification restores into `postgres` and creates no database, and every sandbox copies
   * the template, so two fewer databases make each copy 13 MB instead of 39 MB (its CPU is most of a
   * sandbox's set-up).
   */
  function dropTemplateDatabases(t: Tools, prepared: PreparedDir): Promise<void> {
    const sql = ['template1', 'template0']
      .flatMap((db) => [`ALTER DATABASE ${db} IS_TEMPLATE false`, `DROP DATABASE ${db}`])
      .join('\n');
    return runAsServer(
      t.postgres.path,
      ['--single', '-D', prepared.data, '-c', 'fsync=off', '-c', 'log_min_messages=warning', 'postgres'],
      prepared.dir,
      'dropping the template databases of the local sandbox',
      closing.signal,
      `${sql}\n`,
    );
  }

  /** The initialised data directory every sandbox of this driver is copied from (made once). */
  function templateDir(t: Tools): Promise<PreparedDir> {
    if (closed) return Promise.reject(new AppError('shutting_down', 'the local sandbox driver is closed'));
    template ??= filledDir('template', async (prepared) => {
      await initdb(t, prepared);
      await dropTemplateDatabases(t, prepared);
    });
    const made = template;
    made.catch(() => {
      if (template === made) template = undefined;
    });
    return made;
  }

  /**
   * A sandbox directory with a data directory copied from the template (initdb when cp is missing). A
   * cancelled preparation stops waiting for the template at once (its initdb goes on for the next one,
   * until close() kills it) and kills its own copy.
   */
  async function prepareDir(t: Tools, signal: AbortSignal): Promise<PreparedDir> {
    const source = await abortable(templateDir(t), signal);
    const user = await serverUser();
    signal.throwIfAborted();
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
          signal,
        );
      else await initdb(t, prepared, signal);
    });
  }

  /**
   * A started, ready sandbox (state spare until a verification claims it). Every step heeds `signal` (a
   * verification's) and close(), which waits for the preparation: it removes what it made itself, so
   * close() never removes a sandbox still starting.
   */
  function startSandbox(t: Tools, signal?: AbortSignal): Promise<LocalSandbox> {
    const started = startSandboxOnce(t, signal);
    const settled = started.then(
      () => undefined,
      () => undefined,
    );
    preparing.add(settled);
    void settled.finally(() => preparing.delete(settled));
    return started;
  }

  async function startSandboxOnce(t: Tools, signal: AbortSignal | undefined): Promise<LocalSandbox> {
    const cancel = linkSignals(closing.signal, signal);
    try {
      const prepared = await prepareDir(t, cancel.signal);
      const sandbox = new LocalSandbox(prepared, versionsOf(t), options.pathEnv, (s) => live.delete(s));
      try {
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
        // start() spawns nothing once the signal is aborted.
        await sandbox.start(wrapped, cancel.signal);
        live.add(sandbox);
        return sandbox;
      } catch (error) {
        await sandbox.destroy();
        throw error;
      }
    } finally {
      cancel.dispose();
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
      if (sandbox && (await sandbox.isUsable())) return sandbox;
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
      await Promise.all([...preparing]);
      await Promise.all([...live].map((s) => s.destroy()));
      live.clear();
      const made = await template?.catch(() => undefined);
      template = undefined;
      if (made) await rm(made.dir, { recursive: true, force: true, maxRetries: 3 });
    },
  };

  return driver;
}
