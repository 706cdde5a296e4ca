// CloudEvents 1.0 structured envelope (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md)
// and the zod schema of every event type flux-ops sends or accepts.
import { randomUUID } from 'node:crypto';
import { z } from 'zod';

export const CLOUDEVENTS_CONTENT_TYPE = 'application/cloudevents+json';

const id = z.string().min(1).max(128);
const sha256 = z.string().regex(/^[0-9a-f]{64}$/);

const backupRef = {
  projectId: z.uuid(),
  projectHash: z
    .string()
    .regex(/^[0-9a-f]{7}$/)
    .optional(),
  backupId: id,
};

const findings = z.array(
  z.object({ rung: z.string(), result: z.string(), code: z.string(), message: z.string().optional() }),
);
const failure = { reason: z.string().max(64), error: z.string().max(4000) };

export const EVENT_DATA = {
  'flux.backup.requested': z.looseObject({
    projectId: z.uuid().optional(),
    projectHash: z.string().optional(),
  }),
  'flux.backup.created': z.looseObject({
    ...backupRef,
    kind: z.enum(['project_db', 'tenant_export']),
    sizeBytes: z.number().int().nonnegative(),
    sha256,
    createdAt: z.string(),
    completedAt: z.string(),
    tables: z.number().int().nonnegative(),
    rows: z.number().int().nonnegative(),
    sequences: z.number().int().nonnegative(),
    serverVersion: z.string(),
  }),
  'flux.backup.failed': z.looseObject({
    projectId: z.uuid(),
    projectHash: z.string().optional(),
    backupId: id,
    ...failure,
  }),
  'flux.backup.deleted': z.looseObject({ ...backupRef, reason: z.string() }),
  'flux.backup.replicated': z.looseObject({
    ...backupRef,
    sha256,
    sizeBytes: z.number().int().nonnegative(),
    store: z.string(),
    key: z.string(),
    lagSeconds: z.number().optional(),
  }),
  'flux.backup.replication_failed': z.looseObject({ ...backupRef, ...failure }),
  /** The rotating re-hash found a local dump that no longer matches its manifest (size and mtime unchanged or not). */
  'flux.backup.artifact_invalid': z.looseObject({
    ...backupRef,
    expectedSha256: sha256,
    foundSha256: sha256.optional(),
    sizeBytes: z.number().int().nonnegative(),
    reason: z.string().max(64),
  }),
  /** The rotating re-hash found an offsite copy missing or not matching its manifest. */
  'flux.backup.offsite_invalid': z.looseObject({
    ...backupRef,
    store: z.string(),
    key: z.string(),
    /** Absent when no trustworthy manifest says what the copy should be (reason manifest_invalid). */
    expectedSha256: sha256.optional(),
    foundSha256: sha256.optional(),
    reason: z.string().max(64),
  }),
  /** Offsite retention removed a backup's offsite copy (its dump and manifest objects). */
  'flux.backup.offsite_expired': z.looseObject({
    ...backupRef,
    store: z.string(),
    keys: z.array(z.string()),
    createdAt: z.string(),
    reason: z.string().max(64),
  }),
  'flux.backup.verified': z.looseObject({
    ...backupRef,
    driver: z.string(),
    sha256,
    rungs: findings,
    seconds: z.number(),
  }),
  'flux.backup.verify_failed': z.looseObject({
    ...backupRef,
    driver: z.string().optional(),
    rungs: findings,
    ...failure,
  }),
  'flux.backup.unverifiable': z.looseObject({ ...backupRef, driver: z.string().optional(), ...failure }),
  'flux.tenant.probe_failed': z.looseObject({
    projectId: z.uuid(),
    apiHost: z.string(),
    reason: z.string(),
    status: z.number().optional(),
    consecutive: z.number(),
  }),
  'flux.tenant.probe_recovered': z.looseObject({
    projectId: z.uuid(),
    apiHost: z.string(),
    consecutive: z.number(),
    downSeconds: z.number().optional(),
  }),
  'flux.migrate.started': z.looseObject({
    projectId: z.uuid(),
    slug: z.string(),
    lockWrites: z.boolean(),
    dumpOnly: z.boolean(),
  }),
  'flux.migrate.completed': z.looseObject({
    projectId: z.uuid(),
    slug: z.string(),
    tables: z.number(),
    rows: z.number(),
    sequences: z.number(),
  }),
  /** A manifest or receipt beside a backup is not believed (catalog.ts CatalogFinding): it counts as absent. */
  'flux.backup.integrity_finding': z.looseObject({
    ...backupRef,
    code: z.enum([
      'manifest_not_authentic',
      'manifest_misplaced',
      'receipt_not_authentic',
      'receipt_misplaced',
    ]),
    file: z.string(),
    message: z.string().max(4000),
  }),
  'flux.migrate.failed': z.looseObject({
    projectId: z.uuid(),
    slug: z.string(),
    phase: z.string(),
    ...failure,
  }),
  'flux.restore.started': z.looseObject({
    projectId: z.uuid(),
    slug: z.string(),
    backupId: id,
    restoreId: id,
    mode: z.enum(['new', 'in_place']),
    /** The drain signal, as migrate's lockWrites: the gateway stops the tenant's writes until completed/failed. */
    lockWrites: z.boolean(),
  }),
  'flux.restore.completed': z.looseObject({
    projectId: z.uuid(),
    slug: z.string(),
    backupId: id,
    restoreId: id,
    mode: z.enum(['new', 'in_place']),
    seconds: z.number(),
  }),
  'flux.restore.failed': z.looseObject({
    projectId: z.uuid(),
    slug: z.string(),
    backupId: id,
    restoreId: id,
    stage: z.string(),
    rolledBack: z.boolean(),
    ...failure,
  }),
  'flux.restore.previous_dropped': z.looseObject({
    projectId: z.uuid(),
    slug: z.string(),
    restoreId: id,
    /** The schema or database the in-place restore had set aside. */
    previous: z.string(),
    reason: z.string(),
  }),
  'flux.cluster.placement_finding': z.looseObject({
    code: z.string(),
    cluster: z.string(),
    /** `open` when the finding appeared, `cleared` when a later look no longer found it. */
    state: z.enum(['open', 'cleared']),
    project: z.string().optional(),
    schema: z.string().optional(),
    database: z.string().optional(),
    message: z.string(),
  }),
  'flux.cluster.preflight_passed': z.looseObject({
    cluster: z.string(),
    tenants: z.number().int(),
    report: z.unknown(),
  }),
  'flux.cluster.preflight_failed': z.looseObject({
    cluster: z.string(),
    /** `fail`: a problem was found; `unknown`: the preflight could not tell (never a pass). */
    verdict: z.enum(['fail', 'unknown']),
    problems: z.array(z.string()),
    report: z.unknown(),
  }),
} as const;

export type EventType = keyof typeof EVENT_DATA;
export const EVENT_TYPES = Object.keys(EVENT_DATA) as EventType[];
export type EventData<T extends EventType> = z.output<(typeof EVENT_DATA)[T]>;

export function isEventType(type: string): type is EventType {
  return Object.hasOwn(EVENT_DATA, type);
}

/** CloudEvents extension attribute carrying the id of the event that caused this one. */
export const CAUSATION_ATTRIBUTE = 'causationid';

export const CloudEventSchema = z.looseObject({
  specversion: z.literal('1.0'),
  id,
  source: z.string().min(1).max(512),
  type: z.string().min(1).max(256),
  subject: z.string().max(512).optional(),
  time: z.iso.datetime({ offset: true }).optional(),
  datacontenttype: z.string().optional(),
  [CAUSATION_ATTRIBUTE]: id.optional(),
  data: z.unknown(),
});

export interface CloudEvent<T extends EventType = EventType> {
  specversion: '1.0';
  id: string;
  source: string;
  type: T;
  subject?: string;
  time: string;
  datacontenttype: 'application/json';
  causationid?: string;
  data: EventData<T>;
}

export interface NewEvent<T extends EventType> {
  type: T;
  source: string;
  subject?: string;
  data: EventData<T>;
  causedBy?: string;
  now?: Date;
  /** A fixed id for an event that must be the same event when sent again (default: a new one). */
  id?: string;
}

/** Builds a CloudEvent and validates its data against the type's schema (a bad event is a bug). */
export function createEvent<T extends EventType>(input: NewEvent<T>): CloudEvent<T> {
  const data = EVENT_DATA[input.type].parse(input.data) as EventData<T>;
  return {
    specversion: '1.0',
    id: input.id ?? `evt_${randomUUID()}`,
    source: input.source,
    type: input.type,
    ...(input.subject ? { subject: input.subject } : {}),
    time: (input.now ?? new Date()).toISOString(),
    datacontenttype: 'application/json',
    ...(input.causedBy ? { [CAUSATION_ATTRIBUTE]: input.causedBy } : {}),
    data,
  };
}

export type ParsedEvent = { ok: true; event: CloudEvent } | { ok: false; status: 400 | 422; message: string };

/** Parses a received body: envelope first (400 when malformed), then the type's data (422). */
export function parseEvent(body: string): ParsedEvent {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return { ok: false, status: 400, message: 'body is not JSON: send a CloudEvents 1.0 structured event' };
  }
  const envelope = CloudEventSchema.safeParse(json);
  if (!envelope.success) {
    const issue = envelope.error.issues[0];
    return {
      ok: false,
      status: 400,
      message: `not a CloudEvents 1.0 event: ${issue?.path.join('.') || 'body'}: ${issue?.message}`,
    };
  }
  const type = envelope.data.type;
  if (!isEventType(type)) {
    return {
      ok: false,
      status: 422,
      message: `unknown event type "${type.slice(0, 80)}"; known: ${EVENT_TYPES.join(', ')}`,
    };
  }
  const data = EVENT_DATA[type].safeParse(envelope.data.data);
  if (!data.success) {
    const issue = data.error.issues[0];
    return {
      ok: false,
      status: 422,
      message: `invalid data for ${type}: ${issue?.path.join('.') || 'data'}: ${issue?.message}`,
    };
  }
  return { ok: true, event: { ...(envelope.data as unknown as CloudEvent), data: data.data } };
}

/** Glob match for sink filters: `*` matches any run of characters (`flux.backup.*`). */
export function typeMatches(type: string, patterns: readonly string[]): boolean {
  return patterns.some((pattern) => {
    if (pattern === '*' || pattern === type) return true;
    const re = new RegExp(`^${pattern.split('*').map(escapeRegExp).join('.*')}$`);
    return re.test(type);
  });
}

function escapeRegExp(s: string): string {
  return s.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
}
