// The one error type of flux-ops and the one table mapping its codes to HTTP statuses and CLI exit codes.

/** CLI exit codes. verify: 0 verified, 1 failed, 2 could not verify; the rest follow sysexits(3). */
export const EXIT = {
  ok: 0,
  failed: 1,
  couldNotVerify: 2,
  usage: 64,
  dataError: 65,
  noInput: 66,
  unavailable: 69,
  software: 70,
  cantCreate: 73,
  ioError: 74,
  tempFail: 75,
  noPermission: 77,
  config: 78,
} as const;

export const ERROR_TABLE = {
  bad_request: { status: 400, exit: EXIT.usage, summary: 'the request is malformed' },
  invalid_id: { status: 400, exit: EXIT.usage, summary: 'an id is not of its required form' },
  unauthorized: { status: 401, exit: EXIT.noPermission, summary: 'no valid Bearer token' },
  signature_invalid: { status: 401, exit: EXIT.noPermission, summary: 'webhook signature missing or wrong' },
  forbidden: { status: 403, exit: EXIT.noPermission, summary: 'the token lacks the scope' },
  not_found: { status: 404, exit: EXIT.noInput, summary: 'no such project, backup or route' },
  method_not_allowed: {
    status: 405,
    exit: EXIT.usage,
    summary: 'the route does not serve this method (Allow lists those it does)',
  },
  conflict: { status: 409, exit: EXIT.tempFail, summary: 'the same work is already running' },
  event_replayed: { status: 409, exit: EXIT.dataError, summary: 'this webhook-id was already received' },
  precondition_failed: { status: 412, exit: EXIT.failed, summary: 'a safety gate refused the action' },
  payload_too_large: { status: 413, exit: EXIT.usage, summary: 'the body exceeds the limit' },
  unsupported_media_type: { status: 415, exit: EXIT.usage, summary: 'wrong Content-Type' },
  unprocessable: { status: 422, exit: EXIT.dataError, summary: 'well-formed but not acceptable' },
  rate_limited: { status: 429, exit: EXIT.tempFail, summary: 'too many requests for this token' },
  // nginx's 499: nobody reads the answer, but logs and metrics count it as the client's doing.
  client_closed: {
    status: 499,
    exit: EXIT.tempFail,
    summary: 'the client closed the connection before its request was read',
  },
  not_implemented: { status: 501, exit: EXIT.usage, summary: 'no flux-ops server implements the method' },
  internal: { status: 500, exit: EXIT.software, summary: 'a bug or an unexpected fault' },
  dir_not_writable: { status: 500, exit: EXIT.cantCreate, summary: 'a data directory is not writable' },
  disk_full: { status: 507, exit: EXIT.ioError, summary: 'no space left on the device' },
  artifact_invalid: { status: 422, exit: EXIT.failed, summary: 'a backup file does not match its manifest' },
  encryption_key_missing: {
    status: 503,
    exit: EXIT.unavailable,
    summary: 'an age-encrypted copy and no identity here that opens it (FLUX_BACKUP_AGE_IDENTITY_FILE)',
  },
  manifest_not_authentic: {
    status: 422,
    exit: EXIT.dataError,
    summary: 'a manifest or receipt does not authenticate under FLUX_MANIFEST_SECRETS',
  },
  manifest_misplaced: {
    status: 422,
    exit: EXIT.dataError,
    summary: 'a manifest names another project or backup than the path it lies at',
  },
  dump_failed: { status: 502, exit: EXIT.failed, summary: 'pg_dump failed' },
  replication_failed: { status: 502, exit: EXIT.failed, summary: 'the offsite copy could not be proven' },
  offsite_conflict: { status: 409, exit: EXIT.failed, summary: 'a different offsite copy already exists' },
  verify_failed: { status: 422, exit: EXIT.failed, summary: 'restore verification failed' },
  unverifiable: { status: 503, exit: EXIT.couldNotVerify, summary: 'restore verification could not run' },
  migrate_failed: { status: 500, exit: EXIT.failed, summary: 'the migration failed and was rolled back' },
  restore_failed: {
    status: 500,
    exit: EXIT.failed,
    summary: 'the restore failed; the live state was put back or never touched',
  },
  tool_missing: { status: 503, exit: EXIT.unavailable, summary: 'a required tool is not on PATH' },
  tool_version: { status: 503, exit: EXIT.unavailable, summary: 'a tool is too old for the server' },
  dependency_unavailable: {
    status: 503,
    exit: EXIT.unavailable,
    summary: 'a database, engine or store is down',
  },
  upstream_unavailable: {
    status: 502,
    exit: EXIT.unavailable,
    summary: 'the router could not reach a function',
  },
  queue_full: { status: 503, exit: EXIT.tempFail, summary: 'the work queue is full' },
  shutting_down: { status: 503, exit: EXIT.tempFail, summary: 'the process is stopping' },
  timeout: { status: 504, exit: EXIT.tempFail, summary: 'the work took longer than its limit' },
  config_invalid: { status: 500, exit: EXIT.config, summary: 'the configuration is invalid' },
} as const satisfies Record<string, { status: number; exit: number; summary: string }>;

export type ErrorCode = keyof typeof ERROR_TABLE;
/** The HTTP statuses errors answer with: exactly the table's. */
export type ErrorStatus = (typeof ERROR_TABLE)[ErrorCode]['status'];

export interface AppErrorOptions {
  cause?: unknown;
  /** Extra machine-readable facts for the JSON body (never secrets). */
  details?: Record<string, unknown>;
  /** Seconds for a Retry-After header (429, 503). */
  retryAfterSeconds?: number;
}

export class AppError extends Error {
  override readonly name = 'AppError';
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ErrorCode, message: string, options: AppErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }

  get status(): ErrorStatus {
    return ERROR_TABLE[this.code].status;
  }

  get exitCode(): number {
    return ERROR_TABLE[this.code].exit;
  }

  toJSON(): { error: string; code: ErrorCode } & Record<string, unknown> {
    return { error: this.message, code: this.code, ...(this.details ?? {}) };
  }
}

export function isAppError(value: unknown): value is AppError {
  return value instanceof AppError;
}

export function exitCodeFor(code: string): number {
  return code in ERROR_TABLE ? ERROR_TABLE[code as ErrorCode].exit : EXIT.software;
}

/** The errno of a Node system error, if any. */
export function errnoOf(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

export const RUN_AS_UID = 1001;

/**
 * Translates a filesystem error met while writing under a backup root into an operator-grade AppError.
 * EACCES/EPERM name both directory variables and the chown fix; ENOSPC says the disk is full.
 */
export function fsWriteError(error: unknown, path: string, what: string): AppError {
  const errno = errnoOf(error);
  if (errno === 'EACCES' || errno === 'EPERM' || errno === 'EROFS' || errno === 'ENOTDIR') {
    return new AppError(
      'dir_not_writable',
      `${what}: cannot write ${path} (${errno}). FLUX_BACKUPS_LOCAL_DIR and FLUX_BACKUPS_OFFSITE_DIR must be ` +
        `writable by this process (uid ${process.getuid?.() ?? RUN_AS_UID}; the image runs as uid ${RUN_AS_UID}): ` +
        `run \`chown -R ${RUN_AS_UID}:${RUN_AS_UID} <dir>\` on the host or volume, then retry.`,
      { cause: error, details: { path, errno } },
    );
  }
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    return new AppError(
      'disk_full',
      `${what}: no space left writing ${path}; the partial file was removed and earlier backups are intact. ` +
        'Free space or apply retention, then retry.',
      { cause: error, details: { path, errno } },
    );
  }
  if (isAppError(error)) return error;
  return new AppError('internal', `${what}: ${(error as Error)?.message ?? String(error)}`, { cause: error });
}
