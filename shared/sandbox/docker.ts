// The docker sandbox: a labelled, resource-limited container without network from a local image (never
// pulled), the dump streamed in through the API as a tar stream, tools run inside through exec, readiness
// by `SELECT 1` over the container's loopback, forced removal, and a reaper for labelled leftovers.
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type Docker from 'dockerode';
import { MIB } from '../config.js';
import { AppError, errnoOf, isAppError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  type CreateSandboxOptions,
  createTail,
  type DriverStatus,
  type ExecOptions,
  type ExecResult,
  parseVersionText,
  type Sandbox,
  type SandboxDriver,
  type SandboxVersions,
  sandboxUnavailable,
  settingsArgs,
  shortCommand,
  throwawaySettings,
} from './types.js';

export const DRIVER_NAME = 'docker' as const;

/** Labels every sandbox container carries; the reaper finds leftovers by the first. */
export const LABEL = {
  verify: 'flux-ops.verify',
  backupId: 'flux-ops.verify.backup-id',
  projectId: 'flux-ops.verify.project-id',
  expiresAt: 'flux-ops.verify.expires-at',
  instance: 'flux-ops.verify.instance',
} as const;

/** Where streamed files land inside the container (exists in every postgres image). */
const INPUT_DIR = '/tmp';
const READY_POLL_MS = 100;
const PING_TIMEOUT_MS = 5_000;
/** A labelled container without a readable expiry is a leftover after this long. */
const UNLABELLED_EXPIRY_MS = 24 * 60 * 60_000;
const CONNECTION_ERRNOS = new Set(['ENOENT', 'ECONNREFUSED', 'EACCES', 'EPERM', 'ECONNRESET', 'ENOTSOCK']);

export interface DockerDriverOptions {
  socketPath: string;
  image: string;
  memoryMb: number;
  cpus: number;
  pids: number;
  /** Identifies this process on the engine (label); tests use it to find their own containers. */
  instance?: string;
  log?: Logger;
}

type ContainerHandle = Docker.Container;

function statusCodeOf(error: unknown): number | undefined {
  const code = (error as { statusCode?: unknown })?.statusCode;
  return typeof code === 'number' ? code : undefined;
}

/** Container logs of a non-TTY container come framed (8-byte header: stream, 0, 0, 0, length BE). */
export function demuxLogs(framed: Buffer): string {
  const parts: Buffer[] = [];
  let pos = 0;
  while (pos + 8 <= framed.length && framed[pos]! <= 2 && framed.readUIntBE(pos + 1, 3) === 0) {
    const length = framed.readUInt32BE(pos + 4);
    parts.push(framed.subarray(pos + 8, pos + 8 + length));
    pos += 8 + length;
  }
  return pos === 0 ? framed.toString('utf8') : Buffer.concat(parts).toString('utf8');
}

export function createDockerDriver(options: DockerDriverOptions): SandboxDriver {
  const { image, log } = options;
  const instance = options.instance ?? `${os.hostname()}:${process.pid}`;
  const maintenanceWorkMemMb = Math.max(64, Math.min(2048, Math.floor(options.memoryMb / 4)));
  let clientPromise: Promise<Docker> | undefined;
  const live = new Set<DockerSandbox>();

  // dockerode is loaded only when the docker driver is used.
  function client(): Promise<Docker> {
    clientPromise ??= import('dockerode').then(
      ({ default: DockerClient }) => new DockerClient({ socketPath: options.socketPath }),
    );
    return clientPromise;
  }

  function engineError(error: unknown, what: string): AppError {
    if (isAppError(error)) return error;
    const errno = errnoOf(error);
    const message = (error as Error)?.message ?? String(error);
    if ((errno && CONNECTION_ERRNOS.has(errno)) || /socket hang up|connect/i.test(message)) {
      const fix =
        errno === 'EACCES' || errno === 'EPERM'
          ? `this process (uid ${process.getuid?.()}) may not use the socket: add its group (the socket's gid) to the service, or run the verifier where it may`
          : 'start the Docker engine, or mount its socket into this container and point FLUX_DOCKER_SOCKET at it';
      return sandboxUnavailable(
        'docker_unavailable',
        `${what}: the Docker engine at FLUX_DOCKER_SOCKET=${options.socketPath} does not answer (${errno ?? message.slice(0, 120)}); ${fix}. ` +
          'Or set FLUX_VERIFY_DRIVER=local to verify with a local throwaway cluster.',
        { cause: error },
      );
    }
    return sandboxUnavailable('sandbox_failed', `${what}: ${message.slice(0, 500)}`, { cause: error });
  }

  async function ping(docker: Docker): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        docker.ping(),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(Object.assign(new Error('ping timed out'), { code: 'ECONNRESET' })),
            PING_TIMEOUT_MS,
          );
        }),
      ]);
    } catch (error) {
      throw engineError(error, 'docker sandbox');
    } finally {
      clearTimeout(timer);
    }
  }

  async function inspectImage(docker: Docker): Promise<Docker.ImageInspectInfo> {
    try {
      return await docker.getImage(image).inspect();
    } catch (error) {
      if (statusCodeOf(error) === 404) {
        throw sandboxUnavailable(
          'image_missing',
          `image ${image} (FLUX_BACKUP_VERIFY_POSTGRES_IMAGE) is not present on the Docker engine, and verify never pulls ` +
            `at verification time: run \`docker pull ${image}\` (or build it) on the Docker host, or set ` +
            'FLUX_BACKUP_VERIFY_POSTGRES_IMAGE to an image that is present',
          { cause: error, details: { image } },
        );
      }
      throw engineError(error, `inspecting image ${image}`);
    }
  }

  function imageVersions(info: Docker.ImageInspectInfo): Partial<SandboxVersions> {
    const env = new Map(
      (info.Config?.Env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]),
    );
    const parsed = parseVersionText(env.get('PG_VERSION') ?? env.get('PG_MAJOR') ?? '');
    return parsed
      ? {
          server: parsed.version,
          serverMajor: parsed.major,
          pgRestore: parsed.version,
          pgRestoreMajor: parsed.major,
        }
      : {};
  }

  async function removeContainer(container: ContainerHandle): Promise<void> {
    try {
      // v: also the anonymous volume the official image declares for PGDATA.
      await container.remove({ force: true, v: true });
    } catch (error) {
      const status = statusCodeOf(error);
      if (status === 404) return;
      if (status === 409 && /already in progress/i.test((error as Error).message)) return;
      throw error;
    }
  }

  const driver: SandboxDriver = {
    name: DRIVER_NAME,

    async status(): Promise<DriverStatus> {
      try {
        const docker = await client();
        await ping(docker);
        const info = await inspectImage(docker);
        const versions = imageVersions(info);
        return {
          driver: DRIVER_NAME,
          ok: true,
          image,
          versions,
          detail: `docker sandbox: engine at ${options.socketPath} answers, image ${image} present${versions.server ? ` (PostgreSQL ${versions.server})` : ''}`,
        };
      } catch (error) {
        const reason = (isAppError(error) ? error.details?.reason : undefined) as DriverStatus['reason'];
        return {
          driver: DRIVER_NAME,
          ok: false,
          image,
          reason: reason ?? 'docker_unavailable',
          detail: (error as Error).message,
        };
      }
    },

    async create(createOptions: CreateSandboxOptions): Promise<Sandbox> {
      const docker = await client();
      await ping(docker);
      await inspectImage(docker);
      const expiresAt = new Date(Date.now() + createOptions.ttlMs).toISOString();
      let container: ContainerHandle;
      try {
        container = await docker.createContainer({
          name: `flux-verify-${createOptions.backupId.toLowerCase()}-${randomBytes(3).toString('hex')}`,
          Image: image,
          Cmd: [
            'postgres',
            '-c',
            'listen_addresses=127.0.0.1',
            ...settingsArgs(throwawaySettings(maintenanceWorkMemMb)),
          ],
          Env: ['POSTGRES_HOST_AUTH_METHOD=trust', 'POSTGRES_INITDB_ARGS=--no-sync'],
          Labels: {
            [LABEL.verify]: '1',
            [LABEL.backupId]: createOptions.backupId,
            [LABEL.projectId]: createOptions.projectId,
            [LABEL.expiresAt]: expiresAt,
            [LABEL.instance]: instance,
          },
          HostConfig: {
            NetworkMode: 'none',
            Memory: options.memoryMb * MIB,
            MemorySwap: options.memoryMb * MIB,
            NanoCpus: Math.round(options.cpus * 1e9),
            PidsLimit: options.pids,
            ShmSize: Math.min(256, Math.floor(options.memoryMb / 4)) * MIB,
            // The entrypoint needs to chown PGDATA and drop to the postgres user; nothing else.
            CapDrop: ['ALL'],
            CapAdd: ['CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'SETGID', 'SETUID'],
            SecurityOpt: ['no-new-privileges'],
            AutoRemove: false,
          },
        });
      } catch (error) {
        throw engineError(error, `creating a sandbox container from ${image}`);
      }
      const sandbox = new DockerSandbox(container, image);
      live.add(sandbox);
      try {
        try {
          await container.start();
        } catch (error) {
          throw engineError(error, `starting the sandbox container from ${image}`);
        }
        await sandbox.waitReady(createOptions.signal);
        await sandbox.readVersions(createOptions.signal);
        return sandbox;
      } catch (error) {
        await sandbox
          .destroy()
          .catch((e) => log?.error({ err: e, id: container.id }, 'sandbox removal failed'));
        throw error;
      }
    },

    async reap(now = new Date()) {
      let docker: Docker;
      let containers: Docker.ContainerInfo[];
      try {
        docker = await client();
        containers = await docker.listContainers({ all: true, filters: { label: [`${LABEL.verify}=1`] } });
      } catch (error) {
        log?.debug({ err: error }, 'docker reaper: engine not reachable');
        return 0;
      }
      const ours = new Set([...live].map((s) => s.id));
      let removed = 0;
      for (const c of containers) {
        if (ours.has(c.Id)) continue;
        const labelled = Date.parse(c.Labels?.[LABEL.expiresAt] ?? '');
        const expires = Number.isFinite(labelled) ? labelled : c.Created * 1000 + UNLABELLED_EXPIRY_MS;
        if (expires > now.getTime()) continue;
        try {
          await removeContainer(docker.getContainer(c.Id));
          removed += 1;
          log?.warn(
            { container: c.Id.slice(0, 12), backupId: c.Labels?.[LABEL.backupId] },
            'removed a leftover sandbox container',
          );
        } catch (error) {
          log?.warn(
            { err: error, container: c.Id.slice(0, 12) },
            'could not remove a leftover sandbox container',
          );
        }
      }
      return removed;
    },

    async close() {
      await Promise.all([...live].map((s) => s.destroy().catch(() => undefined)));
      live.clear();
    },
  };

  class DockerSandbox implements Sandbox {
    readonly driver = DRIVER_NAME;
    readonly id: string;
    readonly image: string;
    versions: SandboxVersions = { server: '', serverMajor: 0, pgRestore: '', pgRestoreMajor: 0 };
    #container: ContainerHandle;
    #destroyed: Promise<void> | undefined;

    constructor(container: ContainerHandle, imageName: string) {
      this.#container = container;
      this.id = container.id;
      this.image = imageName;
    }

    async waitReady(signal: AbortSignal | undefined): Promise<void> {
      // Over TCP on the container's loopback: the official image's temporary init server listens on the
      // unix socket only, so it cannot pass for the real server (pg_isready would).
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
        await new Promise((r) => setTimeout(r, READY_POLL_MS));
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
        throw engineError(error, 'streaming the dump into the sandbox container');
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
            'PGUSER=postgres',
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
          stderr.push(Buffer.from(`container not running: ${(error as Error).message.slice(0, 200)}`));
          return result(126, false);
        }
        throw engineError(error, `running ${argv[0]} in the sandbox`);
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
          else reject(engineError(error, `reading ${argv[0]} output from the sandbox`));
        });
      });
      if (canceled) return result(null, true);
      // The stream ends a moment before the engine records the exit code.
      for (let i = 0; i < 100; i++) {
        const info = await exec.inspect().catch(() => undefined);
        if (info && !info.Running) return result(info.ExitCode ?? null, false);
        await new Promise((r) => setTimeout(r, 20));
      }
      return result(null, false);
    }

    destroy(): Promise<void> {
      this.#destroyed ??= (async () => {
        await removeContainer(this.#container);
        live.delete(this);
      })().catch((error) => {
        // Not removed (engine gone?): a later call retries, the reaper sweeps it after its expiry.
        this.#destroyed = undefined;
        throw error;
      });
      return this.#destroyed;
    }
  }

  return driver;
}
