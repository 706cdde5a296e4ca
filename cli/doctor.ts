// flux-ops doctor: every function's preflight run in this process from this environment (the checks
// behind /readyz, nothing started), plus what no single function owns: backup dir owners vs uid 1001, the
// TLS trust source, tokens and webhook secrets (counts only). Says what to fix; exit 0 or 69.
// `--remote` asks a running deployment's /<fn>/readyz instead; `--security` audits the security posture
// (cli/security.ts) and exits 0/1/2.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Config, FUNCTION_NAMES, type FunctionName, loadConfig } from '../shared/config.js';
import { AppError, EXIT, errnoOf, isAppError, RUN_AS_UID } from '../shared/errors.js';
import type { FunctionApp, Runtime } from '../shared/kit/runtime.js';
import { createRuntime } from '../shared/kit/runtime.js';
import { isLoopbackHost } from '../shared/kit/security.js';
import { silentLogger } from '../shared/log.js';
import { createRegistry } from '../shared/metrics.js';
import { loadFileRegistry, type ProjectRegistry } from '../shared/registry.js';
import { bool, str, strs } from './args.js';
import type { Command, Context } from './command.js';
import { type ComposeModel, loadCompose, parseEnvFile } from './compose.js';
import { ApiError } from './http.js';
import { printJson, println } from './output.js';
import {
  AUDIT_EXIT,
  auditExitCode,
  auditSecurity,
  hostPathOf,
  readEnvFiles,
  renderAudit,
} from './security.js';

export type FindingStatus = 'ok' | 'warn' | 'fail';

export interface Finding {
  /** config, dump…migrate, dirs, tls, secrets. */
  area: string;
  name: string;
  status: FindingStatus;
  detail: string;
}

/** How long one function's preflight may take before it counts as failed. */
export const READYZ_TIMEOUT_MS = 30_000;

interface ReadyBody {
  ok?: boolean;
  checks?: Array<{ name: string; ok: boolean; detail: string; optional?: boolean }>;
}

export function findingsOfReadyz(fn: string, body: ReadyBody): Finding[] {
  const checks = body.checks ?? [];
  if (checks.length === 0) {
    return [
      { area: fn, name: 'readyz', status: body.ok ? 'ok' : 'fail', detail: body.ok ? 'ready' : 'not ready' },
    ];
  }
  return checks.map((c) => ({
    area: fn,
    name: c.name,
    status: c.ok ? 'ok' : c.optional ? 'warn' : 'fail',
    detail: c.detail,
  }));
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** One function's /readyz, answered by its app built here (lazily imported: a missing one is reported). */
async function preflight(
  name: FunctionName,
  config: Config,
  env: NodeJS.ProcessEnv,
  registry: ProjectRegistry,
): Promise<Finding[]> {
  let createApp: ((rt: Runtime, options?: Record<string, unknown>) => FunctionApp) | undefined;
  try {
    const mod = (await import(`../functions/${name}/app.js`)) as {
      createApp?: (rt: Runtime, options?: Record<string, unknown>) => FunctionApp;
    };
    createApp = mod.createApp;
  } catch (error) {
    return [
      {
        area: name,
        name: 'app',
        status: 'fail',
        detail: `functions/${name}/app cannot be loaded (${(error as Error).message.split('\n')[0]}): this flux-ops install is incomplete; reinstall or rebuild it`,
      },
    ];
  }
  if (!createApp) {
    return [
      { area: name, name: 'app', status: 'fail', detail: `functions/${name}/app exports no createApp` },
    ];
  }
  try {
    const rt = createRuntime(name, config, env, {
      log: silentLogger(),
      metrics: createRegistry({ defaultMetrics: false }),
      registry,
    });
    // Doctor only looks: verify keeps no spare sandbox started (it would initdb under FLUX_VERIFY_LOCAL_DIR).
    const fn = createApp(rt, name === 'verify' ? { spare: false } : undefined);
    const res = await withTimeout(
      Promise.resolve(fn.app.request('/readyz')),
      READYZ_TIMEOUT_MS,
      `${name} /readyz`,
    );
    return findingsOfReadyz(name, (await res.json()) as ReadyBody);
  } catch (error) {
    return [{ area: name, name: 'readyz', status: 'fail', detail: (error as Error).message }];
  }
}

/** The backup and state dirs: owned by uid 1001 (the image's user), or at least by whoever runs here. */
export async function dirFindings(config: Config, uid: number | undefined): Promise<Finding[]> {
  const dirs: Array<[string, string]> = [
    ['FLUX_BACKUPS_LOCAL_DIR', config.FLUX_BACKUPS_LOCAL_DIR],
    ['FLUX_BACKUPS_OFFSITE_DIR', config.FLUX_BACKUPS_OFFSITE_DIR],
    ['FLUX_STATE_DIR', config.FLUX_STATE_DIR],
  ];
  const findings: Finding[] = [];
  for (const [variable, dir] of dirs) {
    if (dir.startsWith('s3://')) {
      findings.push({
        area: 'dirs',
        name: variable,
        status: 'ok',
        detail: `${dir} (an S3 store: no owner to check)`,
      });
      continue;
    }
    const s = await stat(dir).catch((error: unknown) => errnoOf(error) ?? 'error');
    if (typeof s === 'string') {
      findings.push({
        area: 'dirs',
        name: variable,
        status: s === 'ENOENT' ? 'warn' : 'fail',
        detail:
          s === 'ENOENT'
            ? `${dir} does not exist yet; it is created at start when its parent is writable (in the image by uid ${RUN_AS_UID}: mkdir -p ${dir} && chown ${RUN_AS_UID}:${RUN_AS_UID} ${dir})`
            : `${dir} cannot be inspected (${s})`,
      });
      continue;
    }
    if (!s.isDirectory()) {
      findings.push({ area: 'dirs', name: variable, status: 'fail', detail: `${dir} is not a directory` });
    } else if (s.uid === RUN_AS_UID) {
      findings.push({
        area: 'dirs',
        name: variable,
        status: 'ok',
        detail: `${dir} owned by uid ${RUN_AS_UID}`,
      });
    } else if (s.uid === uid) {
      findings.push({
        area: 'dirs',
        name: variable,
        status: 'warn',
        detail: `${dir} is owned by uid ${s.uid} (this user): fine for running here; the image runs as uid ${RUN_AS_UID} and needs chown -R ${RUN_AS_UID}:${RUN_AS_UID} ${dir}`,
      });
    } else {
      findings.push({
        area: 'dirs',
        name: variable,
        status: 'fail',
        detail: `${dir} is owned by uid ${s.uid}, but the functions run as uid ${RUN_AS_UID}: run chown -R ${RUN_AS_UID}:${RUN_AS_UID} ${dir}`,
      });
    }
  }
  return findings;
}

async function caFileFinding(variable: string, file: string | undefined): Promise<Finding | undefined> {
  if (!file) return undefined;
  try {
    const pem = await readFile(file, 'utf8');
    const count = pem.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0;
    if (count === 0) {
      return {
        area: 'tls',
        name: variable,
        status: 'fail',
        detail: `${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----): point ${variable} at your CA's PEM file`,
      };
    }
    return {
      area: 'tls',
      name: variable,
      status: 'ok',
      detail: `${file}: ${count} certificate${count === 1 ? '' : 's'}`,
    };
  } catch (error) {
    return {
      area: 'tls',
      name: variable,
      status: 'fail',
      detail: `${file} is not readable (${errnoOf(error) ?? 'error'})${variable === 'NODE_EXTRA_CA_CERTS' ? ': Node ignores it with only a warning and TLS to your gateway fails' : ''}; fix the path or its permissions`,
    };
  }
}

/** Where TLS trust comes from: the system store, NODE_EXTRA_CA_CERTS, FLUX_PROBE_CA_FILE (readable PEM). */
export async function tlsFindings(env: NodeJS.ProcessEnv): Promise<Finding[]> {
  const extra = await caFileFinding('NODE_EXTRA_CA_CERTS', env.NODE_EXTRA_CA_CERTS?.trim() || undefined);
  const probe = await caFileFinding('FLUX_PROBE_CA_FILE', env.FLUX_PROBE_CA_FILE?.trim() || undefined);
  const findings = [extra, probe].filter((f): f is Finding => f !== undefined);
  if (findings.length === 0) {
    findings.push({
      area: 'tls',
      name: 'trust',
      status: 'ok',
      detail:
        'the system trust store only; for a private CA set NODE_EXTRA_CA_CERTS=/path/ca.pem (or FLUX_PROBE_CA_FILE for probes), never NODE_TLS_REJECT_UNAUTHORIZED=0',
    });
  }
  return findings;
}

/** Tokens and webhook secrets: counts only, never a value. */
export function secretFindings(config: Config, cliToken: string | undefined): Finding[] {
  const findings: Finding[] = [];
  const tokens = config.FLUX_API_TOKENS;
  findings.push(
    tokens.length > 0
      ? {
          area: 'secrets',
          name: 'FLUX_API_TOKENS',
          status: 'ok',
          detail: `${tokens.length} token${tokens.length === 1 ? '' : 's'} configured`,
        }
      : config.profile === 'embedded' && isLoopbackHost(config.FLUX_HOST)
        ? {
            area: 'secrets',
            name: 'FLUX_API_TOKENS',
            status: 'ok',
            detail:
              'none: npm start on loopback makes a dev token (admin) for each run and prints its export FLUX_API_TOKEN=… line',
          }
        : {
            area: 'secrets',
            name: 'FLUX_API_TOKENS',
            status: 'fail',
            detail:
              'no tokens: every CLI route answers 401. Add id:<sha256 hex of the token>:scope+scope, e.g. ' +
              'ops:$(printf %s "$TOKEN" | sha256sum | cut -d" " -f1):admin',
          },
  );
  const secrets = config.FLUX_WEBHOOK_SECRETS;
  if (secrets.length > 0) {
    findings.push({
      area: 'secrets',
      name: 'FLUX_WEBHOOK_SECRETS',
      status: 'ok',
      detail: `${secrets.length} secret${secrets.length === 1 ? '' : 's'} (the first signs, any verifies)`,
    });
  } else if (config.profile === 'embedded') {
    findings.push({
      area: 'secrets',
      name: 'FLUX_WEBHOOK_SECRETS',
      status: 'ok',
      detail: 'none: the all-in-one process signs its loopback events with a per-run secret',
    });
  } else {
    findings.push({
      area: 'secrets',
      name: 'FLUX_WEBHOOK_SECRETS',
      status: 'fail',
      detail:
        "none: separate function processes cannot verify each other's events. Set the same " +
        'FLUX_WEBHOOK_SECRETS=whsec_$(openssl rand -base64 32) on every function',
    });
  }
  if (!cliToken) {
    findings.push({
      area: 'secrets',
      name: 'FLUX_API_TOKEN',
      status: 'warn',
      detail: 'not set for this CLI: its API calls will get 401',
    });
  } else if (tokens.length > 0) {
    const sha = createHash('sha256').update(cliToken).digest('hex');
    const match = tokens.some((t) => t.sha256 === sha);
    findings.push({
      area: 'secrets',
      name: 'FLUX_API_TOKEN',
      status: match ? 'ok' : 'warn',
      detail: match
        ? 'set, and one of FLUX_API_TOKENS accepts it'
        : 'set, but none of FLUX_API_TOKENS here accepts it (fine if the CLI talks to another deployment)',
    });
  }
  return findings;
}

const MARK: Record<FindingStatus, string> = { ok: 'ok  ', warn: 'warn', fail: 'FAIL' };

export function renderFindings(findings: readonly Finding[]): string {
  const lines: string[] = [];
  let area: string | undefined;
  for (const f of findings) {
    if (f.area !== area) {
      area = f.area;
      const worst = findings.filter((x) => x.area === area).some((x) => x.status === 'fail');
      lines.push(`${area}${worst ? '  (needs attention)' : ''}`);
    }
    lines.push(`  ${MARK[f.status]}  ${f.name}: ${f.detail}`);
  }
  const failed = findings.filter((f) => f.status === 'fail');
  lines.push('');
  if (failed.length === 0) lines.push('all good');
  else {
    lines.push(`to fix (${failed.length}):`);
    for (const [i, f] of failed.entries()) lines.push(`  ${i + 1}. ${f.area} ${f.name}: ${f.detail}`);
  }
  return lines.join('\n');
}

/** The variables whose production defaults are /srv/flux/… (set any of them and the profile is yours). */
const DATA_VARS = [
  'FLUX_STATE_DIR',
  'FLUX_BACKUPS_LOCAL_DIR',
  'FLUX_BACKUPS_OFFSITE_DIR',
  'FLUX_PROJECTS_FILE',
] as const;

export interface ProfileChoice {
  profile: 'production' | 'embedded';
  /** Why, for the profile finding. */
  why: string;
}

/**
 * --embedded, or npm start's data beside us (./.flux-data, no data variable set): the all-in-one's
 * defaults; otherwise production's, with a hint when its directories are absent here.
 */
export function chooseProfile(
  embeddedFlag: boolean,
  env: NodeJS.ProcessEnv,
  cwd: string,
  exists: (p: string) => boolean,
): ProfileChoice {
  if (embeddedFlag) return { profile: 'embedded', why: '--embedded' };
  const unset = DATA_VARS.every((v) => !env[v]?.trim());
  if (unset && exists(path.join(cwd, '.flux-data')))
    return {
      profile: 'embedded',
      why: 'found ./.flux-data, as npm start makes it; --embedded says so explicitly',
    };
  const production = loadConfig({}).FLUX_STATE_DIR;
  if (unset && !exists(production))
    return {
      profile: 'production',
      why: `${production} does not exist here; for npm start's data (./.flux-data), run flux-ops doctor --embedded`,
    };
  return { profile: 'production', why: 'the image and compose defaults' };
}

async function localFindings(ctx: Context): Promise<Finding[]> {
  const env = ctx.env;
  const { profile, why } = chooseProfile(bool(ctx.values, 'embedded'), env, process.cwd(), existsSync);
  const findings: Finding[] = [];
  let config: Config;
  try {
    config = loadConfig(env, { profile });
  } catch (error) {
    const problems = (isAppError(error)
      ? (error.details?.problems as Array<{ variable: string; message: string }>)
      : undefined) ?? [{ variable: 'config', message: (error as Error).message }];
    findings.push({ area: 'config', name: 'profile', status: 'ok', detail: `${profile} (${why})` });
    for (const p of problems)
      findings.push({ area: 'config', name: p.variable, status: 'fail', detail: p.message });
    // Without a config no function can be built; what does not need it is still checked.
    findings.push(...(await tlsFindings(env)));
    return findings;
  }
  let registry: ProjectRegistry;
  try {
    registry = loadFileRegistry(config.FLUX_PROJECTS_FILE);
    const n = registry.list().length;
    findings.push({
      area: 'config',
      name: 'profile',
      status: 'ok',
      detail: `${profile} (${why}); FLUX_PROJECTS_FILE ${config.FLUX_PROJECTS_FILE}: ${n} project${n === 1 ? '' : 's'}`,
    });
    if (n === 0) {
      findings.push({
        area: 'config',
        name: 'FLUX_PROJECTS_FILE',
        status: 'warn',
        detail: `${config.FLUX_PROJECTS_FILE} lists no projects (or does not exist): nothing will be backed up`,
      });
    }
  } catch (error) {
    findings.push({
      area: 'config',
      name: 'FLUX_PROJECTS_FILE',
      status: 'fail',
      detail: (error as Error).message,
    });
    return [...findings, ...(await tlsFindings(env))];
  }
  for (const name of FUNCTION_NAMES) findings.push(...(await preflight(name, config, env, registry)));
  findings.push(...(await dirFindings(config, process.getuid?.())));
  findings.push(...(await tlsFindings(env)));
  let cliToken: string | undefined;
  try {
    cliToken = ctx.client().endpoint.token;
  } catch {
    cliToken = env.FLUX_API_TOKEN?.trim() || undefined;
  }
  findings.push(...secretFindings(config, cliToken));
  return findings;
}

async function remoteFindings(ctx: Context): Promise<Finding[]> {
  const client = ctx.client();
  const findings: Finding[] = [];
  for (const name of FUNCTION_NAMES) {
    try {
      const { body } = await client.json<ReadyBody>('GET', `/${name}/readyz`);
      findings.push(...findingsOfReadyz(name, body));
    } catch (error) {
      if (error instanceof ApiError && error.status === 503 && Array.isArray(error.body.checks)) {
        findings.push(...findingsOfReadyz(name, error.body as ReadyBody));
      } else if (error instanceof ApiError) {
        findings.push({ area: name, name: 'readyz', status: 'fail', detail: error.message });
      } else {
        throw error;
      }
    }
  }
  return findings;
}

/** The repo's (the package's) own compose.yml, the hardened deployment: the audit's default. */
export function defaultComposeFile(): string | undefined {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string };
      if (pkg.name === 'flux-ops') {
        const file = path.join(dir, 'compose.yml');
        return existsSync(file) ? file : undefined;
      }
    } catch {
      // not here
    }
    dir = path.dirname(dir);
  }
  return undefined;
}

async function securityAudit(ctx: Context): Promise<number> {
  const composeFlag = str(ctx.values, 'compose');
  const composeFile = composeFlag === 'none' ? undefined : (composeFlag ?? defaultComposeFile());
  const explicitEnvFiles = strs(ctx.values, 'env-file').map((f) => path.resolve(f));
  for (const file of explicitEnvFiles) {
    if (!existsSync(file)) throw new AppError('not_found', `--env-file ${file} does not exist`);
  }
  // Compose interpolates with this process's environment; the env files are what the services get.
  const compose: ComposeModel | undefined = composeFile ? await loadCompose(composeFile, ctx.env) : undefined;
  const envFiles =
    explicitEnvFiles.length > 0
      ? explicitEnvFiles
      : [...new Set(compose?.services.flatMap((s) => s.envFiles) ?? [])].filter((f) => existsSync(f));
  const env: NodeJS.ProcessEnv = { ...ctx.env, ...(await readEnvFiles(envFiles, parseEnvFile)) };
  const { profile } = chooseProfile(bool(ctx.values, 'embedded'), env, process.cwd(), existsSync);
  // loadConfig refuses NODE_TLS_REJECT_UNAUTHORIZED=0; the audit reports it as a finding instead.
  const { NODE_TLS_REJECT_UNAUTHORIZED: _ignored, ...configEnv } = env;
  const config = loadConfig(configEnv, { profile });
  let registry: ProjectRegistry | { error: string };
  try {
    registry = loadFileRegistry(hostPathOf(config.FLUX_PROJECTS_FILE, compose));
  } catch (error) {
    registry = { error: (error as Error).message };
  }
  const findings = await auditSecurity({ env, config, registry, compose, envFiles, now: new Date() });
  const exitCode = auditExitCode(findings);
  if (ctx.json) {
    printJson(ctx.io, {
      ok: exitCode === AUDIT_EXIT.clean,
      exitCode,
      critical: findings.filter((f) => f.severity === 'critical').length,
      warnings: findings.filter((f) => f.severity === 'warning').length,
      compose: compose?.file ?? null,
      envFiles,
      findings,
    });
  } else {
    println(ctx.io.out, renderAudit(findings));
  }
  return exitCode;
}

const doctor: Command = {
  name: 'doctor',
  summary: "check this machine's setup (or a running deployment's) and say what to fix",
  help: `Usage: flux-ops doctor [--embedded] [--remote]
       flux-ops doctor --security [--compose <file>] [--env-file <file>]…

Runs every function's preflight in this process from this environment, as the functions would at start
(tools on PATH and their versions, dirs writable, Docker reachable and the verify image present, the
registry, database reachability), without starting anything; then checks the backup dirs' owner against
uid ${RUN_AS_UID}, the TLS trust source, and that tokens and webhook secrets are set (counts only).

Exit codes: 0 all good; 69 something needs fixing (listed at the end).

With --security it audits the deployment's security posture instead (README: Security audit): database
URLs without sslmode=verify-full, offsite on the local disk or unencrypted, broad or old tokens and webhook
secrets, event sinks over plain http://, the Docker socket beyond verify, world-readable env files and
backups, ports published beyond loopback, NODE_TLS_REJECT_UNAUTHORIZED. Each finding has a severity, a
code and the fix. Exit codes: 0 no findings; 1 warnings only; 2 a critical finding.

Flags:
  --embedded         use the all-in-one defaults (data under ./.flux-data, as npm start does)
  --remote           ask the running deployment at FLUX_API_BASE (GET /<fn>/readyz) instead
  --security         audit the security posture (exit 0/1/2)
  --compose <file>   with --security: the deployment's compose file (default: flux-ops's own compose.yml;
                     none: separate processes that bind FLUX_HOST themselves)
  --env-file <file>  with --security: the env file the functions get (repeatable; default: the compose
                     file's env_file entries); read over this environment, and its mode checked`,
  options: {
    embedded: { type: 'boolean' },
    remote: { type: 'boolean' },
    security: { type: 'boolean' },
    compose: { type: 'string' },
    'env-file': { type: 'string', multiple: true },
  },
  async run(ctx) {
    if (bool(ctx.values, 'security')) {
      if (bool(ctx.values, 'remote'))
        throw new AppError(
          'bad_request',
          'doctor: --security audits this host; it does not go with --remote',
        );
      return securityAudit(ctx);
    }
    if (str(ctx.values, 'compose') !== undefined || strs(ctx.values, 'env-file').length > 0)
      throw new AppError('bad_request', 'doctor: --compose and --env-file go with --security');
    const findings = bool(ctx.values, 'remote') ? await remoteFindings(ctx) : await localFindings(ctx);
    const ok = findings.every((f) => f.status !== 'fail');
    if (ctx.json) printJson(ctx.io, { ok, findings });
    else println(ctx.io.out, renderFindings(findings));
    return ok ? EXIT.ok : EXIT.unavailable;
  },
};

export const DOCTOR_COMMANDS: readonly Command[] = [doctor];
