// The one configuration module: every environment variable of every function, its default, bounds, and
// whether it is secret. loadConfig(env) reports every bad variable at once with the fix.
import path from 'node:path';
import { z } from 'zod';
import { AppError } from './errors.js';
import { parseRecipients } from './offsite/age.js';
import { DEFAULT_MAX_AGE, parseDuration, scheduleProblem } from './schedule.js';
import { HOUR_MS, MIB, MINUTE_MS, SECOND_MS } from './units.js';

export const SCOPES = [
  'backups:read',
  'backups:write',
  'verify',
  'migrate',
  'restore',
  'probe',
  'events',
  'admin',
] as const;
export type Scope = (typeof SCOPES)[number];

export const FUNCTION_NAMES = ['dump', 'replicate', 'verify', 'probe', 'migrate', 'restore'] as const;
export type FunctionName = (typeof FUNCTION_NAMES)[number];

const port = (fallback: number) => z.coerce.number().int().min(1).max(65535).default(fallback);
const ms = (fallback: number, min = 0, max = 7 * 24 * HOUR_MS) =>
  z.coerce.number().int().min(min).max(max).default(fallback);
const int = (fallback: number, min: number, max: number) =>
  z.coerce.number().int().min(min).max(max).default(fallback);
const bool = (fallback: boolean) =>
  z
    .enum(['true', 'false', '1', '0', 'yes', 'no'])
    .default(fallback ? 'true' : 'false')
    .transform((v) => v === 'true' || v === '1' || v === 'yes');
const dir = (fallback: string) => z.string().min(1).default(fallback);
const upstream = (fallback: string) => z.url({ protocol: /^https?$/ }).default(fallback);
const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

export interface ApiToken {
  id: string;
  sha256: string;
  scopes: Scope[];
  /** The day the token was made (YYYY-MM-DD), when its entry says so: doctor --security judges its age. */
  created?: string;
}

/** `:YYYY-MM-DD` at the end of a token entry or a webhook secret: the day it was made. */
const CREATED_SUFFIX = /:(\d{4}-\d{2}-\d{2})$/;

/** Whether `day` (YYYY-MM-DD) is a real calendar day not after tomorrow (a clock a day off is no error). */
function isPastDay(day: string): boolean {
  const ms = Date.parse(`${day}T00:00:00Z`);
  return (
    !Number.isNaN(ms) && new Date(ms).toISOString().slice(0, 10) === day && ms <= Date.now() + 24 * HOUR_MS
  );
}

export interface WebhookSecretEntry {
  secret: string;
  /** The day the secret was made (YYYY-MM-DD), when the entry says so (`whsec_…:2026-11-01`). */
  created?: string;
}

/** FLUX_WEBHOOK_SECRETS (or FLUX_MANIFEST_SECRETS) as written: each secret and its optional creation day. */
export function parseWebhookSecretEntries(raw: string | undefined): WebhookSecretEntry[] {
  return (raw ?? '')
    .split(/[,\s]+/)
    .map((s) => s.trim())
    .filter(Boolean)
    .map((entry) => {
      const m = CREATED_SUFFIX.exec(entry);
      return m ? { secret: entry.slice(0, -m[0].length), created: m[1]! } : { secret: entry };
    });
}

const tokenList = z
  .string()
  .default('')
  .transform((raw, ctx): ApiToken[] => {
    const tokens: ApiToken[] = [];
    for (const entry of raw
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)) {
      // Scopes themselves contain ':' (backups:read), so only the first two separators split.
      const first = entry.indexOf(':');
      const second = first < 0 ? -1 : entry.indexOf(':', first + 1);
      const id = first < 0 ? entry : entry.slice(0, first);
      const sha = second < 0 ? undefined : entry.slice(first + 1, second);
      // An optional `:YYYY-MM-DD` after the scopes is the day the token was made.
      const tail = second < 0 ? '' : entry.slice(second + 1);
      const created = CREATED_SUFFIX.exec(tail)?.[1];
      const scopes = (created ? tail.slice(0, -created.length - 1) : tail).split('+').filter(Boolean);
      const badScope = scopes.find((s) => !(SCOPES as readonly string[]).includes(s));
      // Never echo the entry: a confused operator may have pasted a raw token here.
      if (!id || !/^[A-Za-z0-9_.-]{1,64}$/.test(id) || !sha || !/^[0-9a-f]{64}$/.test(sha)) {
        ctx.addIssue({
          code: 'custom',
          message: `entry #${tokens.length + 1} must be id:<sha256 hex of the token>:scope+scope (id [A-Za-z0-9_.-])`,
        });
        return z.NEVER;
      }
      if (scopes.length === 0 || badScope) {
        ctx.addIssue({
          code: 'custom',
          message: `token "${id}" has ${badScope ? `unknown scope "${badScope}"` : 'no scopes'}; scopes: ${SCOPES.join(', ')}`,
        });
        return z.NEVER;
      }
      if (tokens.some((t) => t.id === id)) {
        // Rotation is only visible in the access log when the old and new token have different ids.
        ctx.addIssue({
          code: 'custom',
          message: `token id "${id}" appears twice; give the new token of a rotation its own id`,
        });
        return z.NEVER;
      }
      if (created && !isPastDay(created)) {
        ctx.addIssue({
          code: 'custom',
          message: `token "${id}" says it was made on ${created}, which is no past calendar day (YYYY-MM-DD)`,
        });
        return z.NEVER;
      }
      tokens.push({ id, sha256: sha, scopes: scopes as Scope[], ...(created ? { created } : {}) });
    }
    return tokens;
  });

const webhookSecretList = z
  .string()
  .default('')
  .transform((raw, ctx): string[] => {
    const entries = parseWebhookSecretEntries(raw);
    const secrets = entries.map((e) => e.secret);
    entries.forEach(({ secret, created }, index) => {
      if (created && !isPastDay(created)) {
        ctx.addIssue({
          code: 'custom',
          message: `secret #${index + 1} says it was made on ${created}, which is no past calendar day (YYYY-MM-DD)`,
        });
      }
      const body = secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : '';
      if (!body || !/^[A-Za-z0-9+/]+={0,2}$/.test(body) || Buffer.from(body, 'base64').length < 24) {
        ctx.addIssue({
          code: 'custom',
          message: `secret #${index + 1} must be whsec_<base64 of at least 24 random bytes> (e.g. \`echo whsec_$(openssl rand -base64 32)\`)`,
        });
      }
    });
    return secrets;
  });

export const EventSinkSchema = z.object({
  url: z.url(),
  types: z.array(z.string().min(1)).default(['*']),
  name: z
    .string()
    .regex(/^[A-Za-z0-9._:-]{1,64}$/, 'a sink name is 1-64 letters, digits and ._:-')
    .optional(),
});
export type EventSink = z.infer<typeof EventSinkSchema>;

const sinkList = z
  .string()
  .default('[]')
  .transform((raw, ctx): EventSink[] => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      ctx.addIssue({
        code: 'custom',
        message:
          'must be a JSON array like [{"url":"http://replicate:8082/events","types":["flux.backup.*"]}]',
      });
      return z.NEVER;
    }
    const result = z.array(EventSinkSchema).safeParse(parsed);
    if (!result.success) {
      ctx.addIssue({
        code: 'custom',
        message: `each sink needs "url" and optional "types" globs: ${result.error.issues[0]?.message}`,
      });
      return z.NEVER;
    }
    // A name is the sink's identity in the outbox files (which never hold its URL), so it is unique.
    const names = result.data.flatMap((s) => (s.name === undefined ? [] : [s.name]));
    const repeated = names.find((n, i) => names.indexOf(n) !== i);
    if (repeated !== undefined) {
      ctx.addIssue({ code: 'custom', message: `sink name ${JSON.stringify(repeated)} is used twice` });
      return z.NEVER;
    }
    return result.data;
  });

/** Svix's schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (spans more than a day). */
export const DEFAULT_RETRY_SCHEDULE_MS = [
  0,
  5 * SECOND_MS,
  5 * MINUTE_MS,
  30 * MINUTE_MS,
  2 * HOUR_MS,
  5 * HOUR_MS,
  10 * HOUR_MS,
  10 * HOUR_MS,
] as const;

const retrySchedule = z
  .string()
  .default(DEFAULT_RETRY_SCHEDULE_MS.join(','))
  .transform((raw, ctx): number[] => {
    const parts = raw.split(',').map((s) => s.trim());
    const delays = parts.map((p) => (/^\d+$/.test(p) ? Number(p) : Number.NaN));
    if (delays.length > 100 || delays.some((d) => !Number.isSafeInteger(d) || d > 7 * 24 * HOUR_MS)) {
      ctx.addIssue({
        code: 'custom',
        message:
          'must be 1 to 100 comma-separated delays in ms (each at most 7 days), e.g. ' +
          DEFAULT_RETRY_SCHEDULE_MS.join(','),
      });
      return z.NEVER;
    }
    return delays;
  });

const statusRanges = z
  .string()
  .default('200-399')
  .transform((raw, ctx): Array<[number, number]> => {
    const ranges: Array<[number, number]> = [];
    for (const part of raw
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)) {
      const m = /^(\d{3})(?:-(\d{3}))?$/.exec(part);
      if (!m) {
        ctx.addIssue({ code: 'custom', message: `"${part}" is not a status or range like 200-399` });
        return z.NEVER;
      }
      const lo = Number(m[1]);
      ranges.push([lo, m[2] ? Number(m[2]) : lo]);
    }
    return ranges;
  });

/** Where a fault test can stop a process (FLUX_TEST_FAULT_POINTS; shared/kit/fault-points.ts). */
export const FAULT_POINTS = ['dump.pg_dump_finished', 'dump.manifest_written'] as const;
export type FaultPoint = (typeof FAULT_POINTS)[number];

const faultPointList = z
  .string()
  .default('')
  .transform((raw, ctx): FaultPoint[] => {
    const names = raw
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const unknown = names.find((n) => !(FAULT_POINTS as readonly string[]).includes(n));
    if (unknown !== undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `unknown fault point ${JSON.stringify(unknown.slice(0, 64))}; known: ${FAULT_POINTS.join(', ')}`,
      });
      return z.NEVER;
    }
    return names as FaultPoint[];
  });

interface VarSpec {
  schema: z.ZodType;
  description: string;
  secret?: boolean;
  /** Default in the embedded (npm start) profile, relative to the working directory. */
  embedded?: string;
}

/** Every variable flux-ops reads. The README's configuration table is checked against this. */
export const VARS = {
  FLUX_HOST: {
    schema: z.string().default('0.0.0.0'),
    description: 'Address every function listens on.',
    embedded: '127.0.0.1',
  },
  FLUX_PORT: {
    schema: port(8080),
    description: 'Port of the all-in-one process and of the router (front door).',
  },
  FLUX_DUMP_PORT: { schema: port(8081), description: 'Port of the dump function.' },
  FLUX_REPLICATE_PORT: { schema: port(8082), description: 'Port of the replicate function.' },
  FLUX_VERIFY_PORT: { schema: port(8083), description: 'Port of the verify function.' },
  FLUX_PROBE_PORT: { schema: port(8084), description: 'Port of the probe function.' },
  FLUX_MIGRATE_PORT: { schema: port(8085), description: 'Port of the migrate function.' },
  FLUX_RESTORE_PORT: { schema: port(8086), description: 'Port of the restore function.' },
  FLUX_FUNCTION: {
    schema: z.enum(['router', 'all', ...FUNCTION_NAMES]).optional(),
    description:
      'The process a container of the image runs (dump … restore, router, all): entrypoint and healthcheck.',
  },
  FLUX_DUMP_URL: { schema: upstream('http://dump:8081'), description: 'Where the router reaches dump.' },
  FLUX_REPLICATE_URL: {
    schema: upstream('http://replicate:8082'),
    description: 'Where the router reaches replicate.',
  },
  FLUX_VERIFY_URL: {
    schema: upstream('http://verify:8083'),
    description: 'Where the router reaches verify.',
  },
  FLUX_PROBE_URL: { schema: upstream('http://probe:8084'), description: 'Where the router reaches probe.' },
  FLUX_MIGRATE_URL: {
    schema: upstream('http://migrate:8085'),
    description: 'Where the router reaches migrate.',
  },
  FLUX_RESTORE_URL: {
    schema: upstream('http://restore:8086'),
    description: 'Where the router reaches restore.',
  },
  FLUX_STATE_DIR: {
    schema: dir('/srv/flux/state'),
    description: 'Outboxes, dead letters, inbox dedupe, leases.',
    embedded: '.flux-data/state',
  },
  FLUX_BACKUPS_LOCAL_DIR: {
    schema: dir('/srv/flux/backups'),
    description: 'Local backup catalog (dumps, manifests, receipts).',
    embedded: '.flux-data/backups',
  },
  FLUX_BACKUPS_OFFSITE_DIR: {
    schema: dir('/srv/flux/backups-offsite'),
    description: 'Offsite store: a directory, or s3://bucket/prefix.',
    embedded: '.flux-data/backups-offsite',
  },
  FLUX_PROJECTS_FILE: {
    schema: dir('/etc/flux-ops/projects.json'),
    description: 'Project and cluster registry (JSON; URLs literal or env:NAME).',
    embedded: '.flux-data/projects.json',
  },
  FLUX_PROJECTS_FILE_POLL_MS: {
    schema: ms(5 * SECOND_MS, 0, HOUR_MS),
    description:
      'How often FLUX_PROJECTS_FILE is checked for a change (0 = only on SIGHUP); a new file is validated first, a bad one is refused and the registry in use kept.',
  },
  FLUX_API_TOKENS: {
    schema: tokenList,
    secret: true,
    description:
      'Bearer tokens: comma-separated id:sha256hex:scope+scope, optionally :YYYY-MM-DD (the day it was made; doctor --security flags tokens older than FLUX_SECRET_MAX_AGE or without it).',
  },
  FLUX_WEBHOOK_SECRETS: {
    schema: webhookSecretList,
    secret: true,
    description:
      'Standard Webhooks secrets whsec_…, comma-separated, each optionally :YYYY-MM-DD (the day it was made); the first signs, any verifies.',
  },
  FLUX_SECRET_MAX_AGE: {
    schema: z
      .string()
      .default('90d')
      .refine((v) => parseDuration(v) !== undefined, 'a duration like 90d or 2160h (1s to 366d)'),
    description:
      'Age past which doctor --security calls an API token or webhook secret due for rotation (by the day its entry says it was made).',
  },
  FLUX_MANIFEST_SECRETS: {
    schema: webhookSecretList,
    secret: true,
    description:
      'Keys (whsec_…, comma-separated, as FLUX_WEBHOOK_SECRETS) that authenticate manifests and receipts: each writer tags with the first (HMAC-SHA256), any verifies; a record no key matches counts as absent (finding manifest_not_authentic / receipt_not_authentic). Set the same keys on every function; keep them with the offsite credentials: a replacement host needs them.',
  },
  FLUX_BACKUP_AGE_RECIPIENTS: {
    schema: z
      .string()
      .optional()
      .superRefine((value, ctx) => {
        try {
          parseRecipients(value);
        } catch (error) {
          ctx.addIssue({ code: 'custom', message: (error as Error).message });
        }
      }),
    description:
      'age public keys (age1…, comma-separated) replicate encrypts every new offsite copy to; several for rotation and escrow. Empty: copies are stored as plain dumps. Adding one re-encrypts nothing: older copies keep the recipients their receipt names.',
  },
  FLUX_BACKUP_AGE_IDENTITY_FILE: {
    schema: z.string().min(1).optional(),
    description:
      'File of age secret keys (AGE-SECRET-KEY-1… lines, as age-keygen writes them; mode 600) that open encrypted offsite copies: needed where copies are read (verify and restore from offsite, offsite download, replicate proving a copy without its local dump). Checked at start-up against the newest encrypted copy.',
  },
  FLUX_MANIFEST_ALLOW_UNSIGNED: {
    schema: bool(false),
    description:
      'With FLUX_MANIFEST_SECRETS set, also believe manifests and receipts that carry no tag (written before the keys were set). Off: an untagged record counts as absent, with a finding. Turn it off again once the untagged backups have aged out.',
  },
  FLUX_WEBHOOK_TOLERANCE_MS: {
    schema: ms(5 * MINUTE_MS, SECOND_MS, HOUR_MS),
    description: 'Allowed clock skew/age of a signed event.',
  },
  FLUX_EVENT_SINKS: {
    schema: sinkList,
    description:
      'JSON array of {url, types:[globs], name?} that receive this process’s events. The URL stays here: ' +
      'outbox files name a sink by its name (unique) or a hash of its URL.',
  },
  FLUX_OUTBOX_RETRY_SCHEDULE_MS: {
    schema: retrySchedule,
    description:
      'Delay before each delivery attempt, comma-separated (as many attempts as entries, then a dead letter): ' +
      'at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, about 27.6 h in all. Each delay may grow by up to ' +
      '10 % (jitter); a Retry-After asking for longer is honoured.',
  },
  FLUX_EVENT_LOG_MAX_EVENTS: {
    schema: int(10_000, 10, 1_000_000),
    description:
      'Events each function keeps in its event log under FLUX_STATE_DIR (events tail, events replay --since); the oldest go first.',
  },
  FLUX_EVENT_LOG_MAX_BYTES: {
    schema: int(16 * MIB, 64 * 1024, 1024 * MIB),
    description: 'Bytes of event log each function keeps on disk (whichever limit is reached first).',
  },
  FLUX_BODY_LIMIT_BYTES: { schema: int(MIB, 1024, 64 * MIB), description: 'Largest accepted request body.' },
  FLUX_RATE_LIMIT_PER_MINUTE: {
    schema: int(600, 1, 1_000_000),
    description: 'Requests per minute per token (429 beyond).',
  },
  FLUX_LOG_LEVEL: {
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    description: 'pino log level.',
  },
  FLUX_TEST_FAULT_POINTS: {
    schema: faultPointList,
    description:
      'Test hook, empty in production: named points (comma-separated, e.g. `dump.manifest_written`) at which the process stops itself with SIGSTOP, so a fault test can kill it or its database exactly there.',
  },
  FLUX_SHUTDOWN_GRACE_MS: {
    schema: ms(30 * SECOND_MS, 0, HOUR_MS),
    description: 'On SIGTERM, time for in-flight work before it is cancelled.',
  },
  FLUX_DUMP_COMPRESSION: { schema: int(1, 0, 9), description: 'pg_dump -Z level (1 is the fast class).' },
  FLUX_DUMP_TIMEOUT_MS: {
    schema: ms(6 * HOUR_MS, SECOND_MS),
    description: 'pg_dump is killed and its partial removed after this.',
  },
  FLUX_DUMP_LOCK_WAIT_TIMEOUT_MS: {
    schema: ms(30 * SECOND_MS, 0, HOUR_MS),
    description: 'pg_dump --lock-wait-timeout (shared clusters).',
  },
  FLUX_DUMP_QUEUE_MAX: {
    schema: int(8, 0, 10_000),
    description: 'Waiting dumps per cluster beyond its maxConcurrentDumps (503 beyond).',
  },
  FLUX_RETENTION_KEEP_COUNT: {
    schema: int(0, 0, 100_000),
    description: 'Backups kept per project (0 = retention off).',
  },
  FLUX_RETENTION_KEEP_DAYS: {
    schema: int(0, 0, 100_000),
    description: 'Backups younger than this are kept (0 = no age rule).',
  },
  FLUX_BACKUP_SCHEDULE: {
    schema: optionalString.superRefine((v, ctx) => {
      const problem = v === undefined ? undefined : scheduleProblem(v);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
    description:
      'Default backup schedule of every project (a project\'s "schedule" in the registry wins): a duration like 24h, or a 5-field cron expression in UTC like "0 2 * * *"; unset = no scheduled backups. Dump decides what is due.',
  },
  FLUX_BACKUP_MAX_AGE: {
    schema: z
      .string()
      .default(DEFAULT_MAX_AGE)
      .refine((v) => parseDuration(v) !== undefined, 'must be a duration like 26h, 90m or 2d (1s to 366d)'),
    description:
      'Default maxAge (a project\'s "maxAge" wins): a project whose newest restorable backup is older is stale, and migrate and an in-place restore refuse it.',
  },
  FLUX_BACKUP_SCHEDULE_TICK_MS: {
    schema: ms(10 * SECOND_MS, 50, HOUR_MS),
    description: "How often dump's scheduler decides what is due.",
  },
  FLUX_BACKUP_SCHEDULE_SPREAD_PERCENT: {
    schema: int(100, 0, 100),
    description:
      "Share of each schedule window over which projects are spread, each at its own fixed offset (hash of its id): 100 spreads a 24h schedule over the whole day, 0 starts every project at the window's start.",
  },
  FLUX_BACKUP_SCHEDULE_CATCHUP_PER_MINUTE: {
    schema: int(10, 1, 10_000),
    description:
      'Backups missed while dump was not running (downtime, first start) are caught up at most this many per minute, evenly spaced, so a restart is no storm.',
  },
  FLUX_BACKUP_METRICS_REFRESH_MS: {
    schema: ms(MINUTE_MS, SECOND_MS, HOUR_MS),
    description:
      'How often dump recomputes the per-project backup metrics from the catalog (also at start-up and after each backup, verification and replication event).',
  },
  FLUX_CATALOG_REBUILD_AT_START: {
    schema: bool(false),
    description:
      'At start-up, dump rebuilds the local catalog of every project whose local directory is empty from the offsite store’s manifests (a fresh host after the old one was lost); dumps stay offsite.',
  },
  FLUX_REPLICATE_RECONCILE_INTERVAL_MS: {
    schema: ms(5 * MINUTE_MS, 100),
    description: 'Reconcile scan period (also runs at start-up).',
  },
  FLUX_REPLICATE_CONCURRENCY: { schema: int(4, 1, 256), description: 'Concurrent offsite copies.' },
  FLUX_REPLICATE_MAX_ATTEMPTS: {
    schema: int(5, 1, 100),
    description: 'Copy attempts per backup before a failure receipt.',
  },
  FLUX_REPLICATE_RETRY_BASE_DELAY_MS: {
    schema: ms(SECOND_MS, 10, HOUR_MS),
    description: 'First delay between copy attempts (doubles per attempt, jittered, at most 5 min).',
  },
  FLUX_REHASH_EVERY_MS: {
    schema: ms(7 * 24 * HOUR_MS, 0, 366 * 24 * HOUR_MS),
    description:
      'replicate re-hashes every retained copy (each local dump and each offsite copy) at least this often, a share per sweep (0 = off).',
  },
  FLUX_REHASH_SWEEP_INTERVAL_MS: {
    schema: ms(HOUR_MS, 100, 24 * HOUR_MS),
    description:
      'How often a re-hash sweep runs (and offsite retention with it); each takes the least recently proven copies, about FLUX_REHASH_SWEEP_INTERVAL_MS / FLUX_REHASH_EVERY_MS of all retained bytes.',
  },
  FLUX_REHASH_MAX_BYTES_PER_SECOND: {
    schema: int(32 * MIB, 0, 64 * 1024 * MIB),
    description: 'Read rate of re-hashing, local and offsite together (0 = unthrottled).',
  },
  FLUX_OFFSITE_KEEP_COUNT: {
    schema: int(0, 0, 100_000),
    description:
      'Offsite retention: restore-verified copies kept per project (0 and FLUX_OFFSITE_KEEP_DAYS 0 = offsite copies never expire). An offsite copy is never expired while its backup is still in the local catalog, nor the newest restorable one.',
  },
  FLUX_OFFSITE_KEEP_DAYS: {
    schema: int(0, 0, 100_000),
    description: 'Offsite copies younger than this are kept (0 = no age rule).',
  },
  FLUX_OFFSITE_IMMUTABLE: {
    schema: bool(false),
    description:
      'The offsite store manages expiry itself (S3 object lock, lifecycle rules): replicate removes nothing and says so in its log and /readyz.',
  },
  FLUX_VERIFY_DRIVER: {
    schema: z.enum(['auto', 'docker', 'local']).default('auto'),
    description: 'Restore sandbox: docker, local (initdb), or auto.',
  },
  FLUX_BACKUP_VERIFY_POSTGRES_IMAGE: {
    schema: z.string().min(1).default('postgres:17-alpine'),
    description: 'Image of the docker sandbox (never pulled at verify time).',
  },
  FLUX_DOCKER_SOCKET: {
    schema: z.string().min(1).default('/var/run/docker.sock'),
    description: 'Docker engine socket used by the docker sandbox.',
  },
  FLUX_VERIFY_TIMEOUT_MS: {
    schema: ms(HOUR_MS, SECOND_MS),
    description: 'A verification is killed (sandbox removed) after this.',
  },
  FLUX_VERIFY_CONCURRENCY: { schema: int(1, 1, 64), description: 'Verifications at once in this process.' },
  FLUX_VERIFY_QUEUE_MAX: {
    schema: int(16, 0, 10_000),
    description: 'Waiting verifications beyond the concurrency (503 beyond).',
  },
  FLUX_VERIFY_HOLD_MAX: {
    schema: int(10_000, 0, 1_000_000),
    description:
      'Backup events held (answered 202) while every verification slot and the queue are busy, started as slots free (0 = refuse with 503 instead; beyond it, 503). Kept in memory: the reconcile scan at start-up finds what a stopped process held.',
  },
  FLUX_VERIFY_ON: {
    schema: z.string().default('flux.backup.created'),
    description: 'Event types that trigger a verification (comma-separated; `none` = on demand only).',
  },
  FLUX_VERIFY_RECONCILE_INTERVAL_MS: {
    schema: ms(15 * MINUTE_MS, 100),
    description:
      'Verify reconcile scan period (also runs at start-up): every complete backup FLUX_VERIFY_ON says must be verified and that has no receipt is queued, into half of FLUX_VERIFY_QUEUE_MAX at most.',
  },
  FLUX_VERIFY_REVERIFY_AFTER_MS: {
    schema: ms(0, 0, 366 * 24 * HOUR_MS),
    description:
      "Scheduled re-verification: each project's newest backup is verified again when its last verification is this old (0 = off; e.g. 604800000 for weekly).",
  },
  FLUX_VERIFY_REVERIFY_SOURCE: {
    schema: z.enum(['local', 'offsite']).default('local'),
    description: 'Which copy a scheduled re-verification restores.',
  },
  FLUX_VERIFY_MEMORY_MB: {
    schema: int(1024, 64, 1024 * 1024),
    description: 'Memory limit of one sandbox (docker; local through cgroups where writable).',
  },
  FLUX_VERIFY_CPUS: {
    schema: z.coerce.number().min(0.1).max(256).default(2),
    description:
      "CPU limit of one sandbox (docker: lowered to the engine's CPU count when above it; local: cgroups where writable). A restore keeps two processes busy (pg_restore inflating the dump, the server loading it); with one CPU they take turns.",
  },
  FLUX_VERIFY_PIDS: { schema: int(256, 16, 100_000), description: 'Docker sandbox pids limit.' },
  FLUX_VERIFY_AMCHECK: {
    schema: bool(true),
    description: 'Run amcheck on restored btree indexes (integrity rung).',
  },
  FLUX_VERIFY_LOCAL_DIR: {
    schema: optionalString,
    description: 'Parent directory of local sandboxes (default: the OS temp dir); needs room for a restore.',
  },
  FLUX_VERIFY_LOCAL_OS_USER: {
    schema: optionalString,
    description:
      'When running as root: the sandbox-only OS user the local sandbox server runs as (default flux-sandbox, created when missing; never one that other servers trust).',
  },
  FLUX_VERIFY_LOCAL_ISOLATION: {
    schema: z.enum(['namespaces', 'none']).default('namespaces'),
    description:
      'Boundary of the local sandbox server: namespaces (mount, net, pid, ipc, uts) + chroot + cgroup limits, or none (development only; /readyz says so).',
  },
  FLUX_TENANT_PROBE_GATEWAY_URL: {
    schema: optionalString.pipe(z.url().optional()),
    description: 'Gateway the probes go through (Host = tenant apiHost).',
  },
  FLUX_PROBE_FALLBACK_PUBLIC: {
    schema: bool(false),
    description: 'Probe https://<apiHost> when no gateway URL is set.',
  },
  FLUX_PROBE_CA_FILE: {
    schema: optionalString,
    description: 'PEM CA file appended to the system roots for probes.',
  },
  FLUX_PROBE_INTERVAL_MS: {
    schema: ms(MINUTE_MS, 0),
    description: 'Probe cycle period (0 = on demand only), jittered.',
  },
  FLUX_PROBE_TIMEOUT_MS: {
    schema: ms(10 * SECOND_MS, 50, 10 * MINUTE_MS),
    description: 'Per-probe timeout.',
  },
  FLUX_PROBE_CONCURRENCY: { schema: int(16, 1, 1024), description: 'Probes in flight at once.' },
  FLUX_PROBE_FAILURE_THRESHOLD: {
    schema: int(3, 1, 100),
    description: 'Consecutive results before a transition event (flap suppression).',
  },
  FLUX_PROBE_EXPECTED_STATUS: {
    schema: statusRanges,
    description: 'Healthy HTTP statuses, e.g. 200-399,401.',
  },
  FLUX_PROBE_MODE: {
    schema: z.enum(['shallow', 'deep']).default('shallow'),
    description: 'shallow: 401 healthy for v2 tenants; deep: sends a minted JWT.',
  },
  FLUX_PROBE_PATH: {
    schema: z.string().startsWith('/').default('/'),
    description: 'Path requested on each tenant API.',
  },
  FLUX_MIGRATE_TIMEOUT_MS: {
    schema: ms(6 * HOUR_MS, SECOND_MS),
    description: 'Whole-migration limit; children killed and target rolled back.',
  },
  FLUX_RESTORE_TIMEOUT_MS: {
    schema: ms(6 * HOUR_MS, SECOND_MS),
    description: 'Whole-restore limit (safety backup included); children killed, the live state put back.',
  },
  FLUX_RESTORE_KEEP_PREVIOUS_HOURS: {
    schema: int(24, 0, 24 * 365),
    description:
      'Hours an in-place restore keeps the copy it replaced (0: drop it once the restore is proven).',
  },
  FLUX_S3_ENDPOINT: {
    schema: optionalString,
    description: 'S3-compatible endpoint URL (for s3:// offsite).',
  },
  FLUX_S3_REGION: { schema: optionalString, description: 'S3 region.' },
  FLUX_S3_FORCE_PATH_STYLE: {
    schema: bool(false),
    description: 'Path-style S3 addressing (most self-hosted servers).',
  },
  FLUX_S3_ACCESS_KEY_ID: { schema: optionalString, secret: true, description: 'S3 access key id.' },
  FLUX_S3_SECRET_ACCESS_KEY: { schema: optionalString, secret: true, description: 'S3 secret access key.' },
} satisfies Record<string, VarSpec>;

export type VarName = keyof typeof VARS;
export type Config = { [K in VarName]: z.output<(typeof VARS)[K]['schema']> } & {
  /** Where relative directory defaults were resolved from. */
  readonly profile: 'production' | 'embedded';
};

export interface ConfigProblem {
  variable: string;
  message: string;
}

export interface LoadConfigOptions {
  /** Embedded profile: data under ./.flux-data, listen on loopback (npm start / demo). */
  profile?: 'production' | 'embedded';
  cwd?: string;
}

/** Parses every variable; collects every problem; throws one AppError listing them all. */
export function loadConfig(env: NodeJS.ProcessEnv, options: LoadConfigOptions = {}): Config {
  const profile = options.profile ?? 'production';
  const cwd = options.cwd ?? process.cwd();
  const problems: ConfigProblem[] = [];
  const out: Record<string, unknown> = { profile };

  if (env.NODE_TLS_REJECT_UNAUTHORIZED === '0') {
    problems.push({
      variable: 'NODE_TLS_REJECT_UNAUTHORIZED',
      message:
        'is 0, which disables TLS verification for the whole process; unset it and trust your CA with ' +
        'NODE_EXTRA_CA_CERTS=/path/ca.pem (or FLUX_PROBE_CA_FILE for probes) instead',
    });
  }

  for (const [name, spec] of Object.entries(VARS) as Array<[VarName, VarSpec]>) {
    let raw = env[name];
    if ((raw === undefined || raw === '') && profile === 'embedded' && spec.embedded !== undefined) {
      raw = spec.embedded.startsWith('.') ? path.resolve(cwd, spec.embedded) : spec.embedded;
    }
    const result = spec.schema.safeParse(raw === '' ? undefined : raw);
    if (result.success) out[name] = result.data;
    else {
      for (const issue of result.error.issues) {
        problems.push({ variable: name, message: describeIssue(issue, spec) });
      }
    }
  }

  const offsite = String(out.FLUX_BACKUPS_OFFSITE_DIR ?? '');
  if (offsite.startsWith('s3://')) {
    const missing = (['FLUX_S3_ACCESS_KEY_ID', 'FLUX_S3_SECRET_ACCESS_KEY'] as const).filter((v) => !out[v]);
    for (const variable of missing) {
      problems.push({
        variable,
        message: `is required when FLUX_BACKUPS_OFFSITE_DIR is s3:// (no silent fallback to a local copy)`,
      });
    }
  }

  if (problems.length > 0) {
    throw new AppError('config_invalid', formatProblems(problems), { details: { problems } });
  }
  return out as Config;
}

function describeIssue(issue: z.core.$ZodIssue, spec: VarSpec): string {
  // Values are never echoed: a secret may sit in the wrong variable.
  const hint = spec.description ? ` (${spec.description})` : '';
  if (issue.code === 'custom') return issue.message;
  if (issue.code === 'too_small' || issue.code === 'too_big') {
    const bound =
      'minimum' in issue ? `at least ${issue.minimum}` : `at most ${(issue as { maximum: unknown }).maximum}`;
    return `must be ${bound}${hint}`;
  }
  if (issue.code === 'invalid_value' && 'values' in issue) {
    return `must be one of ${(issue.values as unknown[]).join(', ')}${hint}`;
  }
  if (issue.code === 'invalid_type') return `must be a ${issue.expected}${hint}`;
  return `${issue.message}${hint}`;
}

export function formatProblems(problems: ConfigProblem[]): string {
  const lines = problems.map((p) => `  - ${p.variable}: ${p.message}`);
  return `invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${lines.join('\n')}`;
}

/** The config for the startup log line: secrets replaced, token ids kept so rotation is visible. */
export function redactConfig(config: Config): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(config)) {
    const spec = (VARS as Record<string, VarSpec>)[name];
    if (name === 'FLUX_API_TOKENS') {
      out[name] = (value as ApiToken[]).map((t) => `${t.id}:[redacted]:${t.scopes.join('+')}`);
    } else if (name === 'FLUX_WEBHOOK_SECRETS') {
      out[name] = `[${(value as string[]).length} redacted]`;
    } else if (spec?.secret) {
      out[name] = value === undefined ? undefined : '[redacted]';
    } else if (name === 'FLUX_EVENT_SINKS') {
      out[name] = (value as EventSink[]).map((s) => ({ ...s, url: redactUrl(s.url) }));
    } else {
      out[name] = value;
    }
  }
  return out;
}

/**
 * Removes what may carry credentials from a URL: userinfo, the query, and the whole path (webhook URLs
 * carry their secret in the path, Slack's after the first segment, others in the first segment itself).
 */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = 'redacted';
    if (u.username) u.username = 'redacted';
    if (u.search) u.search = '?redacted';
    if (u.pathname !== '/' && u.pathname !== '') u.pathname = '/…';
    return u.toString().replace('%E2%80%A6', '…');
  } catch {
    return '[unparseable url]';
  }
}

/** The variable naming each function's base URL in a split deployment (defaults are the compose service names). */
export const UPSTREAM_VARS = {
  dump: 'FLUX_DUMP_URL',
  replicate: 'FLUX_REPLICATE_URL',
  verify: 'FLUX_VERIFY_URL',
  probe: 'FLUX_PROBE_URL',
  migrate: 'FLUX_MIGRATE_URL',
  restore: 'FLUX_RESTORE_URL',
} as const satisfies Record<FunctionName, VarName>;

export function portOf(config: Config, fn: FunctionName | 'all'): number {
  switch (fn) {
    case 'all':
      return config.FLUX_PORT;
    case 'dump':
      return config.FLUX_DUMP_PORT;
    case 'replicate':
      return config.FLUX_REPLICATE_PORT;
    case 'verify':
      return config.FLUX_VERIFY_PORT;
    case 'probe':
      return config.FLUX_PROBE_PORT;
    case 'migrate':
      return config.FLUX_MIGRATE_PORT;
    case 'restore':
      return config.FLUX_RESTORE_PORT;
  }
}

/** The event types that trigger verify, parsed from FLUX_VERIFY_ON. */
export function verifyTriggers(config: Config): string[] {
  if (config.FLUX_VERIFY_ON.trim() === 'none') return [];
  return config.FLUX_VERIFY_ON.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}
