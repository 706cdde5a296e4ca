// One local sandbox: a server started (inside its boundary) on a directory prepared by the driver, files
// written into its input directory, tools run against its private socket, and its removal.
import { randomInt } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { STREAM_CHUNK_BYTES } from '../atomic.js';
import { AppError } from '../errors.js';
import { which } from '../tools.js';
import type { Wrapped } from './boundary.js';
import { type PreparedDir, writeMarker } from './local-marker.js';
import { notRun, SandboxSession } from './local-session.js';
import { createTail, shortCommand } from './output.js';
import {
  type CreateSandboxOptions,
  type ExecOptions,
  type ExecResult,
  SANDBOX_SUPERUSER,
  type Sandbox,
  type SandboxVersions,
  type ServerWatch,
} from './types.js';
import { sandboxUnavailable } from './unavailable.js';

/** Readiness: postmaster.pid is re-read after this, doubling up to READY_POLL_MAX_MS (no process per poll). */
const READY_POLL_MIN_MS = 5;
const READY_POLL_MAX_MS = 50;
const STOP_WAIT_MS = 10_000;

/** Servers of every local driver in this process: stopped if the process exits without closing them. */
const runningServers = new Set<ResultPromise>();
let isExitHookInstalled = false;

/**
 * Signals the server's whole process group (it is spawned as the leader of its own). The boundary's
 * wrapper, unshare, takes the namespace down with it only once its forked child has armed its parent-death
 * signal: a wrapper stopped in the moment before (a start cancelled at once) would leave the namespace's
 * init running, holding the log pipe open, and the server's promise would never settle. That init is in
 * the group, so it is reached anyway.
 */
function signalGroup(server: ResultPromise, signal: NodeJS.Signals): void {
  if (server.pid === undefined) return;
  try {
    process.kill(-server.pid, signal);
  } catch {
    // ESRCH: nothing of the group is left.
  }
}

function stopOnExit(server: ResultPromise): void {
  if (!isExitHookInstalled) {
    isExitHookInstalled = true;
    process.on('exit', () => {
      for (const s of runningServers) signalGroup(s, 'SIGQUIT');
    });
  }
  runningServers.add(server);
  void server.finally(() => runningServers.delete(server)).catch(() => undefined);
}

export class LocalSandbox implements Sandbox {
  readonly driver = 'local' as const;
  readonly id: string;
  readonly port = randomInt(20_000, 60_000);
  readonly versions;
  #prepared: PreparedDir;
  #pathEnv: string | undefined;
  #server: ResultPromise | undefined;
  /** The server process (the wrapper) has exited: the server is gone, whatever holds its pipes. */
  #exited = false;
  /** Its promise settled: every holder of its stdio is gone too. */
  #settled = false;
  #destroyed: Promise<void> | undefined;
  #serverPid: number | undefined;
  #release: (() => Promise<void>) | undefined;
  /**
   * The superuser's session, opened once the server is ready and held until removal: every superuser
   * script runs on it, and its end is how a restart or stop of the server is seen (watch()).
   */
  #session: SandboxSession | undefined;
  #onDestroyed: (sandbox: LocalSandbox) => void;

  /** `onDestroyed` hears of the removal (the driver stops counting it as live). */
  constructor(
    prepared: PreparedDir,
    versions: SandboxVersions,
    pathEnv: string | undefined,
    onDestroyed: (sandbox: LocalSandbox) => void,
  ) {
    this.id = prepared.dir;
    this.#prepared = prepared;
    this.#pathEnv = pathEnv;
    this.versions = versions;
    this.#onDestroyed = onDestroyed;
  }

  get isRunning(): boolean {
    return this.#server !== undefined && !this.#exited && this.#destroyed === undefined;
  }

  /**
   * Whether it can serve a verification now: running, and its held session answers (a server restarted
   * since, after a crashed backend, has ended it, though this process may not have heard yet).
   */
  async isUsable(): Promise<boolean> {
    return this.isRunning && (await this.#session?.answers()) === true;
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
    // No server for a preparation cancelled (or a sandbox removed) before it got this far.
    if (signal?.aborted) throw signal.reason ?? new AppError('shutting_down', 'cancelled');
    if (this.#destroyed) throw new AppError('shutting_down', 'the local sandbox was removed');
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
      // Its own process group, stopped as a whole (signalGroup).
      detached: true,
    });
    this.#server = server;
    stopOnExit(server);
    server.once('exit', () => {
      this.#exited = true;
      // Whatever of its group outlived it escaped the namespace's teardown: it goes now, the moment the
      // wrapper is reaped (before its pid could lead a new process group).
      signalGroup(server, 'SIGKILL');
    });
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
        this.#settled = true;
      },
      () => {
        this.#exited = true;
        this.#settled = true;
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
      if (status === 'ready' && (await this.#openSession(signal))) return;
      await sleep(delay);
      delay = Math.min(READY_POLL_MAX_MS, delay * 2);
    }
  }

  /** Opens the superuser's session and confirms it with SELECT 1; false when the server does not take it yet. */
  async #openSession(signal: AbortSignal | undefined): Promise<boolean> {
    let session: SandboxSession;
    try {
      session = await SandboxSession.open(this.#target(SANDBOX_SUPERUSER));
    } catch {
      return false;
    }
    // Removed meanwhile: the session goes with it.
    if (!(await session.answers(signal)) || this.#destroyed) {
      await session.close();
      return false;
    }
    this.#session = session;
    return true;
  }

  #target(user: string) {
    return { socket: this.#prepared.socket, port: this.port, user };
  }

  async sql(script: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const user = opts.user ?? SANDBOX_SUPERUSER;
    const mark = (result: ExecResult) => (this.#exited ? { ...result, sandboxGone: true } : result);
    if (user === SANDBOX_SUPERUSER) {
      const session = this.#session;
      if (!session) return mark(notRun('the local sandbox has no server session (not started, or removed)'));
      const result = await session.run(script, opts.signal);
      // Each script starts as a new psql session would: nothing it set or made (search_path, temp
      // objects, prepared statements, a transaction it left open) carries over to the next.
      if (!result.isCanceled && (await session.run('DISCARD ALL', opts.signal)).failed) {
        await session.run('ROLLBACK', opts.signal);
        await session.run('DISCARD ALL', opts.signal);
      }
      return mark(result);
    }
    // Another role (a tenant's restore role): a session of its own, for this script only.
    const started = performance.now();
    let session: SandboxSession;
    try {
      session = await SandboxSession.open(this.#target(user));
    } catch (error) {
      return mark(
        notRun(`connecting as ${user} failed: ${(error as Error)?.message ?? String(error)}`, started),
      );
    }
    try {
      return mark(await session.run(script, opts.signal));
    } finally {
      await session.close();
    }
  }

  /**
   * The superuser's session, held since start-up, is the watch: a server that crashed, restarted after a
   * killed backend, or stopped has ended it, and an unprivileged role can neither end it nor fake its end.
   */
  async watch(opts: ExecOptions = {}): Promise<ServerWatch> {
    return {
      isIntact: async () => {
        const session = this.#session;
        if (!session?.isOpen || this.#exited) return false;
        const intact = await session.answers(opts.signal);
        if (opts.signal?.aborted) throw opts.signal.reason ?? new AppError('shutting_down', 'cancelled');
        return intact;
      },
      stop: () => undefined,
    };
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
      // Not waited for: a server that does not answer is stopped below either way.
      void this.#session?.close();
      const server = this.#server;
      if (server && !this.#settled) {
        // Immediate shutdown: nothing in a throwaway cluster is worth a checkpoint.
        signalGroup(server, 'SIGQUIT');
        const timer = setTimeout(() => signalGroup(server, 'SIGKILL'), STOP_WAIT_MS);
        await server.catch(() => undefined);
        clearTimeout(timer);
      }
      await this.#release?.();
      await rm(this.#prepared.dir, { recursive: true, force: true, maxRetries: 3 });
      this.#onDestroyed(this);
    })();
    return this.#destroyed;
  }
}
