// What every part of the docker sandbox says to and about the engine: the labels and names of sandbox
// containers, the translation of engine errors into our one error shape, forced removal, and log frames.
import type Docker from 'dockerode';
import { type AppError, errnoOf, isAppError } from '../errors.js';
import { sandboxUnavailable } from './unavailable.js';

/** Labels every sandbox container carries; the reaper finds leftovers by the first. */
export const LABEL = {
  verify: 'flux-ops.verify',
  backupId: 'flux-ops.verify.backup-id',
  projectId: 'flux-ops.verify.project-id',
  expiresAt: 'flux-ops.verify.expires-at',
  instance: 'flux-ops.verify.instance',
} as const;

/** Names of spare containers; a claimed spare is renamed after its backup (labels cannot change). */
export const SPARE_NAME_PREFIX = 'flux-verify-spare-';

/** The name of a verification's container: its backup id, whether it started cold or as a spare. */
export function sandboxNamePrefix(backupId: string): string {
  return `flux-verify-${backupId.toLowerCase()}-`;
}

const CONNECTION_ERRNOS = new Set(['ENOENT', 'ECONNREFUSED', 'EACCES', 'EPERM', 'ECONNRESET', 'ENOTSOCK']);

export function statusCodeOf(error: unknown): number | undefined {
  const code = (error as { statusCode?: unknown })?.statusCode;
  return typeof code === 'number' ? code : undefined;
}

/** An engine failure as `unverifiable`: docker_unavailable when the socket does not answer, else sandbox_failed. */
export function engineError(error: unknown, what: string, socketPath: string): AppError {
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
      `${what}: the Docker engine at FLUX_DOCKER_SOCKET=${socketPath} does not answer (${errno ?? message.slice(0, 120)}); ${fix}. ` +
        'Or set FLUX_VERIFY_DRIVER=local to verify with a local throwaway cluster.',
      { cause: error },
    );
  }
  return sandboxUnavailable('sandbox_failed', `${what}: ${message.slice(0, 500)}`, { cause: error });
}

/** Forced removal with the container's volumes; one already gone (or going) counts as removed. */
export async function removeContainer(container: Docker.Container): Promise<void> {
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
