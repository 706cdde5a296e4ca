// Test runtimes: real config parsed from an env made for the test (temp dirs under one root), a real
// catalog, outbox and inbox on disk, logs captured as parsed JSON lines so tests can assert on them.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import {
  type Config,
  DEFAULT_RETRY_SCHEDULE_MS,
  type FunctionName,
  loadConfig,
} from '../../shared/config.js';
import { type CloudEvent, createEvent, type EventData } from '../../shared/events/envelope.js';
import { signWebhook } from '../../shared/events/signature.js';
import { createRuntime, type Runtime, type RuntimeOptions } from '../../shared/kit/runtime.js';
import { createLogger } from '../../shared/log.js';
import { createRegistry } from '../../shared/metrics.js';
import { type Cluster, createStaticRegistry, type Project } from '../../shared/registry.js';

export interface TestToken {
  id: string;
  token: string;
  /** The FLUX_API_TOKENS entry (id:sha256:scopes). */
  entry: string;
  header: { authorization: string };
}

export function makeToken(id: string, scopes: string[]): TestToken {
  const token = `fxo_${randomBytes(24).toString('hex')}`;
  const sha = createHash('sha256').update(token).digest('hex');
  return {
    id,
    token,
    entry: `${id}:${sha}:${scopes.join('+')}`,
    header: { authorization: `Bearer ${token}` },
  };
}

export function makeWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`;
}

/**
 * The default delivery schedule with every delay divided by `divisor`: the same shape (at once, then
 * sparser and sparser), short enough for a test. 10 000 gives 0, 1, 30, 180, 720 … 3600 ms (about 10 s).
 */
export function compressedRetrySchedule(divisor: number): string {
  return DEFAULT_RETRY_SCHEDULE_MS.map((ms) => Math.max(ms === 0 ? 0 : 1, Math.round(ms / divisor))).join(
    ',',
  );
}

/** An admin token and a webhook secret every test env gets. */
export const ADMIN = makeToken('test-admin', ['admin']);
export const WEBHOOK_SECRET = makeWebhookSecret();

export interface TestEnv {
  root: string;
  env: NodeJS.ProcessEnv;
  config: Config;
  cleanup(): Promise<void>;
}

/** Temp dirs for the backup roots and state, plus test tokens/secrets; `extra` overrides anything. */
export async function makeTestEnv(extra: Record<string, string | undefined> = {}): Promise<TestEnv> {
  const root = await mkdtemp(path.join(tmpdir(), 'flux-ops-test-'));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    FLUX_BACKUPS_LOCAL_DIR: path.join(root, 'backups'),
    FLUX_BACKUPS_OFFSITE_DIR: path.join(root, 'offsite'),
    FLUX_STATE_DIR: path.join(root, 'state'),
    FLUX_PROJECTS_FILE: path.join(root, 'projects.json'),
    FLUX_API_TOKENS: ADMIN.entry,
    FLUX_WEBHOOK_SECRETS: WEBHOOK_SECRET,
    FLUX_LOG_LEVEL: 'debug',
    FLUX_OUTBOX_RETRY_SCHEDULE_MS: compressedRetrySchedule(10_000),
    FLUX_SHUTDOWN_GRACE_MS: '0',
    ...extra,
  };
  for (const [k, v] of Object.entries(extra)) if (v === undefined) delete env[k];
  const config = loadConfig(env);
  return { root, env, config, cleanup: () => rm(root, { recursive: true, force: true }) };
}

export interface CapturedLogs {
  lines: Array<Record<string, unknown>>;
  text(): string;
}

export interface TestRuntime extends Runtime {
  logs: CapturedLogs;
}

export function testRuntime(
  name: FunctionName,
  testEnv: Pick<TestEnv, 'env' | 'config'>,
  options: RuntimeOptions & { projects?: Project[]; clusters?: Cluster[] } = {},
): TestRuntime {
  const lines: Array<Record<string, unknown>> = [];
  const raw: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, callback) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        raw.push(line);
        try {
          lines.push(JSON.parse(line));
        } catch {
          lines.push({ msg: line });
        }
      }
      callback();
    },
  });
  const log = options.log ?? createLogger(name, { level: 'debug', destination });
  const registry =
    options.registry ??
    createStaticRegistry({ projects: options.projects ?? [], clusters: options.clusters ?? [] });
  const rt = createRuntime(name, testEnv.config, testEnv.env, {
    ...options,
    log,
    registry,
    metrics: options.metrics ?? createRegistry({ defaultMetrics: false }),
  });
  return Object.assign(rt, { logs: { lines, text: () => raw.join('\n') } });
}

/** A signed POST /events request for `app.request()` or fetch. */
export function signedEvent(event: CloudEvent, secrets: readonly string[] = [WEBHOOK_SECRET]): RequestInit {
  const body = JSON.stringify(event);
  return {
    method: 'POST',
    headers: { 'content-type': 'application/cloudevents+json', ...signWebhook(secrets, event.id, body) },
    body,
  };
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes (for background work). */
export async function eventually<T>(
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline)
      throw new Error(`condition not met within ${timeoutMs} ms${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A `flux.backup.created` event as dump emits it; tests override the facts they assert on. */
export function backupCreatedEvent(
  projectId: string,
  backupId: string,
  data: Partial<EventData<'flux.backup.created'>> = {},
): CloudEvent<'flux.backup.created'> {
  return createEvent({
    type: 'flux.backup.created',
    source: '/flux-ops/dump',
    subject: `${projectId}/${backupId}`,
    data: backupCreatedData(projectId, backupId, data),
  });
}

/** The data of a `flux.backup.created` event (a one-byte project_db backup unless overridden). */
export function backupCreatedData(
  projectId: string,
  backupId: string,
  data: Partial<EventData<'flux.backup.created'>> = {},
): EventData<'flux.backup.created'> {
  const now = new Date().toISOString();
  return {
    projectId,
    backupId,
    kind: 'project_db',
    sizeBytes: 1,
    sha256: 'a'.repeat(64),
    createdAt: now,
    completedAt: now,
    tables: 0,
    rows: 0,
    sequences: 0,
    serverVersion: '15',
    ...data,
  };
}
