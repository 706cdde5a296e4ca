// The dependencies every function is built from, made once per function from the config: logger,
// metrics, registry, catalog, outbox, inbox and the event emitter.

import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { type Catalog, createCatalog } from '../catalog/catalog.js';
import type { BackupFinding } from '../catalog/read-model.js';
import type { RecordKeys } from '../catalog/record-auth.js';
import { type Config, type EventSink, type FunctionName, UPSTREAM_VARS } from '../config.js';
import { type CloudEvent, createEvent, type EventData, type EventType } from '../events/envelope.js';
import { createEventLog } from '../events/eventlog.js';
import { createInbox, type Inbox } from '../events/inbox.js';
import { createOutbox, type Outbox } from '../events/outbox.js';
import { createLogger, type Logger } from '../log.js';
import { counter, createRegistry, type MetricsRegistry } from '../metrics.js';
import { type AgeKeys, ageKeysFromConfig } from '../offsite/age-keys.js';
import { createFileRegistry, type ProjectRegistry } from '../registry.js';
import type { App } from './app.js';

export interface EmitInput<T extends EventType> {
  subject?: string;
  data: EventData<T>;
  causedBy?: string | undefined;
  /** A fixed event id (the same event when a restart sends it again; receivers dedupe webhook-id). */
  id?: string;
  /**
   * The caller cannot let the event be lost: an outbox that cannot persist it throws (FLUX_STATE_DIR full
   * or read-only) instead of logging and going on.
   */
  required?: boolean;
}

export type Emit = <T extends EventType>(type: T, input: EmitInput<T>) => Promise<CloudEvent<T>>;

export interface Runtime {
  name: FunctionName;
  config: Config;
  /** The process environment, for env:NAME URLs and the PATH child tools are found on. */
  env: NodeJS.ProcessEnv;
  log: Logger;
  metrics: MetricsRegistry;
  registry: ProjectRegistry;
  catalog: Catalog;
  outbox: Outbox;
  inbox: Inbox;
  emit: Emit;
  webhookSecrets: readonly string[];
  /** The age keys of offsite copies (FLUX_BACKUP_AGE_RECIPIENTS, FLUX_BACKUP_AGE_IDENTITY_FILE). */
  ageKeys: AgeKeys;
  /** The base URL another function of this deployment answers on (the all-in-one: its own loopback mount). */
  peerUrl(fn: FunctionName): string;
}

/** What each function's createApp returns: the Hono app plus its background lifecycle. */
export interface FunctionApp {
  name: FunctionName;
  app: App;
  /** Event types this function acts on (the all-in-one process routes only these to it). */
  accepts: readonly EventType[];
  start(): Promise<void>;
  /** Stop accepting work, finish or cancel in-flight work, kill children, remove sandboxes. */
  stop(): Promise<void>;
}

export interface RuntimeOptions {
  log?: Logger;
  metrics?: MetricsRegistry;
  registry?: ProjectRegistry;
  catalog?: Catalog;
  /** Extra sinks beyond FLUX_EVENT_SINKS (the all-in-one process adds its loopback wiring). */
  extraSinks?: () => readonly EventSink[];
  webhookSecrets?: readonly string[];
  /** Where other functions are reached (default: FLUX_<FN>_URL, the split deployment's service names). */
  peerUrl?: (fn: FunctionName) => string;
}

/** In the embedded profile with no configured secret, loopback events are signed with a per-run secret. */
export function ephemeralWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`;
}

/** FLUX_MANIFEST_SECRETS and FLUX_MANIFEST_ALLOW_UNSIGNED, as the catalog and the record readers take them. */
export function recordKeysOf(config: Config): RecordKeys {
  return { secrets: config.FLUX_MANIFEST_SECRETS, allowUnsigned: config.FLUX_MANIFEST_ALLOW_UNSIGNED };
}

/** A catalog finding as its event (once per record per process; the catalog keeps count). */
export async function emitFinding(emit: Emit, finding: BackupFinding): Promise<void> {
  await emit('flux.backup.integrity_finding', {
    subject: `${finding.projectId}/${finding.backupId}`,
    data: {
      projectId: finding.projectId,
      backupId: finding.backupId,
      code: finding.code,
      file: finding.file,
      message: finding.message.slice(0, 4000),
    },
  });
}

export function createRuntime(
  name: FunctionName,
  config: Config,
  env: NodeJS.ProcessEnv,
  options: RuntimeOptions = {},
): Runtime {
  const log = options.log ?? createLogger(name, { level: config.FLUX_LOG_LEVEL });
  const metrics = options.metrics ?? createRegistry();
  const registry = options.registry ?? createFileRegistry(config.FLUX_PROJECTS_FILE, { log });
  const catalog =
    options.catalog ??
    createCatalog({
      root: config.FLUX_BACKUPS_LOCAL_DIR,
      log,
      cacheFile: path.join(config.FLUX_STATE_DIR, 'catalog', `${name}-artifacts.json`),
      keys: recordKeysOf(config),
      // emit is defined below; a catalog read happens only once the runtime is built. Every process
      // of a split deployment has its own catalog and finds the same records: the event goes out once,
      // from dump (whose status speaks for the catalog); the others log their finding.
      onFinding: (finding) => {
        if (name === 'dump') void emitFinding(emit, finding);
      },
    });
  const webhookSecrets = options.webhookSecrets ?? config.FLUX_WEBHOOK_SECRETS;
  const sinks = () => [...config.FLUX_EVENT_SINKS, ...(options.extraSinks?.() ?? [])];
  const eventLog = createEventLog({
    dir: path.join(config.FLUX_STATE_DIR, 'events', name),
    maxEvents: config.FLUX_EVENT_LOG_MAX_EVENTS,
    maxBytes: config.FLUX_EVENT_LOG_MAX_BYTES,
    log,
  });
  const outbox = createOutbox({
    eventLog,
    dir: path.join(config.FLUX_STATE_DIR, 'outbox', name),
    sinks,
    secrets: webhookSecrets,
    log,
    metrics,
    retryScheduleMs: config.FLUX_OUTBOX_RETRY_SCHEDULE_MS,
    fn: name,
  });
  const inbox = createInbox({
    name,
    dir: path.join(config.FLUX_STATE_DIR, 'inbox', name),
    secrets: webhookSecrets,
    toleranceMs: config.FLUX_WEBHOOK_TOLERANCE_MS,
    log,
    metrics,
  });
  const emitted = counter(metrics, 'flux_events_emitted_total', 'Events emitted by type', ['type']);
  const emit: Emit = async (type, input) => {
    const event = createEvent({
      type,
      source: `/flux-ops/${name}`,
      data: input.data,
      subject: input.subject,
      causedBy: input.causedBy,
      ...(input.id ? { id: input.id } : {}),
    });
    emitted.inc({ type });
    try {
      await outbox.enqueue(event);
    } catch (error) {
      if (input.required) throw error;
      // The catalog on disk stays the truth (reconcile scans find the work); losing a notification is logged loudly.
      log.error({ err: error, eventId: event.id, type }, 'could not persist event to the outbox');
    }
    return event;
  };
  const peerUrl = options.peerUrl ?? ((fn: FunctionName) => config[UPSTREAM_VARS[fn]].replace(/\/+$/, ''));
  const ageKeys = ageKeysFromConfig(config);
  return {
    name,
    config,
    env,
    log,
    metrics,
    registry,
    catalog,
    outbox,
    inbox,
    emit,
    webhookSecrets,
    ageKeys,
    peerUrl,
  };
}
