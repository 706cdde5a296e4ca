// Chooses the sandbox driver from FLUX_VERIFY_DRIVER: docker, local, or auto (docker when the engine
// answers and the image is present, else local when its tools are there). Decided per verification, so a
// Docker engine that comes back is used again without a restart.
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { MINUTE_MS } from '../units.js';
import { createDockerDriver } from './docker.js';
import { createLocalDriver } from './local.js';
import type { DriverStatus, SandboxDriver } from './types.js';
import { sandboxUnavailable } from './unavailable.js';

export interface DriverSelection {
  readonly mode: Config['FLUX_VERIFY_DRIVER'];
  /** Every driver this process may use (the reaper sweeps each). */
  readonly drivers: readonly SandboxDriver[];
  /** The driver for the next verification; throws AppError `unverifiable` (with reason) when none is usable. */
  resolve(): Promise<{ driver: SandboxDriver; status: DriverStatus }>;
  /** For /readyz: the selection and what it is based on. */
  status(): Promise<{ ok: boolean; driver?: string; detail: string; statuses: DriverStatus[] }>;
  close(): Promise<void>;
}

export interface SelectionOptions {
  log?: Logger;
  /** Label value identifying this process's containers (tests). */
  instance?: string;
  /** Keep one sandbox started and ready in the chosen driver (default true). */
  spare?: boolean;
}

/** A sandbox outliving its verification's timeout by this much is a leftover. */
export const SANDBOX_EXPIRY_GRACE_MS = 5 * MINUTE_MS;

/** How long a verification may hold its sandbox before any reaper may remove it. */
export function sandboxTtlMs(config: Pick<Config, 'FLUX_VERIFY_TIMEOUT_MS'>): number {
  return config.FLUX_VERIFY_TIMEOUT_MS + SANDBOX_EXPIRY_GRACE_MS;
}

export function createDriverSelection(
  config: Config,
  env: NodeJS.ProcessEnv,
  options: SelectionOptions = {},
): DriverSelection {
  const mode = config.FLUX_VERIFY_DRIVER;
  const docker =
    mode === 'local'
      ? undefined
      : createDockerDriver({
          socketPath: config.FLUX_DOCKER_SOCKET,
          image: config.FLUX_BACKUP_VERIFY_POSTGRES_IMAGE,
          memoryMb: config.FLUX_VERIFY_MEMORY_MB,
          cpus: config.FLUX_VERIFY_CPUS,
          pids: config.FLUX_VERIFY_PIDS,
          sandboxTtlMs: sandboxTtlMs(config),
          concurrency: config.FLUX_VERIFY_CONCURRENCY,
          ...(options.spare !== undefined ? { spare: options.spare } : {}),
          ...(options.instance ? { instance: options.instance } : {}),
          ...(options.log ? { log: options.log } : {}),
        });
  const local =
    mode === 'docker'
      ? undefined
      : createLocalDriver({
          pathEnv: env.PATH,
          baseDir: config.FLUX_VERIFY_LOCAL_DIR,
          osUser: config.FLUX_VERIFY_LOCAL_OS_USER,
          isolation: config.FLUX_VERIFY_LOCAL_ISOLATION,
          memoryMb: config.FLUX_VERIFY_MEMORY_MB,
          cpus: config.FLUX_VERIFY_CPUS,
          ...(options.spare !== undefined ? { spare: options.spare } : {}),
          ...(options.log ? { log: options.log } : {}),
        });
  const drivers = [docker, local].filter((d): d is SandboxDriver => d !== undefined);

  async function pick(): Promise<{
    chosen?: { driver: SandboxDriver; status: DriverStatus };
    statuses: DriverStatus[];
  }> {
    const statuses: DriverStatus[] = [];
    for (const driver of drivers) {
      const status = await driver.status();
      statuses.push(status);
      if (status.ok) return { chosen: { driver, status }, statuses };
    }
    return { statuses };
  }

  return {
    mode,
    drivers,

    async resolve() {
      const { chosen, statuses } = await pick();
      if (chosen) return chosen;
      const first = statuses[0]!;
      throw sandboxUnavailable(
        first.reason ?? 'sandbox_failed',
        mode === 'auto'
          ? `FLUX_VERIFY_DRIVER=auto found no usable sandbox: ${statuses.map((s) => `${s.driver}: ${s.detail}`).join('; ')}`
          : first.detail,
        { details: { driver: first.driver } },
      );
    },

    async status() {
      const { chosen, statuses } = await pick();
      return chosen
        ? {
            ok: true,
            driver: chosen.driver.name,
            detail: `FLUX_VERIFY_DRIVER=${mode} → ${chosen.driver.name}: ${chosen.status.detail}`,
            statuses,
          }
        : {
            ok: false,
            detail: `FLUX_VERIFY_DRIVER=${mode}: no usable sandbox (${statuses.map((s) => `${s.driver}: ${s.detail}`).join('; ')})`,
            statuses,
          };
    },

    async close() {
      await Promise.all(drivers.map((d) => d.close()));
    },
  };
}
