// flux-ops doctor --security: the deployment's security posture, audited from what it really is (the
// environment and env files the functions get, the compose file, the registry's database URLs, the backup
// directories on disk). Each finding: severity, code, what was found, the fix in one line. Exit 0 none, 1
// warnings only, 2 any critical, as `backup status --check` exits.
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { type Config, parseWebhookSecretEntries, SCOPES } from '../shared/config.js';
import { errnoOf } from '../shared/errors.js';
import {
  isLoopbackHost,
  plainHttpSinkFinding,
  registryTlsFindings,
  type SecurityFinding,
  sinkFindings,
  tlsRejectFinding,
} from '../shared/kit/security.js';
import { parseRecipients } from '../shared/offsite/age.js';
import type { ProjectRegistry } from '../shared/registry.js';
import { formatDuration, parseDuration } from '../shared/schedule.js';
import { DAY_MS } from '../shared/units.js';
import type { ComposeModel, ComposeService } from './compose.js';

export type { SecurityFinding };

/** Exit codes of the audit, as a monitoring plugin's (and `backup status --check`'s). */
export const AUDIT_EXIT = { clean: 0, warnings: 1, critical: 2 } as const;

/** The most backup files whose modes one audit reads (a catalog larger than this is sampled). */
export const MAX_FILES_SCANNED = 100_000;

export interface AuditInputs {
  /** The functions' environment: this process's, with the env files over it. */
  env: NodeJS.ProcessEnv;
  config: Config;
  registry: ProjectRegistry | { error: string };
  compose?: ComposeModel;
  /** The env files the functions read (--env-file, else the compose file's env_file entries). */
  envFiles: string[];
  now: Date;
}

export function auditExitCode(findings: readonly SecurityFinding[]): number {
  if (findings.some((f) => f.severity === 'critical')) return AUDIT_EXIT.critical;
  return findings.length > 0 ? AUDIT_EXIT.warnings : AUDIT_EXIT.clean;
}

/**
 * A container path of the compose deployment as this host sees it, through the services' bind mounts
 * (compose.yml mounts ./projects.json at /etc/flux-ops/projects.json).
 */
export function hostPathOf(p: string, compose: ComposeModel | undefined): string {
  // A path that is there as given is the one meant (an env pointing at host paths).
  if (existsSync(p)) return p;
  for (const service of compose?.services ?? []) {
    for (const m of service.mounts) {
      if (m.type !== 'bind' || !m.source) continue;
      if (p === m.target) return m.source;
      if (p.startsWith(`${m.target.replace(/\/+$/, '')}/`))
        return path.join(m.source, p.slice(m.target.length));
    }
  }
  return p;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** The device a directory is on; undefined when it does not exist here (it is reported as not inspected). */
async function deviceOf(p: string): Promise<number | undefined> {
  return (await stat(p).catch(() => undefined))?.dev;
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** The two backup directories as this host sees them (compose binds resolved); an S3 offsite is none. */
function backupDirs(inputs: AuditInputs): { local: string; offsite?: string } {
  const resolve = (p: string) => hostPathOf(p, inputs.compose);
  const offsite = inputs.config.FLUX_BACKUPS_OFFSITE_DIR;
  return {
    local: resolve(inputs.config.FLUX_BACKUPS_LOCAL_DIR),
    ...(offsite.startsWith('s3://') ? {} : { offsite: resolve(offsite) }),
  };
}

export async function offsiteFindings(inputs: AuditInputs): Promise<SecurityFinding[]> {
  const out: SecurityFinding[] = [];
  const { local, offsite } = backupDirs(inputs);
  const s3 = inputs.config.FLUX_BACKUPS_OFFSITE_DIR.startsWith('s3://');
  if (offsite) {
    const [a, b] = await Promise.all([deviceOf(local), deviceOf(offsite)]);
    const nested = isInside(offsite, local) || isInside(local, offsite);
    if (nested || (a !== undefined && a === b)) {
      out.push({
        severity: 'critical',
        code: 'offsite_same_device',
        found: `FLUX_BACKUPS_OFFSITE_DIR ${offsite} is on the same device as FLUX_BACKUPS_LOCAL_DIR ${local} (${nested ? 'one inside the other' : `st_dev ${a}`}): what is labelled "offsite replicated" is a second copy on the same disk and dies with it`,
        fix: 'put FLUX_BACKUPS_OFFSITE_DIR on another disk or host (a mount of other storage), or an s3:// store',
      });
    }
  }
  // The config schema has already refused recipients that are not age keys: any left here encrypt.
  if (parseRecipients(inputs.config.FLUX_BACKUP_AGE_RECIPIENTS).length === 0) {
    out.push({
      severity: s3 ? 'critical' : 'warning',
      code: 'offsite_unencrypted',
      found: `FLUX_BACKUP_AGE_RECIPIENTS is empty: offsite copies are plain pg_dump archives${s3 ? `; the provider of ${inputs.config.FLUX_BACKUPS_OFFSITE_DIR.split('/').slice(0, 3).join('/')} and anyone who reads the bucket reads every tenant's data` : ', readable by whoever reaches the store'}`,
      fix: 'age-keygen -o flux-backups.key on a safe host, put the public key it prints in FLUX_BACKUP_AGE_RECIPIENTS (replicate), and the key file in FLUX_BACKUP_AGE_IDENTITY_FILE where copies are read (verify, restore, dump)',
    });
  }
  return out;
}

export function tokenFindings(inputs: AuditInputs): SecurityFinding[] {
  const out: SecurityFinding[] = [];
  const maxAgeMs = parseDuration(inputs.config.FLUX_SECRET_MAX_AGE) ?? 90 * DAY_MS;
  const narrow = SCOPES.filter((s) => s !== 'admin');
  for (const t of inputs.config.FLUX_API_TOKENS) {
    if (t.scopes.includes('admin')) {
      out.push({
        severity: 'warning',
        code: 'token_admin',
        found: `token "${t.id}" has the admin scope: it can create, restore over and migrate every project and replay events`,
        fix: `give "${t.id}" only the scopes its client uses (e.g. backups:read for a monitor), keep admin for break-glass`,
      });
    } else if (narrow.every((s) => t.scopes.includes(s))) {
      out.push({
        severity: 'warning',
        code: 'token_all_scopes',
        found: `token "${t.id}" holds every scope (${narrow.join('+')}): admin in all but name`,
        fix: `split "${t.id}" into tokens each with the scopes one client uses`,
      });
    }
    out.push(...ageFindings(`token "${t.id}"`, 'token', t.created, maxAgeMs, inputs.now));
  }
  parseWebhookSecretEntries(inputs.env.FLUX_WEBHOOK_SECRETS).forEach((entry, i) => {
    out.push(
      ...ageFindings(
        `FLUX_WEBHOOK_SECRETS #${i + 1}${i === 0 ? ' (the signing one)' : ''}`,
        'webhook_secret',
        entry.created,
        maxAgeMs,
        inputs.now,
      ),
    );
  });
  return out;
}

function ageFindings(
  what: string,
  kind: 'token' | 'webhook_secret',
  created: string | undefined,
  maxAgeMs: number,
  now: Date,
): SecurityFinding[] {
  const rotate =
    kind === 'token'
      ? 'rotate it (README: Rotating API tokens) and write the new entry as id:<sha256>:<scopes>:YYYY-MM-DD'
      : 'rotate it (README: Rotating webhook secrets) and write the new one as whsec_…:YYYY-MM-DD';
  if (!created) {
    return [
      {
        severity: 'warning',
        code: `${kind}_created_unknown`,
        found: `${what} does not say when it was made, so its age is unknown`,
        fix: `append :YYYY-MM-DD (the day it was made) to its entry, or ${rotate}`,
      },
    ];
  }
  const age = now.getTime() - Date.parse(`${created}T00:00:00Z`);
  if (age <= maxAgeMs) return [];
  return [
    {
      severity: 'warning',
      code: `${kind}_old`,
      found: `${what} was made on ${created}, ${formatDuration(age)} ago, beyond FLUX_SECRET_MAX_AGE (${formatDuration(maxAgeMs)})`,
      fix: rotate,
    },
  ];
}

function sinksOf(raw: string | undefined): string[] {
  if (!raw) return [];
  try {
    const parsed = JSON.parse(raw) as unknown;
    return Array.isArray(parsed)
      ? parsed.flatMap((s) =>
          typeof (s as { url?: unknown })?.url === 'string' ? [(s as { url: string }).url] : [],
        )
      : [];
  } catch {
    return [];
  }
}

function isVerifyService(s: ComposeService): boolean {
  return (s.environment.FLUX_FUNCTION ?? s.name) === 'verify';
}

function isDockerSocket(p: string): boolean {
  return /(^|\/)docker\.sock$/.test(p);
}

/** What the compose file gives each service: sinks, TLS, the Docker socket, published ports. */
export function composeFindings(compose: ComposeModel): SecurityFinding[] {
  const out: SecurityFinding[] = [];
  const socketed = compose.services.filter((s) =>
    s.mounts.some((m) => isDockerSocket(m.target) || isDockerSocket(m.source)),
  );
  const extra = socketed.filter((s) => !isVerifyService(s));
  if (extra.length > 0) {
    out.push({
      severity: 'critical',
      code: 'docker_socket_shared',
      found: `the Docker socket is mounted into ${extra.map((s) => s.name).join(', ')} (beyond verify) in ${compose.file}: the socket is root on the host to whoever holds it`,
      fix: `remove the docker.sock volume from ${extra.map((s) => s.name).join(', ')}; only verify starts sandboxes`,
    });
  }
  for (const s of compose.services) {
    const where = `compose service ${s.name}`;
    const tls = tlsRejectFinding(where, s.environment);
    if (tls) out.push(tls);
    for (const url of sinksOf(s.environment.FLUX_EVENT_SINKS)) {
      const f = plainHttpSinkFinding(where, url);
      if (f) out.push(f);
    }
    if (s.networkMode === 'host') {
      out.push({
        severity: 'critical',
        code: 'listen_public_plain',
        found: `${where} uses network_mode: host: it listens on every interface of the host over plain HTTP`,
        fix: `drop network_mode: host from ${s.name}; publish only the router, on 127.0.0.1, behind a TLS proxy`,
      });
    }
    for (const p of s.ports) {
      if (p.hostIp && isLoopbackHost(p.hostIp)) continue;
      out.push({
        severity: 'critical',
        code: 'listen_public_plain',
        found: `${where} publishes port ${p.target} on ${p.hostIp ?? 'every interface'} (host port ${p.published || 'any'}): flux-ops serves plain HTTP, so tokens and backups cross the network readable`,
        fix: `publish it as "127.0.0.1:${p.published || p.target}:${p.target}" and put a TLS proxy in front for remote clients`,
      });
    }
  }
  return out;
}

/** Without a compose file the functions bind FLUX_HOST themselves. */
export function bindFindings(config: Config): SecurityFinding[] {
  if (isLoopbackHost(config.FLUX_HOST)) return [];
  return [
    {
      severity: 'warning',
      code: 'listen_non_loopback',
      found: `FLUX_HOST=${config.FLUX_HOST}: the functions listen beyond loopback over plain HTTP (they serve no TLS themselves)`,
      fix: 'set FLUX_HOST=127.0.0.1 and put a TLS proxy in front, or keep them on a private container network as compose.yml does',
    },
  ];
}

async function worldReadable(p: string): Promise<boolean | undefined> {
  const s = await stat(p).catch(() => undefined);
  return s ? (s.mode & 0o004) !== 0 : undefined;
}

/** Env files, backup directories and the files in them: nothing for "other" to read. */
export async function modeFindings(inputs: AuditInputs): Promise<SecurityFinding[]> {
  const out: SecurityFinding[] = [];
  for (const file of inputs.envFiles) {
    const s = await stat(file).catch(() => undefined);
    if (s && (s.mode & 0o004) !== 0) {
      out.push({
        severity: 'critical',
        code: 'env_file_world_readable',
        found: `env file ${file} is readable by every user (mode ${(s.mode & 0o777).toString(8)}): it holds the token hashes, webhook secrets and database URLs`,
        fix: `chmod 600 ${file}`,
      });
    }
  }
  const { local, offsite } = backupDirs(inputs);
  const dirs: Array<[string, string]> = [['FLUX_BACKUPS_LOCAL_DIR', local]];
  if (offsite) dirs.push(['FLUX_BACKUPS_OFFSITE_DIR', offsite]);
  let budget = MAX_FILES_SCANNED;
  for (const [variable, dir] of dirs) {
    if (!(await exists(dir))) {
      out.push({
        severity: 'warning',
        code: 'backup_dir_not_inspected',
        found: `${variable} ${dir} does not exist here, so its device and modes were not checked`,
        fix: 'run the audit where the functions run (docker compose exec dump flux-ops doctor --security) or point the variable at the host path',
      });
      continue;
    }
    if (await worldReadable(dir)) {
      out.push({
        severity: 'warning',
        code: 'backup_dir_world_readable',
        found: `${variable} ${dir} can be listed by every user (project ids, backup ids and sizes)`,
        fix: `chmod o-rwx ${dir}`,
      });
    }
    const readable: string[] = [];
    let scanned = 0;
    for (const project of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (!project.isDirectory() || budget <= 0) continue;
      const pdir = path.join(dir, project.name);
      for (const entry of await readdir(pdir, { withFileTypes: true }).catch(() => [])) {
        if (!entry.isFile() || budget <= 0) continue;
        budget -= 1;
        scanned += 1;
        if (await worldReadable(path.join(pdir, entry.name))) readable.push(path.join(pdir, entry.name));
      }
    }
    if (readable.length > 0) {
      out.push({
        severity: 'critical',
        code: 'backup_file_world_readable',
        found: `${readable.length} of ${scanned} files under ${variable} ${dir} are readable by every user (tenant data), e.g. ${readable[0]}`,
        fix: `chmod -R o-rwx ${dir} (dump writes new files 0600)`,
      });
    }
  }
  return out;
}

/** The whole audit, in a stable order (for the text and JSON output alike). */
export async function auditSecurity(inputs: AuditInputs): Promise<SecurityFinding[]> {
  const findings: SecurityFinding[] = [];
  const tls = tlsRejectFinding('the environment', inputs.env);
  if (tls) findings.push(tls);
  if ('error' in inputs.registry) {
    findings.push({
      severity: 'warning',
      code: 'registry_unreadable',
      found: `FLUX_PROJECTS_FILE cannot be read, so no database URL was checked: ${inputs.registry.error}`,
      fix: 'fix FLUX_PROJECTS_FILE (or point it at the host copy the compose file mounts)',
    });
  } else {
    findings.push(...registryTlsFindings(inputs.registry, inputs.env));
  }
  findings.push(...(await offsiteFindings(inputs)));
  findings.push(...tokenFindings(inputs));
  findings.push(...sinkFindings('FLUX_EVENT_SINKS', inputs.config));
  if (inputs.compose) findings.push(...composeFindings(inputs.compose));
  else findings.push(...bindFindings(inputs.config));
  findings.push(...(await modeFindings(inputs)));
  // The same finding reached twice (an env file's value seen by two services) is listed once.
  const seen = new Set<string>();
  return findings.filter((f) => {
    const key = `${f.code}\u0000${f.found}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

const MARK = { critical: 'CRITICAL', warning: 'warning ' } as const;

export function renderAudit(findings: readonly SecurityFinding[]): string {
  const critical = findings.filter((f) => f.severity === 'critical').length;
  const warnings = findings.length - critical;
  if (findings.length === 0) return 'security audit: no findings';
  const lines = [`security audit: ${critical} critical, ${warnings} warning${warnings === 1 ? '' : 's'}`];
  const ordered = [...findings].sort(
    (a, b) => Number(b.severity === 'critical') - Number(a.severity === 'critical'),
  );
  for (const f of ordered) {
    lines.push(`  ${MARK[f.severity]}  ${f.code}: ${f.found}`);
    lines.push(`            fix: ${f.fix}`);
  }
  return lines.join('\n');
}

/** Reads each env file (dotenv lines); later files win, as compose's env_file list does. */
export async function readEnvFiles(
  files: readonly string[],
  parse: (text: string) => Record<string, string>,
): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const file of files) {
    try {
      Object.assign(out, parse(await readFile(file, 'utf8')));
    } catch (error) {
      if (errnoOf(error) !== 'ENOENT') throw error;
    }
  }
  return out;
}
