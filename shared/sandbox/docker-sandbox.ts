// One docker sandbox: a started container, readiness by `SELECT 1` over its loopback, files streamed in as
// a tar stream through the API, tools run inside through exec (one result shape, exit code from the
// engine), and forced removal.
import { randomBytes } from 'node:crypto';
import { type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type Docker from 'dockerode';
import { AppError } from '../errors.js';
import type { Logger } from '../log.js';
import { demuxLogs, engineError, removeContainer, sandboxNamePrefix, statusCodeOf } from './docker-engine.js';
import { createTail, parseVersionText, shortCommand } from './output.js';
import {
  type ExecOptions,
  type ExecResult,
  SANDBOX_STOPPED,
  SANDBOX_SUPERUSER,
  type Sandbox,
  type SandboxVersions,
} from './types.js';
import { sandboxUnavailable } from './unavailable.js';

/** Where streamed files land inside the container (exists in every postgres image). */
const INPUT_DIR = '/tmp';
/** Readiness polls (each an exec) start this soon after the container starts and back off to the max. */
const READY_POLL_MIN_MS = 25;
const READY_POLL_MAX_MS = 250;
/** How long an ended exec's exit code is waited for. */
const EXIT_CODE_WAIT_MS = 30_000;

export interface DockerSandboxOptions {
  image: string;
  /** The image id it was created from (a spare of an image since replaced is not used). */
  imageId: string;
  /** What its expiry label says (ms). */
  expiresAtMs: number;
  /** For the engine's error messages. */
  socketPath: string;
  log?: Logger | undefined;
  /** Hears of the removal (the driver stops counting it and may start the next spare). */
  onDestroyed(sandbox: DockerSandbox): void;
}

export class DockerSandbox implements Sandbox {
  readonly driver = 'docker' as const;
  readonly id: string;
  readonly image: string;
  readonly imageId: string;
  /** What its expiry label says (ms). */
  readonly expiresAtMs: number;
  /** Serves a verification (a claimed spare, or started for one). */
  isClaimed = false;
  versions: SandboxVersions = { server: '', serverMajor: 0, pgRestore: '', pgRestoreMajor: 0 };
  #container: Docker.Container;
  #destroyed: Promise<void> | undefined;
  #options: DockerSandboxOptions;

  constructor(container: Docker.Container, options: DockerSandboxOptions) {
    this.#container = container;
    this.#options = options;
    this.id = container.id;
    this.image = options.image;
    this.imageId = options.imageId;
    this.expiresAtMs = options.expiresAtMs;
  }

  /** Hands a spare to a verification: renamed after its backup; false when it is no longer running. */
  async claim(backupId: string): Promise<boolean> {
    this.isClaimed = true;
    const [running] = await Promise.all([
      this.#container.inspect().then(
        (info) => info.State?.Running === true,
        () => false,
      ),
      this.#container
        .rename({ name: `${sandboxNamePrefix(backupId)}${randomBytes(3).toString('hex')}` })
        .catch((error: unknown) =>
          this.#options.log?.warn({ err: error, id: this.id }, 'could not rename a claimed spare'),
        ),
    ]);
    return running;
  }

  async waitReady(signal: AbortSignal | undefined): Promise<void> {
    // Over TCP on the container's loopback: the official image's temporary init server listens on the
    // unix socket only, so it cannot pass for the real server (pg_isready would).
    let delay = READY_POLL_MIN_MS;
    for (;;) {
      if (signal?.aborted) throw signal.reason ?? new AppError('shutting_down', 'cancelled');
      const probe = await this.exec(['psql', '-h', '127.0.0.1', '-X', '-q', '-A', '-t', '-c', 'SELECT 1'], {
        ...(signal ? { signal } : {}),
      });
      if (probe.exitCode === 0 && probe.stdout.trim() === '1') return;
      const state = await this.#container.inspect().catch(() => undefined);
      if (!state?.State?.Running) {
        const logs = await this.#container
          .logs({ stdout: true, stderr: true, tail: 30 })
          .then(demuxLogs)
          .catch(() => '');
        const oom = state?.State?.OOMKilled ? ' (killed for exceeding FLUX_VERIFY_MEMORY_MB)' : '';
        throw sandboxUnavailable(
          'sandbox_failed',
          `the sandbox container from ${this.image} stopped during start-up${oom}, exit ${state?.State?.ExitCode ?? '?'}: ${logs.trim().slice(-800) || 'no log output'}`,
        );
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(READY_POLL_MAX_MS, delay * 2);
    }
  }

  async readVersions(signal: AbortSignal | undefined): Promise<void> {
    const opts = signal ? { signal } : {};
    const [restore, server] = await Promise.all([
      this.exec(['pg_restore', '--version'], opts),
      this.exec(['psql', '-X', '-q', '-A', '-t', '-c', 'SHOW server_version'], opts),
    ]);
    const r = parseVersionText(restore.stdout);
    const s = parseVersionText(server.stdout);
    if (!r || !s) {
      throw sandboxUnavailable(
        'sandbox_failed',
        `image ${this.image} lacks working PostgreSQL client tools (pg_restore: ${restore.stderr.trim().slice(0, 200) || restore.stdout.trim().slice(0, 80)})`,
      );
    }
    this.versions = {
      server: s.version,
      serverMajor: s.major,
      pgRestore: r.version,
      pgRestoreMajor: r.major,
    };
  }

  async putFile(name: string, source: Readable, sizeBytes: number, opts: ExecOptions = {}) {
    if (!/^[A-Za-z0-9._-]{1,128}$/.test(name))
      throw new AppError('bad_request', `bad sandbox file name ${name}`);
    const { default: tar } = await import('tar-stream');
    const pack = tar.pack();
    const entry = pack.entry({ name, size: sizeBytes, mode: 0o644, mtime: new Date() }, (error) => {
      if (error) pack.destroy(error);
    });
    const packing = pipeline(source, entry).then(() => pack.finalize());
    const upload = this.#container.putArchive(pack as unknown as NodeJS.ReadableStream, {
      path: INPUT_DIR,
      ...(opts.signal ? { abortSignal: opts.signal } : {}),
    });
    try {
      await Promise.all([packing, upload]);
    } catch (error) {
      pack.destroy();
      source.destroy();
      if (opts.signal?.aborted) throw opts.signal.reason ?? error;
      if (/size mismatch/i.test((error as Error).message)) {
        throw new AppError(
          'artifact_invalid',
          `the dump did not stream exactly ${sizeBytes} B into the sandbox (it changed while being read)`,
          { cause: error },
        );
      }
      throw engineError(error, 'streaming the dump into the sandbox container', this.#options.socketPath);
    }
    return `${INPUT_DIR}/${name}`;
  }

  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const started = performance.now();
    const stdout: Buffer[] = [];
    const stderr = createTail();
    const result = (exitCode: number | null, isCanceled: boolean): ExecResult => ({
      command: shortCommand(argv),
      exitCode,
      stdout: Buffer.concat(stdout).toString('utf8'),
      stderr: stderr.text(),
      seconds: (performance.now() - started) / 1000,
      isCanceled,
      failed: isCanceled || exitCode !== 0,
    });
    if (opts.signal?.aborted) return result(null, true);
    let exec: Docker.Exec;
    let stream: NodeJS.ReadWriteStream;
    try {
      exec = await this.#container.exec({
        Cmd: [...argv],
        AttachStdout: true,
        AttachStderr: true,
        User: 'postgres',
        WorkingDir: INPUT_DIR,
        Env: [
          `PGUSER=${opts.user ?? SANDBOX_SUPERUSER}`,
          'PGDATABASE=postgres',
          'PGAPPNAME=flux-ops-verify',
          'PGCONNECT_TIMEOUT=10',
        ],
      });
      stream = (await exec.start({ hijack: true, stdin: false })) as NodeJS.ReadWriteStream;
    } catch (error) {
      const status = statusCodeOf(error);
      if (status === 409 || status === 404 || status === 500) {
        // The container stopped (or was removed): the command could not run.
        stderr.push(Buffer.from(`${SANDBOX_STOPPED}: ${(error as Error).message.slice(0, 200)}`));
        return { ...result(126, false), sandboxGone: true };
      }
      throw engineError(error, `running ${argv[0]} in the sandbox`, this.#options.socketPath);
    }
    const sink = (push: (b: Buffer) => void) =>
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          push(chunk);
          callback();
        },
      });
    this.#container.modem.demuxStream(
      stream,
      sink((b) => stdout.push(b)),
      sink((b) => stderr.push(b)),
    );
    const canceled = await new Promise<boolean>((resolve, reject) => {
      const onAbort = () => {
        (stream as unknown as { destroy(): void }).destroy();
        resolve(true);
      };
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => {
        opts.signal?.removeEventListener('abort', onAbort);
        resolve(false);
      };
      stream.once('end', done);
      stream.once('close', done);
      stream.once('error', (error) => {
        opts.signal?.removeEventListener('abort', onAbort);
        if (opts.signal?.aborted) resolve(true);
        else
          reject(engineError(error, `reading ${argv[0]} output from the sandbox`, this.#options.socketPath));
      });
    });
    if (canceled) return result(null, true);
    // The stream ends a moment before the engine records the exit code (longer on a busy engine); an
    // exit never recorded stays null, which no rung takes as the backup's fault.
    const deadline = Date.now() + EXIT_CODE_WAIT_MS;
    for (let delay = 20; Date.now() < deadline; delay = Math.min(500, delay * 2)) {
      const info = await exec.inspect().catch((error) => {
        // No answer at all: the engine went away mid-command (its stream just ended), so how the
        // command ended is unknown; that says nothing about the backup (unverifiable, not a failure).
        if (statusCodeOf(error) === undefined)
          throw engineError(error, `reading how ${argv[0]} ended`, this.#options.socketPath);
        return undefined;
      });
      if (info && !info.Running) return result(info.ExitCode ?? null, false);
      await new Promise((r) => setTimeout(r, delay));
    }
    return result(null, false);
  }

  destroy(): Promise<void> {
    this.#destroyed ??= (async () => {
      await removeContainer(this.#container);
      this.#options.onDestroyed(this);
    })().catch((error) => {
      // Not removed (engine gone?): a later call retries, the reaper sweeps it after its expiry.
      this.#destroyed = undefined;
      throw error;
    });
    return this.#destroyed;
  }
}
