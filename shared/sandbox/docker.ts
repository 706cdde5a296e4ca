// The docker sandbox: a labelled, resource-limited container without network from a local image (never
// pulled), the dump streamed in through the API as a tar stream, tools run inside through exec, readiness
// by `SELECT 1` over the container's loopback, forced removal, and a reaper for labelled leftovers. One
// spare container is kept started and ready (creating one costs seconds: the storage driver copies the
// image, the entrypoint runs initdb); each verification consumes a fresh one, never a used one. The
// container itself is docker-sandbox.ts; the leftovers' reaper docker-reaper.ts.
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type Docker from 'dockerode';
import { AppError, isAppError } from '../errors.js';
import type { Logger } from '../log.js';
import { MIB } from '../units.js';
import {
  engineError as engineErrorOf,
  LABEL,
  SPARE_NAME_PREFIX,
  sandboxNamePrefix,
  statusCodeOf,
} from './docker-engine.js';
import { reapContainers } from './docker-reaper.js';
import { DockerSandbox } from './docker-sandbox.js';
import { parseVersionText } from './output.js';
import { settingsArgs, throwawaySettings } from './settings.js';
import { createSparePool } from './spares.js';
import type { CreateSandboxOptions, DriverStatus, Sandbox, SandboxDriver, SandboxVersions } from './types.js';
import { sandboxUnavailable } from './unavailable.js';

export const DRIVER_NAME = 'docker' as const;

/** An unclaimed spare is replaced this often, so its expiry label always covers a whole verification. */
const SPARE_REFRESH_MS = 30 * 60_000;
/** How long a verification may hold a sandbox when the caller does not say (FLUX_VERIFY_TIMEOUT_MS default + grace). */
const DEFAULT_SANDBOX_TTL_MS = 65 * 60_000;
const PING_TIMEOUT_MS = 5_000;

export interface DockerDriverOptions {
  socketPath: string;
  image: string;
  memoryMb: number;
  cpus: number;
  pids: number;
  /** Identifies this process on the engine (label); tests use it to find their own containers. */
  instance?: string;
  /** Keep one container started and ready (default true). */
  spare?: boolean;
  /**
   * Verifications at once (FLUX_VERIFY_CONCURRENCY, default 1): a spare is only prepared while fewer
   * containers than this serve verifications, so sandboxes and spare together never exceed it.
   */
  concurrency?: number;
  /** The longest a verification holds its sandbox (FLUX_VERIFY_TIMEOUT_MS + grace): a spare's expiry covers it. */
  sandboxTtlMs?: number;
  /** Tests: how often an unclaimed spare is replaced. */
  spareRefreshMs?: number;
  log?: Logger;
}

export function createDockerDriver(options: DockerDriverOptions): SandboxDriver {
  const { image, log } = options;
  const instance = options.instance ?? `${os.hostname()}:${process.pid}`;
  const maintenanceWorkMemMb = Math.max(64, Math.min(2048, Math.floor(options.memoryMb / 4)));
  // Parallel workers only add process start-up and coordination when they share the container's CPUs
  // with the leader (measured: a restore at FLUX_VERIFY_CPUS=1 is a few percent faster without them).
  const serverSettings = (cpus: number) => {
    const extraWorkers = String(Math.max(0, Math.ceil(cpus) - 1));
    return {
      ...throwawaySettings(maintenanceWorkMemMb),
      max_parallel_maintenance_workers: extraWorkers,
      max_parallel_workers_per_gather: extraWorkers,
    };
  };
  /** The engine's CPU count, asked once (undefined when it does not say). */
  let engineCpus: Promise<number | undefined> | undefined;
  let cpusWarned = false;
  const useSpare = options.spare ?? true;
  const sandboxTtlMs = options.sandboxTtlMs ?? DEFAULT_SANDBOX_TTL_MS;
  const spareRefreshMs = options.spareRefreshMs ?? SPARE_REFRESH_MS;
  const concurrency = options.concurrency ?? 1;
  let clientPromise: Promise<Docker> | undefined;
  const live = new Set<DockerSandbox>();
  let closed = false;
  /** Id of the configured image as last inspected: a spare of an image since replaced is not used. */
  let imageId: string | undefined;

  // dockerode is loaded only when the docker driver is used.
  function client(): Promise<Docker> {
    clientPromise ??= import('dockerode').then(
      ({ default: DockerClient }) => new DockerClient({ socketPath: options.socketPath }),
    );
    return clientPromise;
  }

  const engineError = (error: unknown, what: string) => engineErrorOf(error, what, options.socketPath);

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
      const info = await docker.getImage(image).inspect();
      imageId = info.Id;
      return info;
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

  /**
   * FLUX_VERIFY_CPUS, but no more than the engine has: the engine refuses a container asking for more
   * CPUs than it has, and the default (2) must work on a one-CPU host too.
   */
  async function cpuLimit(docker: Docker): Promise<number> {
    engineCpus ??= docker.info().then(
      (info: { NCPU?: unknown }) => (typeof info.NCPU === 'number' && info.NCPU > 0 ? info.NCPU : undefined),
      () => undefined,
    );
    const available = await engineCpus;
    if (available === undefined) engineCpus = undefined;
    if (available === undefined || options.cpus <= available) return options.cpus;
    if (!cpusWarned) {
      cpusWarned = true;
      log?.warn(
        { wanted: options.cpus, available },
        `FLUX_VERIFY_CPUS=${options.cpus} is more than the Docker engine's ${available} CPUs: sandboxes get ${available}`,
      );
    }
    return available;
  }

  /**
   * Checks the engine answers and the image is there, creates and starts a container and waits until its
   * server answers; removes it again if that fails.
   */
  async function startContainer(
    name: string,
    labels: Record<string, string>,
    expiresAtMs: number,
    signal: AbortSignal | undefined,
    isClaimed = false,
  ): Promise<DockerSandbox> {
    const docker = await client();
    await ping(docker);
    const fromImageId = (await inspectImage(docker)).Id;
    let container: Docker.Container;
    const cpus = await cpuLimit(docker);
    try {
      container = await docker.createContainer({
        name,
        Image: image,
        Cmd: ['postgres', '-c', 'listen_addresses=127.0.0.1', ...settingsArgs(serverSettings(cpus))],
        Env: ['POSTGRES_HOST_AUTH_METHOD=trust', 'POSTGRES_INITDB_ARGS=--no-sync'],
        Labels: {
          [LABEL.verify]: '1',
          ...labels,
          [LABEL.expiresAt]: new Date(expiresAtMs).toISOString(),
          [LABEL.instance]: instance,
        },
        HostConfig: {
          NetworkMode: 'none',
          Memory: options.memoryMb * MIB,
          MemorySwap: options.memoryMb * MIB,
          NanoCpus: Math.round(cpus * 1e9),
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
    const sandbox = new DockerSandbox(container, {
      image,
      imageId: fromImageId,
      expiresAtMs,
      socketPath: options.socketPath,
      log,
      onDestroyed: (s) => {
        live.delete(s);
        // A verification is over (or a spare was discarded): the next spare starts now, off its path.
        spares.refill();
      },
    });
    sandbox.isClaimed = isClaimed;
    live.add(sandbox);
    try {
      try {
        await container.start();
      } catch (error) {
        throw engineError(error, `starting the sandbox container from ${image}`);
      }
      await sandbox.waitReady(signal);
      await sandbox.readVersions(signal);
      return sandbox;
    } catch (error) {
      await sandbox
        .destroy()
        .catch((e) => log?.error({ err: e, id: container.id }, 'sandbox removal failed'));
      throw error;
    }
  }

  // A spare is only prepared while fewer containers than the concurrency serve verifications, and an
  // unclaimed one is replaced every spareRefreshMs, so its expiry label always covers a verification.
  const spares = createSparePool<DockerSandbox>({
    enabled: useSpare,
    hasRoom: () => [...live].filter((s) => s.isClaimed).length < concurrency,
    refreshMs: spareRefreshMs,
    async create() {
      // No backup id label: it is not known yet (the name says it once claimed). The expiry covers
      // the time until this spare is replaced plus a whole verification.
      return startContainer(
        `${SPARE_NAME_PREFIX}${randomBytes(4).toString('hex')}`,
        {},
        Date.now() + spareRefreshMs + sandboxTtlMs,
        undefined,
      );
    },
    destroy: (sandbox) => sandbox.destroy(),
    onError: (error, what, sandbox) => {
      if (what === 'prepare') log?.warn({ err: error }, 'could not prepare a spare docker sandbox');
      else log?.error({ err: error, id: sandbox?.id }, 'spare sandbox removal failed');
    },
  });

  /**
   * The spare for this verification (waiting for it if it is still starting: it started earlier than a
   * new one would), renamed after the backup; undefined when there is none that fits.
   */
  async function takeSpare(createOptions: CreateSandboxOptions): Promise<DockerSandbox | undefined> {
    // The next spare starts when a sandbox is removed, not while this one restores (a container start
    // copies the image and runs initdb, taking CPU and disk from the restore), unless the concurrency
    // leaves room for another verification at once.
    const sandbox = await spares.take();
    if (!sandbox) return undefined;
    const fits =
      sandbox.expiresAtMs >= Date.now() + createOptions.ttlMs &&
      sandbox.imageId === imageId &&
      !createOptions.signal?.aborted;
    if (fits && (await sandbox.claim(createOptions.backupId))) {
      spares.refill();
      return sandbox;
    }
    sandbox.isClaimed = false;
    spares.discard(sandbox);
    return undefined;
  }

  const driver: SandboxDriver = {
    name: DRIVER_NAME,

    async status(): Promise<DriverStatus> {
      try {
        const docker = await client();
        await ping(docker);
        const info = await inspectImage(docker);
        const versions = imageVersions(info);
        spares.refill();
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
      if (closed) throw new AppError('shutting_down', 'the docker sandbox driver is closed');
      const claimed = await takeSpare(createOptions);
      if (claimed) return claimed;
      // No spare, or another verification took the one being prepared: start one now rather than queue.
      return startContainer(
        `${sandboxNamePrefix(createOptions.backupId)}${randomBytes(3).toString('hex')}`,
        { [LABEL.backupId]: createOptions.backupId, [LABEL.projectId]: createOptions.projectId },
        Date.now() + createOptions.ttlMs,
        createOptions.signal,
        true,
      );
    },

    spareState: () => spares.state(),

    reap: (now = new Date()) =>
      reapContainers({ client, instance, log }, new Set([...live].map((s) => s.id)), now),

    async close() {
      closed = true;
      await spares.close();
      await Promise.all([...live].map((s) => s.destroy().catch(() => undefined)));
      live.clear();
    },
  };

  return driver;
}
