// The restore sandbox: one small driver interface (a disposable Postgres that files can be streamed
// into and tools run inside) with one result shape, implemented by docker.ts and local.ts.
import type { Readable } from 'node:stream';

export const DRIVER_NAMES = ['docker', 'local'] as const;
export type DriverName = (typeof DRIVER_NAMES)[number];

/**
 * Why a sandbox could not be had. Bounded (a metrics label); none of them says anything about the backup,
 * so a verification that meets one is `unverifiable`, never `restore_failed`.
 */
export const UNAVAILABLE_REASONS = [
  'docker_unavailable',
  'image_missing',
  'tools_missing',
  'sandbox_failed',
  'isolation_unavailable',
] as const;
export type UnavailableReason = (typeof UNAVAILABLE_REASONS)[number];

/** The same shape for every command in every driver: callers branch on fields, never on message text. */
export interface ExecResult {
  /** argv, shortened for logs (never holds a secret: sandboxes use no passwords). */
  command: string;
  /** null when the command was cancelled before it exited. */
  exitCode: number | null;
  stdout: string;
  /** The tail of stderr (bounded). */
  stderr: string;
  seconds: number;
  isCanceled: boolean;
  /**
   * The sandbox itself was gone when the command ended (container stopped, server exited): a fact the
   * driver observed, never read from the command's output (which restored tenant code can write).
   */
  sandboxGone?: boolean;
  /** exitCode !== 0 or cancelled. */
  failed: boolean;
}

export interface SandboxVersions {
  /** server_version of the sandbox, e.g. "15.18". */
  server: string;
  serverMajor: number;
  /** pg_restore inside the sandbox (its tools match its server). */
  pgRestore: string;
  pgRestoreMajor: number;
}

export interface ExecOptions {
  signal?: AbortSignal;
  /** Database role the command connects as (PGUSER); the sandbox superuser when absent. */
  user?: string;
}

/**
 * A running disposable Postgres. Superuser `postgres`, database `postgres`, no password, no network. Any
 * role with LOGIN may connect (trust): the restore connects as the tenant's unprivileged role.
 */
export interface Sandbox {
  readonly driver: DriverName;
  /** Container id or sandbox directory. */
  readonly id: string;
  readonly image?: string;
  readonly versions: SandboxVersions;
  /**
   * Streams exactly `sizeBytes` from `source` into a file named `name` inside the sandbox and returns its
   * path there. Nothing is bind-mounted: the bytes travel through the driver (tar stream / file write).
   */
  putFile(name: string, source: Readable, sizeBytes: number, options?: ExecOptions): Promise<string>;
  /** Runs a tool inside the sandbox (pg_restore, psql) with libpq pointed at the sandbox server. */
  exec(argv: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  /**
   * Runs an SQL script on a session held in this process (local: over the private socket), with exec's
   * result shape and stdout as `psql -A -t` prints it. Absent where only a tool inside the sandbox reaches
   * the server (docker): runSql goes through psql there.
   */
  sql?(script: string, options?: ExecOptions): Promise<ExecResult>;
  /** How this sandbox watches its server through a restore; absent: watchServer holds a psql session. */
  watch?(options?: ExecOptions): Promise<ServerWatch>;
  /** Kills the server and removes everything (container with its volumes, or the directory). Idempotent. */
  destroy(): Promise<void>;
}

/** Whether the sandbox server stayed up while tenant code ran in it (see watch.ts). */
export interface ServerWatch {
  /**
   * False when the watching session ended (the server restarted or stopped) or the server does not
   * answer. Asked after the restore, so no exit order of the two processes can hide a crash.
   */
  isIntact(): Promise<boolean>;
  /** Ends the watching session. */
  stop(): void;
}

export interface CreateSandboxOptions {
  projectId: string;
  backupId: string;
  /** After this the sandbox counts as a leftover that any reaper may remove. */
  ttlMs: number;
  signal?: AbortSignal;
}

export interface DriverStatus {
  driver: DriverName;
  ok: boolean;
  detail: string;
  reason?: UnavailableReason;
  image?: string;
  /** What is known before a sandbox starts (tools on PATH, or the image's PG_MAJOR/PG_VERSION). */
  versions?: Partial<SandboxVersions>;
}

export interface SandboxDriver {
  readonly name: DriverName;
  /** Whether sandboxes can be created now, and with which versions (readiness, driver selection). */
  status(): Promise<DriverStatus>;
  /** Starts a ready sandbox; throws AppError `unverifiable` with `details.reason` when none can be had. */
  create(options: CreateSandboxOptions): Promise<Sandbox>;
  /** Removes sandboxes left behind past their expiry (or by a dead owner); returns how many. */
  reap(now?: Date): Promise<number>;
  /** The warm sandbox a verification would start from: off (disabled), none, starting or ready. */
  spareState(): SpareState;
  /** Releases background resources (spare sandboxes, timers). */
  close(): Promise<void>;
}

export type SpareState = 'off' | 'none' | 'starting' | 'ready';

/** What an exec's stderr says when its sandbox had stopped before the command could run (exit 126). */
export const SANDBOX_STOPPED = 'the sandbox container is not running';
/** The database superuser of every sandbox. */
export const SANDBOX_SUPERUSER = 'postgres';
