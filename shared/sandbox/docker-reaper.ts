// Finds and removes abandoned sandbox containers (by their label): those whose owner process on this host
// exited, those past their expiry label, and those without a readable expiry older than a day.
import os from 'node:os';
import type Docker from 'dockerode';
import { errnoOf } from '../errors.js';
import type { Logger } from '../log.js';
import { DAY_MS } from '../units.js';
import { LABEL, removeContainer } from './docker-engine.js';

/** A labelled container without a readable expiry is a leftover after this long. */
const UNLABELLED_EXPIRY_MS = DAY_MS;

/**
 * Whether the `<hostname>:<pid>` an instance label names is a process of this host that has exited: its
 * sandboxes are leftovers at once (a crashed verifier can no longer finish or remove them). Labels of
 * other hosts, or not of that form (tests), are left to the expiry rule.
 */
export function ownerExited(label: string | undefined, hostname: string = os.hostname()): boolean {
  const m = /^(.+):(\d+)$/.exec(label ?? '');
  if (!m || m[1] !== hostname || Number(m[2]) === process.pid) return false;
  try {
    process.kill(Number(m[2]), 0);
    return false;
  } catch (error) {
    return errnoOf(error) === 'ESRCH';
  }
}

export interface DockerReaperOptions {
  client(): Promise<Docker>;
  /** This process's instance label. */
  instance: string;
  log?: Logger | undefined;
}

/** Removes the leftover containers (never one of `ours`); returns how many went. */
export async function reapContainers(
  options: DockerReaperOptions,
  ours: ReadonlySet<string>,
  now: Date,
): Promise<number> {
  const { instance, log } = options;
  let docker: Docker;
  let containers: Docker.ContainerInfo[];
  try {
    docker = await options.client();
    containers = await docker.listContainers({ all: true, filters: { label: [`${LABEL.verify}=1`] } });
  } catch (error) {
    log?.debug({ err: error }, 'docker reaper: engine not reachable');
    return 0;
  }
  let removed = 0;
  for (const c of containers) {
    if (ours.has(c.Id)) continue;
    const labelled = Date.parse(c.Labels?.[LABEL.expiresAt] ?? '');
    const expires = Number.isFinite(labelled) ? labelled : c.Created * 1000 + UNLABELLED_EXPIRY_MS;
    const owner = c.Labels?.[LABEL.instance];
    // Orphaned: made by a process that is gone (a restarted container keeps its hostname and pid 1,
    // so our own label on a container older than this process is a previous incarnation's).
    const orphaned =
      ownerExited(owner) || (owner === instance && c.Created * 1000 < performance.timeOrigin - 1000);
    if (!orphaned && expires > now.getTime()) continue;
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
}
